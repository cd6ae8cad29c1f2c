"""kube-proxy's iptables mode through the whole engine: generated rules, pipeline, conntrack, NAT.

Each test sends real packets (bytes) through one node's `Pipeline` loaded with the rules our
generator writes for the objects below, and checks what leaves the node: the behaviours issue 5
lists (ClusterIP and hairpin, masquerade of outside traffic, NodePort on every node IP, LoadBalancer
source ranges, externalTrafficPolicy Local, session affinity with its timeout, REJECT without
endpoints, reply translation and conntrack hits skipping the nat table).
"""

from __future__ import annotations

import textwrap
from ipaddress import ip_network

import pytest

from dataplane.engine import packet as P
from dataplane.engine.clock import ManualClock
from dataplane.engine.pipeline import Pipeline, iptables_ruleset
from dataplane.engine.types import Verdict
from dataplane.k8s import load_text
from dataplane.proxy.iptables.generator import GeneratorOptions, generate
from dataplane.proxy.model import NodeContext, build_state
from dataplane.proxy.trace import NodeSpec

NODE_IPS = ("192.168.100.2", "192.168.101.2")
CLUSTER = "10.244.0.0/16"


def _svc(name: str, spec: str, status: str = "") -> str:
    return textwrap.dedent(f"""
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}, namespace: default}}
        spec: {spec}
        {status}
    """)


def _slice(name: str, endpoints: list[tuple[str, str]]) -> str:
    eps = "\n".join(f"- {{addresses: [{ip}], conditions: {{ready: true}}, nodeName: {node}}}" for ip, node in endpoints)
    return textwrap.dedent(f"""
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
        addressType: IPv4
        ports: [{{name: http, port: 8080, protocol: TCP}}]
        endpoints:
    """) + textwrap.indent(eps, "") + "\n"


TWO = [("10.244.1.5", "node-a"), ("10.244.2.7", "node-b")]
OBJECTS = "".join([
    _svc("web", "{clusterIP: 10.96.0.20, ports: [{name: http, port: 80, targetPort: 8080}]}"), _slice("web", TWO),
    _svc("np", "{type: NodePort, clusterIP: 10.96.0.21, ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]}"),
    _slice("np", TWO),
    _svc("lb", "{type: LoadBalancer, clusterIP: 10.96.0.22, loadBalancerSourceRanges: [192.168.50.0/24], "
               "ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]}",
         "status: {loadBalancer: {ingress: [{ip: 203.0.113.10}]}}"), _slice("lb", TWO),
    _svc("local", "{type: NodePort, clusterIP: 10.96.0.23, externalTrafficPolicy: Local, "
                  "ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30090}]}"),
    _slice("local", [("10.244.2.7", "node-b")]),
    _svc("sticky", "{clusterIP: 10.96.0.24, sessionAffinity: ClientIP, "
                   "sessionAffinityConfig: {clientIP: {timeoutSeconds: 10}}, ports: [{name: http, port: 80, targetPort: 8080}]}"),
    _slice("sticky", TWO + [("10.244.1.9", "node-a")]),
    _svc("empty", "{clusterIP: 10.96.0.25, ports: [{name: http, port: 80, targetPort: 8080}]}"),
])


def node(name: str = "node-a", seed: int = 0) -> Pipeline:
    ctx = NodeContext(node_name=name, node_ips=NODE_IPS, cluster_cidrs=(CLUSTER,))
    text = generate(build_state(load_text(OBJECTS), ctx), GeneratorOptions(jump_rules=True)).text()
    return Pipeline(NodeSpec(NODE_IPS, (CLUSTER,)).build(), iptables_ruleset(text), clock=ManualClock(1000.0),
                    seed=seed)


def syn(src: str, dst: str, dport: int, sport: int = 40000) -> bytes:
    return P.build(src, dst, "tcp", sport=sport, dport=dport, flags="S")


def arrive(pipe: Pipeline, data: bytes):  # type: ignore[no-untyped-def]
    src = P.parse(data).src
    iif = "cni0" if src in ip_network(CLUSTER) else "eth0"  # pods sit behind the bridge
    return pipe.receive(data, iif)


def out(res) -> tuple[str, int, str, int]:  # type: ignore[no-untyped-def]
    h = P.parse(res.packet)
    return str(h.src), h.sport, str(h.dst), h.dport


def test_clusterip_goes_to_one_endpoint_and_keeps_the_pod_source():
    pipe = node()
    seen = set()
    for i in range(40):
        res = arrive(pipe, syn("10.244.1.30", "10.96.0.20", 80, sport=20000 + i))
        assert res.verdict is Verdict.ACCEPT
        src, _, dst, dport = out(res)
        assert src == "10.244.1.30" and dport == 8080
        seen.add(dst)
    assert seen == {"10.244.1.5", "10.244.2.7"}


def test_hairpin_to_itself_is_masqueraded():
    pipe = node()
    hairpins = 0
    for i in range(40):
        res = arrive(pipe, syn("10.244.1.5", "10.96.0.20", 80, sport=21000 + i))
        src, _, dst, _ = out(res)
        if dst == "10.244.1.5":
            hairpins += 1
            assert src == "10.244.0.1"  # the bridge address (MASQUERADE picks the out-interface's)
        else:
            assert src == "10.244.1.5"
    assert hairpins > 0


def test_traffic_from_outside_the_cluster_is_masqueraded():
    res = arrive(node(), syn("192.168.100.50", "10.96.0.20", 80))
    assert res.verdict is Verdict.ACCEPT
    src, _, dst, _ = out(res)
    assert dst in {"10.244.1.5", "10.244.2.7"} and src == "10.244.0.1"


@pytest.mark.parametrize("node_ip", NODE_IPS)
def test_nodeport_answers_on_every_node_ip(node_ip):
    res = arrive(node(), syn("192.168.100.50", node_ip, 30080))
    assert res.verdict is Verdict.ACCEPT
    src, _, dst, dport = out(res)
    assert (dst, dport) in {("10.244.1.5", 8080), ("10.244.2.7", 8080)}
    assert src != "192.168.100.50"  # externalTrafficPolicy Cluster: masqueraded


def test_loadbalancer_source_ranges_admit_and_drop():
    pipe = node()
    ok = arrive(pipe, syn("192.168.50.7", "203.0.113.10", 80))
    assert ok.verdict is Verdict.ACCEPT and out(ok)[2] in {"10.244.1.5", "10.244.2.7"}
    blocked = arrive(pipe, syn("192.168.60.7", "203.0.113.10", 80, sport=40001))
    assert blocked.verdict is Verdict.DROP


def test_external_traffic_policy_local_drops_without_a_local_endpoint():
    a = arrive(node("node-a"), syn("192.168.100.50", "192.168.100.2", 30090))
    assert a.verdict is Verdict.DROP
    b = arrive(node("node-b"), syn("192.168.100.50", "192.168.100.2", 30090))
    assert b.verdict is Verdict.ACCEPT
    src, _, dst, _ = out(b)
    assert dst == "10.244.2.7" and src == "192.168.100.50"  # Local: the client source is kept


def _affinity_hit(res) -> bool:  # type: ignore[no-untyped-def]
    return any(s.matched and "--rcheck" in s.rule_text for s in res.trace)


def test_session_affinity_sticks_within_its_timeout_and_moves_on_after():
    pipe = node()
    first = arrive(pipe, syn("10.244.1.30", "10.96.0.24", 80, sport=30000))
    chosen = out(first)[2]
    assert not _affinity_hit(first)
    for i in range(1, 20):
        pipe.clock.advance(0.4)
        res = arrive(pipe, syn("10.244.1.30", "10.96.0.24", 80, sport=30000 + i))
        assert out(res)[2] == chosen and _affinity_hit(res)
    pipe.clock.advance(11)  # past timeoutSeconds: the recent entry no longer matches
    later = [arrive(pipe, syn("10.244.1.30", "10.96.0.24", 80, sport=31000))]
    assert not _affinity_hit(later[0])
    # after expiry the choice is random again: some new flows land elsewhere (each re-sets the entry)
    moved = set()
    for i in range(30):
        pipe.clock.advance(11)
        moved.add(out(arrive(pipe, syn("10.244.1.30", "10.96.0.24", 80, sport=32000 + i)))[2])
    assert len(moved) > 1


def test_service_without_endpoints_rejects_with_port_unreachable():
    res = arrive(node(), syn("10.244.1.30", "10.96.0.25", 80))
    assert res.verdict is Verdict.REJECT
    assert res.response is not None
    answer = P.parse(res.response)
    assert answer.is_icmp_error and answer.icmp_type == 3 and answer.icmp_code == 3
    # a forwarded packet's error comes from the node's address toward the client (icmp_send), and
    # quotes the client's packet to the VIP, which is how the client's stack matches it
    assert (str(answer.src), str(answer.dst)) == ("10.244.0.1", "10.244.1.30")
    assert (str(answer.inner.src), str(answer.inner.dst), answer.inner.dport) == ("10.244.1.30", "10.96.0.25", 80)


def test_replies_are_translated_back_and_established_packets_skip_nat():
    pipe = node()
    first = arrive(pipe, syn("10.244.1.30", "10.96.0.20", 80, sport=45000))
    _, _, ep, ep_port = out(first)
    reply = pipe.receive(P.build(ep, "10.244.1.30", "tcp", sport=ep_port, dport=45000, flags="SA"), "cni0")
    assert reply.verdict is Verdict.ACCEPT
    assert out(reply)[:2] == ("10.96.0.20", 80)  # the client sees the VIP answer
    ack = arrive(pipe, P.build("10.244.1.30", "10.96.0.20", "tcp", sport=45000, dport=80, flags="A"))
    assert out(ack)[2:] == (ep, ep_port)
    assert not [s for s in ack.trace if s.table == "nat"]  # the nat table saw only the first packet
    assert [s for s in first.trace if s.table == "nat"]
