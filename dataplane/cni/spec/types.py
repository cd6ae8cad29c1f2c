"""CNI results in one canonical (1.x) form, read from and written to every supported version.

0.3.0/0.3.1/0.4.0 results carry `ips[].version` and lack the 1.1 fields; 1.0.0/1.1.0 drop
`version`. Field order and omission follow the Go types (cni pkg/types/040 and 100), so our
output reads like the reference plugins' output.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from dataplane.cni.spec import versions
from dataplane.cni.spec.errors import DECODING_FAILURE, CNIError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _bad(what: str) -> CNIError:
    return CNIError(DECODING_FAILURE, f"failed to parse result: {what}")


def parse_cidr(text: object, what: str = "address") -> IPInterface:
    """An address with prefix, host bits allowed (Go's types.ParseCIDR keeps them)."""
    if not isinstance(text, str) or "/" not in text:
        raise ValueError(f"invalid CIDR address: {text}")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"invalid CIDR address: {text}") from None


def parse_ip(text: object) -> IPAddress:
    if not isinstance(text, str):
        raise ValueError(f"invalid IP address: {text}")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IP address: {text}") from None


@dataclass
class Interface:
    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""


@dataclass
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None

    @property
    def family(self) -> str:
        return "4" if self.address.version == 4 else "6"


@dataclass
class Route:
    dst: IPInterface
    gw: IPAddress | None = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


@dataclass
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    @classmethod
    def from_dict(cls, obj: object) -> "DNS":
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise ValueError("dns must be an object")
        def strings(key: str) -> list[str]:
            value = obj.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"dns.{key} must be a list of strings")
            return list(value)
        domain = obj.get("domain") or ""
        if not isinstance(domain, str):
            raise ValueError("dns.domain must be a string")
        return cls(strings("nameservers"), domain, strings("search"), strings("options"))


@dataclass
class Result:
    """An ADD result (or an IPAM plugin's abbreviated one: no interfaces, no ips[].interface)."""

    cni_version: str = versions.CURRENT
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)

    # -- writing -----------------------------------------------------------------------------
    def to_dict(self, version: str) -> dict[str, Any]:
        """The result as the given spec version spells it."""
        new = versions.is_1x(version)
        rich = versions.at_least(version, "1.1.0")
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [_iface_dict(i, rich) for i in self.interfaces]
        if self.ips:
            out["ips"] = [_ip_dict(ip, new) for ip in self.ips]
        if self.routes:
            out["routes"] = [_route_dict(r, rich) for r in self.routes]
        out["dns"] = self.dns.to_dict()
        return out

    def to_json(self, version: str | None = None) -> bytes:
        return dump(self.to_dict(version or self.cni_version))

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, obj: object, default_version: str = versions.CURRENT) -> "Result":
        """Parse a result in any supported version (a missing cniVersion means `default_version`)."""
        if not isinstance(obj, dict):
            raise _bad("not a JSON object")
        version = obj.get("cniVersion") or default_version
        if not isinstance(version, str):
            raise _bad("cniVersion is not a string")
        if version in ("0.1.0", "0.2.0"):
            raise CNIError(DECODING_FAILURE, f"result version {version} is not supported")
        versions.parse(version)
        try:
            interfaces = [_iface_from(i) for i in _list(obj, "interfaces")]
            ips = [_ip_from(i) for i in _list(obj, "ips")]
            routes = [_route_from(r) for r in _list(obj, "routes")]
            dns = DNS.from_dict(obj.get("dns"))
        except (ValueError, TypeError) as exc:
            raise _bad(str(exc)) from None
        for ip in ips:
            if interfaces and ip.interface is not None and not 0 <= ip.interface < len(interfaces):
                raise _bad(f"ips[].interface {ip.interface} is out of range")
        return cls(version, interfaces, ips, routes, dns)

    @classmethod
    def from_json(cls, data: bytes | str, default_version: str = versions.CURRENT) -> "Result":
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise _bad(str(exc)) from None
        return cls.from_dict(obj, default_version)


def dump(obj: object) -> bytes:
    """Go's json.MarshalIndent(obj, "", "    "): 4 spaces, UTF-8, no trailing newline."""
    return json.dumps(obj, indent=4, ensure_ascii=False).encode()


def _list(obj: dict, key: str) -> list:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(f"{key} must be a list")
    return value


def _iface_dict(i: Interface, rich: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": i.name}
    if i.mac:
        out["mac"] = i.mac
    if rich and i.mtu:
        out["mtu"] = i.mtu
    if i.sandbox:
        out["sandbox"] = i.sandbox
    if rich and i.socket_path:
        out["socketPath"] = i.socket_path
    if rich and i.pci_id:
        out["pciID"] = i.pci_id
    return out


def _ip_dict(ip: IPConfig, new: bool) -> dict[str, Any]:
    out: dict[str, Any] = {} if new else {"version": ip.family}
    if ip.interface is not None:
        out["interface"] = ip.interface
    out["address"] = str(ip.address)
    if ip.gateway is not None:
        out["gateway"] = str(ip.gateway)
    return out


def _route_dict(r: Route, rich: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(r.dst)}
    if r.gw is not None:
        out["gw"] = str(r.gw)
    if rich:
        for key, value in (("mtu", r.mtu), ("advmss", r.advmss), ("priority", r.priority)):
            if value:
                out[key] = value
        if r.table is not None:
            out["table"] = r.table
        if r.scope is not None:
            out["scope"] = r.scope
    return out


def _str(obj: dict, key: str) -> str:
    value = obj.get(key) or ""
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _int(obj: dict, key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be an integer")
    return value


def _iface_from(obj: object) -> Interface:
    if not isinstance(obj, dict):
        raise ValueError("interfaces[] must be objects")
    return Interface(_str(obj, "name"), _str(obj, "mac"), _int(obj, "mtu") or 0, _str(obj, "sandbox"),
                     _str(obj, "socketPath"), _str(obj, "pciID"))


def _ip_from(obj: object) -> IPConfig:
    if not isinstance(obj, dict):
        raise ValueError("ips[] must be objects")
    address = parse_cidr(obj.get("address"))
    gateway = parse_ip(obj["gateway"]) if obj.get("gateway") else None
    version = obj.get("version")
    if version not in (None, "", "4", "6"):
        raise ValueError(f"invalid IP version {version!r}")
    if version and version != ("4" if address.version == 4 else "6"):
        raise ValueError(f"ips[].version {version} does not match address {address}")
    return IPConfig(address, gateway, _int(obj, "interface"))


def _route_from(obj: object) -> Route:
    if not isinstance(obj, dict):
        raise ValueError("routes[] must be objects")
    dst = parse_cidr(obj.get("dst"))
    gw = parse_ip(obj["gw"]) if obj.get("gw") else None
    return Route(dst, gw, _int(obj, "mtu") or 0, _int(obj, "advmss") or 0, _int(obj, "priority") or 0,
                 _int(obj, "table"), _int(obj, "scope"))
