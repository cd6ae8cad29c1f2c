"""resolv.conf -> the result's `dns` (the reference's host-local dns.go)."""

from __future__ import annotations

from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.types import DNS


def parse_resolv_conf(path: str) -> DNS:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise PluginError(f"failed to read resolvConf {path}: {exc.strerror}") from None
    dns = DNS()
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver":
            dns.nameservers += values[:1]
        elif key == "domain" and values:
            dns.domain = values[0]
        elif key == "search":
            dns.search += values
        elif key == "options":
            dns.options += values
    return dns
