"""Benchmark: a new connection's first packet through the whole node pipeline, IPVS mode vs iptables
mode, side by side on the same synthetic clusters.

    .venv/bin/python benchmarks/ipvs_pipeline.py [--services 10,100,1000] [--packets 300] [--json]

Each mode gets the same services (ClusterIP, 2 endpoints each) and the same SYNs from one pod to the
LAST service's ClusterIP (the worst case for iptables' linear KUBE-SERVICES scan), each SYN a new
connection. IPVS mode: conntrack, ~20 iptables rules with ipset lookups, then IPVS at LOCAL_IN
(dict lookup of the virtual server, rr) - flat in the number of services. iptables mode (the
reference evaluator, with traces): one KUBE-SERVICES rule per service tested before the hit.
Reports CPU microseconds per packet (median of 3 runs) and the ratio to the smallest cluster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataplane.engine import packet as pkt  # noqa: E402
from dataplane.engine.pipeline import Pipeline, iptables_ruleset  # noqa: E402
from dataplane.k8s.loader import load_objects  # noqa: E402
from dataplane.k8s.synthetic import synthetic_objects  # noqa: E402
from dataplane.proxy.iptables.generator import GeneratorOptions  # noqa: E402
from dataplane.proxy.iptables.generator import generate as generate_iptables  # noqa: E402
from dataplane.proxy.ipvs.generator import generate as generate_ipvs  # noqa: E402
from dataplane.proxy.ipvs.pipeline import ipvs_node  # noqa: E402
from dataplane.proxy.model import NodeContext, build_state  # noqa: E402
from dataplane.proxy.trace import NodeSpec  # noqa: E402

POD = "10.244.1.7"


def _packets(vip: str, port: int, n: int) -> list[bytes]:
    return [pkt.build(POD, vip, "tcp", sport=1024 + i, dport=port, flags="S") for i in range(n)]


def _per_packet_us(make_pipeline, packets: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(3):
        pipe = make_pipeline()
        c = time.process_time()
        for data in packets:
            pipe.receive(data, "cni0")
        runs.append((time.process_time() - c) / len(packets) * 1e6)
    return statistics.median(runs)


def measure(n_services: int, n_packets: int) -> dict[str, float]:
    spec = NodeSpec(("192.168.100.2",), ("10.244.0.0/16",))
    context = NodeContext(node_name="node-a", node_ips=spec.node_ips, cluster_cidrs=spec.cluster_cidrs)
    state = build_state(load_objects(synthetic_objects(n_services, 2)), context)
    last = max(state.service_ports.values(), key=lambda s: s.port)
    packets = _packets(str(last.cluster_ip), last.port, n_packets)
    iptables_text = generate_iptables(state, GeneratorOptions(jump_rules=True)).text()

    def ipvs_pipeline():  # type: ignore[no-untyped-def]
        return ipvs_node(generate_ipvs(state), spec.build()).pipeline

    def iptables_pipeline():  # type: ignore[no-untyped-def]
        return Pipeline(spec.build(), iptables_ruleset(iptables_text))

    check = ipvs_pipeline().receive(packets[0], "cni0")
    assert str(check.meta.dst).startswith("172.16."), "IPVS did not DNAT to an endpoint"
    return {"services": n_services, "ipvs_us": _per_packet_us(ipvs_pipeline, packets),
            "iptables_us": _per_packet_us(iptables_pipeline, packets)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", default="10,100,1000")
    ap.add_argument("--packets", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [measure(int(n), args.packets) for n in args.services.split(",")]
    base = rows[0]
    for r in rows:
        r["ipvs_ratio"] = r["ipvs_us"] / base["ipvs_us"]
        r["iptables_ratio"] = r["iptables_us"] / base["iptables_us"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'services':>9} {'ipvs us/pkt':>12} {'x':>6} {'iptables us/pkt':>16} {'x':>7}")
    for r in rows:
        print(f"{r['services']:>9} {r['ipvs_us']:>12.1f} {r['ipvs_ratio']:>6.2f} {r['iptables_us']:>16.1f} "
              f"{r['iptables_ratio']:>7.2f}")


if __name__ == "__main__":
    main()
