"""Maglev hashing: net/netfilter/ipvs/ip_vs_mh.c (Eisenbud et al., NSDI'16 section 3.4).

- Table size M = `primes[CONFIG_IP_VS_MH_TAB_INDEX - 8]` from {251, 509, 1021, 2039, 4093, 8191,
  16381, 32749, 65521, 131071}; the Kconfig default index 12 gives **4093** (index 8 gives 251).
- `generate_hash_secret()`: fixed keys hash1 = {2654435761, 2654435761},
  hash2 = {2654446892, 2654446892}, so every node builds the same table.
- `ip_vs_mh_hashkey()` = `hsiphash(offset + ntohs(port) + ntohl(addr_fold), key)`.
- `ip_vs_mh_permutate()`: per dest (list order) `offset = h1(dest) % M`,
  `skip = h2(dest) % (M - 1) + 1`, `turns = ((last_weight / gcd) >> rshift) ?: (last_weight != 0)`.
- `ip_vs_mh_shift_weight()`: `rshift = max(0, fls(max_last_weight / gcd) - CONFIG_INDEX / 2)`.
- `ip_vs_mh_populate()`: dests take turns (a dest with `turns` = t claims t slots in a row) walking
  their permutation to the next free slot, until all M slots are filled. Zero-turn dests are
  skipped. Weights are `last_weight`, so a quiesced (weight 0) dest keeps its slots and lookups
  that land on them find it unavailable (or fall back with `mh-fallback`).
- `ip_vs_mh_get()` hashes the source address (+ source port with `mh-port`, IP_VS_SVC_F_SCHED2,
  which kube-proxy sets for mh); `ip_vs_mh_get_fallback()` (IP_VS_SVC_F_SCHED1) re-hashes with
  offsets `(i + ihash) % M`.
"""

from __future__ import annotations

from math import gcd

from dataplane.engine.types import IPAddress
from dataplane.proxy.ipvs.dest import Dest
from dataplane.proxy.ipvs.hashing import addr_fold, hsiphash_u32
from dataplane.proxy.ipvs.sched.base import SVC_F_SCHED1, SVC_F_SCHED2, Flow, SchedService, Scheduler
from dataplane.proxy.ipvs.sched.hashing_sched import PORTED_PROTOS

PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_TAB_INDEX = 12  # CONFIG_IP_VS_MH_TAB_INDEX default (net/netfilter/ipvs/Kconfig)
HASH1 = (2654435761, 2654435761)
HASH2 = (2654446892, 2654446892)


def _fls(x: int) -> int:
    return x.bit_length()


class Maglev(Scheduler):
    name = "mh"

    def __init__(self, tab_index: int = DEFAULT_TAB_INDEX) -> None:
        super().__init__()
        if not 8 <= tab_index <= 17:
            raise ValueError(f"CONFIG_IP_VS_MH_TAB_INDEX must be 8..17, got {tab_index}")
        self.tab_index = tab_index
        self.size = PRIMES[tab_index - 8]
        self.tab_bits = tab_index // 2
        self.lookup_table: list[Dest | None] = [None] * self.size
        self.gcd = 0
        self.rshift = 0

    def hashkey(self, addr: IPAddress, port: int, key: tuple[int, int], offset: int) -> int:
        return hsiphash_u32((offset + port + addr_fold(addr)) & 0xFFFFFFFF, key)

    def _reassign(self, svc: SchedService) -> None:
        self._state: dict[str, object] | None = None  # the table changes only here
        dests = svc.destinations
        if len(dests) > self.size:
            raise ValueError(f"mh: {len(dests)} destinations exceed the table size {self.size} (EINVAL)")
        g = 0
        for d in dests:
            if d.last_weight > 0:
                g = gcd(d.last_weight, g) if g > 0 else d.last_weight
        self.gcd = g
        if g < 1:
            self.rshift = 0
            self.lookup_table = [None] * self.size
            return
        mw = max(d.last_weight for d in dests) // g
        self.rshift = max(0, _fls(mw) - self.tab_bits)
        m = self.size
        setup = []
        for d in dests:
            offset = self.hashkey(d.addr, d.port, HASH1, 0) % m
            skip = self.hashkey(d.addr, d.port, HASH2, 0) % (m - 1) + 1
            lw = d.last_weight
            turns = ((lw // g) >> self.rshift) or int(lw != 0)
            setup.append([offset, skip, turns])  # perm starts at offset
        table = self.lookup_table  # updated in place, as the kernel does
        used = bytearray(m)
        n = dt_count = 0
        while n < m:
            i = 0
            while i < len(dests):
                perm, skip, turns = setup[i]
                if turns < 1:
                    i += 1
                    continue
                c = perm
                while used[c]:
                    perm += skip
                    if perm >= m:
                        perm -= m
                    c = perm
                setup[i][0] = perm
                used[c] = 1
                table[c] = dests[i]
                n += 1
                if n == m:
                    return
                dt_count += 1
                if dt_count >= turns:
                    dt_count = 0
                    i += 1

    init_service = _reassign

    def add_dest(self, svc: SchedService, dest: Dest) -> None:
        self._reassign(svc)

    def del_dest(self, svc: SchedService, dest: Dest, index: int) -> None:
        self._reassign(svc)

    def upd_dest(self, svc: SchedService, dest: Dest) -> None:
        self._reassign(svc)

    def lookup(self, svc: SchedService, addr: IPAddress, port: int) -> Dest | None:
        ihash = self.hashkey(addr, port, HASH1, 0) % self.size
        dest = self.lookup_table[ihash]
        if dest is None:
            return None
        if not (dest.weight <= 0 or dest.overloaded):
            return dest
        if not svc.flags & SVC_F_SCHED1:
            return None
        for offset in range(self.size):
            roffset = (offset + ihash) % self.size
            dest = self.lookup_table[self.hashkey(addr, port, HASH1, roffset) % self.size]
            if dest is None:
                break
            if not (dest.weight <= 0 or dest.overloaded):
                return dest
        return None

    def schedule(self, svc: SchedService, flow: Flow) -> Dest | None:
        port = flow.sport if svc.flags & SVC_F_SCHED2 and flow.proto in PORTED_PROTOS else 0
        dest = self.lookup(svc, flow.saddr, port)
        return dest if dest is not None else self._fail()

    def state(self) -> dict[str, object]:
        """Entries per dest. Computed once per table (traces ask for it on every packet)."""
        if getattr(self, "_state", None) is None:
            counts: dict[str, int] = {}
            for d in self.lookup_table:
                if d is not None:
                    counts[d.label()] = counts.get(d.label(), 0) + 1
            self._state = {"table_size": self.size, "gcd": self.gcd, "rshift": self.rshift, "per_dest": counts}
        return self._state  # type: ignore[return-value]
