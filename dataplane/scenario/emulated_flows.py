"""The emulated dataplane's fast path for established flows, after the kernel's software flowtable.

nf_flow_table (nft `flow offload`) lets packets of an established connection skip the netfilter
hooks: the first packets go the slow way, then a flow entry per direction applies the NAT
rewrite, decrements the TTL and refreshes the conntrack timeout; TCP packets carrying SYN, FIN
or RST go back to the slow path so the state machine sees them. This is the same idea for the
engine: an entry is learned from a packet the full `Pipeline` has just handled, and only if
replaying the learned rewrite on that packet reproduces the pipeline's output byte for byte.
Every rule or route change (a sync) empties the cache, as kube-proxy's rules may have changed
what a flow's first packet would meet; established packets never meet NAT rules again anyway.
Only IPv4 TCP/UDP without IP options or fragmentation qualify.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

_TCP, _UDP = 6, 17
_SYN_FIN_RST = 0x07
_HDR = struct.Struct("!10H")
MAX_FLOWS = 65536


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _words(b: bytes) -> list[int]:
    return list(struct.unpack(f"!{len(b) // 2}H", b))


def flow_key(data: bytes) -> bytes | None:
    """Protocol, addresses and ports of a plain IPv4 TCP/UDP packet (None if it does not qualify)."""
    if len(data) < 28 or data[0] != 0x45 or data[9] not in (_TCP, _UDP) or data[6] & 0x3F or data[7]:
        return None
    return data[9:10] + data[12:24]


@dataclass
class Flow:
    """One direction of one connection: the rewrite the slow path applied, and its conntrack entry."""

    addrs_ports: bytes      # bytes 12..24 after translation (addresses, then ports)
    l4_addend: int          # one's-complement sum that turns the old L4 checksum into the new one
    ttl_dec: int            # 1 when the packet is forwarded
    proto: int
    conn: object            # dataplane.engine.conntrack.Connection
    refresh: Callable[[object, float], None]
    generation: int


class FlowCache:
    """Per-direction flow entries keyed by `flow_key`; `generation` invalidates them all at once."""

    def __init__(self) -> None:
        self.flows: dict[bytes, Flow] = {}
        self.generation = 0
        self.hits = 0
        self.learned = 0

    def invalidate(self) -> None:
        self.generation += 1
        self.flows.clear()

    def forward(self, data: bytes, now: float) -> bytes | None:
        """The translated packet if its flow is cached and still alive, else None (slow path)."""
        key = flow_key(data)
        if key is None:
            return None
        flow = self.flows.get(key)
        if flow is None or flow.generation != self.generation:
            return None
        if flow.proto == _TCP and data[33] & _SYN_FIN_RST:
            return None
        if flow.conn.timeout_at <= now or (flow.ttl_dec and data[8] <= 1):  # type: ignore[attr-defined]
            del self.flows[key]
            return None
        out = _apply(data, flow)
        if out is None:
            return None
        flow.refresh(flow.conn, now)
        self.hits += 1
        return out

    def learn(self, before: bytes, after: bytes, conn: object, refresh: Callable[[object, float], None]) -> bool:
        """Remember the rewrite the slow path made, if it is one we can replay exactly."""
        key = flow_key(before)
        if key is None or flow_key(after) is None or len(before) != len(after):
            return False
        if before[9] == _TCP and before[33] & _SYN_FIN_RST:
            return False
        ttl_dec = before[8] - after[8]
        if ttl_dec not in (0, 1):
            return False
        old, new = _words(before[12:24]), _words(after[12:24])
        addend = _fold(sum((~w & 0xFFFF) for w in old) + sum(new))
        flow = Flow(after[12:24], addend, ttl_dec, before[9], conn, refresh, self.generation)
        if _apply(before, flow) != after:
            return False
        if len(self.flows) >= MAX_FLOWS:
            self.flows.clear()
        self.flows[key] = flow
        self.learned += 1
        return True


def _apply(data: bytes, flow: Flow) -> bytes | None:
    buf = bytearray(data)
    buf[12:24] = flow.addrs_ports
    if flow.ttl_dec:
        buf[8] -= 1
    buf[10] = buf[11] = 0
    csum = ~_fold(sum(_HDR.unpack_from(buf, 0))) & 0xFFFF
    buf[10], buf[11] = csum >> 8, csum & 0xFF
    off = 36 if flow.proto == _TCP else 26
    old = buf[off] << 8 | buf[off + 1]
    if flow.proto == _UDP and old == 0:
        return bytes(buf)          # no UDP checksum: stays without one
    new = ~_fold((~old & 0xFFFF) + flow.l4_addend) & 0xFFFF
    if flow.proto == _UDP and new == 0:
        new = 0xFFFF
    buf[off], buf[off + 1] = new >> 8, new & 0xFF
    return bytes(buf)
