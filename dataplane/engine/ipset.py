"""ipsets for `-m set --match-set`: hash:ip, hash:net and hash:ip,port.

Members are tested the way the kernel's ip_set_hash_* types test them: hash:net tries the
prefix lengths present, most specific first, and a `nomatch` entry makes the test fail; hash:ip,port
compares the protocol too (ports of TCP, UDP, UDPLITE and SCTP; 0 for other protocols). Sets can be
loaded from `ipset save` output.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from dataplane.engine.types import PROTO_NUMBERS, PacketMeta

TYPES = ("hash:ip", "hash:net", "hash:ip,port")
_PORTED = {6, 17, 132, 136}


class IpsetError(ValueError):
    """A bad set definition or member, or a reference to a set that does not exist."""


@dataclass
class IPSet:
    name: str
    type: str
    family: int = 4
    ips: set[int] = field(default_factory=set)  # hash:ip
    nets: dict[int, dict[int, bool]] = field(default_factory=dict)  # hash:net: plen -> {net: nomatch}
    ip_ports: set[tuple[int, int, int]] = field(default_factory=set)  # hash:ip,port: (ip, proto, port)

    @property
    def dimensions(self) -> int:
        return 2 if self.type == "hash:ip,port" else 1

    def add(self, member: str) -> None:
        """Add one member in `ipset add` syntax: `1.2.3.4`, `10.0.0.0/8 nomatch`, `1.2.3.4,tcp:80`."""
        text, *flags = member.split()
        if any(f != "nomatch" for f in flags) or (flags and self.type != "hash:net"):
            raise IpsetError(f"set {self.name}: unsupported member options {' '.join(flags)!r}")
        if self.type == "hash:ip":
            self.ips.add(self._addr(text))
        elif self.type == "hash:net":
            net = self._net(text)
            self.nets.setdefault(net.prefixlen, {})[int(net.network_address)] = bool(flags)
        else:
            ip_s, comma, pp = text.partition(",")
            if not comma:
                raise IpsetError(f"set {self.name}: hash:ip,port member {text!r} needs IP,[PROTO:]PORT")
            proto_s, colon, port_s = pp.rpartition(":")
            proto = PROTO_NUMBERS.get(proto_s or "tcp") if colon else 6
            if proto is None or not port_s.isdigit() or int(port_s) > 65535:
                raise IpsetError(f"set {self.name}: bad protocol:port in {text!r}")
            port = int(port_s) if proto in _PORTED else 0
            self.ip_ports.add((self._addr(ip_s), proto, port))

    def _addr(self, text: str) -> int:
        try:
            a = ipaddress.ip_address(text)
        except ValueError:
            raise IpsetError(f"set {self.name}: {text!r} is not an IP address") from None
        if a.version != self.family:
            raise IpsetError(f"set {self.name} is IPv{self.family}; {text} is not")
        return int(a)

    def _net(self, text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise IpsetError(f"set {self.name}: {text!r} is not a network") from None
        if net.version != self.family:
            raise IpsetError(f"set {self.name} is IPv{self.family}; {text} is not")
        return net

    def test(self, addr: int, proto: int = 0, port: int = 0) -> bool:
        if self.type == "hash:ip":
            return addr in self.ips
        if self.type == "hash:net":
            bits = 32 if self.family == 4 else 128
            for plen in sorted(self.nets, reverse=True):
                mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
                nomatch = self.nets[plen].get(addr & mask)
                if nomatch is not None:
                    return not nomatch
            return False
        return (addr, proto, port if proto in _PORTED else 0) in self.ip_ports


class IpsetStore:
    """The sets of one network namespace, by name."""

    def __init__(self) -> None:
        self.sets: dict[str, IPSet] = {}

    def create(self, name: str, type_: str, family: int = 4) -> IPSet:
        if type_ not in TYPES:
            raise IpsetError(f"set {name}: type {type_!r} is not supported (supported: {', '.join(TYPES)})")
        if name in self.sets:
            raise IpsetError(f"set {name} already exists")
        s = self.sets[name] = IPSet(name, type_, family)
        return s

    def get(self, name: str) -> IPSet:
        try:
            return self.sets[name]
        except KeyError:
            raise IpsetError(f"set {name!r} does not exist") from None

    def test(self, name: str, packet: PacketMeta, directions: tuple[str, ...]) -> bool:
        """`-m set --match-set NAME dirs`: the packet's fields picked by `directions`."""
        s = self.get(name)
        if packet.family != s.family or len(directions) < s.dimensions:
            return False
        addr = int(packet.src if directions[0] == "src" else packet.dst)
        if s.dimensions == 1:
            return s.test(addr)
        port = packet.sport if directions[1] == "src" else packet.dport
        return s.test(addr, packet.proto, port)

    @classmethod
    def from_save(cls, text: str) -> "IpsetStore":
        """Load `ipset save` output (create/add lines)."""
        store = cls()
        for n, raw in enumerate(text.splitlines(), 1):
            words = raw.split()
            if not words or words[0].startswith("#"):
                continue
            try:
                if words[0] == "create" and len(words) >= 3:
                    opts = dict(zip(words[3::2], words[4::2]))
                    bad = set(opts) - {"family", "hashsize", "maxelem", "bucketsize", "initval"}
                    if bad:
                        raise IpsetError(f"unsupported create options {sorted(bad)}")
                    fam = {"inet": 4, "inet6": 6}.get(opts.get("family", "inet"))
                    if fam is None:
                        raise IpsetError(f"unknown family {opts['family']!r}")
                    store.create(words[1], words[2], fam)
                elif words[0] == "add" and len(words) >= 3:
                    store.get(words[1]).add(" ".join(words[2:]))
                else:
                    raise IpsetError(f"cannot parse {raw.strip()!r}")
            except IpsetError as exc:
                raise IpsetError(f"line {n}: {exc}") from None
        return store
