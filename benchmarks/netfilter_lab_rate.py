"""Packets per second: the real-kernel lab against the engine's reference pipeline, in one run.

    sudo .venv/bin/python benchmarks/netfilter_lab_rate.py [--flows 2000] [--services 100] [--json]

One kube-proxy-shaped rule set (sample dump: N ClusterIP services, one endpoint each) is loaded
into the lab's node with iptables-legacy-restore and parsed for the engine. The same new flows
(TCP SYNs to random services from outside the cluster CIDR: DNAT + MASQUERADE --random-fully) go
through both:
- kernel: lab.send(), wall time from the first send to the last observation (crafting, AF_PACKET
  injection, two veth hops, the node's netfilter, capture), so the lab's own throughput;
- engine new: Pipeline.receive() for each flow's first packet (rule walk, NAT setup, confirm);
- engine hit: the same packets again (conntrack hits: no nat rules, rewrite only).
The engine figures are the pure-Python reference path (the numba batch path is measured elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dataplane.engine.pipeline import Pipeline, iptables_ruleset  # noqa: E402
from dataplane.proxy.iptables.sample import kube_proxy_dump  # noqa: E402
from dataplane.testing.netfilter_lab import Flow, NetfilterLab  # noqa: E402
from dataplane.testing.sandbox import Sandbox  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=2000)
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    n = args.services
    endpoints = [f"10.128.{s // 256}.{s % 256}" for s in range(n)]
    rules = kube_proxy_dump(n, 1)
    rnd = random.Random(1)
    flows = [Flow("192.168.100.2", f"10.96.{(s := rnd.randrange(n)) // 256}.{s % 256}", "tcp",
                  sport=1024 + i, dport=80) for i in range(args.flows)]
    with Sandbox() as sb:
        lab = NetfilterLab.create(sb, backends=endpoints, backend_net4="10.0.0.0/8")
        lab.load_iptables(rules)
        t0 = time.perf_counter()
        obs = lab.send(flows)
        kernel_s = time.perf_counter() - t0
        delivered = sum(o.outcome == "delivered" for o in obs)
        packets = [lab.probe_packet(f, i) for i, f in enumerate(flows)]
    pipeline = Pipeline(lab.node_model(), iptables_ruleset(rules))
    t0 = time.perf_counter()
    for p in packets:
        pipeline.receive(p, "eth0")
    new_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in packets:
        pipeline.receive(p, "eth0")
    hit_s = time.perf_counter() - t0
    row = {"flows": len(flows), "services": n, "kernel_delivered": delivered,
           "kernel_lab_pps": round(len(flows) / kernel_s), "engine_new_pps": round(len(flows) / new_s),
           "engine_hit_pps": round(len(flows) / hit_s),
           "engine_new_us": round(new_s / len(flows) * 1e6, 1), "engine_hit_us": round(hit_s / len(flows) * 1e6, 1)}
    if args.json:
        print(json.dumps(row))
    else:
        for k, v in row.items():
            print(f"{k:>18}: {v}")


if __name__ == "__main__":
    main()
