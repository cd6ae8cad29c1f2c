"""IPVS inside the packet engine (dataplane.engine.ipvs_hook): kube-proxy's IPVS layout on one node,
packets through PREROUTING -> INPUT (filter, then IPVS at NF_IP_PRI_NAT_SRC-1) -> LOCAL_OUT ->
POSTROUTING as ip_vs_nat_xmit() sends them, and replies SNATed back at FORWARD.

The kernel here has no IPVS (CONFIG_IP_VS unset), so the expectations are worked out from the
kernel sources the modules cite (ip_vs_core.c, ip_vs_xmit.c, ip_vs_conn.c); the ipset semantics the
iptables rules depend on are checked against the kernel's own `ipset test` in a scratch namespace.
"""

from __future__ import annotations

import ipaddress

import pytest

from dataplane.engine import packet as pkt
from dataplane.engine.clock import ManualClock
from dataplane.engine.node import Interface, Node, Route
from dataplane.engine.types import CtState, Verdict
from dataplane.k8s.loader import load_text
from dataplane.proxy.ipvs.core import Sysctls
from dataplane.proxy.ipvs.generator import IpvsOptions, generate
from dataplane.proxy.ipvs.pipeline import ipvs_node
from dataplane.proxy.ipvs.setmatch import LayoutSets, SetMatchError
from dataplane.proxy.model import NodeContext, build_state
from dataplane.testing.sandbox import Sandbox


def _svc(name: str, spec: str, endpoints: list[tuple[str, str]], port: str) -> str:
    eps = "\n".join(f"- {{addresses: [{ip}], nodeName: {node}}}" for ip, node in endpoints) or "[]"
    sep = "\n" if endpoints else " "
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{namespace: default, name: {name}}}\nspec:\n{spec}\n---\n"
            f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: default, name: {name}-1, "
            f"labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints:{sep}{eps}\n"
            f"ports: [{port}]\n---\n")


CLUSTER = (
    _svc("web", "  type: NodePort\n  clusterIP: 10.96.0.50\n"
         "  ports: [{name: http, port: 80, protocol: TCP, nodePort: 30080}]",
         [("10.244.1.5", "node-a"), ("10.244.2.7", "node-b")], "{name: http, port: 8080, protocol: TCP}")
    + _svc("api", "  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.60\n"
           "  ports: [{name: http, port: 80, protocol: TCP, nodePort: 30090}]",
           [("10.244.1.9", "node-a"), ("10.244.2.9", "node-b")], "{name: http, port: 8080, protocol: TCP}")
    + _svc("remote", "  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.70\n"
           "  ports: [{name: http, port: 80, protocol: TCP, nodePort: 30091}]",
           [("10.244.2.11", "node-b")], "{name: http, port: 8080, protocol: TCP}")
    + _svc("dns", "  clusterIP: 10.96.0.10\n  sessionAffinity: ClientIP\n"
           "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n  externalIPs: [192.0.2.10]\n"
           "  ports: [{name: dns, port: 53, protocol: UDP}]",
           [("10.244.1.3", "node-a"), ("10.244.2.3", "node-b")], "{name: dns, port: 53, protocol: UDP}")
    + _svc("empty", "  clusterIP: 10.96.0.80\n  ports: [{name: http, port: 80, protocol: TCP}, "
           "{name: dns, port: 53, protocol: UDP}]",
           [], "{name: http, port: 80, protocol: TCP}")
)
NODE_IPS = ("192.168.100.2", "172.16.0.2")
POD = "10.244.1.20"  # a pod on this node (node-a), behind cni0
OUTSIDE = "203.0.113.9"


def make_node(sysctls: Sysctls | None = None):  # type: ignore[no-untyped-def]
    """node-a: two uplinks (one node IP each), its pods on cni0, node-b's pods via 192.168.100.3."""
    context = NodeContext(node_name="node-a", node_ips=NODE_IPS, cluster_cidrs=("10.244.0.0/16",))
    layout = generate(build_state(load_text(CLUSTER), context), IpvsOptions("rr"))
    node = Node.simple(
        [Interface.of("eth0", "192.168.100.2/24"), Interface.of("eth1", "172.16.0.2/24"),
         Interface.of("cni0", "10.244.1.1/24")],
        [Route.of("10.244.2.0/24", "eth0", "192.168.100.3"), Route.of("default", "eth1", "172.16.0.1")])
    return ipvs_node(layout, node, sysctls=sysctls, clock=ManualClock())


def syn(src: str, dst: str, dport: int, sport: int = 40000, proto: str = "tcp", flags: str = "S") -> bytes:
    if proto == "udp":
        return pkt.build(src, dst, "udp", sport=sport, dport=dport)
    return pkt.build(src, dst, "tcp", sport=sport, dport=dport, flags=flags)


def dest_of(res) -> str:  # type: ignore[no-untyped-def]
    m = res.meta
    return f"{m.dst}:{m.dport}"


def ipvs_steps(res):  # type: ignore[no-untyped-def]
    return [s for s in res.trace if s.table == "ipvs"]


def test_cluster_ip_is_scheduled_at_local_in_and_sent_on_through_local_out() -> None:
    """A pod's SYN to a ClusterIP: nat PREROUTING (no DNAT), filter INPUT, then IPVS (rr over the
    kernel-ordered list: 10.244.2.7 was added last, so it is the head and rr starts after the
    list head), then LOCAL_OUT and POSTROUTING with one TTL spent; no SNAT for a pod source."""
    n = make_node()
    first = n.pipeline.receive(syn(POD, "10.96.0.50", 80, sport=1001), "cni0")
    second = n.pipeline.receive(syn(POD, "10.96.0.50", 80, sport=1002), "cni0")
    assert first.verdict is Verdict.ACCEPT and second.verdict is Verdict.ACCEPT
    assert (dest_of(first), first.oif) == ("10.244.2.7:8080", "eth0")
    assert (dest_of(second), second.oif) == ("10.244.1.5:8080", "cni0")
    assert str(first.meta.src) == POD and first.meta.ttl == 63 and not first.local
    path = first.path
    assert path.index("INPUT:filter") < path.index("INPUT:ipvs") < path.index("OUTPUT:filter") \
        < path.index("POSTROUTING:nat") and "INPUT:confirm" not in path
    (step,) = ipvs_steps(first)
    assert (step.chain, step.rule_text, step.matched) == (
        "TCP 10.96.0.50:80", "-a -t 10.96.0.50:80 -r 10.244.2.7:8080 -m -w 1", True)
    assert "rr chose 10.244.2.7:8080" in step.note
    # vs/conntrack=1: the entry keeps the VIP as original destination, the real server replies
    ct = first.conntrack
    assert ct is not None and ct.confirmed and str(ct.original.dst) == "10.96.0.50"
    assert (str(ct.reply.src), ct.reply.sport, str(ct.reply.dst)) == ("10.244.2.7", 8080, POD)
    assert "DST_NAT" not in ct.status  # IPVS, not netfilter NAT, rewrites the packets


def test_replies_are_snatted_back_and_established_packets_keep_their_real_server() -> None:
    n = make_node()
    p = n.pipeline
    first = p.receive(syn(POD, "10.96.0.50", 80, sport=1001), "cni0")
    p.receive(syn(POD, "10.96.0.50", 80, sport=1002), "cni0")  # moves rr on to 10.244.1.5
    real = dest_of(first)
    synack = p.receive(pkt.build("10.244.2.7", POD, "tcp", sport=8080, dport=1001, flags="SA"), "eth0")
    assert synack.verdict is Verdict.ACCEPT and synack.direction == "REPLY"
    assert (str(synack.meta.src), synack.meta.sport, synack.oif) == ("10.96.0.50", 80, "cni0")
    assert "FORWARD:ipvs-reply" in synack.path and synack.nat_applied == [
        "IPVS FORWARD: 10.244.2.7:8080 -> 10.96.0.50:80"]
    ack = p.receive(pkt.build(POD, "10.96.0.50", "tcp", sport=1001, dport=80, flags="A"), "cni0")
    assert dest_of(ack) == real and ack.ct_state is CtState.ESTABLISHED
    assert "existing entry ESTABLISHED -> 10.244.2.7:8080" in ipvs_steps(ack)[0].note
    conn = n.stage.events[-1].result.conn
    assert conn is not None and conn.state_name() == "ESTABLISHED" and conn.dest is not None
    assert (conn.dest.activeconns, conn.dest.inactconns) == (1, 0)  # set_tcp_state(): active now


def test_nodeport_answers_on_every_node_ip_and_masquerades_cluster_policy() -> None:
    """One VS per node IP x NodePort; KUBE-NODE-PORT-TCP marks for SNAT, KUBE-POSTROUTING
    masquerades to the out-interface's address."""
    n = make_node()
    via_eth0 = n.pipeline.receive(syn(OUTSIDE, "192.168.100.2", 30080, sport=2001), "eth0")
    via_eth1 = n.pipeline.receive(syn(OUTSIDE, "172.16.0.2", 30080, sport=2002), "eth1")
    assert [ipvs_steps(r)[0].chain for r in (via_eth0, via_eth1)] == ["TCP 192.168.100.2:30080", "TCP 172.16.0.2:30080"]
    for res in (via_eth0, via_eth1):
        assert res.verdict is Verdict.ACCEPT and dest_of(res) in ("10.244.1.5:8080", "10.244.2.7:8080")
        expected_src = "10.244.1.1" if res.oif == "cni0" else "192.168.100.2"
        assert str(res.meta.src) == expected_src and any(a.startswith("POSTROUTING") for a in res.nat_applied)
    # the masqueraded reply comes back to the node address, is de-NATed, then IPVS restores the VIP
    m = via_eth0.meta
    back = n.pipeline.receive(pkt.build(m.dst, m.src, "tcp", sport=m.dport, dport=m.sport, flags="SA"), via_eth0.oif)
    assert (str(back.meta.src), back.meta.sport, str(back.meta.dst), back.meta.dport) == (
        "192.168.100.2", 30080, OUTSIDE, 2001)
    # a node IP port that is no NodePort is not IPVS's business
    other = n.pipeline.receive(syn(OUTSIDE, "192.168.100.2", 30999), "eth0")
    assert other.local and not ipvs_steps(other)


def test_local_policy_uses_local_endpoints_keeps_the_source_and_falls_back() -> None:
    n = make_node()
    for ip, iif in (("192.168.100.2", "eth0"), ("172.16.0.2", "eth1")):
        res = n.pipeline.receive(syn(OUTSIDE, ip, 30090), iif)
        assert dest_of(res) == "10.244.1.9:8080" and str(res.meta.src) == OUTSIDE  # source kept
    # the ClusterIP of the same service keeps both endpoints (iTP Cluster)
    assert len(n.ipvs.services.get("tcp", "10.96.0.60", 80).destinations) == 2
    # no local endpoint: IPVS mode falls back to the cluster's (kubernetes#97081), source still kept
    fallback = n.pipeline.receive(syn(OUTSIDE, "192.168.100.2", 30091), "eth0")
    assert fallback.verdict is Verdict.ACCEPT and dest_of(fallback) == "10.244.2.11:8080"
    assert str(fallback.meta.src) == OUTSIDE


def test_external_ip_is_local_on_kube_ipvs0_and_masqueraded() -> None:
    n = make_node()
    assert ipaddress.ip_address("192.0.2.10") in n.pipeline.node.extra_local
    res = n.pipeline.receive(syn(OUTSIDE, "192.0.2.10", 53, sport=5353, proto="udp"), "eth1")
    assert res.verdict is Verdict.ACCEPT and dest_of(res) in ("10.244.1.3:53", "10.244.2.3:53")
    assert any(a.startswith("POSTROUTING") for a in res.nat_applied)  # KUBE-EXTERNAL-IP -> KUBE-MARK-MASQ
    accepted = [s.rule_text for s in res.trace if s.matched and s.chain == "KUBE-SERVICES"]
    assert any("physdev ! --physdev-is-in" in t and t.endswith("-j ACCEPT") for t in accepted)


def test_client_ip_affinity_holds_within_the_timeout_and_reschedules_after() -> None:
    """-p 600: a template <UDP, client, VIP, 53> pins the real server; it lives 600 s after its last
    use once the connections it controls (UDP, 300 s) are gone (ip_vs_conn_expire re-arms it)."""
    n = make_node()
    clock = n.pipeline.clock
    first = n.pipeline.receive(syn(POD, "10.96.0.10", 53, sport=5001, proto="udp"), "cni0")
    pinned = dest_of(first)
    clock.advance(599)
    again = n.pipeline.receive(syn(POD, "10.96.0.10", 53, sport=5002, proto="udp"), "cni0")
    assert dest_of(again) == pinned and "persistence template" in ipvs_steps(again)[0].note
    other_client = n.pipeline.receive(syn("10.244.1.21", "10.96.0.10", 53, sport=5003, proto="udp"), "cni0")
    assert dest_of(other_client) != pinned  # a new template: rr moves on
    clock.advance(599 + 300 + 2)  # past the controlled connection (300 s) and the template (600 s)
    late = n.pipeline.receive(syn(POD, "10.96.0.10", 53, sport=5004, proto="udp"), "cni0")
    assert "new persistence template" in ipvs_steps(late)[0].note
    assert dest_of(late) == pinned  # rr again: two picks since, so back to the first real server


def test_service_without_endpoints_answers_icmp_port_unreachable() -> None:
    n = make_node()
    for proto, port in (("tcp", 80), ("udp", 53)):  # TCP too: "the TCP RST packet cannot be sent"
        res = n.pipeline.receive(syn(POD, "10.96.0.80", port, sport=3000, proto=proto), "cni0")
        assert res.reason == "rejected by ipvs INPUT"
        assert res.verdict is Verdict.REJECT and res.reject_with == "icmp-port-unreachable"
        assert res.response is not None
        icmp = pkt.parse(res.response)
        assert (icmp.icmp_type, icmp.icmp_code, str(icmp.src), str(icmp.dst)) == (3, 3, "10.96.0.80", POD)
        assert "ip_vs_leave" in ipvs_steps(res)[0].note


def test_other_ports_on_a_vip_are_rejected_by_kube_ipvs_filter() -> None:
    """KUBE-IPVS-FILTER (kubernetes#72236): a new connection to a VIP on no service port."""
    n = make_node()
    res = n.pipeline.receive(syn(POD, "10.96.0.50", 22), "cni0")
    assert res.verdict is Verdict.REJECT and res.reason == "rejected by filter INPUT"
    assert not ipvs_steps(res)


def test_tcp_without_syn_is_not_scheduled() -> None:
    n = make_node()
    res = n.pipeline.receive(syn(POD, "10.96.0.50", 80, flags="A"), "cni0")
    assert res.verdict is Verdict.ACCEPT and res.local  # to the local stack, which would reset it
    (step,) = ipvs_steps(res)
    assert not step.matched and "without SYN" in step.note


def test_local_process_request_is_scheduled_at_local_out() -> None:
    """ip_vs_local_request4 (NAT_DST+2): the node itself connects to a ClusterIP; its source is
    outside the cluster CIDR, so KUBE-SERVICES marks it and POSTROUTING masquerades."""
    n = make_node()
    res = n.pipeline.send(syn("192.168.100.2", "10.96.0.50", 80, sport=4000))
    assert res.verdict is Verdict.ACCEPT and "OUTPUT:ipvs" in res.path
    assert dest_of(res) == "10.244.2.7:8080" and res.oif == "eth0"
    assert any(a.startswith("POSTROUTING") for a in res.nat_applied)
    # the reply to the node: ip_vs_reply4 at LOCAL_IN (NAT_SRC-2) gives it the VIP as source
    m = res.meta
    back = n.pipeline.receive(pkt.build(m.dst, m.src, "tcp", sport=m.dport, dport=m.sport, flags="SA"), "eth0")
    assert back.local and "INPUT:ipvs-reply" in back.path
    assert (str(back.meta.src), back.meta.sport, str(back.meta.dst), back.meta.dport) == (
        "10.96.0.50", 80, "192.168.100.2", 4000)


def test_without_vs_conntrack_the_flow_is_untracked_and_not_masqueraded() -> None:
    """net.ipv4.vs.conntrack=0 (the kernel default): ip_vs_notrack(), so POSTROUTING NAT never
    sees the flow - why kube-proxy sets it to 1."""
    n = make_node(Sysctls())
    res = n.pipeline.receive(syn(OUTSIDE, "192.168.100.2", 30080), "eth0")
    assert res.verdict is Verdict.ACCEPT and res.ct_state is CtState.UNTRACKED
    assert str(res.meta.src) == OUTSIDE and not any(a.startswith("POSTROUTING") for a in res.nat_applied)
    assert len(n.pipeline.conntrack) == 0


def test_layout_sets_refuse_unknown_sets() -> None:
    n = make_node()
    with pytest.raises(SetMatchError, match="'NOPE' does not exist"):
        LayoutSets([]).test("NOPE", pkt.meta_of(syn(POD, "10.96.0.50", 80)), ("dst",))
    assert n.pipeline.node.is_local(ipaddress.ip_address("10.96.0.50"))


SET_CASES = [  # set type, member, directions, packet (src, sport, dst, dport, proto)
    ("bitmap:port", "30080", ("dst",), ("10.0.0.1", 1000, "10.0.0.2", 30080, "tcp")),
    ("bitmap:port", "30080", ("dst",), ("10.0.0.1", 1000, "10.0.0.2", 30080, "udp")),
    ("bitmap:port", "30080", ("dst",), ("10.0.0.1", 30080, "10.0.0.2", 80, "tcp")),
    ("hash:ip,port,ip", "10.244.1.5,tcp:8080,10.244.1.5", ("dst", "dst", "src"),
     ("10.244.1.5", 1000, "10.244.1.5", 8080, "tcp")),
    ("hash:ip,port,ip", "10.244.1.5,tcp:8080,10.244.1.5", ("dst", "dst", "src"),
     ("10.244.1.6", 1000, "10.244.1.5", 8080, "tcp")),
    ("hash:ip,port,ip", "10.244.1.5,tcp:8080,10.244.1.5", ("dst", "dst", "src"),
     ("10.244.1.5", 1000, "10.244.1.5", 8080, "udp")),
    ("hash:ip,port,net", "198.51.100.7,tcp:443,192.168.100.0/24", ("dst", "dst", "src"),
     ("192.168.100.77", 1000, "198.51.100.7", 443, "tcp")),
    ("hash:ip,port,net", "198.51.100.7,tcp:443,192.168.100.0/24", ("dst", "dst", "src"),
     ("192.168.101.77", 1000, "198.51.100.7", 443, "tcp")),
    ("hash:ip,port", "10.96.0.10,udp:53", ("dst", "dst"), ("10.0.0.1", 1000, "10.96.0.10", 53, "udp")),
    ("hash:ip,port", "10.96.0.10,udp:53", ("dst", "dst"), ("10.0.0.1", 1000, "10.96.0.10", 53, "tcp")),
    ("hash:ip", "10.96.0.10", ("dst",), ("10.0.0.1", 1000, "10.96.0.10", 53, "tcp")),
]


def _element(kind: str, dirs: tuple[str, ...], p: tuple) -> str:  # type: ignore[type-arg]
    src, sport, dst, dport, proto = p
    addr = {"src": src, "dst": dst}
    port = {"src": sport, "dst": dport}
    if kind == "bitmap:port":
        return str(port[dirs[0]])
    parts = [addr[dirs[0]]]
    if kind != "hash:ip":
        parts.append(f"{proto}:{port[dirs[1]]}")
    if len(dirs) == 3:
        parts.append(addr[dirs[2]])
    return ",".join(parts)


@pytest.mark.requires("root", "netns", "ipset")
def test_set_matching_agrees_with_the_kernels_ipset_test(sandbox: Sandbox) -> None:
    """The packet fields each direction picks, tested by the kernel (`ipset test` of that element)
    and by LayoutSets; bitmap:port ignores the protocol, the hash types compare it."""
    from dataplane.proxy.ipvs.ipset import IpSet

    ns = sandbox.netns("ipvsset")
    try:
        for i, (kind, member, dirs, p) in enumerate(SET_CASES):
            s = IpSet(f"T{i}", kind)
            s.add(member)
            ns.run(["ipset", "restore"], input=f"{s.create_line()}\nadd T{i} {member}\n")
            kernel = ns.run(["ipset", "test", f"T{i}", _element(kind, dirs, p)], check=False).returncode == 0
            src, sport, dst, dport, proto = p
            meta = pkt.meta_of(syn(src, dst, dport, sport=sport, proto=proto))
            assert LayoutSets([s]).test(f"T{i}", meta, dirs) == kernel, (kind, member, p)
    finally:
        ns.run(["ipset", "destroy"], check=False)


def test_port_reuse_after_close_is_rescheduled() -> None:
    """A SYN on a 5-tuple whose IPVS entry is in TIME_WAIT: conntrack re-opens the flow (new,
    unconfirmed entry), so with conn_reuse_mode=1 the old IPVS entry is expired and the SYN is
    scheduled afresh (ip_vs_in(): is_new_conn_expected(), ip_vs_conn_uses_old_conntrack() false);
    rr then picks the next real server."""
    n = make_node()
    p = n.pipeline
    vip, rs = "10.96.0.50", "10.244.2.7"

    def client(flags: str):  # type: ignore[no-untyped-def]
        return p.receive(pkt.build(POD, vip, "tcp", sport=1001, dport=80, flags=flags), "cni0")

    def server(flags: str):  # type: ignore[no-untyped-def]
        return p.receive(pkt.build(rs, POD, "tcp", sport=8080, dport=1001, flags=flags), "eth0")

    assert dest_of(client("S")) == f"{rs}:8080"
    server("SA"), client("A"), client("FA"), server("FA"), client("A")
    conn = n.stage.events[-1].result.conn
    assert conn is not None and conn.state_name() == "TIME_WAIT"
    again = client("S")
    assert again.verdict is Verdict.ACCEPT and dest_of(again) == "10.244.1.5:8080"
    assert "rescheduled (conn_reuse_mode)" in ipvs_steps(again)[0].note
    assert conn.gone and n.stage.events[-1].result.new_conn
