"""Reading typed fields out of a plugin's JSON config, with the reference's error wording."""

from __future__ import annotations

from typing import Any

from dataplane.cni.spec.errors import PluginError


def field(conf: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """conf[key] if it has the JSON type `kind`, `default` if absent; else a clear error."""
    value = conf.get(key)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = "/".join({bool: "boolean", int: "number", str: "string", dict: "object", list: "array"}[k]
                         for k in kinds)
        raise PluginError(f"failed to load netconf: {key} must be a {names}, got {value!r}")
    return value


def mac_from(conf: dict[str, Any], env_args: str) -> str:
    """MAC from CNI_ARGS MAC= < args.cni.mac < runtimeConfig.mac (later wins), validated."""
    from dataplane.cni.spec import args as cni_args

    mac = cni_args.parse(env_args, {"MAC": str}).get("MAC", "")
    cni = conf.get("args", {}).get("cni", {}) if isinstance(conf.get("args"), dict) else {}
    if isinstance(cni, dict) and isinstance(cni.get("mac"), str) and cni["mac"]:
        mac = cni["mac"]
    runtime = conf.get("runtimeConfig")
    if isinstance(runtime, dict) and isinstance(runtime.get("mac"), str) and runtime["mac"]:
        mac = runtime["mac"]
    if mac:
        parts = mac.split(":")
        if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
            raise PluginError(f"invalid MAC address: {mac}")
        if int(parts[0], 16) & 1:
            raise PluginError(f"invalid MAC address: {mac} is a multicast address")
        mac = mac.lower()
    return mac
