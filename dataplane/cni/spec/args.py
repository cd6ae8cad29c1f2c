"""CNI_ARGS (`K=V;K2=V2`), parsed with the Go library's rules (cni pkg/types/args.go).

Keys match case-sensitively; an unknown key is an error unless `IgnoreUnknown` is true.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dataplane.cni.spec.errors import PluginError


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false"):
        return False
    raise ValueError(f"boolean unmarshal error: invalid input {text}")


def parse(text: str, fields: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """Parse CNI_ARGS into {key: converted value} for the keys in `fields` (plus IgnoreUnknown)."""
    if not text:
        return {}
    known: dict[str, Callable[[str], Any]] = {"IgnoreUnknown": _bool, **fields}
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for pair in text.split(";"):
        kv = pair.split("=")
        if len(kv) != 2:
            raise PluginError(f'ARGS: invalid pair "{pair}"')
        key, value = kv
        convert = known.get(key)
        if convert is None:
            unknown.append(pair)
            continue
        try:
            values[key] = convert(value)
        except ValueError as exc:
            raise PluginError(f'ARGS: error parsing value of pair "{pair}": {exc}') from None
    if unknown and not values.get("IgnoreUnknown", False):
        raise PluginError("ARGS: unknown args [" + " ".join(f'"{u}"' for u in unknown) + "]")
    values.pop("IgnoreUnknown", None)
    return values
