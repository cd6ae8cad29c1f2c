"""Spec version arithmetic for the runtime side (cni pkg/version)."""

from __future__ import annotations

import re

CURRENT = "1.1.0"
ALL = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def valid(version: str) -> bool:
    return bool(_SEMVER.match(version))


def key(version: str) -> tuple[int, int, int]:
    m = _SEMVER.match(version or "0.1.0")
    if not m:
        raise ValueError(f"unable to parse version {version!r}")
    return int(m[1]), int(m[2]), int(m[3])


def greater(a: str, b: str) -> bool:
    return key(a) > key(b)


def at_least(version: str, minimum: str) -> bool:
    """Missing version means 0.1.0, as the Go library reads it."""
    return key(version or "0.1.0") >= key(minimum)
