"""Every shipped scenario, run end to end on the kernel dataplane (iptables-restore into each node
namespace): real namespaces, pods wired through CNI, workloads, traffic and expectations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dataplane.netns import namespace
from dataplane.scenario import spec
from dataplane.scenario.runtime import RunError, ScenarioRun
from dataplane.scenario.state import RunState

SCENARIOS = os.path.join(os.path.dirname(__file__), "..", "..", "scenarios")
KERNEL = pytest.mark.requires("root", "netns", "veth", "bridge", "iptables-nft", "reference-plugins")


def run(name: str, **kw) -> object:
    report = ScenarioRun(spec.load(os.path.join(SCENARIOS, name + ".yaml")), **kw).execute()
    failed = [v for v in report.verdicts if not v.passed]
    assert report.passed, f"errors {report.errors}; failed: " + "; ".join(
        f"{v.traffic} {v.target} {v.check}: {v.detail}" for v in failed)
    assert report.verdicts
    return report


def tx_packets(netns: str, dev: str) -> int:
    doc = json.loads(namespace.run(netns, ["ip", "-s", "-j", "link", "show", dev]).stdout)
    return int(doc[0]["stats64"]["tx"]["packets"])


def assert_gone(report) -> None:
    left = [n for n in namespace.list_names() if n.startswith(f"dp{report.run_id}-")]
    assert not left, f"namespaces left behind: {left}"
    assert not os.path.exists(RunState(report.run_id).directory)


MODES = [pytest.param("iptables", id="iptables"),
         pytest.param("nftables", id="nftables", marks=pytest.mark.requires("nft"))]


@KERNEL
@pytest.mark.parametrize("mode", MODES)
def test_clusterip_through_the_cli(mode, tmp_path):
    """`dataplane scenario run clusterip` passes, prints the summary and writes the JSON report."""
    out = tmp_path / "report.json"
    res = subprocess.run([os.path.join(os.path.dirname(sys.executable), "dataplane"), "scenario", "run", "clusterip",
                          "--quiet", "--proxy-mode", mode, "--json", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASSED" in res.stdout and "8/8 expectations passed" in res.stdout
    doc = json.loads(out.read_text())
    assert doc["passed"] is True and doc["settings"]["dataplane"] == "kernel" and doc["settings"]["proxyMode"] == mode
    assert doc["settings"]["cniPlugins"]["bridge"].endswith("/cni-bin/bridge")   # our plugin, via the runtime
    flows = {f["traffic"]: f for f in doc["flows"]}
    assert len(flows["to-myapp"]["byPod"]) == 3                                 # every replica answered
    assert {s["metadata"]["labels"]["kubernetes.io/service-name"] for s in doc["endpointSlices"]} == {"myapp", "myapp-udp"}
    left = [n for n in namespace.list_names() if n.startswith(f"dp{doc['runId']}-")]
    assert not left and not os.path.exists(RunState(doc["runId"]).directory)


@KERNEL
@pytest.mark.parametrize("mode", MODES)
def test_nodeport_on_every_node_ip(mode, tmp_path):
    report = run("nodeport", proxy_mode=mode, pcap_dir=str(tmp_path))
    targets = sorted(f.target for f in report.flows if f.traffic == "external-to-nodeport")
    assert targets == ["192.168.100.11:30080", "192.168.100.12:30080", "192.168.100.13:30080"]
    assert_gone(report)
    # node-2's pcap shows the client's SYN to the NodePort and the same connection leaving DNATed
    # to a pod on node-1 and masqueraded to node-2's address
    from scapy.all import IP, TCP, CookedLinux, PcapReader, conf

    conf.l2types.register(113, CookedLinux)
    pods = {p["ip"] for p in report.pods if p["name"].startswith("web-")}
    syns = [(pkt[IP].src, pkt[IP].dst, pkt[TCP].dport) for pkt in PcapReader(str(tmp_path / "node-2.pcap"))
            if TCP in pkt and pkt[TCP].flags == "S"]
    assert ("192.168.100.2", "192.168.100.12", 30080) in syns
    assert any(src == "192.168.100.12" and dst in pods and port == 8080 for src, dst, port in syns)


@KERNEL
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["session-affinity", "external-traffic-local"])
def test_shipped_scenario(name, mode):
    run(name, proxy_mode=mode)


@KERNEL
def test_canary_weights():
    run("canary")


@KERNEL
@pytest.mark.parametrize("mode", MODES)
def test_readiness_and_rejection(mode):
    report = run("readiness", proxy_mode=mode)
    ready = {p["name"]: p["ready"] for p in report.pods}
    assert ready["web-failing"] is False and ready["lonely"] is False and ready["client"] is True


@KERNEL
@pytest.mark.requires("vxlan")
@pytest.mark.parametrize("design", ["l2", "host-gw", "vxlan"])
def test_multi_node_designs(design):
    """Cross-node traffic works, and it really takes the design's path (checked mid-run)."""
    sc = spec.load(os.path.join(SCENARIOS, "multi-node.yaml"))
    r = ScenarioRun(sc, pod_network=design)
    try:
        r.build()
        flows = r.send_traffic()
        verdicts = r.check(flows)
        assert all(v.passed for v in verdicts), [v for v in verdicts if not v.passed]
        node1 = r.topology.nodes[0]
        routes = namespace.run(node1.netns, ["ip", "-4", "route", "show", "10.244.2.0/24"]).stdout
        if design == "host-gw":
            assert "via 192.168.100.12 dev eth0" in routes
            # the node's real iptables holds kube-proxy's layout after the sync
            nat = namespace.run(node1.netns, ["iptables-save", "-t", "nat"]).stdout
            assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in nat
            assert '--comment "default/spread cluster IP"' in nat
            assert "--probability 0.33333333349" in nat            # 1/3 as the kernel quantizes it
            assert nat.count("-j DNAT --to-destination") == 6      # 3 endpoints x (tcp + udp service)
        elif design == "vxlan":
            assert "dev vxlan0" in routes
            assert tx_packets(node1.netns, "vxlan0") > 0
        else:
            assert "dev cni0" in routes and "via" not in routes
            assert tx_packets(node1.netns, "l2seg") > 0
    finally:
        assert r.teardown() == []


@KERNEL
def test_rolling_update_never_loses_a_request():
    report = run("rolling-update")
    flow = report.flows[0]
    old = set(report.events[0]["detail"].split("replaced ")[1].split(", "))
    answered = set(flow.counts())
    assert len(old) == 3 and old <= answered and len(answered - old) == 3   # 3 old and 3 new pods answered
    assert len(flow.answered) == len(flow.outcomes)        # nothing lost while they were replaced


@KERNEL
def test_timeline_scale_delete_readiness():
    report = run("timeline")
    scale, delete, ready = report.events
    assert "2 -> 4 replicas" in scale["detail"]
    deleted_ip = delete["detail"].split("(")[1].split(")")[0]
    new_ip = delete["detail"].split("(")[2].split(")")[0]
    assert deleted_ip != new_ip                            # the replacement got a new IP
    assert ready["detail"] == "pinned ready=False"
    flow = report.flows[0]
    # after the flip (plus the resync it triggers) no new connection reaches the unready pod
    late = [o for o in flow.answered if o.at > ready["at"] + 0.3]
    assert late and all(o.pod != "pinned" for o in late)
    deleted = delete["detail"].split()[1]
    assert all(o.pod != deleted for o in flow.answered if o.at > delete["at"] + 0.3)


@KERNEL
def test_headless_resolves_to_pod_ips():
    report = run("headless")
    flows = [f for f in report.flows if f.traffic == "by-name"]
    pod_ips = {p["ip"] for p in report.pods if p["name"].startswith("db-")}
    assert {f.target.split(":")[0] for f in flows} == pod_ips   # connected straight to the pods


@KERNEL
@pytest.mark.parametrize("mode", MODES)
def test_kube_dns_udp_and_tcp(mode):
    report = run("kube-dns", proxy_mode=mode)
    flows = {f.traffic: f for f in report.flows}
    assert flows["short-name-udp"].host == "web.default.svc.cluster.local"   # found through the search list
    assert flows["external-name"].cnames == ["web.default.svc.cluster.local"]
    dns_pod = next(p for p in report.pods if p["name"] == "kube-dns")
    assert dns_pod["namespace"] == "kube-system"


TRACED = """\
cluster: {dataplane: kernel}
traffic:
  - {name: one, from: pod/client, to: {service: web, port: 80}, requests: 1}
expect:
  - {traffic: one, reachable: true}
---
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Pod, metadata: {name: web, labels: {app: web}}, spec: {containers: [{name: w, ports: [{containerPort: 80}]}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: client}, spec: {containers: [{name: c}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: web}, spec: {selector: {app: web}, ports: [{port: 80}]}}
"""


@KERNEL
@pytest.mark.requires("nft")
def test_trace_shows_the_kernel_rule_path():
    report = ScenarioRun(spec.parse(TRACED, "traced.yaml"), trace=("one",)).execute()
    assert report.passed
    web_ip = next(p["ip"] for p in report.pods if p["name"] == "web")
    lines = report.traces["one"]["node-1"]
    first = [ln for ln in lines if ln.split()[2] == lines[0].split()[2]]      # the SYN's trace id
    chains = [ln.split()[5] for ln in first if " rule " in ln]   # "trace id X ip <table> <chain> rule ..."
    assert chains[:4] == ["PREROUTING", "KUBE-SERVICES", chains[2], chains[3]]
    assert chains[2].startswith("KUBE-SVC-") and chains[3].startswith("KUBE-SEP-")
    assert any(f"dnat to {web_ip}:80" in ln for ln in first)
    assert_gone(report)


def test_trace_of_unknown_traffic_is_refused():
    with pytest.raises(RunError, match="--trace: no traffic named nope"):
        ScenarioRun(spec.parse(TRACED, "traced.yaml"), trace=("nope",))
