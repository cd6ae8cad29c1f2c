"""`-m set --match-set` over the ipsets of an IPVS layout, for the engine's iptables evaluator.

The engine's own store (`dataplane.engine.ipset`) knows hash:ip, hash:net and hash:ip,port; kube-proxy's
IPVS mode also uses bitmap:port (NodePorts), hash:ip,port,ip (KUBE-LOOP-BACK, source-IP allow lists)
and hash:ip,port,net (source-CIDR allow lists). Tests follow the kernel's set types
(net/netfilter/ipset/ip_set_{bitmap_port,hash_ipport,hash_ipportip,hash_ipportnet}.c):
- each direction of `--match-set NAME d1,d2,d3` picks the packet's source or destination for
  that dimension; a port dimension takes the port on the same side (`ip_set_get_ip_port()`);
- a port compares together with the protocol (tcp, udp, sctp), except in bitmap:port, which
  stores port numbers only; packets of other protocols carry no port and never match a port set;
- a net dimension matches the most specific stored prefix containing the address;
- a set of the wrong family, or fewer directions than dimensions, does not match.
Sets are built from the layout's `IpSet` records (already normalised), so nothing is re-parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from dataplane.engine.types import PROTO_NUMBERS, PacketMeta
from dataplane.proxy.ipvs.ipset import IpSet

_PORTED = {6, 17, 132}
_DIMENSIONS = {"hash:ip": 1, "bitmap:port": 1, "hash:ip,port": 2, "hash:ip,port,ip": 3, "hash:ip,port,net": 3}


class SetMatchError(LookupError):
    """A rule names a set the layout does not have (iptables-restore would refuse it)."""


@dataclass
class _Compiled:
    kind: str
    family: int
    keys: set[tuple[int, ...]] = field(default_factory=set)
    nets: dict[tuple[int, int, int], set[tuple[int, int]]] = field(default_factory=dict)  # hash:ip,port,net


def _compile(s: IpSet) -> _Compiled:
    family = 4 if s.family == "inet" else 6
    out = _Compiled(s.type, family)
    for key in s.members:
        if s.type == "bitmap:port":
            out.keys.add((int(key),))
            continue
        parts = key.split(",")
        ip = int(ip_address(parts[0]))
        if s.type == "hash:ip":
            out.keys.add((ip,))
            continue
        proto_name, _, port = parts[1].partition(":")
        proto, port_n = PROTO_NUMBERS[proto_name], int(port)
        if s.type == "hash:ip,port":
            out.keys.add((ip, proto, port_n))
        elif s.type == "hash:ip,port,ip":
            out.keys.add((ip, proto, port_n, int(ip_address(parts[2]))))
        else:
            net = ip_network(parts[2], strict=False)
            out.nets.setdefault((ip, proto, port_n), set()).add((int(net.network_address), net.prefixlen))
    return out


class LayoutSets:
    """The `IpsetStore` interface the iptables evaluator calls: `test(name, packet, directions)`."""

    def __init__(self, sets: list[IpSet]) -> None:
        self._sets = {s.name: _compile(s) for s in sets}

    def test(self, name: str, packet: PacketMeta, directions: tuple[str, ...]) -> bool:
        s = self._sets.get(name)
        if s is None:
            raise SetMatchError(f"set {name!r} does not exist in the IPVS layout")
        if packet.family != s.family or len(directions) < _DIMENSIONS[s.kind]:
            return False

        def addr(d: str) -> int:
            return int(packet.src if d == "src" else packet.dst)

        def port(d: str) -> int | None:
            if packet.proto not in _PORTED:
                return None
            return packet.sport if d == "src" else packet.dport

        if s.kind == "hash:ip":
            return (addr(directions[0]),) in s.keys
        if s.kind == "bitmap:port":
            p = port(directions[0])
            return p is not None and (p,) in s.keys
        p = port(directions[1])
        if p is None:
            return False
        head = (addr(directions[0]), packet.proto, p)
        if s.kind == "hash:ip,port":
            return head in s.keys
        if s.kind == "hash:ip,port,ip":
            return (*head, addr(directions[2])) in s.keys
        third = addr(directions[2])
        bits = 32 if s.family == 4 else 128
        for network, plen in s.nets.get(head, ()):
            if plen == 0 or third >> (bits - plen) == network >> (bits - plen):
                return True
        return False
