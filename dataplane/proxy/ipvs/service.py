"""Virtual services and their real servers, as `ip_vs_ctl.c` keeps them.

A `VirtualService` is `struct ip_vs_service`: (protocol, VIP, port), a scheduler, flags, a
persistence timeout and netmask, and its destination list in the kernel's order. `add_dest()`
inserts at the head like `__ip_vs_update_dest()` (`list_add_rcu`), so `ipvsadm -Ln` shows the newest
real server first; `del_dest()` unlinks and clears IP_VS_DEST_F_AVAILABLE (`__ip_vs_unlink_dest()`),
while connections still bound to it keep it for their counters.

`ServiceTable` is the lookup `ip_vs_service_find()` does: a hash on (protocol, address, port). The
kernel's table has 256 chained buckets (IP_VS_SVC_TAB_BITS 8); a Python dict gives the same O(1)
answer without the chains.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address

from dataplane.engine.types import PROTO_NAMES, IPAddress
from dataplane.proxy.ipvs.dest import FORWARD_METHODS, FWD_MASQ, Dest
from dataplane.proxy.ipvs.sched import Scheduler, make_scheduler
from dataplane.proxy.ipvs.sched.base import SVC_F_PERSISTENT

IPVS_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
DEFAULT_PERSISTENCE = 300  # ipvsadm -p without a value: 300 s (ipvsadm(8))
ServiceKey = tuple[int, IPAddress, int]


class IpvsError(ValueError):
    """A configuration request the kernel (or ipvsadm) would refuse, with its reason."""


@dataclass(eq=False)
class VirtualService:
    proto: int
    addr: IPAddress
    port: int
    scheduler_name: str = "rr"
    flags: int = 0
    timeout: int = 0  # persistence timeout in seconds (flags & SVC_F_PERSISTENT)
    netmask: int = 32  # persistence granularity: prefix length (ipvsadm -M)
    destinations: list[Dest] = field(default_factory=list)
    scheduler: Scheduler = field(init=False)

    def __post_init__(self) -> None:
        if self.proto not in IPVS_PROTOCOLS.values():
            raise IpvsError(f"IPVS serves tcp, udp and sctp only, not protocol {self.proto}")
        if not 0 <= self.port <= 65535:
            raise IpvsError(f"port {self.port} out of range 0..65535")
        limit = 32 if self.addr.version == 4 else 128
        if not 0 <= self.netmask <= limit:
            raise IpvsError(f"persistence netmask /{self.netmask} out of range for IPv{self.addr.version}")
        self.scheduler = make_scheduler(self.scheduler_name)
        self.scheduler.init_service(self)

    @property
    def key(self) -> ServiceKey:
        return (self.proto, self.addr, self.port)

    @property
    def persistent(self) -> bool:
        return bool(self.flags & SVC_F_PERSISTENT)

    def label(self) -> str:
        host = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"{PROTO_NAMES[self.proto].upper()} {host}:{self.port}"

    def find_dest(self, addr: IPAddress, port: int) -> Dest | None:
        for d in self.destinations:
            if d.addr == addr and d.port == port:
                return d
        return None

    def add_dest(self, addr: str | IPAddress, port: int, weight: int = 1, fwd: str = FWD_MASQ,
                 u_threshold: int = 0, l_threshold: int = 0) -> Dest:
        """`ipvsadm -a`: new real server at the head of the list."""
        a = ip_address(addr) if isinstance(addr, str) else addr
        _check_dest(self, a, port, weight, fwd)
        if l_threshold > u_threshold:  # ip_vs_add_dest(): -ERANGE
            raise IpvsError(f"lower threshold {l_threshold} is higher than upper threshold {u_threshold}")
        if self.find_dest(a, port) is not None:
            raise IpvsError(f"destination {a}:{port} already exists in {self.label()}")
        dest = Dest(a, port, weight, fwd, u_threshold, l_threshold)
        self.destinations.insert(0, dest)
        self.scheduler.add_dest(self, dest)
        return dest

    def append_dest(self, dest: Dest) -> None:
        """Place a destination at the tail: rebuilding a list already in kernel order (a dump)."""
        _check_dest(self, dest.addr, dest.port, dest.weight, dest.fwd)
        if self.find_dest(dest.addr, dest.port) is not None:
            raise IpvsError(f"destination {dest.label()} appears twice in {self.label()}")
        self.destinations.append(dest)
        self.scheduler.init_service(self)

    def edit_dest(self, addr: str | IPAddress, port: int, weight: int) -> Dest:
        """`ipvsadm -e ... -w W`: `last_weight` keeps the latest non-zero weight (mh uses it)."""
        a = ip_address(addr) if isinstance(addr, str) else addr
        dest = self.find_dest(a, port)
        if dest is None:
            raise IpvsError(f"no destination {a}:{port} in {self.label()}")
        if weight < 0:
            raise IpvsError(f"weight {weight} must be >= 0")
        if weight != 0:
            dest.last_weight = weight
        dest.weight = weight
        self.scheduler.upd_dest(self, dest)
        return dest

    def del_dest(self, addr: str | IPAddress, port: int) -> Dest:
        """`ipvsadm -d`: unlink; bound connections keep the dest (the kernel's trash list)."""
        a = ip_address(addr) if isinstance(addr, str) else addr
        for index, dest in enumerate(self.destinations):
            if dest.addr == a and dest.port == port:
                del self.destinations[index]
                dest.available = False
                self.scheduler.del_dest(self, dest, index)
                return dest
        raise IpvsError(f"no destination {a}:{port} in {self.label()}")

    def set_scheduler(self, name: str) -> None:
        self.scheduler = make_scheduler(name)
        self.scheduler_name = name
        self.scheduler.init_service(self)


def _check_dest(svc: VirtualService, addr: IPAddress, port: int, weight: int, fwd: str) -> None:
    if addr.version != svc.addr.version:
        raise IpvsError(f"real server {addr} is not IPv{svc.addr.version} like {svc.label()}")
    if not 0 <= port <= 65535:
        raise IpvsError(f"real server port {port} out of range 0..65535")
    if weight < 0:
        raise IpvsError(f"weight {weight} must be >= 0")
    if fwd not in FORWARD_METHODS:
        raise IpvsError(f"forwarding method {fwd!r} must be one of {', '.join(FORWARD_METHODS)}")


class ServiceTable:
    """All virtual services of one network namespace, found by (protocol, address, port)."""

    def __init__(self) -> None:
        self._by_key: dict[ServiceKey, VirtualService] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[VirtualService]:
        return iter(self._by_key.values())

    def add(self, svc: VirtualService) -> VirtualService:
        if svc.key in self._by_key:
            raise IpvsError(f"service {svc.label()} already exists")
        self._by_key[svc.key] = svc
        return svc

    def add_service(self, proto: str, addr: str, port: int, scheduler: str = "rr", *,
                    persistent: int | None = None, netmask: int | None = None, flags: int = 0) -> VirtualService:
        """`ipvsadm -A -t|-u|--sctp-service ADDR:PORT -s SCHED [-p TIMEOUT] [-M NETMASK]`."""
        if proto not in IPVS_PROTOCOLS:
            raise IpvsError(f"protocol {proto!r}: IPVS serves tcp, udp and sctp")
        a = ip_address(addr)
        if persistent is not None:
            if persistent <= 0:
                raise IpvsError(f"persistence timeout {persistent} must be positive")
            flags |= SVC_F_PERSISTENT
        mask = netmask if netmask is not None else (32 if a.version == 4 else 128)
        svc = VirtualService(IPVS_PROTOCOLS[proto], a, port, scheduler, flags,
                             persistent or 0, mask)
        return self.add(svc)

    def find(self, proto: int, addr: IPAddress, port: int) -> VirtualService | None:
        """ip_vs_ctl.c `__ip_vs_service_find()`."""
        return self._by_key.get((proto, addr, port))

    def get(self, proto: str, addr: str, port: int) -> VirtualService:
        svc = self.find(IPVS_PROTOCOLS.get(proto, -1), ip_address(addr), port)
        if svc is None:
            raise IpvsError(f"no service {proto} {addr}:{port}")
        return svc

    def remove(self, svc: VirtualService) -> None:
        if self._by_key.get(svc.key) is not svc:
            raise IpvsError(f"no service {svc.label()}")
        del self._by_key[svc.key]
        for dest in svc.destinations:
            dest.available = False

    def extend(self, services: Iterable[VirtualService]) -> None:
        for svc in services:
            self.add(svc)
