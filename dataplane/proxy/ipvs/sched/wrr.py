"""Weighted round robin: net/netfilter/ipvs/ip_vs_wrr.c `ip_vs_wrr_schedule()`,
`ip_vs_wrr_init_svc()`, `ip_vs_wrr_dest_changed()`, `ip_vs_wrr_gcd_weight()`, `ip_vs_wrr_max_weight()`.

State `{cl, cw, mw, di}`: `di` = gcd of the weights > 0, `mw` = max weight - (di - 1), `cw` starts
at `mw`. A schedule walks on from `cl` for a destination with weight >= cw; each time it passes the
list head `cw -= di`, and when `cw <= 0` it restarts at `mw`. Passes are bounded exactly as in the
kernel (`last_pass`, `restarted`, `stop`), so an all-overloaded list ends in "no destination".
Any destination change resets `cl` to the head and clamps `cw`.
"""

from __future__ import annotations

from math import gcd

from dataplane.proxy.ipvs.dest import Dest
from dataplane.proxy.ipvs.sched.base import Flow, SchedService, Scheduler

HEAD = -1


class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def __init__(self) -> None:
        super().__init__()
        self.cl: Dest | None = None  # None = the list head
        self.cw = 0
        self.mw = 0
        self.di = 1

    @staticmethod
    def _gcd_weight(svc: SchedService) -> int:
        g = 0
        for d in svc.destinations:
            if d.weight > 0:
                g = gcd(d.weight, g) if g > 0 else d.weight
        return g or 1

    @staticmethod
    def _max_weight(svc: SchedService) -> int:
        return max([0] + [d.weight for d in svc.destinations])

    def init_service(self, svc: SchedService) -> None:
        self.cl = None
        self.di = self._gcd_weight(svc)
        self.mw = self._max_weight(svc) - (self.di - 1)
        self.cw = self.mw

    def _changed(self, svc: SchedService) -> None:
        self.cl = None
        self.di = self._gcd_weight(svc)
        self.mw = self._max_weight(svc) - (self.di - 1)
        if self.cw > self.mw or not self.cw:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    def add_dest(self, svc: SchedService, dest: Dest) -> None:
        self._changed(svc)

    def del_dest(self, svc: SchedService, dest: Dest, index: int) -> None:
        self._changed(svc)

    def upd_dest(self, svc: SchedService, dest: Dest) -> None:
        self._changed(svc)

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        dests = svc.destinations
        pos = HEAD if self.cl is None else _index(dests, self.cl)
        if self.mw == 0:
            return self._fail()
        last = pos
        stop: int | None = None
        last_pass = restarted = False
        while True:
            # list_for_each_entry_continue_rcu(dest, ...): the nodes after `pos` up to the head
            for i in range(pos + 1, len(dests)):
                dest = dests[i]
                if not dest.overloaded and dest.weight >= self.cw:
                    self.cl = dest
                    return dest
                if i == stop:
                    self.cl = dest
                    return self._fail("no destination available: all destinations are overloaded")
            pos = HEAD
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == HEAD:
                    self.cl = None
                    return self._fail("no destination available: all destinations are overloaded")
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != HEAD:
                stop = last

    def state(self) -> dict[str, object]:
        return {"cl": self.cl.label() if self.cl else "head", "cw": self.cw, "mw": self.mw, "di": self.di}


def _index(dests: list[Dest], dest: Dest) -> int:
    for i, d in enumerate(dests):
        if d is dest:
            return i
    raise LookupError("scheduler pointer is not in the destination list")
