"""kube-proxy's nftables layout (kube-proxy.md §3.1, the services of kubernetes' TestOverallNFTablesRules)
traced packet by packet: ClusterIP, hairpin, NodePort, LoadBalancer source ranges, Local policy,
affinity, no endpoints. Cluster CIDR 10.0.0.0/8, service CIDR 172.30.0.0/16, node IP 192.168.0.2."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from conftest import DATA, nft_list, nft_load
from dataplane.engine.nft_eval import NftEvaluator
from dataplane.engine.types import CtState, Hook, NatKind, PacketMeta, Verdict
from dataplane.proxy.nftables.parser import parse_text

SOURCE = (DATA / "kube_proxy.nft").read_text()
NODE_IP = "192.168.0.2"
SVC1 = "service-ULMVA6XW-ns1/svc1/tcp/p80"
EP1 = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


def evaluator(text: str = SOURCE, r: int = 0, clock=None) -> NftEvaluator:
    kw = {"clock": clock} if clock else {}
    return NftEvaluator(parse_text(text), rng=lambda: r, local_addresses=[NODE_IP], **kw)


def syn(src: str, dst: str, dport: int = 80, **kw) -> PacketMeta:
    return PacketMeta.make(src, dst, "tcp", 40000, dport, tcp_flags=0x02, **kw)


def test_clusterip_from_outside_the_cluster_is_dnatted_and_masqueraded():
    ev = evaluator()
    pre = ev.evaluate(syn("192.168.0.100", "172.30.0.41"), Hook.PREROUTING)
    assert pre.verdict == Verdict.ACCEPT
    assert pre.nat.kind == NatKind.DNAT and pre.nat.addr == ip_address("10.180.0.1") and pre.nat.port == 80
    assert pre.mark == 0x4000
    path = [(s.chain, s.rule_number, s.matched) for s in pre.trace]
    assert path == [
        ("filter-prerouting-pre-dnat", 1, True), ("firewall-check", 1, False),  # vmap @firewall-ips: no element
        ("filter-prerouting-pre-dnat", 0, True),                                 # policy accept
        ("nat-prerouting", 1, True), ("services", 1, True),                      # one vmap lookup: O(1)
        (SVC1, 1, True), ("mark-for-masquerade", 1, True), (SVC1, 2, True),      # off-cluster source: masquerade
        (EP1, 1, False), (EP1, 2, True),                                         # not hairpin; dnat
    ]
    assert pre.trace[4].note == f"vmap: 172.30.0.41 . tcp . 80 -> goto {SVC1}"
    assert pre.trace[4].rule_text == "ip daddr . meta l4proto . th dport vmap @service-ips"
    post = ev.evaluate(syn("192.168.0.100", "10.180.0.1", mark=0x4000), Hook.POSTROUTING)
    assert post.nat.kind == NatKind.MASQUERADE and post.nat.random_fully and post.mark == 0


def test_clusterip_from_a_pod_is_not_masqueraded():
    ev = evaluator()
    pre = ev.evaluate(syn("10.0.1.5", "172.30.0.41"), Hook.PREROUTING)
    assert pre.nat.addr == ip_address("10.180.0.1") and pre.mark is None
    post = ev.evaluate(syn("10.0.1.5", "10.180.0.1"), Hook.POSTROUTING)
    assert post.nat is None and post.verdict == Verdict.ACCEPT


def test_hairpin_endpoint_to_its_own_service_is_masqueraded():
    pre = evaluator().evaluate(syn("10.180.0.1", "172.30.0.41"), Hook.PREROUTING)
    assert pre.nat.addr == ip_address("10.180.0.1") and pre.mark == 0x4000
    assert [s.matched for s in pre.trace if s.chain == EP1] == [True, True]


@pytest.mark.parametrize("r,endpoint", [(0, "10.180.0.4"), (0x7FFFFFFF, "10.180.0.4"), (0x80000000, "10.180.0.5"),
                                        (0xFFFFFFFF, "10.180.0.5")])
def test_numgen_picks_the_endpoint(r, endpoint):
    pre = evaluator(r=r).evaluate(syn("10.0.1.5", "172.30.0.44"), Hook.PREROUTING)
    assert pre.nat.addr == ip_address(endpoint)


def test_nodeport_on_the_node_ip():
    pre = evaluator().evaluate(syn("192.168.0.100", NODE_IP, 3003), Hook.PREROUTING)
    assert pre.nat.addr == ip_address("10.180.0.3") and pre.mark == 0x4000
    assert "external-4AT6LBPK-ns3/svc3/tcp/p80" in [s.chain for s in pre.trace]
    other = evaluator().evaluate(syn("192.168.0.100", "192.168.0.3", 3003), Hook.PREROUTING)
    assert other.nat is None  # not in @nodeport-ips


def test_loadbalancer_source_ranges():
    allowed = evaluator().evaluate(syn("203.0.113.5", "5.6.7.8"), Hook.PREROUTING)
    assert allowed.verdict == Verdict.ACCEPT and allowed.nat.addr == ip_address("10.180.0.3")
    denied = evaluator().evaluate(syn("198.51.100.1", "5.6.7.8"), Hook.PREROUTING)
    assert denied.verdict == Verdict.DROP and denied.nat is None
    assert denied.trace[-1].chain == "firewall-HVFWP5L3-ns5/svc5/tcp/p80"


def test_external_traffic_policy_local_without_local_endpoints():
    ev = evaluator()
    outside = ev.evaluate(syn("192.168.0.100", "1.2.3.4"), Hook.PREROUTING)
    assert outside.nat is None  # external chain falls through: no DNAT
    fwd = ev.evaluate(syn("192.168.0.100", "1.2.3.4"), Hook.FORWARD)
    assert fwd.verdict == Verdict.DROP  # no-endpoint-services: drop
    from_pod = ev.evaluate(syn("10.0.2.9", "1.2.3.4"), Hook.PREROUTING)
    assert from_pod.nat.addr == ip_address("10.180.0.2")  # pods short-circuit to the cluster-wide service chain
    from_node = ev.evaluate(syn(NODE_IP, "1.2.3.4"), Hook.OUTPUT)
    assert from_node.nat.addr == ip_address("10.180.0.2") and from_node.mark == 0x4000  # fib saddr type local


def test_session_affinity_pins_the_client_until_the_timeout():
    now = [0.0]
    ev = evaluator(clock=lambda: now[0])
    first = ev.evaluate(syn("10.0.1.7", "172.30.0.45"), Hook.PREROUTING)
    aff = "ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    assert [s.matched for s in first.trace if s.rule_text == aff] == [False]
    now[0] = 10799.0
    again = ev.evaluate(syn("10.0.1.7", "172.30.0.45"), Hook.PREROUTING)
    assert [s.matched for s in again.trace if s.rule_text == aff] == [True]
    assert again.nat.addr == ip_address("10.180.0.3")
    now[0] = 10799.0 + 10800.0
    late = ev.evaluate(syn("10.0.1.7", "172.30.0.45"), Hook.PREROUTING)
    assert [s.matched for s in late.trace if s.rule_text == aff] == [False]  # 3 h timeout elapsed


def test_service_without_endpoints_is_rejected_and_unknown_cluster_ips_dropped():
    ev = evaluator()
    no_ep = ev.evaluate(syn("10.0.1.5", "172.30.0.46"), Hook.FORWARD)
    assert no_ep.verdict == Verdict.REJECT and no_ep.reject_with == "icmp-port-unreachable"
    assert no_ep.trace[-1].chain == "reject-chain"
    wrong_port = ev.evaluate(syn("10.0.1.5", "172.30.0.41", 81), Hook.FORWARD)
    assert wrong_port.verdict == Verdict.REJECT
    assert wrong_port.trace[-1].rule_text.startswith("ip daddr @cluster-ips reject")
    unallocated = ev.evaluate(syn("10.0.1.5", "172.30.0.99"), Hook.FORWARD)
    assert unallocated.verdict == Verdict.DROP
    established = ev.evaluate(syn("10.0.1.5", "172.30.0.46", ct_state=CtState.ESTABLISHED), Hook.FORWARD)
    assert established.verdict == Verdict.ACCEPT  # the checks only look at ct state new


@pytest.mark.requires("root", "nft")
def test_the_kernel_listing_traces_the_same_as_the_source(sandbox):
    ns = sandbox.netns("nft")
    nft_load(ns, SOURCE)
    listed = nft_list(ns)
    cases = [(syn("192.168.0.100", "172.30.0.41"), Hook.PREROUTING), (syn("203.0.113.5", "5.6.7.8"), Hook.PREROUTING),
             (syn("198.51.100.1", "5.6.7.8"), Hook.PREROUTING), (syn("10.0.1.5", "172.30.0.46"), Hook.FORWARD),
             (syn("192.168.0.100", NODE_IP, 3003), Hook.PREROUTING), (syn(NODE_IP, "1.2.3.4"), Hook.OUTPUT)]
    for packet, hook in cases:
        a, b = evaluator(SOURCE).evaluate(packet, hook), evaluator(listed).evaluate(packet, hook)
        assert (a.verdict, a.nat, a.mark) == (b.verdict, b.nat, b.mark)
        assert [(s.chain, s.rule_number, s.matched) for s in a.trace] == \
            [(s.chain, s.rule_number, s.matched) for s in b.trace]
