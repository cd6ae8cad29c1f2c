"""sysctls of the calling thread's network namespace (/proc/sys/net is per namespace)."""

from __future__ import annotations

import os


def _path(name: str) -> str:
    return os.path.join("/proc/sys", name.replace(".", "/") if "/" not in name else name)


def read(name: str) -> str | None:
    try:
        with open(_path(name), encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None


def write(name: str, value: str) -> None:
    """Write a sysctl given as `net/ipv4/ip_forward` (slashes keep dots in interface names)."""
    with open(_path(name), "w", encoding="ascii") as fh:
        fh.write(value)


def write_if_different(name: str, value: str) -> None:
    if read(name) != value:
        write(name, value)


def enable_forwarding(version: int) -> None:
    """The reference's ip.EnableIP4Forward / EnableIP6Forward."""
    write_if_different("net/ipv4/ip_forward" if version == 4 else "net/ipv6/conf/all/forwarding", "1")
