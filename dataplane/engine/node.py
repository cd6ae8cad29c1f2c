"""A node's addresses and routes: enough to make the kernel's routing decision for the pipeline.

Local delivery when the destination is one of the node's addresses (or loopback); otherwise the
longest-prefix route, with connected routes implied by interface addresses, as `ip route` shows them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_interface, ip_network

from dataplane.engine.types import IPAddress

IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Interface:
    name: str
    addresses: tuple = ()  # ip_interface values, primary first

    @classmethod
    def of(cls, name: str, *addresses: str) -> "Interface":
        return cls(name, tuple(ip_interface(a) for a in addresses))


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    oif: str
    via: IPAddress | None = None

    @classmethod
    def of(cls, dst: str, oif: str, via: str | None = None) -> "Route":
        net = ip_network("0.0.0.0/0" if dst == "default" else dst, strict=False)
        return cls(net, oif, ip_address(via) if via else None)


@dataclass(frozen=True)
class RouteResult:
    local: bool
    oif: str | None = None
    nexthop: IPAddress | None = None


class NoRoute(LookupError):
    """No route to the destination (the kernel answers with ICMP net unreachable)."""


@dataclass
class Node:
    """Interfaces with addresses, static routes, and extra local addresses (e.g. IPVS's kube-ipvs0)."""

    interfaces: list[Interface] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    extra_local: set[IPAddress] = field(default_factory=set)
    forwarding: bool = True

    @classmethod
    def simple(cls, interfaces: Iterable[Interface], routes: Iterable[Route] = ()) -> "Node":
        return cls(list(interfaces), list(routes))

    def interface(self, name: str) -> Interface:
        for itf in self.interfaces:
            if itf.name == name:
                return itf
        raise KeyError(f"the node has no interface {name!r} (has: "
                       f"{', '.join(i.name for i in self.interfaces) or 'none'})")

    def local_addresses(self) -> set[IPAddress]:
        addrs = {a.ip for itf in self.interfaces for a in itf.addresses}
        return addrs | set(self.extra_local)

    def is_local(self, addr: IPAddress) -> bool:
        # no set copy: extra_local may hold one address per IPVS virtual IP (tens of thousands)
        return (addr.is_loopback or addr in self.extra_local
                or any(a.ip == addr for itf in self.interfaces for a in itf.addresses))

    def route(self, dst: IPAddress) -> RouteResult:
        """The routing decision for `dst` (raises NoRoute)."""
        if self.is_local(dst):
            return RouteResult(local=True, oif="lo")
        best: tuple[int, str, IPAddress | None] | None = None
        for itf in self.interfaces:
            for a in itf.addresses:
                if a.version == dst.version and dst in a.network:
                    cand = (a.network.prefixlen, itf.name, None)
                    if best is None or cand[0] > best[0]:
                        best = cand
        for r in self.routes:
            if r.dst.version == dst.version and dst in r.dst:
                if best is None or r.dst.prefixlen > best[0]:
                    best = (r.dst.prefixlen, r.oif, r.via)
        if best is None:
            raise NoRoute(f"no route to {dst}")
        return RouteResult(local=False, oif=best[1], nexthop=best[2] or dst)

    def source_for(self, oif: str | None, toward: IPAddress) -> IPAddress | None:
        """inet_select_addr: the out-interface's address on the next hop's subnet, else its primary."""
        if oif is None or oif == "lo":
            return None
        try:
            itf = self.interface(oif)
        except KeyError:
            return None
        same_family = [a for a in itf.addresses if a.version == toward.version]
        for a in same_family:
            if toward in a.network:
                return a.ip
        return same_family[0].ip if same_family else None
