"""Spec versions and the checks the Go skeleton applies to them."""

from __future__ import annotations

import json
import re

from dataplane.cni.spec.errors import DECODING_FAILURE, INCOMPATIBLE_VERSION, CNIError

#: What our plugins accept as a config's cniVersion (0.1.0/0.2.0 results are not supported).
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = "1.1.0"
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def parse(version: str) -> tuple[int, int, int]:
    m = _SEMVER.match(version) if isinstance(version, str) else None
    if not m:
        raise CNIError(DECODING_FAILURE, f"unable to parse version {version!r}")
    return int(m[1]), int(m[2]), int(m[3])


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def is_1x(version: str) -> bool:
    return at_least(version, "1.0.0")


def of_config(stdin: bytes | dict) -> str:
    """The config's cniVersion; absent means 0.1.0 (as cni's ConfigDecoder says)."""
    try:
        obj = json.loads(stdin) if isinstance(stdin, (bytes, str)) else stdin
    except ValueError as exc:
        raise CNIError(DECODING_FAILURE, f"decoding version from network config: {exc}") from None
    if not isinstance(obj, dict):
        raise CNIError(DECODING_FAILURE, "decoding version from network config: not a JSON object")
    version = obj.get("cniVersion", "")
    if not isinstance(version, str):
        raise CNIError(DECODING_FAILURE, "decoding version from network config: cniVersion is not a string")
    return version or "0.1.0"


def check_supported(version: str, supported: tuple[str, ...] = SUPPORTED) -> None:
    if version not in supported:
        quoted = " ".join(f'"{v}"' for v in supported)
        raise CNIError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config is "{version}", plugin supports [{quoted}]')
