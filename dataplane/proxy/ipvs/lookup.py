"""O(1) virtual-service lookup compiled with numba: (protocol, VIP, port) -> service index.

The kernel finds a service by hashing <proto, addr, port> into a fixed 256-bucket chained table
(ip_vs_ctl.c `ip_vs_svc_hashkey()`, IP_VS_SVC_TAB_BITS 8), so its chains grow with the number of
services. Here an open-addressing table (linear probing, load factor <= 1/4, power-of-two size) keeps
the expected probe count constant at any scale: the "IPVS is O(1)" half of the iptables-vs-IPVS
comparison, measured by benchmarks/ipvs_lookup.py.

Each slot is one 32-byte row of 4 uint64, two rows per 64-byte-aligned cache line, and probing compares a
whole line at a time without data-dependent branches, so the cost does not depend on which services
are busy (branch prediction would otherwise favour small tables). k0 = proto << 56 |
v6 << 48 | port << 32 | IPv4 address (0 for IPv6), k1/k2 = the IPv6 address halves, and a state
word: service index + 1 (bits 32..63, 0 = empty), the number of real servers (bits 16..31) and the
rr pointer (bits 0..15). `decide_batch` is the kube-proxy default decision for a new connection: rr
over real servers that all have weight 1 (`ip_vs_rr_schedule()` with every dest usable is a plain
rotation starting at the first), reading and writing only that row.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import numba
import numpy as np

from dataplane.engine.types import IPAddress



def pack_key(proto: int, addr: IPAddress, port: int) -> tuple[int, int, int]:
    """The three 64-bit words of a service key."""
    if addr.version == 4:
        return (proto << 56) | (port << 32) | int(addr), 0, 0
    value = int(addr)
    return (proto << 56) | (1 << 48) | (port << 32), value >> 64, value & 0xFFFFFFFFFFFFFFFF


@numba.njit(inline="always")
def _mix(k0: np.uint64, k1: np.uint64, k2: np.uint64) -> np.uint64:
    """splitmix64 finaliser over the combined key words."""
    x = k0 ^ (k1 * np.uint64(0x9E3779B97F4A7C15)) ^ (k2 * np.uint64(0xC2B2AE3D27D4EB4F))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


ROW = 4  # uint64 words per slot: 32 bytes
K0, K1, K2, STATE = range(4)
MAX_DESTS = 0xFFFF


HUGE_PAGE = 2 << 20


def _aligned_rows(cap: int) -> np.ndarray:
    """Zeroed rows, 64-byte aligned (a pair of rows per cache line). Tables of 2 MiB or more get transparent huge pages
    (madvise(MADV_HUGEPAGE) on a 2 MiB-aligned anonymous mapping), as the kernel's own tables live in
    its huge-page direct map: without them a table spread over thousands of 4 KiB pages costs a
    TLB miss per lookup."""
    nbytes = cap * ROW * 8
    if nbytes >= HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        area = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        raw = np.frombuffer(area, dtype=np.uint8)
        start = -raw.ctypes.data % HUGE_PAGE
        try:
            area.madvise(mmap.MADV_HUGEPAGE, start, nbytes)
        except OSError:
            pass  # THP disabled: still correct, just slower
        return raw[start:start + nbytes].view(np.uint64).reshape(cap, ROW)
    raw = np.zeros(cap * ROW + 8, dtype=np.uint64)
    skip = (-raw.ctypes.data % 64) // 8  # rows 2k and 2k+1 share one 64-byte line
    return raw[skip:skip + cap * ROW].reshape(cap, ROW)


@numba.njit(cache=False)
def _build(keys: np.ndarray, dest_count: np.ndarray, table: np.ndarray) -> bool:
    mask = np.uint64(table.shape[0] - 1)
    for i in range(keys.shape[0]):
        k0, k1, k2 = keys[i, 0], keys[i, 1], keys[i, 2]
        slot = _mix(k0, k1, k2) & mask & ~np.uint64(1)  # probing starts at a cache line's first row
        while table[slot, STATE] != 0:
            if table[slot, K0] == k0 and table[slot, K1] == k1 and table[slot, K2] == k2:
                return False  # duplicate key
            slot = (slot + np.uint64(1)) & mask
        table[slot, K0] = k0
        table[slot, K1] = k1
        table[slot, K2] = k2
        n = np.uint64(dest_count[i])
        last = n - np.uint64(1) if n > 0 else np.uint64(0)  # the list head: next pick is the first
        table[slot, STATE] = (np.uint64(i + 1) << np.uint64(32)) | (n << np.uint64(16)) | last
    return True


@numba.njit(inline="always")
def _probe(table: np.ndarray, k0: np.uint64, k1: np.uint64, k2: np.uint64) -> np.int64:
    """The slot holding the key, or -1. Linear probing a cache line (two rows) at a time: both rows
    are compared with bitwise, branch-free arithmetic, so a hit in the first line (nearly every
    lookup at load factor <= 1/4) costs no data-dependent branch. A line holding an empty row ends
    the search: with inserts only, every row a key probed past was already taken."""
    mask = np.uint64(table.shape[0] - 1)
    slot = _mix(k0, k1, k2) & mask & ~np.uint64(1)
    while True:
        nxt = slot + np.uint64(1)
        a0, a1 = table[slot, K0], table[nxt, K0]
        d0 = (a0 ^ k0) | (table[slot, K1] ^ k1) | (table[slot, K2] ^ k2)  # 0: row 0 holds the key
        d1 = (a1 ^ k0) | (table[nxt, K1] ^ k1) | (table[nxt, K2] ^ k2)
        if (d0 == 0) | (d1 == 0):
            return np.int64(slot + np.uint64(d0 != 0))
        if (a0 == 0) | (a1 == 0):  # k0 of a key is never 0 (the protocol is in its top byte)
            return np.int64(-1)
        slot = (slot + np.uint64(2)) & mask


@numba.njit(cache=False)
def lookup_batch(table: np.ndarray, queries: np.ndarray, out: np.ndarray) -> None:
    """out[i] = service index of queries[i] (rows of k0, k1, k2), or -1."""
    for i in range(queries.shape[0]):
        slot = _probe(table, queries[i, 0], queries[i, 1], queries[i, 2])
        out[i] = -1 if slot < 0 else np.int64(table[slot, STATE] >> np.uint64(32)) - 1


@numba.njit(cache=False)
def probe_lengths(table: np.ndarray, queries: np.ndarray) -> float:
    """Mean rows from the probe start to the key: the algorithmic cost, independent of caches
    (rows 1 and 2 share one cache line and one comparison step)."""
    mask = np.uint64(table.shape[0] - 1)
    total = 0
    for i in range(queries.shape[0]):
        k0, k1, k2 = queries[i, 0], queries[i, 1], queries[i, 2]
        slot = _mix(k0, k1, k2) & mask & ~np.uint64(1)
        total += 1
        while table[slot, STATE] != 0 and not (table[slot, K0] == k0 and table[slot, K1] == k1
                                               and table[slot, K2] == k2):
            slot = (slot + np.uint64(1)) & mask
            total += 1
    return total / max(1, queries.shape[0])


@numba.njit(cache=False)
def decide_batch(table: np.ndarray, queries: np.ndarray, out_svc: np.ndarray, out_pos: np.ndarray) -> None:
    """For each new connection: its service index (-1: none) and the chosen real server's position
    in that service's list (-1: no real server, the ICMP port-unreachable case)."""
    for i in range(queries.shape[0]):
        slot = _probe(table, queries[i, 0], queries[i, 1], queries[i, 2])
        if slot < 0:
            out_svc[i] = -1
            out_pos[i] = -1
            continue
        state = table[slot, STATE]
        out_svc[i] = np.int64(state >> np.uint64(32)) - 1
        count = (state >> np.uint64(16)) & np.uint64(0xFFFF)
        if count == 0:
            out_pos[i] = -1
            continue
        pos = (state & np.uint64(0xFFFF)) + np.uint64(1)
        if pos >= count:
            pos = np.uint64(0)
        table[slot, STATE] = (state & ~np.uint64(0xFFFF)) | pos
        out_pos[i] = np.int64(pos)


class ServiceIndex:
    """The compiled table for a fixed set of services (rebuilt on change, like a proxy sync).

    `dest_counts[i]` is the number of (weight-1) real servers of service i, at most 65535."""

    def __init__(self, keys: Sequence[tuple[int, IPAddress, int]], dest_counts: Sequence[int] | None = None) -> None:
        packed = self.queries(keys)
        counts = np.asarray(dest_counts if dest_counts is not None else [0] * len(keys), dtype=np.int64)
        if counts.shape[0] != len(keys) or (counts < 0).any() or (counts > MAX_DESTS).any():
            raise ValueError(f"dest_counts must give one count in 0..{MAX_DESTS} per service")
        cap = 8
        while cap < 4 * len(keys):
            cap *= 2
        self.table = _aligned_rows(cap)
        if not _build(packed, counts, self.table):
            raise ValueError("duplicate (protocol, address, port) in the service keys")
        self.size = len(keys)

    @staticmethod
    def queries(keys: Sequence[tuple[int, IPAddress, int]]) -> np.ndarray:
        return np.array([pack_key(p, a, port) for p, a, port in keys], dtype=np.uint64).reshape(-1, 3)

    def lookup(self, proto: int, addr: IPAddress, port: int) -> int:
        return int(self.lookup_many([(proto, addr, port)])[0])

    def lookup_many(self, keys: Sequence[tuple[int, IPAddress, int]]) -> np.ndarray:
        q = self.queries(keys)
        out = np.empty(q.shape[0], dtype=np.int64)
        lookup_batch(self.table, q, out)
        return out

    def decide(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(service index, real-server position) per query; see `decide_batch`."""
        svc = np.empty(queries.shape[0], dtype=np.int64)
        pos = np.empty(queries.shape[0], dtype=np.int64)
        decide_batch(self.table, queries, svc, pos)
        return svc, pos
