"""Conntrack-hit fast path throughput: established packets looked up and NAT-rewritten in batch.

    .venv/bin/python benchmarks/conntrack_hit.py [--connections 10000] [--packets 1000000] [--json]

Builds --connections DNAT'd + masqueraded TCP connections through the reference conntrack/NAT code
(handshake done, ESTABLISHED), freezes them into a FlowCache, then times one numba call over a batch
of --packets established packets (random connections, both directions). CPU time of this thread
(time.thread_time), best of --repeat, so other processes on a shared machine do not count.
Target (issue 5): at least 10 million packets per second on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from ipaddress import ip_address

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dataplane.engine import packet as P  # noqa: E402
from dataplane.engine.clock import ManualClock  # noqa: E402
from dataplane.engine.conntrack import ConntrackTable  # noqa: E402
from dataplane.engine.conntrack_batch import HIT, FlowCache  # noqa: E402
from dataplane.engine.nat import Manip, Nat, NatRange  # noqa: E402


def connections(n: int, seed: int) -> ConntrackTable:
    """n client -> VIP:80 connections DNAT'd to pods and masqueraded to the node, established."""
    rnd = random.Random(seed)
    table = ConntrackTable(ManualClock(0.0))
    nat = Nat(table, rnd)
    node = ip_address("10.244.0.1")
    for i in range(n):
        client = f"192.168.{100 + i // 60000}.{(i // 240) % 250 + 2}"
        vip = f"10.96.{i % 200 // 256}.{i % 200}"
        t = table.track(P.parse(P.build(client, vip, "tcp", sport=1024 + i % 60000, dport=80, flags="S")))
        pod = ip_address(f"10.244.{1 + i % 50}.{10 + i % 200}")
        nat.setup(t.conn, NatRange(pod, pod, 8080, 8080), Manip.DST)
        nat.setup(t.conn, NatRange(node, node), Manip.SRC)
        assert table.confirm(t)
        r = t.conn.reply
        table.track(P.parse(P.build(str(r.src), str(r.dst), "tcp", sport=r.sport, dport=r.dport, flags="SA")))
        o = t.conn.original
        table.track(P.parse(P.build(str(o.src), str(o.dst), "tcp", sport=o.sport, dport=o.dport, flags="A")))
    return table


def batch_columns(table: ConntrackTable, packets: int, seed: int) -> dict[str, np.ndarray]:
    conns = table.entries()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(conns), packets)
    direction = rng.integers(0, 2, packets)
    rows = []
    for c in conns:
        for t in (c.original, c.reply):
            rows.append((4, 6, 0x10, 0, int(t.src), 0, int(t.dst), t.sport, t.dport))
    table_rows = np.array(rows, dtype=np.uint64)
    chosen = table_rows[pick * 2 + direction]
    names = ("family", "proto", "tcp_flags", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport")
    dtypes = (np.uint8, np.uint8, np.uint8, np.uint64, np.uint64, np.uint64, np.uint64, np.uint16, np.uint16)
    return {n: np.ascontiguousarray(chosen[:, i].astype(d)) for i, (n, d) in enumerate(zip(names, dtypes))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    table = connections(args.connections, 1)
    cache = FlowCache.build(table)
    cols = batch_columns(table, args.packets, 2)
    res = cache.lookup_columns(cols, 1.0)  # JIT warm-up and a check
    assert (res.status == HIT).all()
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.thread_time()
        cache.lookup_columns(cols, 1.0)
        best = min(best, time.thread_time() - t0)
    row = {"connections": args.connections, "packets": args.packets, "slots": len(cache.slots),
           "ns_per_packet": round(best / args.packets * 1e9, 1), "mpps": round(args.packets / best / 1e6, 2)}
    print(json.dumps(row) if args.json else "\n".join(f"{k:>14}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
