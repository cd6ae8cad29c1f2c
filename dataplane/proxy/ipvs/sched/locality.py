"""Locality-based least-connection: net/netfilter/ipvs/ip_vs_lblc.c and ip_vs_lblcr.c.

Both cache "destination address -> real server(s)" in a 1024-bucket table
(CONFIG_IP_VS_LBLC[R]_TAB_BITS = 10, `hash_32(ntohl(addr_fold), 10)`, new entries at the bucket
head) and fall back to a weighted-least-connection pick (`__ip_vs_lblc[r]_schedule()`: skip
OVERLOAD, seed with the first weight > 0, then `loh * w_d > doh * w_least`).

- lblc `ip_vs_lblc_schedule()`: use the cached server unless it is unavailable, has weight 0, or
  `is_overloaded()` (activeconns > weight while some server has activeconns * 2 < weight); then
  pick and replace the entry (`ip_vs_lblc_new()`).
- lblcr `ip_vs_lblcr_schedule()`: the entry holds a server set; use its weighted least-loaded
  member (`ip_vs_dest_set_min()`); when the set has more than one member and was not modified for
  `lblcr_expiration` (24 h), drop its most-loaded one (`ip_vs_dest_set_max()`); if the chosen member
  is overloaded, pick one from the whole service and add it to the set.
- The garbage-collection timer (`ip_vs_lblc[r]_check_expire()`) runs every 60 s: every 30th run
  drops entries idle for `expiration` (24 h); otherwise, only above 16 x 1024 entries, it drops
  entries idle >= 6 min, bucket by bucket from the rover, until (entries - max) * 4/3 are gone.
  The timer's phase starts at the first scheduled packet (the kernel's at service creation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dataplane.engine.types import IPAddress
from dataplane.proxy.ipvs.dest import Dest
from dataplane.proxy.ipvs.hashing import addr_fold, hash_32
from dataplane.proxy.ipvs.sched.base import Flow, SchedService, Scheduler

TAB_BITS = 10
CHECK_EXPIRE_INTERVAL = 60
ENTRY_TIMEOUT = 6 * 60
DEFAULT_EXPIRATION = 24 * 60 * 60
COUNT_FOR_FULL_EXPIRATION = 30


@dataclass(eq=False)
class CacheEntry:
    addr: IPAddress
    lastuse: float
    dest: Dest | None = None  # lblc
    dests: list[Dest] = field(default_factory=list)  # lblcr: the set, newest first
    lastmod: float = 0.0  # lblcr: set last modified


def wlc_pick(svc: SchedService) -> Dest | None:
    """`__ip_vs_lblc_schedule()` / `__ip_vs_lblcr_schedule()`."""
    dests = svc.destinations
    for start, dest in enumerate(dests):
        if not dest.overloaded and dest.weight > 0:
            break
    else:
        return None
    least, loh = dest, dest.conn_overhead
    for dest in dests[start + 1:]:
        if dest.overloaded:
            continue
        doh = dest.conn_overhead
        if loh * dest.weight > doh * least.weight:
            least, loh = dest, doh
    return least


def is_overloaded(dest: Dest, svc: SchedService) -> bool:
    """lblc/lblcr `is_overloaded()`: busier than its weight while another server is under half."""
    if dest.activeconns > dest.weight:
        return any(d.activeconns * 2 < d.weight for d in svc.destinations)
    return False


class _LocalityTable(Scheduler):
    def __init__(self, expiration: int = DEFAULT_EXPIRATION) -> None:
        super().__init__()
        self.expiration = expiration
        self.size = 1 << TAB_BITS
        self.buckets: list[list[CacheEntry]] = [[] for _ in range(self.size)]
        self.entries = 0
        self.max_size = self.size * 16
        self.rover = 0
        self.counter = 1
        self.next_tick: float | None = None

    def init_service(self, svc: SchedService) -> None:
        self.buckets = [[] for _ in range(self.size)]
        self.entries, self.rover, self.counter, self.next_tick = 0, 0, 1, None

    def _bucket(self, addr: IPAddress) -> list[CacheEntry]:
        return self.buckets[hash_32(addr_fold(addr), TAB_BITS)]

    def get(self, addr: IPAddress) -> CacheEntry | None:
        for en in self._bucket(addr):
            if en.addr == addr:
                return en
        return None

    def _hash(self, en: CacheEntry) -> None:
        self._bucket(en.addr).insert(0, en)
        self.entries += 1

    def _delete(self, en: CacheEntry) -> None:
        self._bucket(en.addr).remove(en)
        self.entries -= 1

    def _sweep(self, keep: Callable[[CacheEntry], bool], goal: int | None) -> None:
        """Walk the buckets from the rover (full check: all of them; GC: until `goal` is met)."""
        j = self.rover
        for _ in range(self.size):
            j = (j + 1) & (self.size - 1)
            for en in list(self.buckets[j]):
                if keep(en):
                    continue
                self.buckets[j].remove(en)
                self.entries -= 1
                if goal is not None:
                    goal -= 1
            if goal is not None and goal <= 0:
                break
        self.rover = j

    def run_timers(self, now: float) -> None:
        """`ip_vs_lblc[r]_check_expire()` for every 60 s tick up to `now`."""
        if self.next_tick is None:
            self.next_tick = now + CHECK_EXPIRE_INTERVAL
            return
        while self.next_tick <= now:
            t = self.next_tick
            if self.counter % COUNT_FOR_FULL_EXPIRATION == 0:
                self._sweep(lambda en, t=t: t < en.lastuse + self.expiration, None)
                self.counter = 1
            elif self.entries <= self.max_size:
                self.counter += 1
            else:
                goal = min((self.entries - self.max_size) * 4 // 3, self.max_size // 2)
                self._sweep(lambda en, t=t: t < en.lastuse + ENTRY_TIMEOUT, goal)
            self.next_tick = t + CHECK_EXPIRE_INTERVAL

    def state(self) -> dict[str, object]:
        return {"entries": self.entries, "counter": self.counter}


class LocalityLeastConnection(_LocalityTable):
    name = "lblc"

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        self.run_timers(flow.now)
        en = self.get(flow.daddr)
        if en is not None:
            en.lastuse = flow.now
            dest = en.dest
            if dest is not None and dest.available and dest.weight > 0 and not is_overloaded(dest, svc):
                return dest
        dest = wlc_pick(svc)
        if dest is None:
            return self._fail()
        if en is not None:
            if en.dest is dest:
                return dest
            self._delete(en)  # ip_vs_lblc_new(): replace a stale mapping
        self._hash(CacheEntry(flow.daddr, flow.now, dest=dest))
        return dest


class LocalityLeastConnectionReplicated(_LocalityTable):
    name = "lblcr"

    @staticmethod
    def set_min(dests: list[Dest]) -> Dest | None:
        """`ip_vs_dest_set_min()`."""
        for start, least in enumerate(dests):
            if least.overloaded:
                continue
            if least.weight > 0 and least.available:
                break
        else:
            return None
        loh = least.conn_overhead
        for dest in dests[start + 1:]:
            if dest.overloaded:
                continue
            doh = dest.conn_overhead
            if loh * dest.weight > doh * least.weight and dest.available:
                least, loh = dest, doh
        return least

    @staticmethod
    def set_max(dests: list[Dest]) -> Dest | None:
        """`ip_vs_dest_set_max()`."""
        for start, most in enumerate(dests):
            if most.weight > 0:
                break
        else:
            return None
        moh = most.conn_overhead
        for dest in dests[start + 1:]:
            doh = dest.conn_overhead
            if moh * dest.weight < doh * most.weight and dest.weight > 0:
                most, moh = dest, doh
        return most

    @staticmethod
    def _insert(en: CacheEntry, dest: Dest, now: float) -> None:
        """`ip_vs_dest_set_insert(..., check=true)`: at the head, unless already a member."""
        if any(d is dest for d in en.dests):
            return
        en.dests.insert(0, dest)
        en.lastmod = now

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        self.run_timers(flow.now)
        en = self.get(flow.daddr)
        if en is not None:
            en.lastuse = flow.now
            dest = self.set_min(en.dests)
            if len(en.dests) > 1 and flow.now > en.lastmod + self.expiration:
                most = self.set_max(en.dests)
                if most is not None:
                    en.dests.remove(most)
                    en.lastmod = flow.now
            if dest is not None and not is_overloaded(dest, svc):
                return dest
            dest = wlc_pick(svc)
            if dest is None:
                return self._fail()
            self._insert(en, dest, flow.now)
            return dest
        dest = wlc_pick(svc)
        if dest is None:
            return self._fail()
        new = CacheEntry(flow.daddr, flow.now, dests=[dest], lastmod=flow.now)
        self._hash(new)
        return dest
