"""The conntrack-hit fast path: established TCP/UDP packets looked up and NAT-rewritten in batches.

Most packets of a node belong to connections conntrack already knows; they skip every nat rule and
only need their tuple looked up and rewritten. `FlowCache.build` freezes the live ConntrackTable
into flat arrays (an open-addressing hash of both directions' tuples, each slot one cache line
holding the key and the translated tuple); `FlowCache.lookup` runs a numba kernel over a header
batch (packet.header_dtype columns) and returns, per packet, HIT / MISS / SLOW plus the rewritten
addresses and ports.

SLOW means the reference path must see the packet: a TCP segment carrying SYN, FIN or RST (the
state machine may move), a connection not yet ESTABLISHED or not yet replied to, or an expired
entry. That is the split real fast paths make (nf_flowtable offloads only established flows).
Hits record when they were seen; `refresh` writes that back as the kernel's timer refresh.
ICMP and other protocols always take the reference path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from dataplane.engine.conntrack import ConntrackTable, TcpState
from dataplane.engine.packet import TCP, UDP

MISS, HIT, SLOW = 0, 1, 2

# One hash slot = one 64-byte cache line of uint64 words:
#   0 src_hi  1 src_lo  2 dst_hi  3 dst_lo
#   4 key meta: family | proto << 8 | sport << 16 | dport << 32 | fast << 48 | used << 49
#   5 new src_lo  6 new dst_lo  7 new sport | new dport << 16 | entry << 32
# The new addresses' high halves (IPv6 only) live in a side array, read only for IPv6 hits.
_FAST, _USED = 1 << 48, 1 << 49


def _split(addr: object) -> tuple[int, int]:
    v = int(addr)  # type: ignore[call-overload]
    return v >> 64, v & 0xFFFF_FFFF_FFFF_FFFF


@numba.njit(cache=True, inline="always")
def _hash(fam, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport):  # type: ignore[no-untyped-def]
    h = (src_lo ^ (src_hi * np.uint64(31))) * np.uint64(0x9E3779B97F4A7C15)
    h ^= (dst_lo ^ (dst_hi * np.uint64(31))) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= ((np.uint64(sport) << np.uint64(16)) | np.uint64(dport) | (np.uint64(proto) << np.uint64(32))
          | (np.uint64(fam) << np.uint64(40))) * np.uint64(0x165667B19E3779F9)
    return h ^ (h >> np.uint64(29))


@numba.njit(cache=True)
def _lookup(fam, proto, flags, src_hi, src_lo, dst_hi, dst_lo, sport, dport,  # type: ignore[no-untyped-def]
            slots, hi, entries, now, o_status, o_entry, o_src_hi, o_src_lo, o_dst_hi, o_dst_lo,
            o_sport, o_dport):
    mask = np.uint64(slots.shape[0] - 1)
    fast_bit, used_bit, key_mask = np.uint64(1 << 48), np.uint64(1 << 49), np.uint64((1 << 48) - 1)
    for i in range(fam.shape[0]):
        o_src_hi[i], o_src_lo[i], o_dst_hi[i], o_dst_lo[i] = src_hi[i], src_lo[i], dst_hi[i], dst_lo[i]
        o_sport[i], o_dport[i] = sport[i], dport[i]
        o_entry[i] = -1
        p = proto[i]
        if p != 6 and p != 17:
            o_status[i] = 2
            continue
        key = (np.uint64(fam[i]) | (np.uint64(p) << np.uint64(8)) | (np.uint64(sport[i]) << np.uint64(16))
               | (np.uint64(dport[i]) << np.uint64(32)))
        slot = _hash(fam[i], p, src_hi[i], src_lo[i], dst_hi[i], dst_lo[i], sport[i], dport[i]) & mask
        status = 0
        while True:
            meta = slots[slot, 4]
            if meta & used_bit == 0:
                break
            if ((meta & key_mask) == key and slots[slot, 1] == src_lo[i] and slots[slot, 3] == dst_lo[i]
                    and slots[slot, 0] == src_hi[i] and slots[slot, 2] == dst_hi[i]):
                w7 = slots[slot, 7]
                e = np.int64(w7 >> np.uint64(32))
                if entries[e, 0] <= now or meta & fast_bit == 0 or (p == 6 and (flags[i] & 0x07) != 0):
                    status = 2
                else:
                    status = 1
                    entries[e, 1] = now
                    o_src_lo[i], o_dst_lo[i] = slots[slot, 5], slots[slot, 6]
                    if fam[i] == 6:
                        o_src_hi[i], o_dst_hi[i] = hi[slot, 0], hi[slot, 1]
                    o_sport[i] = np.uint16(w7 & np.uint64(0xFFFF))
                    o_dport[i] = np.uint16((w7 >> np.uint64(16)) & np.uint64(0xFFFF))
                o_entry[i] = e
                break
            slot = (slot + np.uint64(1)) & mask
        o_status[i] = status


@dataclass
class BatchResult:
    """Per packet: status (MISS/HIT/SLOW), the entry index (-1 on a miss) and the headers after NAT."""

    status: np.ndarray
    entry: np.ndarray
    headers: np.ndarray | None  # packet.header_dtype, rewritten where status == HIT


class FlowCache:
    """A frozen, array form of a ConntrackTable's TCP/UDP entries, for batch lookups."""

    def __init__(self, table: ConntrackTable, slots: int) -> None:
        self.table = table
        self.slots = np.zeros((slots, 8), np.uint64)
        self.hi = np.zeros((slots, 2), np.uint64)
        self.connections: list = []
        self.entries = np.zeros((0, 2), np.float64)  # per connection: expires, last seen by a hit

    @classmethod
    def build(cls, table: ConntrackTable, load: float = 0.25) -> "FlowCache":
        """Freeze the table's live TCP/UDP connections (both directions; load factor <= `load`)."""
        conns = [c for c in table.entries() if c.original.proto in (TCP, UDP)]
        size = 16
        while size * load < 2 * len(conns):
            size *= 2
        fc = cls(table, size)
        fc.connections = conns
        fc.entries = np.zeros((len(conns), 2), np.float64)
        fc.entries[:, 0] = [c.timeout_at for c in conns]
        fc.entries[:, 1] = -np.inf
        for idx, c in enumerate(conns):
            fast = "SEEN_REPLY" in c.status and (c.tcp_state is None or c.tcp_state is TcpState.ESTABLISHED)
            # a packet in one direction leaves with the inverse of the other direction's tuple
            fc._insert(idx, c.original, c.reply.invert(), fast)
            fc._insert(idx, c.reply, c.original.invert(), fast)
        return fc

    def _insert(self, idx: int, key, target, fast: bool) -> None:  # type: ignore[no-untyped-def]
        sh, sl = _split(key.src)
        dh, dl = _split(key.dst)
        mask = len(self.slots) - 1
        slot = int(_hash(np.uint8(key.family), np.uint8(key.proto), np.uint64(sh), np.uint64(sl),
                         np.uint64(dh), np.uint64(dl), np.uint16(key.sport), np.uint16(key.dport))) & mask
        while int(self.slots[slot, 4]) & _USED:
            slot = (slot + 1) & mask
        nsh, nsl = _split(target.src)
        ndh, ndl = _split(target.dst)
        meta = (key.family | key.proto << 8 | key.sport << 16 | key.dport << 32
                | (_FAST if fast else 0) | _USED)
        self.slots[slot] = [sh, sl, dh, dl, meta, nsl, ndl, target.sport | target.dport << 16 | idx << 32]
        self.hi[slot] = [nsh, ndh]

    def lookup(self, batch: np.ndarray, now: float | None = None) -> BatchResult:
        """Look up and rewrite a batch of headers (packet.header_dtype)."""
        now = self.table.clock.now() if now is None else now
        cols = {name: np.ascontiguousarray(batch[name]) for name in
                ("family", "proto", "tcp_flags", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport")}
        return self.lookup_columns(cols, now, batch)

    def lookup_columns(self, cols: dict[str, np.ndarray], now: float,
                       template: np.ndarray | None = None) -> BatchResult:
        """As `lookup`, on contiguous column arrays (what a benchmark times)."""
        n = len(cols["family"])
        status = np.empty(n, np.uint8)
        entry = np.empty(n, np.int32)
        out = {k: np.empty(n, np.uint64) for k in ("src_hi", "src_lo", "dst_hi", "dst_lo")}
        osport, odport = np.empty(n, np.uint16), np.empty(n, np.uint16)
        _lookup(cols["family"], cols["proto"], cols["tcp_flags"], cols["src_hi"], cols["src_lo"],
                cols["dst_hi"], cols["dst_lo"], cols["sport"], cols["dport"], self.slots, self.hi,
                self.entries, float(now), status, entry, out["src_hi"], out["src_lo"], out["dst_hi"],
                out["dst_lo"], osport, odport)
        headers = None
        if template is not None:
            headers = np.array(template, copy=True)
            for k, v in out.items():
                headers[k] = v
            headers["sport"], headers["dport"] = osport, odport
        return BatchResult(status, entry, headers)

    def refresh(self) -> int:
        """Write the hits back as timer refreshes on the live connections (the kernel refreshes an
        established entry's timeout on every packet). Returns how many connections were touched."""
        touched = np.nonzero(self.entries[:, 1] > -np.inf)[0]
        t = self.table.timeouts
        for i in touched:
            c = self.connections[int(i)]
            seen = float(self.entries[i, 1])
            if c.original.proto == TCP:
                timeout = t.tcp[TcpState.ESTABLISHED]
            elif "ASSURED" in c.status or seen > c.udp_stream_at:  # a replied stream after 2 s
                c.status.add("ASSURED")
                timeout = t.udp_stream
            else:
                timeout = t.udp
            c.timeout_at = seen + timeout
            self.entries[i, 0] = c.timeout_at
        self.entries[touched, 1] = -np.inf
        return len(touched)
