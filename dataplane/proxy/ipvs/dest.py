"""A real server (`struct ip_vs_dest`, include/net/ip_vs.h) with the fields schedulers read.

Counters follow ip_vs_conn.c: `ip_vs_bind_dest()` counts a new connection as active or inactive
(templates as persistent) and sets OVERLOAD at `u_threshold`; `ip_vs_unbind_dest()` undoes it and
clears OVERLOAD below `l_threshold` (or below 3/4 of `u_threshold` when no lower one is set).
"""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.engine.types import IPAddress

# include/uapi/linux/ip_vs.h forwarding methods, as ipvsadm-save spells them
FWD_MASQ = "m"  # -m, "Masq" (NAT): the only method kube-proxy uses
FWD_GATE = "g"  # -g, "Route" (direct routing)
FWD_TUNNEL = "i"  # -i, "Tunnel" (ipip)
FORWARD_METHODS = {FWD_MASQ: "Masq", FWD_GATE: "Route", FWD_TUNNEL: "Tunnel"}


@dataclass(eq=False)
class Dest:
    """One real server of one virtual service. Identity is the object (the kernel's pointer)."""

    addr: IPAddress
    port: int
    weight: int = 1
    fwd: str = FWD_MASQ
    u_threshold: int = 0  # -x: upper connection threshold (0 = none)
    l_threshold: int = 0  # -y: lower connection threshold
    last_weight: int = -1  # latest non-zero weight (mh uses it); set by the service on add
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    available: bool = True  # IP_VS_DEST_F_AVAILABLE: linked into its service
    overloaded: bool = False  # IP_VS_DEST_F_OVERLOAD

    def __post_init__(self) -> None:
        if self.last_weight < 0:
            self.last_weight = self.weight

    @property
    def conn_overhead(self) -> int:
        """include/net/ip_vs.h `ip_vs_dest_conn_overhead()`: active connections cost 256x."""
        return (self.activeconns << 8) + self.inactconns

    @property
    def totalconns(self) -> int:
        """include/net/ip_vs.h `ip_vs_dest_totalconns()`."""
        return self.activeconns + self.inactconns + self.persistconns

    def bind(self, *, template: bool, inactive: bool) -> None:
        """ip_vs_conn.c `ip_vs_bind_dest()` counter update."""
        if template:
            self.persistconns += 1
        elif inactive:
            self.inactconns += 1
        else:
            self.activeconns += 1
        if self.u_threshold and self.totalconns >= self.u_threshold:
            self.overloaded = True

    def unbind(self, *, template: bool, inactive: bool) -> None:
        """ip_vs_conn.c `ip_vs_unbind_dest()` counter update."""
        if template:
            self.persistconns -= 1
        elif inactive:
            self.inactconns -= 1
        else:
            self.activeconns -= 1
        if self.l_threshold:
            if self.totalconns < self.l_threshold:
                self.overloaded = False
        elif self.u_threshold:
            if self.totalconns * 4 < self.u_threshold * 3:
                self.overloaded = False
        else:
            self.overloaded = False

    def label(self) -> str:
        return f"[{self.addr}]:{self.port}" if self.addr.version == 6 else f"{self.addr}:{self.port}"
