"""Hash-table schedulers: the dest is a function of an address, through a bucket table.

- sh: net/netfilter/ipvs/ip_vs_sh.c. `ip_vs_sh_reassign()` fills 256 buckets
      (CONFIG_IP_VS_SH_TAB_BITS = 8) round robin over the list, each dest repeated `weight` times
      (a weight-0 dest still takes one bucket: `++d_count >= weight` moves on after one).
      `ip_vs_sh_hashkey()` = `(offset + hash_32(ntohs(port) + ntohl(addr_fold), 8)) & 255`, keyed on
      the source address, plus the source port with `sh-port` (IP_VS_SVC_F_SCHED2).
      `ip_vs_sh_get()` returns nothing for a weight <= 0 or overloaded dest; with `sh-fallback`
      (IP_VS_SVC_F_SCHED1) `ip_vs_sh_get_fallback()` probes `roffset = (i + ihash) % 256` for
      i = 0..255, each hashed again as `(roffset + hash_32(...)) & 255`, stopping at an empty bucket.
- dh: ip_vs_dh.c. `ip_vs_dh_reassign()` gives each dest one bucket in turn (weights ignored);
      `ip_vs_dh_hashkey()` = `hash_32(ntohl(addr_fold), 8)` of the destination address;
      `ip_vs_dh_schedule()` refuses unavailable, weight <= 0 or overloaded dests.
"""

from __future__ import annotations

from dataplane.engine.types import IPAddress
from dataplane.proxy.ipvs.dest import Dest
from dataplane.proxy.ipvs.hashing import addr_fold, hash_32
from dataplane.proxy.ipvs.sched.base import SVC_F_SCHED1, SVC_F_SCHED2, Flow, SchedService, Scheduler

PORTED_PROTOS = {6, 17, 132}  # ip_vs_sh_get_port(): TCP, UDP, SCTP


class _BucketScheduler(Scheduler):
    def __init__(self, tab_bits: int = 8) -> None:
        super().__init__()
        if not 1 <= tab_bits <= 20:
            raise ValueError(f"table bits must be 1..20, got {tab_bits}")
        self.tab_bits = tab_bits
        self.tab_size = 1 << tab_bits
        self.buckets: list[Dest | None] = [None] * self.tab_size

    def _reassign(self, svc: SchedService) -> None:
        raise NotImplementedError

    def _rebuild(self, svc: SchedService) -> None:
        self._state: dict[str, object] | None = None  # the table changes only here
        self._reassign(svc)

    def init_service(self, svc: SchedService) -> None:
        self._rebuild(svc)

    def add_dest(self, svc: SchedService, dest: Dest) -> None:
        self._rebuild(svc)

    def del_dest(self, svc: SchedService, dest: Dest, index: int) -> None:
        self._rebuild(svc)

    def upd_dest(self, svc: SchedService, dest: Dest) -> None:
        self._rebuild(svc)

    def state(self) -> dict[str, object]:
        """Buckets per dest. Computed once per table (traces ask for it on every packet)."""
        if getattr(self, "_state", None) is None:
            counts: dict[str, int] = {}
            for d in self.buckets:
                if d is not None:
                    counts[d.label()] = counts.get(d.label(), 0) + 1
            self._state = {"buckets": self.tab_size, "per_dest": counts}
        return self._state  # type: ignore[return-value]


def _unavailable(dest: Dest) -> bool:
    return dest.weight <= 0 or dest.overloaded


class SourceHash(_BucketScheduler):
    name = "sh"

    def _reassign(self, svc: SchedService) -> None:
        dests = svc.destinations
        if not dests:
            self.buckets = [None] * self.tab_size
            return
        out: list[Dest | None] = []
        p, d_count = 0, 0
        for _ in range(self.tab_size):
            dest = dests[p]
            out.append(dest)
            d_count += 1
            if d_count >= dest.weight:
                p = (p + 1) % len(dests)
                d_count = 0
        self.buckets = out

    def hashkey(self, addr: IPAddress, port: int, offset: int) -> int:
        mask = self.tab_size - 1
        return (offset + hash_32((port + addr_fold(addr)) & 0xFFFFFFFF, self.tab_bits)) & mask

    def lookup(self, svc: SchedService, addr: IPAddress, port: int) -> Dest | None:
        ihash = self.hashkey(addr, port, 0)
        dest = self.buckets[ihash]
        if dest is None:
            return None
        if not _unavailable(dest):
            return dest
        if not svc.flags & SVC_F_SCHED1:
            return None
        for offset in range(self.tab_size):
            roffset = (offset + ihash) % self.tab_size
            dest = self.buckets[self.hashkey(addr, port, roffset)]
            if dest is None:
                break
            if not _unavailable(dest):
                return dest
        return None

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        port = flow.sport if svc.flags & SVC_F_SCHED2 and flow.proto in PORTED_PROTOS else 0
        dest = self.lookup(svc, flow.saddr, port)
        return dest if dest is not None else self._fail()


class DestinationHash(_BucketScheduler):
    name = "dh"

    def _reassign(self, svc: SchedService) -> None:
        dests = svc.destinations
        self.buckets = [dests[i % len(dests)] for i in range(self.tab_size)] if dests else [None] * self.tab_size

    def hashkey(self, addr: IPAddress) -> int:
        return hash_32(addr_fold(addr), self.tab_bits)

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        dest = self.buckets[self.hashkey(flow.daddr)]
        if dest is None or not dest.available or _unavailable(dest):
            return self._fail()
        return dest
