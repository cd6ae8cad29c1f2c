"""How long a 3-node, 30-pod scenario takes to build, serve traffic and tear down, and the
kernel dataplane's connection rate through a ClusterIP as the runner's client sees it.

Acceptance target (issue 8): the build finishes in under 30 s on a 2-core machine. Runs the same
cluster with the project's CNI plugins and with the reference (Go) plugins, side by side, so the
ratio shows what our plugins cost. Needs root.

    .venv/bin/python -m benchmarks.scenario_build [--pods 30] [--nodes 3] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import statistics

from dataplane.scenario import spec
from dataplane.scenario.runtime import ScenarioRun


def scenario_text(nodes: int, pods: int, cni_plugins: str, requests: int = 2000) -> str:
    docs = [f"""name: build-{nodes}x{pods}
cluster: {{podNetwork: host-gw, cniPlugins: {cni_plugins}}}
traffic:
  - {{name: svc, from: pod/client, to: {{service: web, port: 80}}, requests: {requests}}}
  - {{name: keepalive, from: pod/client, to: {{service: web, port: 80}}, mode: keepalive, requests: {requests}}}
expect:
  - {{traffic: svc, reachable: true}}
  - {{traffic: keepalive, reachable: true}}
"""]
    for i in range(1, nodes + 1):
        docs.append(f"""apiVersion: v1
kind: Node
metadata: {{name: node-{i}}}
spec: {{podCIDR: 10.244.{i}.0/24}}
status: {{addresses: [{{type: InternalIP, address: 192.168.100.{10 + i}}}]}}
""")
    docs.append(f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {pods - 1}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, ports: [{{containerPort: 80}}]}}]}}
""")
    docs.append("apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec: {containers: [{name: c}]}\n")
    docs.append("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n")
    return "---\n".join(docs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--pods", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    out: dict[str, dict] = {}
    for plugins in ("project", "reference"):
        sc = spec.parse(scenario_text(args.nodes, args.pods, plugins), f"<build-{plugins}>")
        samples = []
        for _ in range(args.repeat):
            report = ScenarioRun(sc).execute()
            assert report.passed, report.to_json()["expectations"]
            rates = {}
            for f in report.flows:
                busy = sum(o.seconds for o in f.outcomes)
                rates[f"{f.traffic}PerSecond"] = round(len(f.outcomes) / busy) if busy else 0
            samples.append({**report.timings, **rates})
        out[plugins] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
        o = out[plugins]
        print(f"{plugins:>9} plugins: build {o['buildSeconds']:.2f} s, teardown {o['teardownSeconds']:.2f} s "
              f"({args.nodes} nodes, {args.pods} pods); through the ClusterIP: {o['svcPerSecond']} new TCP "
              f"connections/s, {o['keepalivePerSecond']} requests/s on one keepalive connection")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
