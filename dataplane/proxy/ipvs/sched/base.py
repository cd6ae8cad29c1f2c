"""The scheduler interface of `struct ip_vs_scheduler` (include/net/ip_vs.h).

The kernel calls `init_service` when a service binds a scheduler, `add_dest`/`del_dest`/`upd_dest`
when its destination list changes, and `schedule` for the first packet of a new connection. The
destination list is `svc.destinations` in the kernel's list order: `__ip_vs_update_dest()` uses
`list_add_rcu()`, which inserts at the HEAD, so the newest destination comes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dataplane.engine.types import IPAddress
from dataplane.proxy.ipvs.dest import Dest

# include/uapi/linux/ip_vs.h service flags
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008  # sh-fallback / mh-fallback
SVC_F_SCHED2 = 0x0010  # sh-port / mh-port
SVC_F_SCHED3 = 0x0020


class SchedService(Protocol):
    """What a scheduler may read from its virtual service."""

    destinations: list[Dest]
    flags: int


@dataclass(frozen=True)
class Flow:
    """The packet fields schedulers hash on (`struct ip_vs_iphdr` + the L4 ports), and the time
    (jiffies) for the schedulers that keep timed state (lblc, lblcr)."""

    saddr: IPAddress
    daddr: IPAddress
    sport: int = 0
    dport: int = 0
    proto: int = 6
    now: float = 0.0


class Scheduler:
    """Base: hooks do nothing, as when the kernel's callback pointer is NULL."""

    name = "?"

    def __init__(self) -> None:
        self.last_error: str | None = None

    def init_service(self, svc: SchedService) -> None:
        pass

    def add_dest(self, svc: SchedService, dest: Dest) -> None:
        pass

    def del_dest(self, svc: SchedService, dest: Dest, index: int) -> None:
        """Called after `dest` was unlinked from position `index`."""

    def upd_dest(self, svc: SchedService, dest: Dest) -> None:
        pass

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        raise NotImplementedError

    def state(self) -> dict[str, object]:
        """The scheduler's private state, for traces."""
        return {}

    def _fail(self, message: str = "no destination available") -> None:
        """ip_vs_sched.c `ip_vs_scheduler_err()`: remembered for the trace."""
        self.last_error = message
        return None


def usable(dest: Dest) -> bool:
    """The common test `!(dest->flags & IP_VS_DEST_F_OVERLOAD) && weight > 0`."""
    return not dest.overloaded and dest.weight > 0
