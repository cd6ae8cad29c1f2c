"""The conntrack-hit batch path agrees with the reference pipeline on established packets, sends
state-changing and expired packets to the slow path, and refreshes timers like the kernel."""

from __future__ import annotations

from ipaddress import ip_address

import numpy as np

from dataplane.engine import packet as P
from dataplane.engine.clock import ManualClock
from dataplane.engine.conntrack_batch import HIT, MISS, SLOW, FlowCache
from dataplane.engine.node import Interface, Node
from dataplane.engine.pipeline import IptablesRuleset, Pipeline
from dataplane.engine.types import Decision, Hook, NatAction, NatKind

CLIENT, VIP, NODE_POD_SIDE = "192.168.100.50", "10.96.0.10", "10.244.1.1"
PODS = [f"10.244.1.{i}" for i in range(10, 14)]


class ServiceRules:
    """DNAT VIP:80 to the pods round-robin (TCP) or VIP:53 (UDP); masquerade everything to pods."""

    def __init__(self) -> None:
        self.n = 0

    def evaluate(self, table, hook, m, context):  # type: ignore[no-untyped-def]
        if (table, hook) == ("nat", Hook.PREROUTING) and str(m.dst) == VIP:
            self.n += 1
            return Decision(nat=NatAction(NatKind.DNAT, ip_address(PODS[self.n % 4]), 8080))
        if (table, hook) == ("nat", Hook.POSTROUTING) and m.oif == "cni0":
            return Decision(nat=NatAction(NatKind.MASQUERADE))
        return Decision()


def setup(n: int = 200):
    clock = ManualClock(100.0)
    node = Node.simple([Interface.of("eth0", "192.168.100.1/24"), Interface.of("cni0", f"{NODE_POD_SIDE}/24")])
    pl = Pipeline(node, IptablesRuleset(ServiceRules(), ("nat",)), clock=clock)
    replies = []
    for i in range(n):
        proto = "tcp" if i % 2 == 0 else "udp"
        first = pl.receive(P.build(CLIENT, VIP, proto, sport=30000 + i, dport=80, flags="S"), "eth0")
        h = P.parse(first.packet)
        back = P.build(str(h.dst), str(h.src), proto, sport=h.dport, dport=h.sport, flags="SA")
        pl.receive(back, "cni0")
        if proto == "tcp":
            pl.receive(P.build(CLIENT, VIP, "tcp", sport=30000 + i, dport=80, flags="A"), "eth0")
        replies.append(P.build(str(h.dst), str(h.src), proto, sport=h.dport, dport=h.sport, flags="A"))
    return pl, clock, replies


def test_hits_match_the_reference_pipeline_both_directions():
    pl, clock, replies = setup()
    requests = [P.build(CLIENT, VIP, "tcp" if i % 2 == 0 else "udp", sport=30000 + i, dport=80, flags="A")
                for i in range(200)]
    packets = requests + replies
    cache = FlowCache.build(pl.conntrack)
    res = cache.lookup(P.packets_to_batch(packets))
    assert (res.status == HIT).all()
    reference = [pl.receive(p, "eth0" if i < 200 else "cni0").packet for i, p in enumerate(packets)]
    expected = P.packets_to_batch(reference)
    for field in ("src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport"):
        assert np.array_equal(res.headers[field], expected[field]), field
    # replies come back from the VIP to the client
    assert set(res.headers["src_lo"][200:]) == {int(ip_address(VIP))}


def test_misses_and_slow_path_cases():
    pl, clock, _ = setup(20)
    cache = FlowCache.build(pl.conntrack)
    pkts = [P.build(CLIENT, VIP, "tcp", sport=30000, dport=80, flags="A"),  # established: hit
            P.build(CLIENT, VIP, "tcp", sport=30000, dport=80, flags="FA"),  # FIN: state moves
            P.build(CLIENT, VIP, "tcp", sport=30000, dport=80, flags="R"),
            P.build(CLIENT, VIP, "tcp", sport=39999, dport=80, flags="A"),  # unknown
            P.build(CLIENT, VIP, "icmp", icmp_id=1)]  # not TCP/UDP
    res = cache.lookup(P.packets_to_batch(pkts))
    assert list(res.status) == [HIT, SLOW, SLOW, MISS, SLOW]
    clock.advance(31)  # UDP flows (replied once, not yet a stream) expire after 30 s
    udp = P.build(CLIENT, VIP, "udp", sport=30001, dport=80)
    assert cache.lookup(P.packets_to_batch([udp])).status[0] == SLOW


def test_refresh_extends_timers_like_the_kernel():
    pl, clock, _ = setup(4)
    clock.advance(5)
    cache = FlowCache.build(pl.conntrack)
    udp = P.build(CLIENT, VIP, "udp", sport=30001, dport=80)
    tcp = P.build(CLIENT, VIP, "tcp", sport=30000, dport=80, flags="A")
    assert list(cache.lookup(P.packets_to_batch([udp, tcp])).status) == [HIT, HIT]
    assert cache.refresh() == 2
    conns = {c.original.sport: c for c in pl.conntrack.entries()}
    assert conns[30001].timeout_at == clock.now() + 120 and "ASSURED" in conns[30001].status
    assert conns[30000].timeout_at == clock.now() + 5 * 86400


class V6Rules:
    def evaluate(self, table, hook, m, context):  # type: ignore[no-untyped-def]
        if (table, hook) == ("nat", Hook.PREROUTING) and str(m.dst) == "fd00:96::a":
            return Decision(nat=NatAction(NatKind.DNAT, ip_address("fd00:244:1::10"), 8080))
        return Decision()


def test_ipv6_hits_rewrite_all_128_bits():
    node = Node.simple([Interface.of("eth0", "fd00:100::1/64"), Interface.of("cni0", "fd00:244:1::1/64")])
    pl = Pipeline(node, IptablesRuleset(V6Rules(), ("nat",)), clock=ManualClock(0))
    pl.receive(P.build("fd00:100::50", "fd00:96::a", "udp", sport=4000, dport=53), "eth0")
    back = P.build("fd00:244:1::10", "fd00:100::50", "udp", sport=8080, dport=4000)
    pl.receive(back, "cni0")
    cache = FlowCache.build(pl.conntrack)
    fwd = P.build("fd00:100::50", "fd00:96::a", "udp", sport=4000, dport=53)
    res = cache.lookup(P.packets_to_batch([fwd, back]))
    assert list(res.status) == [HIT, HIT]
    got = P.batch_to_metas(res.headers)
    assert (str(got[0].dst), got[0].dport) == ("fd00:244:1::10", 8080)
    assert (str(got[1].src), got[1].sport) == ("fd00:96::a", 53)
