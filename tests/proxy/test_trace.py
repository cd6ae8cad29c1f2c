"""`dataplane proxy trace`: the verdict, endpoint, masquerade and rule list a node gives a packet."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from dataplane.cli.main import main
from dataplane.proxy.trace import Flow, NodeSpec, trace_flows

OBJECTS = textwrap.dedent("""
    apiVersion: v1
    kind: Service
    metadata: {name: myapp, namespace: default}
    spec:
      type: NodePort
      clusterIP: 10.96.0.20
      selector: {app: myapp}
      ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}]
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: myapp-abc
      namespace: default
      labels: {kubernetes.io/service-name: myapp}
    addressType: IPv4
    ports: [{name: http, port: 8080, protocol: TCP}]
    endpoints:
    - {addresses: [10.244.1.5], conditions: {ready: true}, nodeName: node-a}
    - {addresses: [10.244.2.7], conditions: {ready: true}, nodeName: node-b}
    - {addresses: [10.244.1.9], conditions: {ready: true}, nodeName: node-a}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: empty, namespace: default}
    spec:
      clusterIP: 10.96.0.30
      selector: {app: none}
      ports: [{name: http, port: 80, protocol: TCP}]
""")
NODE = ["--node-name", "node-a", "--node-ip", "192.168.100.2", "--cluster-cidr", "10.244.0.0/16"]


@pytest.fixture
def objects(tmp_path):
    path = tmp_path / "objects.yaml"
    path.write_text(OBJECTS)
    return str(path)


def _trace(objects: str, *args: str) -> dict:
    res = CliRunner().invoke(main, ["proxy", "trace", *NODE, *args, "--json", objects])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_clusterip_from_a_pod_is_dnatted_to_an_endpoint(objects):
    out = _trace(objects, "--src", "10.244.1.7", "--dst", "10.96.0.20", "--dport", "80")
    assert out["verdict"] == "ACCEPT"
    assert len(out["endpoints"]) == 1 and out["endpoints"][0] in {"10.244.1.5:8080", "10.244.2.7:8080", "10.244.1.9:8080"}
    assert out["masquerade"] is False  # pod-to-service traffic keeps its source
    dnat = [r for r in out["rules"] if r["matched"] and "DNAT" in r["text"]]
    assert len(dnat) == 1 and dnat[0]["table"] == "nat" and dnat[0]["chain"].startswith("KUBE-SEP-")
    assert out["conntrack"].startswith("tcp 6 ")


def test_all_branches_lists_every_endpoint_and_the_hairpin(objects):
    out = _trace(objects, "--src", "10.244.1.5", "--dst", "10.96.0.20", "--dport", "80", "--all-branches")
    assert out["endpoints"] == ["10.244.1.5:8080", "10.244.1.9:8080", "10.244.2.7:8080"]
    branches = {b["endpoints"][0]: b for b in out["branches"]}
    assert sum(b["probability"] for b in out["branches"]) == pytest.approx(1.0)
    assert all(b["probability"] == pytest.approx(1 / 3) for b in branches.values())
    # a pod reaching its own service through itself is masqueraded (hairpin)
    assert branches["10.244.1.5:8080"]["masquerade"] is True
    assert branches["10.244.2.7:8080"]["masquerade"] is False


def test_service_without_endpoints_is_rejected(objects):
    out = _trace(objects, "--src", "10.244.1.7", "--dst", "10.96.0.30", "--dport", "80")
    assert out["verdict"] == "REJECT"
    assert out["endpoints"] == []


def test_nodeport_from_outside_is_masqueraded(objects):
    out = _trace(objects, "--src", "192.168.100.50", "--dst", "192.168.100.2", "--dport", "30080")
    assert out["verdict"] == "ACCEPT"
    assert out["masquerade"] is True
    assert out["endpoints"][0].endswith(":8080")


def test_dump_input_traces_the_same_as_objects(objects, tmp_path):
    rules = CliRunner().invoke(main, ["proxy", "rules", *NODE, "--jumps", objects])
    assert rules.exit_code == 0, rules.output
    dump = tmp_path / "dump.txt"
    dump.write_text(rules.output)
    a = _trace(objects, "--src", "10.244.1.7", "--dst", "10.96.0.20", "--dport", "80", "--seed", "3")
    res = CliRunner().invoke(main, ["proxy", "trace", *NODE, "--rules", str(dump), "--src", "10.244.1.7",
                                    "--dst", "10.96.0.20", "--dport", "80", "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    b = json.loads(res.output)
    assert (a["verdict"], a["endpoints"], a["masquerade"]) == (b["verdict"], b["endpoints"], b["masquerade"])


def test_packets_batch_path_agrees_with_per_packet_traces(objects, tmp_path):
    from dataplane.k8s import load_paths
    from dataplane.proxy.iptables.generator import GeneratorOptions, generate
    from dataplane.proxy.model import NodeContext, build_state

    context = NodeContext(node_name="node-a", node_ips=("192.168.100.2",), cluster_cidrs=("10.244.0.0/16",))
    text = generate(build_state(load_paths([objects]), context), GeneratorOptions(jump_rules=True)).text()
    spec = NodeSpec(("192.168.100.2",), ("10.244.0.0/16",))
    flows = []
    for i in range(60):
        src = ["10.244.1.5", "10.244.3.3", "192.168.100.50"][i % 3]
        dst, port = [("10.96.0.20", 80), ("10.96.0.30", 80), ("192.168.100.2", 30080), ("10.244.2.7", 8080)][i % 4]
        flows.append(Flow(src=src, dst=dst, dport=port, sport=2000 + i))
    fast = trace_flows(text, spec, flows, seed=11)
    slow = trace_flows(text, spec, flows, seed=11, with_rules=True)
    for f, a, b in zip(flows, fast, slow):
        assert (a["verdict"], a["endpoints"], a["masquerade"]) == (b["verdict"], b["endpoints"], b["masquerade"]), f
    assert {tuple(a["endpoints"]) for a in fast} >= {("10.244.1.5:8080",), ("10.244.2.7:8080",)}


def test_bad_input_is_a_clean_error(objects, tmp_path):
    res = CliRunner().invoke(main, ["proxy", "trace", *NODE, "--src", "10.244.1.7", "--dst", "fe80::1",
                                    "--dport", "80", objects])
    assert res.exit_code != 0 and "different IP families" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["proxy", "trace", *NODE, "--src", "10.244.1.7", "--dport", "80", objects])
    assert res.exit_code == 2 and "--dst" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src": "10.0.0.1", "dst": "10.96.0.20"}\n')
    res = CliRunner().invoke(main, ["proxy", "trace", *NODE, "--packets", str(bad), objects])
    assert res.exit_code == 1 and "bad.jsonl:1" in res.output
