"""The shipped scenarios on the `emulated` service dataplane: service traffic goes through our packet
engine (a TUN per node, policy routing, one Pipeline per node), with the same expectations as in
kernel mode, and the kernel's netfilter in the node namespaces stays empty."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading

import pytest

from dataplane.netns import namespace
from dataplane.scenario import spec
from dataplane.scenario.runtime import RunError, ScenarioRun
from dataplane.scenario.state import RunState

SCENARIOS = os.path.join(os.path.dirname(__file__), "..", "..", "scenarios")
EMULATED = pytest.mark.requires("root", "netns", "veth", "bridge", "tun", "reference-plugins")


def load(name: str) -> spec.Scenario:
    return spec.load(os.path.join(SCENARIOS, name + ".yaml"))


def assert_passed(report) -> None:
    failed = [v for v in report.verdicts if not v.passed]
    assert report.passed, f"errors {report.errors}; failed: " + "; ".join(
        f"{v.traffic} {v.target} {v.check}: {v.detail}" for v in failed)
    assert report.verdicts


def assert_through_engines(settings: dict) -> None:
    """Every node's engine ran, handled packets without an internal error, and was stopped."""
    assert settings["dataplane"] == "emulated"
    engines = settings["engines"]
    assert engines and sum(e["received"] for e in engines.values()) > 0
    for name, e in engines.items():
        assert e["errors"] == 0, f"{name}: {e['last_error']}"
        assert e["startedAt"] is not None


def assert_gone(run_id: str) -> None:
    left = [n for n in namespace.list_names() if n.startswith(f"dp{run_id}-")]
    assert not left, f"namespaces left behind: {left}"
    assert not os.path.exists(RunState(run_id).directory)
    assert not [t for t in threading.enumerate() if t.name.startswith("emulated-") and t.is_alive()]
    tuns = [fd for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}") == "/dev/net/tun"]
    assert not tuns, "a TUN file descriptor is still open"


@EMULATED
def test_clusterip_through_the_cli(tmp_path):
    """`dataplane scenario run clusterip --dataplane emulated`: 8/8 expectations as in kernel mode,
    client source preserved, and the JSON report shows the engines' work."""
    out = tmp_path / "report.json"
    res = subprocess.run([os.path.join(os.path.dirname(sys.executable), "dataplane"), "scenario", "run", "clusterip",
                          "--quiet", "--dataplane", "emulated", "--json", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASSED" in res.stdout and "8/8 expectations passed" in res.stdout
    doc = json.loads(out.read_text())
    assert_through_engines(doc["settings"])
    flows = {f["traffic"]: f for f in doc["flows"]}
    assert len(flows["to-myapp"]["byPod"]) == 3
    assert flows["to-myapp"]["sourcesSeen"] == [flows["to-myapp"]["clientIP"]]   # not masqueraded
    # node-1 holds the client: its engine saw every request and every reply (2 packets a UDP
    # request, more for TCP), and none of it was dropped
    n1 = doc["settings"]["engines"]["node-1"]
    assert n1["received"] >= 2 * (90 + 20 + 30) and n1["dropped"] == 0 and n1["alive"]
    left = [n for n in namespace.list_names() if n.startswith(f"dp{doc['runId']}-")]
    assert not left and not os.path.exists(RunState(doc["runId"]).directory)


SHIPPED = ["nodeport", "readiness", "session-affinity", "external-traffic-local", "canary", "headless",
           "kube-dns", "rolling-update", "timeline"]
# nftables and ipvs modes on the engine too, for the scenarios whose checks depend most on the
# rules (all eleven pass in both modes with `dataplane scenario run X --dataplane emulated
# --proxy-mode nftables|ipvs`; the others are left to the iptables run for this folder's time budget)
OTHER_MODES = ["clusterip", "nodeport", "readiness", "session-affinity"]
CASES = [pytest.param(n, "iptables", id=f"{n}-iptables") for n in SHIPPED] + \
        [pytest.param(n, m, id=f"{n}-{m}") for m in ("nftables", "ipvs") for n in OTHER_MODES]


@EMULATED
@pytest.mark.parametrize("name,mode", CASES)
def test_shipped_scenario(name, mode):
    report = ScenarioRun(load(name), dataplane="emulated", proxy_mode=mode).execute()
    assert_passed(report)
    assert_through_engines(report.settings)
    assert report.settings["proxyMode"] == mode
    if name == "readiness":   # 5 TCP + 3 UDP connections to services without endpoints, rejected by the engine
        assert sum(e["rejected"] for e in report.settings["engines"].values()) == 8
    if mode == "ipvs":        # the IPVS proxier's virtual servers were in the engine
        assert all(st["virtual_servers"] > 0 for st in report.settings["ruleStats"].values())
    assert_gone(report.run_id)


@EMULATED
@pytest.mark.parametrize("design", ["host-gw", pytest.param("vxlan", marks=pytest.mark.requires("vxlan"))])
def test_multi_node(design):
    report = ScenarioRun(load("multi-node"), dataplane="emulated", pod_network=design).execute()
    assert_passed(report)
    assert_through_engines(report.settings)
    assert all(e["received"] > 0 for e in report.settings["engines"].values())   # every node's engine worked
    assert_gone(report.run_id)


@EMULATED
def test_the_engine_is_the_path():
    """The node's kernel has no service rules; stop node-1's engine and its client loses the service."""
    r = ScenarioRun(load("readiness"), dataplane="emulated")
    try:
        r.build()
        node = r.topology.nodes[0]
        nat = namespace.run(node.netns, ["iptables-nft-save", "-t", "nat"], check=False).stdout
        assert "KUBE-" not in nat
        rules = namespace.run(node.netns, ["ip", "rule", "show"]).stdout.splitlines()
        assert "31000:\tfrom all lookup local" in rules and "0:\tfrom all lookup local" not in rules
        assert f"103:\tfrom all to {node.ip} ipproto tcp dport 30000-32767 lookup 100" in rules
        first = r.send_traffic()
        assert all(o.ok for f in first if f.traffic == "to-web" for o in f.outcomes)
        r.dataplane.engines[node.name].stop()     # type: ignore[attr-defined]
        quick = [t for t in r.scenario.traffic if t.name == "to-web"][0]
        flow = r._send_one(dataclasses.replace(quick, requests=3, timeout=0.3), *r._source(quick))[0]
        assert not any(o.ok for o in flow.outcomes)
    finally:
        assert r.teardown() == []
    assert_gone(r.run_id)


def test_ipvs_on_the_kernel_dataplane_is_still_a_clear_error():
    with pytest.raises(RunError, match="proxy mode ipvs cannot run on the kernel dataplane: this kernel has no IPVS"):
        ScenarioRun(load("clusterip"), dataplane="kernel", proxy_mode="ipvs").build()


def test_l2_design_is_refused_before_anything_is_built():
    r = ScenarioRun(load("multi-node"), dataplane="emulated", pod_network="l2")
    with pytest.raises(RunError, match="does not support podNetwork l2: pod replies switched"):
        r.build()
    assert r.state is None and not [n for n in namespace.list_names() if n.startswith(f"dp{r.run_id}-")]


# -- the flow cache (fast path for established flows), checked against the engine's own rewrite ---
def _udp(src="10.244.1.3", dst="10.96.0.100", sport=40000, dport=80, payload=b"hello", ttl=64):
    from dataplane.engine import packet as pkt

    return pkt.build(src, dst, "udp", sport=sport, dport=dport, payload=payload, ttl=ttl)


class _Conn:
    timeout_at = 1e18


def test_flow_cache_replays_the_slow_path_rewrite_with_correct_checksums():
    from dataplane.engine import packet as pkt
    from dataplane.scenario.emulated_flows import FlowCache

    first = _udp()
    translated = pkt.rewrite(pkt.decrement_ttl(first), dst="10.244.2.7", dport=8080, src="192.168.100.12", sport=61000)
    cache = FlowCache()
    refreshed = []
    assert cache.learn(first, translated, _Conn(), lambda c, now: refreshed.append(now))
    for payload in (b"a", b"other payload", bytes(range(200))):
        later = _udp(payload=payload, ttl=63)
        out = cache.forward(later, 5.0)
        expected = pkt.rewrite(pkt.decrement_ttl(later), dst="10.244.2.7", dport=8080, src="192.168.100.12", sport=61000)
        assert out == expected and pkt.fix_checksums(out) == out
    assert refreshed == [5.0, 5.0, 5.0] and cache.hits == 3
    assert cache.forward(_udp(sport=40001), 5.0) is None                    # another flow: slow path
    cache.invalidate()                                                       # a sync: rules may have changed
    assert cache.forward(_udp(), 5.0) is None


def test_flow_cache_leaves_tcp_control_packets_and_expired_flows_to_the_slow_path():
    from dataplane.engine import packet as pkt
    from dataplane.scenario.emulated_flows import FlowCache

    def tcp(flags, ttl=64):
        return pkt.build("10.244.1.3", "10.96.0.100", "tcp", sport=40000, dport=80, flags=flags, ttl=ttl, payload=b"x")

    cache = FlowCache()
    conn = _Conn()
    ack = tcp("A")
    assert not cache.learn(tcp("S"), pkt.rewrite(tcp("S"), dst="10.244.1.2"), conn, lambda c, n: None)
    assert cache.learn(ack, pkt.rewrite(ack, dst="10.244.1.2"), conn, lambda c, n: None)   # local: no TTL change
    assert cache.forward(tcp("PA"), 1.0) == pkt.rewrite(tcp("PA"), dst="10.244.1.2")
    for control in ("FA", "R", "S"):
        assert cache.forward(tcp(control), 1.0) is None
    conn.timeout_at = 0.5                                                    # the conntrack entry expired
    assert cache.forward(tcp("A"), 1.0) is None and not cache.flows
    # a rewrite the cache cannot replay exactly (a changed length) is never learned
    assert not cache.learn(ack, ack + b"\0", conn, lambda c, n: None)


TRACED = """\
cluster: {dataplane: emulated}
traffic:
  - {name: one, from: pod/client, to: {service: web, port: 80}, requests: 2}
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


@EMULATED
def test_trace_shows_the_engine_rule_path():
    report = ScenarioRun(spec.parse(TRACED, "traced.yaml"), trace=("one",)).execute()
    assert_passed(report)
    web_ip = next(p["ip"] for p in report.pods if p["name"] == "web")
    lines = report.traces["one"]["node-1"]
    syn = lines[:lines.index(next(ln for ln in lines if ln.startswith("  verdict"))) + 1]
    assert syn[0].startswith("packet 1 tcp ") and "-> 10.96.0.100:80 iif cni0 ct NEW" in syn[0]
    chains = [ln.split()[1] for ln in syn if " rule " in ln and ln.split()[0] == "nat"]
    assert chains[:4] == ["PREROUTING", "KUBE-SERVICES", chains[2], chains[3]]
    assert chains[2].startswith("KUBE-SVC-") and chains[3].startswith("KUBE-SEP-")
    assert any(ln.startswith("  nat PREROUTING") and f"-> {web_ip}:80" in ln for ln in syn)
    assert sum(ln.startswith("packet ") for ln in lines) >= 2 * 4     # every client packet of both connections
    assert_gone(report.run_id)


# Traffic to an address nobody answers keeps the run busy (through node a's engine: pod-sourced).
SLOW = """\
name: slow
cluster: {podNetwork: host-gw, dataplane: emulated}
traffic:
  - name: nowhere
    from: pod/client
    to: {address: 192.168.100.99, port: 9}
    requests: 400
    timeout: 0.5
expect:
  - {traffic: nowhere, reachable: false}
---
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Node, metadata: {name: a}, spec: {podCIDR: 10.244.1.0/24},
     status: {addresses: [{type: InternalIP, address: 192.168.100.11}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: client}, spec: {containers: [{name: c}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: server, labels: {app: s}}, spec: {containers: [{name: s}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: s}, spec: {selector: {app: s}, ports: [{port: 80}]}}
"""


def _start_slow(tmp_path):
    import time

    path = tmp_path / "slow.yaml"
    path.write_text(SLOW)
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "dataplane"), "scenario", "run", str(path),
                             "--pod-network", "host-gw"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_id = None
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if run_id is None and line.strip().startswith(".. run "):
            run_id = line.split()[2].rstrip(":")
        if "traffic nowhere" in line:
            return proc, run_id
    proc.kill()
    proc.wait()
    raise AssertionError(f"the run did not reach its traffic phase: {proc.stderr.read()}")


@EMULATED
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_killed_emulated_run_leaves_nothing(tmp_path, how):
    """SIGKILL: the TUN goes with the runner's file descriptor at once, `scenario clean` removes the
    namespaces (and the rules in them). SIGINT: the runner stops its engines and tears down."""
    import signal

    proc, run_id = _start_slow(tmp_path)
    state = RunState.load(run_id)
    names = [r["name"] for r in state.records if r["kind"] == "netns"]
    node_ns = f"dp{run_id}-n1"
    assert node_ns in names
    assert namespace.run(node_ns, ["ip", "link", "show", "dpsvc0"], check=False).returncode == 0
    if how == "SIGKILL":
        proc.kill()
        proc.wait()
        assert namespace.exists(node_ns)
        assert namespace.run(node_ns, ["ip", "link", "show", "dpsvc0"], check=False).returncode != 0
        res = subprocess.run([os.path.join(os.path.dirname(sys.executable), "dataplane"), "scenario", "clean",
                              "--run", run_id], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and f"run {run_id}: removed" in res.stdout, res.stdout + res.stderr
    else:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    proc.stderr.close()
    assert not any(namespace.exists(n) for n in names)
    assert not os.path.exists(RunState(run_id).directory)
