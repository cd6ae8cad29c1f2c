"""Least-connection family, each a single pass over the list in kernel order.

- lc:  net/netfilter/ipvs/ip_vs_lc.c `ip_vs_lc_schedule()`: least `ip_vs_dest_conn_overhead()`
       (= activeconns * 256 + inactconns), skipping overloaded and weight == 0; strict `<`, so
       the first of equals (in list order) wins.
- wlc: ip_vs_wlc.c `ip_vs_wlc_schedule()`: the first usable dest seeds `least`; later dests
       (only overloaded ones skipped) win when `loh * w_dest > doh * w_least` (no division in the
       kernel). A weight-0 dest can never win that comparison.
- sed: ip_vs_sed.c `ip_vs_sed_schedule()`: as wlc with overhead = activeconns + 1.
- nq:  ip_vs_nq.c `ip_vs_nq_schedule()`: the first usable dest with activeconns == 0 is taken at
       once; otherwise as sed (weight == 0 and overloaded skipped).
"""

from __future__ import annotations

from dataplane.proxy.ipvs.dest import Dest
from dataplane.proxy.ipvs.sched.base import Flow, SchedService, Scheduler, usable


class LeastConnection(Scheduler):
    name = "lc"

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        least: Dest | None = None
        loh = 0
        for dest in svc.destinations:
            if dest.overloaded or dest.weight == 0:
                continue
            doh = dest.conn_overhead
            if least is None or doh < loh:
                least, loh = dest, doh
        return least if least is not None else self._fail()


class _WeightedLeast(Scheduler):
    """The wlc/sed shape: seed with the first usable dest, then cross-multiplied comparisons."""

    @staticmethod
    def overhead(dest: Dest) -> int:
        raise NotImplementedError

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        dests = svc.destinations
        for start, dest in enumerate(dests):
            if usable(dest):
                break
        else:
            return self._fail()
        least, loh = dest, self.overhead(dest)
        for dest in dests[start + 1:]:
            if dest.overloaded:
                continue
            doh = self.overhead(dest)
            if loh * dest.weight > doh * least.weight:
                least, loh = dest, doh
        return least


class WeightedLeastConnection(_WeightedLeast):
    name = "wlc"

    @staticmethod
    def overhead(dest: Dest) -> int:
        return dest.conn_overhead


class ShortestExpectedDelay(_WeightedLeast):
    name = "sed"

    @staticmethod
    def overhead(dest: Dest) -> int:
        """ip_vs_sed.c `ip_vs_sed_dest_overhead()`: only active connections, plus the new one."""
        return dest.activeconns + 1


class NeverQueue(Scheduler):
    name = "nq"

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        least: Dest | None = None
        loh = 0
        for dest in svc.destinations:
            if dest.overloaded or not dest.weight:
                continue
            doh = dest.activeconns + 1  # ip_vs_nq_dest_overhead()
            if dest.activeconns == 0:
                return dest
            if least is None or loh * dest.weight > doh * least.weight:
                least, loh = dest, doh
        return least if least is not None else self._fail()
