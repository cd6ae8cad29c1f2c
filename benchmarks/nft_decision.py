"""Per-new-connection nftables decision cost against the number of services (kube-proxy nftables mode).

    .venv/bin/python benchmarks/nft_decision.py [--sizes 10,100,1000,10000,100000] [--packets 200000]
                                                [--repeat 5] [--active 10,100] [--json]

For each size N: a synthetic cluster (`dataplane.k8s.synthetic.synthetic_objects`, N ClusterIP
services x 2 endpoints; service ports wrap below 65536), kube-proxy's nftables layout for it
(`generator.generate`), parsed and compiled once (`nft_batch.BatchNftEvaluator`). Then batches
of first packets (TCP SYN, ct state new, from a pod) to ClusterIP:port go through the PREROUTING
hook in the numba kernel: the firewall-check vmap, nat-prerouting -> services vmap -> the service
chain -> `numgen random mod 2 vmap` -> the endpoint chain's dnat. Issue 7's target: <= 100 ns
per decision, flat within 1.2x from 10 to 100,000 services.

Traffic mixes, as in ipvs_lookup.py:
- activeK: connections spread over min(N, K) services (a node's busy services, --active 10,100)
  drawn from the N configured ones; with K no larger than the smallest N only the number of
  configured services changes: active10 is the O(1) measurement;
- uniform: connections spread over all N services, so the touched memory grows with N (the cache
  worst case for any hash table).
Times are this thread's CPU time (time.thread_time_ns), median of --repeat rounds, kernel only:
turning PacketMetas into rows (`prepare`) is measured separately. The pure-Python reference
(NftEvaluator) is timed on a small sample for comparison.

`measure(n_services, packets)` returns one size's figures as a dict, for the `dataplane bench` suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from ipaddress import IPv4Address
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dataplane.engine import nft_numba as K  # noqa: E402
from dataplane.engine.nft_batch import BatchNftEvaluator  # noqa: E402
from dataplane.engine.nft_eval import NftEvaluator  # noqa: E402
from dataplane.engine.rng import SplitMixRandom  # noqa: E402
from dataplane.engine.types import PacketMeta  # noqa: E402
from dataplane.k8s.loader import load_objects  # noqa: E402
from dataplane.k8s.objects import Cluster  # noqa: E402
from dataplane.k8s.synthetic import synthetic_objects  # noqa: E402
from dataplane.proxy.model import NodeContext, build_state  # noqa: E402
from dataplane.proxy.nftables.generator import NftOptions, generate  # noqa: E402
from dataplane.proxy.nftables.parser import parse_text  # noqa: E402

NODE_IP = "192.168.0.2"
POD_SRC = "10.244.1.5"
CONTEXT = NodeContext("bench-node", (NODE_IP,), ("10.244.0.0/16",))
OPTIONS = NftOptions(service_cidrs=("10.0.0.0/8",))
SIZES = (10, 100, 1000, 10000, 100000)


def service_port(i: int) -> int:
    """synthetic_objects gives service i the port 80 + i, which leaves 1..65535 past 65,455
    services: wrap (ClusterIPs stay unique, so every ClusterIP:port key does too)."""
    return 80 + i % 65000


def cluster(n_services: int, endpoints: int) -> Cluster:
    objects = synthetic_objects(n_services, endpoints)
    for obj in objects[::2]:  # Service, EndpointSlice, Service, ...
        i = int(obj["metadata"]["name"][3:])
        obj["spec"]["ports"][0]["port"] = service_port(i)
    return load_objects(objects, source="<synthetic>")


def build(n_services: int, endpoints: int = 2) -> tuple[BatchNftEvaluator, dict[str, float]]:
    """The compiled ruleset for N services, and how long each build step took (process CPU s)."""
    t0 = time.process_time()
    text = generate(build_state(cluster(n_services, endpoints), CONTEXT), OPTIONS)
    t1 = time.process_time()
    ruleset = parse_text(text)
    t2 = time.process_time()
    batch = BatchNftEvaluator(ruleset, rng=SplitMixRandom(1), local_addresses=[NODE_IP])
    t3 = time.process_time()
    return batch, {"generate_s": t1 - t0, "parse_s": t2 - t1, "compile_s": t3 - t2,
                   "rules_text_bytes": len(text)}


def first_packets(n_services: int, count: int, spread: int, seed: int = 7) -> list[PacketMeta]:
    """TCP SYNs from a pod to ClusterIP:port of `spread` services chosen among the N."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n_services, size=min(spread, n_services), replace=False)
    picks = rng.choice(chosen, size=count)
    base = int(IPv4Address("10.0.0.1"))  # synthetic_objects: ClusterIP 10.0.0.1 + i
    src = IPv4Address(POD_SRC)
    return [PacketMeta(4, src, IPv4Address(base + int(i)), 6, 10000 + k % 50000, service_port(int(i)),
                       tcp_flags=0x02)
            for k, i in enumerate(picks)]


def kernel_ns(batch: BatchNftEvaluator, rows: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    """Median thread-CPU ns per decision over `repeat` rounds of the whole batch, kernel only."""
    out = np.zeros((len(rows), K.RESULT_COLUMNS), np.uint32)
    state = np.array([1], np.uint64)
    K.evaluate(batch.compiled, "prerouting", rows[:10], state, 0, out)  # compiled already; warm caches
    times = []
    for _ in range(repeat):
        state[0] = 1
        t = time.thread_time_ns()
        stop = K.evaluate(batch.compiled, "prerouting", rows, state, 0, out)
        times.append(time.thread_time_ns() - t)
        if stop != len(rows):
            raise RuntimeError(f"packet {stop} needed the reference evaluator: the benchmark expects none")
    return statistics.median(times) / len(rows), out


def measure(n_services: int, packets: int = 200_000, *, repeat: int = 5, active: tuple[int, ...] = (10, 100),
            reference_sample: int = 2000, built: tuple[BatchNftEvaluator, dict[str, float]] | None = None
            ) -> dict[str, Any]:
    """One size: ns per new-connection decision in batch for each traffic mix (`active{K}_...`,
    `uniform_...`; `active_...` repeats the first active mix), and context figures."""
    batch, build_times = built or build(n_services)
    result: dict[str, Any] = {"services": n_services, "packets": packets, **build_times,
                              "hash_slots": int(batch.compiled.hash_keys.shape[0]),
                              "fallback_ops": batch.compiled.fallback_ops}
    for mix, spread in [(f"active{a}", a) for a in active] + [("uniform", n_services)]:
        metas = first_packets(n_services, packets, spread)
        t = time.thread_time_ns()
        rows = batch.prepare(metas)
        prep = (time.thread_time_ns() - t) / len(metas)
        ns, out = kernel_ns(batch, rows, repeat)
        if not (out[:, K.R_NAT] == K.NAT_DNAT).all():
            raise RuntimeError("a first packet was not DNATed: the synthetic layout changed")
        result[f"{mix}_ns_per_decision"] = ns
        result[f"{mix}_prepare_ns_per_packet"] = prep
        result[f"{mix}_rules_per_decision"] = float(out[:, K.R_RULES].mean())
    for key in ("ns_per_decision", "prepare_ns_per_packet", "rules_per_decision"):  # the first version's names
        result[f"active_{key}"] = result[f"active{active[0]}_{key}"]
    sample = first_packets(n_services, reference_sample, active[0], seed=8)
    stream = SplitMixRandom(1)
    ref = NftEvaluator(batch.reference.ruleset, rng=lambda: stream.getrandbits(32), local_addresses=[NODE_IP],
                       trace=False)
    t = time.thread_time_ns()
    for p in sample:
        ref.evaluate(p, "prerouting")
    result["reference_ns_per_decision"] = (time.thread_time_ns() - t) / len(sample)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--active", default="10,100", help="busy-service counts of the active mixes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    active = tuple(int(a) for a in args.active.split(",") if a)
    mixes = [f"active{a}" for a in active] + ["uniform"]
    rows = []
    for n in sizes:
        rows.append(measure(n, args.packets, repeat=args.repeat, active=active))
        if not args.json:
            r = rows[-1]
            figures = "  ".join(f"{m} {r[f'{m}_ns_per_decision']:6.1f} ns" for m in mixes)
            print(f"{n:>7} services: {figures}  ({r['uniform_rules_per_decision']:.1f} rules/decision; "
                  f"reference {r['reference_ns_per_decision'] / 1000:.1f} us; prepare "
                  f"{r['uniform_prepare_ns_per_packet'] / 1000:.1f} us/packet; build gen {r['generate_s']:.1f} s "
                  f"parse {r['parse_s']:.1f} s compile {r['compile_s']:.1f} s)", flush=True)
    summary: dict[str, Any] = {"sizes": rows}
    for mix in mixes:
        values = [r[f"{mix}_ns_per_decision"] for r in rows]
        summary[f"{mix}_ratio_largest_to_smallest"] = values[-1] / values[0]
        summary[f"{mix}_ratio_max_to_min"] = max(values) / min(values)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for mix in mixes:
            print(f"{mix}: largest/smallest N {summary[f'{mix}_ratio_largest_to_smallest']:.2f}x, "
                  f"max/min over sizes {summary[f'{mix}_ratio_max_to_min']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
