"""Round robin: net/netfilter/ipvs/ip_vs_rr.c `ip_vs_rr_schedule()`, `ip_vs_rr_del_dest()`.

`sched_data` points at the list node last chosen (initially the list head). A schedule walks
forward from the node after it, wrapping past the head, up to and including the last chosen one,
and takes the first destination that is not overloaded and has weight > 0. When the pointer is
still the head there is only one pass. Deleting the pointed-to destination moves the pointer to
its predecessor (`p->next->prev`), so the rotation continues where it was.
"""

from __future__ import annotations

from dataplane.proxy.ipvs.dest import Dest
from dataplane.proxy.ipvs.sched.base import Flow, SchedService, Scheduler, usable


class RoundRobin(Scheduler):
    name = "rr"

    def __init__(self) -> None:
        super().__init__()
        self.last: Dest | None = None  # None = the list head

    def init_service(self, svc: SchedService) -> None:
        self.last = None

    def del_dest(self, svc: SchedService, dest: Dest, index: int) -> None:
        if self.last is dest:
            self.last = svc.destinations[index - 1] if index > 0 else None

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        dests = svc.destinations
        if self.last is None:
            order = dests
        else:
            pos = _index(dests, self.last)
            order = dests[pos + 1:] + dests[:pos + 1]
        for dest in order:
            if usable(dest):
                self.last = dest
                return dest
        return self._fail()

    def state(self) -> dict[str, object]:
        return {"last": self.last.label() if self.last else "head"}


def _index(dests: list[Dest], dest: Dest) -> int:
    for i, d in enumerate(dests):
        if d is dest:
            return i
    raise LookupError("scheduler pointer is not in the destination list")
