"""xt_recent's lists: per-name tables of recently seen addresses with time stamps.

Follows net/netfilter/xt_recent.c: at most `ip_list_tot` (100) addresses per list with LRU
eviction, a ring of `ip_pkt_list_tot` (20) stamps per address, the list's mask fixed by the first
rule that names it, and --rcheck/--update/--reap/--hitcount/--rttl exactly as `recent_mt` does.
Time comes from the caller (an injectable clock), in seconds.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

IP_LIST_TOT = 100
IP_PKT_LIST_TOT = 20


@dataclass
class RecentEntry:
    family: int
    addr: int
    ttl: int
    stamps: list[float] = field(default_factory=list)  # ring of IP_PKT_LIST_TOT
    index: int = 0  # next slot (the kernel's e->index, 1-based after the first stamp)

    def newest(self) -> float:
        return self.stamps[self.index - 1]


@dataclass
class RecentList:
    name: str
    mask4: int = 0xFFFFFFFF
    mask6: int = (1 << 128) - 1
    entries: "OrderedDict[tuple[int, int], RecentEntry]" = field(default_factory=OrderedDict)  # LRU first

    def mask(self, family: int) -> int:
        return self.mask4 if family == 4 else self.mask6


class RecentTables:
    """All `--name` lists of one network namespace."""

    def __init__(self, ip_list_tot: int = IP_LIST_TOT, ip_pkt_list_tot: int = IP_PKT_LIST_TOT) -> None:
        self.ip_list_tot = ip_list_tot
        self.ip_pkt_list_tot = ip_pkt_list_tot
        self.lists: dict[str, RecentList] = {}

    def register(self, name: str, family: int, mask: int | None) -> RecentList:
        """A rule naming the list was loaded: the first one fixes the list's mask (recent_mt_check)."""
        lst = self.lists.get(name)
        if lst is None:
            lst = RecentList(name)
            if mask is not None:
                if family == 4:
                    lst.mask4 = mask
                else:
                    lst.mask6 = mask
            self.lists[name] = lst
        return lst

    def snapshot(self) -> dict[str, list[tuple[tuple[int, int], RecentEntry]]]:
        return {n: [(k, RecentEntry(e.family, e.addr, e.ttl, list(e.stamps), e.index))
                    for k, e in lst.entries.items()] for n, lst in self.lists.items()}

    def restore(self, snap: dict[str, list[tuple[tuple[int, int], RecentEntry]]]) -> None:
        for n, lst in self.lists.items():
            lst.entries = OrderedDict(snap.get(n, []))

    def addresses(self, name: str) -> list[int]:
        lst = self.lists.get(name)
        return [e.addr for e in lst.entries.values()] if lst else []

    # ---- recent_mt
    def match(self, *, name: str, mode: str, family: int, addr: int, ttl: int, now: float,
              seconds: int = 0, hitcount: int = 0, reap: bool = False, rttl: bool = False,
              invert: bool = False) -> bool:
        lst = self.lists.get(name) or self.register(name, family, None)
        key = (family, addr & lst.mask(family))
        ret = invert
        e = lst.entries.get(key)
        if e is not None and rttl and e.ttl != ttl and e.ttl != 0 and ttl != 0:
            e = None
        if e is None:
            if mode != "set":
                return ret
            self._init(lst, key, family, ttl, now)
            return not ret
        if mode == "set":
            ret = not ret
        elif mode == "remove":
            del lst.entries[key]
            return not ret
        else:  # rcheck / update
            horizon = now - seconds
            hits = 0
            for stamp in e.stamps:
                if seconds and stamp < horizon:  # time_after(time, stamp)
                    continue
                hits += 1
                if not hitcount or hits >= hitcount:
                    ret = not ret
                    break
            if reap:
                self._reap(lst, horizon, e, mode == "update" and ret)
        if mode == "set" or (mode == "update" and ret):
            self._update(lst, key, e, now)
            e.ttl = ttl
        return ret

    def _init(self, lst: RecentList, key: tuple[int, int], family: int, ttl: int, now: float) -> None:
        if len(lst.entries) >= self.ip_list_tot:
            lst.entries.popitem(last=False)
        lst.entries[key] = RecentEntry(family, key[1], ttl, [now], 1)

    def _update(self, lst: RecentList, key: tuple[int, int], e: RecentEntry, now: float) -> None:
        e.index %= self.ip_pkt_list_tot
        if e.index < len(e.stamps):
            e.stamps[e.index] = now
        else:
            e.stamps.append(now)
        e.index += 1
        if key in lst.entries:
            lst.entries.move_to_end(key)

    def _reap(self, lst: RecentList, horizon: float, working: RecentEntry, update: bool) -> None:
        """recent_entry_reap: drop the least recently used entry if its newest stamp is too old."""
        if not lst.entries:
            return
        key, oldest = next(iter(lst.entries.items()))
        if oldest is working and update:
            return
        if oldest.newest() < horizon:
            del lst.entries[key]
