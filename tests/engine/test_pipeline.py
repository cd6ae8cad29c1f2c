"""The hook pipeline with a hand-written stub evaluator: hook/table order, nat-only-on-first-packet,
DNAT/SNAT/MASQUERADE reversal on replies, routing, REJECT responses and conntrack confirmation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address

import pytest

from dataplane.engine import packet as P
from dataplane.engine.clock import ManualClock
from dataplane.engine.conntrack import REPLY, Timeouts
from dataplane.engine.node import Interface, Node, Route
from dataplane.engine.pipeline import EvalContext, IptablesRuleset, Pipeline
from dataplane.engine.types import (CtState, Decision, Hook, NatAction, NatKind, PacketMeta,
                                    TraceStep, Verdict)

CLIENT, VIP, POD1, POD2 = "192.168.100.50", "10.96.0.10", "10.244.1.5", "10.244.1.6"
NODE_IP, POD_GW = "192.168.100.1", "10.244.1.1"


@dataclass
class StubRule:
    table: str
    hook: Hook
    match: Callable[[PacketMeta], bool]
    decision: Callable[[], Decision]
    text: str = "-j STUB"


@dataclass
class StubEvaluator:
    """A tiny evaluator implementing the protocol: first matching rule decides, else ACCEPT."""

    rules: list[StubRule] = field(default_factory=list)
    calls: list[tuple[str, Hook, PacketMeta]] = field(default_factory=list)

    def evaluate(self, table: str, hook: Hook, packet: PacketMeta, context: EvalContext) -> Decision:
        assert isinstance(context, EvalContext)
        self.calls.append((table, hook, packet))
        n = 0
        for rule in self.rules:
            if (rule.table, rule.hook) != (table, hook):
                continue
            n += 1
            if rule.match(packet):
                d = rule.decision()
                d.trace = [TraceStep(table, hook.value, n, rule.text, True)]
                d.rules_evaluated = n
                return d
        return Decision(trace=[TraceStep(table, hook.value, 0, "policy ACCEPT", True)], rules_evaluated=n)


def node() -> Node:
    return Node.simple([Interface.of("eth0", f"{NODE_IP}/24"), Interface.of("cni0", f"{POD_GW}/24")],
                       [Route.of("default", "eth0", "192.168.100.254")])


def dnat_to(*backends: tuple[str, int]) -> StubRule:
    it = iter(backends * 1000)
    return StubRule("nat", Hook.PREROUTING, lambda m: str(m.dst) == VIP and m.dport == 53,
                    lambda: Decision(nat=NatAction(NatKind.DNAT, ip_address((b := next(it))[0]), b[1])),
                    "-d 10.96.0.10/32 -p udp --dport 53 -j DNAT")


def masq_from_outside() -> StubRule:
    return StubRule("nat", Hook.POSTROUTING, lambda m: not str(m.src).startswith("10.244."),
                    lambda: Decision(nat=NatAction(NatKind.MASQUERADE)), "-j MASQUERADE")


def udp(src, dst, sport, dport, payload=b"q"):
    return P.build(src, dst, "udp", sport=sport, dport=dport, payload=payload)


def test_forwarded_packet_visits_hooks_and_tables_in_kernel_order():
    stub = StubEvaluator()
    pl = Pipeline(node(), IptablesRuleset(stub, ("raw", "mangle", "nat", "filter", "security")))
    r = pl.receive(udp(CLIENT, POD1, 1000, 53), "eth0")
    assert r.verdict is Verdict.ACCEPT and r.oif == "cni0" and not r.local
    assert r.path == ["PREROUTING:raw", "PREROUTING:conntrack", "PREROUTING:mangle", "PREROUTING:nat",
                      "FORWARD:mangle", "FORWARD:filter", "FORWARD:security",
                      "POSTROUTING:mangle", "POSTROUTING:nat", "POSTROUTING:confirm"]
    assert [(t, h.value) for t, h, _ in stub.calls] == [
        ("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING"), ("mangle", "FORWARD"),
        ("filter", "FORWARD"), ("security", "FORWARD"), ("mangle", "POSTROUTING"), ("nat", "POSTROUTING")]
    # the raw table runs before conntrack: it sees no state yet (INVALID/untracked view)
    assert stub.calls[0][2].ct_state is CtState.INVALID and stub.calls[1][2].ct_state is CtState.NEW
    assert stub.calls[4][2].oif == "cni0" and stub.calls[4][2].iif == "eth0"


def test_local_delivery_and_local_output_paths():
    stub = StubEvaluator()
    pl = Pipeline(node(), IptablesRuleset(stub))
    r = pl.receive(udp(CLIENT, NODE_IP, 1000, 10250), "eth0")
    assert r.local and r.path == ["PREROUTING:raw", "PREROUTING:conntrack", "PREROUTING:mangle",
                                  "PREROUTING:nat", "INPUT:mangle", "INPUT:filter", "INPUT:nat",
                                  "INPUT:confirm"]
    out = pl.send(udp(NODE_IP, POD1, 2000, 53))
    assert out.oif == "cni0" and out.path == ["OUTPUT:raw", "OUTPUT:conntrack", "OUTPUT:mangle",
                                              "OUTPUT:nat", "OUTPUT:filter", "POSTROUTING:mangle",
                                              "POSTROUTING:nat", "POSTROUTING:confirm"]


def test_dnat_binding_applies_to_later_packets_and_reverses_replies():
    stub = StubEvaluator([dnat_to((POD1, 5353), (POD2, 5353))])
    pl = Pipeline(node(), IptablesRuleset(stub))
    first = pl.receive(udp(CLIENT, VIP, 40000, 53), "eth0")
    h = P.parse(first.packet)
    assert (str(h.dst), h.dport, first.oif) == (POD1, 5353, "cni0")
    assert first.packet == P.fix_checksums(first.packet)
    assert first.conntrack.reply.src == ip_address(POD1) and "DST_NAT" in first.conntrack.status
    nat_calls = sum(1 for t, _, _ in stub.calls if t == "nat")
    # later packets of the flow: same backend, without consulting the nat table
    again = pl.receive(udp(CLIENT, VIP, 40000, 53), "eth0")
    assert str(P.parse(again.packet).dst) == POD1
    assert sum(1 for t, _, _ in stub.calls if t == "nat") == nat_calls
    assert "PREROUTING:nat" in again.path and again.ct_state is CtState.NEW
    # the reply from the pod is translated back to come from the VIP
    reply = pl.receive(udp(POD1, CLIENT, 5353, 40000), "cni0")
    rh = P.parse(reply.packet)
    assert (str(rh.src), rh.sport, str(rh.dst), rh.dport) == (VIP, 53, CLIENT, 40000)
    assert reply.ct_state is CtState.ESTABLISHED and reply.direction == REPLY
    assert reply.nat_applied == ["POSTROUTING: 10.244.1.5:5353 -> 10.96.0.10:53"]
    assert reply.packet == P.fix_checksums(reply.packet)
    # a new flow takes the next backend the rule chose
    other = pl.receive(udp(CLIENT, VIP, 40001, 53), "eth0")
    assert str(P.parse(other.packet).dst) == POD2


def test_masquerade_uses_out_interface_address_and_reverses():
    stub = StubEvaluator([dnat_to((POD1, 53)), masq_from_outside()])
    pl = Pipeline(node(), IptablesRuleset(stub))
    r = pl.receive(udp(CLIENT, VIP, 40000, 53), "eth0")
    h = P.parse(r.packet)
    assert (str(h.src), h.sport, str(h.dst)) == (POD_GW, 40000, POD1)  # cni0's address, port kept
    assert {"SRC_NAT", "DST_NAT"} <= r.conntrack.status
    back = P.parse(pl.receive(udp(POD1, POD_GW, 53, 40000), "cni0").packet)
    assert (str(back.src), back.sport, str(back.dst), back.dport) == (VIP, 53, CLIENT, 40000)


def test_snat_port_clash_picks_a_unique_port():
    stub = StubEvaluator([StubRule("nat", Hook.POSTROUTING, lambda m: True,
                                   lambda: Decision(nat=NatAction(NatKind.SNAT, ip_address(NODE_IP))))])
    pl = Pipeline(Node.simple([Interface.of("eth0", f"{NODE_IP}/24"), Interface.of("cni0", f"{POD_GW}/24")]),
                  IptablesRuleset(stub), seed=7)
    a = P.parse(pl.receive(udp(POD1, "192.168.100.9", 5000, 53), "cni0").packet)
    b = P.parse(pl.receive(udp(POD2, "192.168.100.9", 5000, 53), "cni0").packet)
    assert a.sport == 5000 and str(a.src) == NODE_IP  # the original port is kept when free
    assert b.sport != 5000 and 1024 <= b.sport <= 65535 and str(b.src) == NODE_IP
    low = P.parse(pl.receive(udp(POD1, "192.168.100.9", 700, 53), "cni0").packet)
    low2 = P.parse(pl.receive(udp(POD2, "192.168.100.9", 700, 53), "cni0").packet)
    assert low.sport == 700 and 600 <= low2.sport <= 1023 and low2.sport != 700  # stays privileged
    # replies reach the right pod
    back = P.parse(pl.receive(udp("192.168.100.9", NODE_IP, 53, b.sport), "eth0").packet)
    assert (str(back.dst), back.dport) == (POD2, 5000)


def test_random_fully_spreads_ports_uniformly():
    stub = StubEvaluator([StubRule("nat", Hook.POSTROUTING, lambda m: True, lambda: Decision(
        nat=NatAction(NatKind.MASQUERADE, random_fully=True)))])
    pl = Pipeline(node(), IptablesRuleset(stub), seed=1)
    ports = [P.parse(pl.receive(udp(POD1, "192.168.100.9", 5000 + i, 53), "cni0").packet).sport
             for i in range(2000)]
    assert len(set(ports)) == 2000 and all(1024 <= p <= 65535 for p in ports)
    # uniform over 1024-65535: chi-square over 8 equal bins (critical value 24.3 at p=0.001, 7 dof)
    bins = Counter((p - 1024) * 8 // (65536 - 1024) for p in ports)
    chi2 = sum((bins[i] - 250) ** 2 / 250 for i in range(8))
    assert chi2 < 24.3
    # without --random-fully, free source ports are kept
    keep = Pipeline(node(), IptablesRuleset(StubEvaluator([masq_from_outside()])))
    assert P.parse(keep.receive(udp(CLIENT, POD1, 5000, 53), "eth0").packet).sport == 5000


def test_implicit_source_port_remap_without_snat_rule():
    """Two clients DNATed to one backend cannot collide; with SNAT to one address they could, and
    the null binding at POSTROUTING remaps the second one's port (the kernel's clash avoidance)."""
    stub = StubEvaluator([StubRule("nat", Hook.PREROUTING, lambda m: m.dport == 80, lambda: Decision(
        nat=NatAction(NatKind.DNAT, ip_address(POD1), 8080)))])
    pl = Pipeline(node(), IptablesRuleset(stub))
    p1 = P.parse(pl.receive(P.build(POD2, VIP, "tcp", sport=3333, dport=80), "cni0").packet)
    # the same pod opens a direct connection with the tuple the first one was translated to
    p2 = pl.receive(P.build(POD2, POD1, "tcp", sport=3333, dport=8080), "cni0")
    assert (p1.sport, p1.dport) == (3333, 8080)
    assert P.parse(p2.packet).sport != 3333 and p2.verdict is Verdict.ACCEPT


def test_drop_and_reject_stop_the_packet_and_leave_no_conntrack():
    stub = StubEvaluator([
        StubRule("filter", Hook.FORWARD, lambda m: m.dport == 23, lambda: Decision(verdict=Verdict.DROP)),
        StubRule("filter", Hook.FORWARD, lambda m: m.dport == 24, lambda: Decision(verdict=Verdict.REJECT)),
        StubRule("filter", Hook.FORWARD, lambda m: m.dport == 25,
                 lambda: Decision(verdict=Verdict.REJECT, reject_with="tcp-reset")),
    ])
    pl = Pipeline(node(), IptablesRuleset(stub))
    d = pl.receive(udp(CLIENT, POD1, 1, 23), "eth0")
    assert d.verdict is Verdict.DROP and d.response is None and "FORWARD" in d.reason
    rj = pl.receive(udp(CLIENT, POD1, 1, 24), "eth0")
    err = P.parse(rj.response)
    assert rj.verdict is Verdict.REJECT and (err.icmp_type, err.icmp_code) == (3, 3)
    assert str(err.src) == NODE_IP and str(err.dst) == CLIENT  # from the address facing the client
    rst = P.parse(pl.receive(P.build(CLIENT, POD1, "tcp", sport=9, dport=25, flags="S"), "eth0").response)
    assert rst.tcp_flags & P.TCP_RST and (rst.sport, rst.dport) == (25, 9)
    assert len(pl.conntrack) == 0
    assert [s.rule_number for s in rj.trace if (s.table, s.chain) == ("filter", "FORWARD")] == [2]


def test_mark_and_ctmark_flow_between_tables():
    stub = StubEvaluator([
        StubRule("mangle", Hook.PREROUTING, lambda m: True, lambda: Decision(mark=0x4000, ct_mark=7)),
        StubRule("filter", Hook.FORWARD, lambda m: m.mark != 0x4000 or m.ct_mark != 7,
                 lambda: Decision(verdict=Verdict.DROP)),
    ])
    pl = Pipeline(node(), IptablesRuleset(stub))
    r = pl.receive(udp(CLIENT, POD1, 1, 2), "eth0")
    assert r.verdict is Verdict.ACCEPT and r.mark == 0x4000 and r.conntrack.mark == 7


def test_no_route_and_forwarding_off_are_drops_with_reasons():
    pl = Pipeline(Node.simple([Interface.of("eth0", f"{NODE_IP}/24")]))
    r = pl.receive(udp(CLIENT, "8.8.8.8", 1, 53), "eth0")
    assert r.verdict is Verdict.DROP and "no route" in r.reason
    n = node()
    n.forwarding = False
    assert "forwarding" in Pipeline(n).receive(udp(CLIENT, POD1, 1, 2), "eth0").reason
    with pytest.raises(KeyError, match="no interface 'nope'"):
        Pipeline(node()).receive(udp(CLIENT, POD1, 1, 2), "nope")


def test_icmp_error_from_backend_is_related_and_translated():
    stub = StubEvaluator([dnat_to((POD1, 5353))])
    pl = Pipeline(node(), IptablesRuleset(stub))
    sent = pl.receive(udp(CLIENT, VIP, 40000, 53), "eth0").packet
    err = pl.receive(P.icmp_error(sent, src=POD1), "cni0")
    h = P.parse(err.packet)
    assert err.ct_state is CtState.RELATED
    assert (str(h.src), str(h.dst)) == (VIP, CLIENT)  # outer: looks like the VIP answered
    assert (str(h.inner.dst), h.inner.dport, str(h.inner.src)) == (VIP, 53, CLIENT)  # quote: as sent
    assert err.packet == P.fix_checksums(err.packet)


def test_conntrack_entries_expire_on_the_injected_clock():
    clock = ManualClock()
    stub = StubEvaluator([dnat_to((POD1, 5353), (POD2, 5353))])
    pl = Pipeline(node(), IptablesRuleset(stub), clock=clock, timeouts=Timeouts.kube_proxy())
    pl.receive(udp(CLIENT, VIP, 40000, 53), "eth0")
    clock.advance(29)
    assert str(P.parse(pl.receive(udp(CLIENT, VIP, 40000, 53), "eth0").packet).dst) == POD1
    clock.advance(30)  # 30 s unreplied UDP timeout since the last packet
    assert str(P.parse(pl.receive(udp(CLIENT, VIP, 40000, 53), "eth0").packet).dst) == POD2


def test_reject_after_dnat_answers_from_the_service_address():
    """REJECT's answer carries the rejected packet's conntrack entry (nf_ct_attach), so NAT makes it
    come from the address the client used, as the kernel does (checked in the lab tests)."""
    stub = StubEvaluator([dnat_to((POD1, 5353)),
                          StubRule("filter", Hook.FORWARD, lambda m: m.dport == 5353,
                                   lambda: Decision(verdict=Verdict.REJECT))])
    pl = Pipeline(node(), IptablesRuleset(stub))
    r = pl.receive(udp(CLIENT, VIP, 40000, 53), "eth0")
    err = P.parse(r.response)
    assert r.verdict is Verdict.REJECT and str(err.src) == VIP and str(err.dst) == CLIENT
    assert (str(err.inner.dst), err.inner.dport) == (VIP, 53)  # the quote shows what the client sent
    assert r.response == P.fix_checksums(r.response)
    assert r.response_result.path[:2] == ["OUTPUT:raw", "OUTPUT:mangle"]  # no re-tracking
    assert len(pl.conntrack) == 0  # neither the rejected flow nor its answer is confirmed


def test_forwarding_decrements_ttl_and_answers_expiry():
    pl = Pipeline(node())
    r = pl.receive(P.build(CLIENT, POD1, "udp", sport=1, dport=2, ttl=5), "eth0")
    assert P.parse(r.packet).ttl == 4 and r.packet == P.fix_checksums(r.packet)
    dead = pl.receive(P.build(CLIENT, POD1, "udp", sport=1, dport=2, ttl=1), "eth0")
    err = P.parse(dead.response)
    assert dead.verdict is Verdict.DROP and (err.icmp_type, err.icmp_code) == (11, 0)
    six = Pipeline(Node.simple([Interface.of("eth0", "fd00:100::1/64"), Interface.of("cni0", "fd00:244::1/64")]))
    e6 = P.parse(six.receive(P.build("fd00:100::2", "fd00:244::5", "udp", sport=1, dport=2, ttl=1),
                             "eth0").response)
    assert (e6.icmp_type, e6.icmp_code) == (3, 0)  # ICMPv6 time exceeded
    assert P.parse(pl.send(P.build(NODE_IP, POD1, "udp", sport=1, dport=2, ttl=5)).packet).ttl == 5


def test_conntrack_fields_reach_the_evaluator():
    stub = StubEvaluator([dnat_to((POD1, 5353))])
    pl = Pipeline(node(), IptablesRuleset(stub), timeouts=Timeouts.kube_proxy())
    pl.receive(udp(CLIENT, VIP, 40000, 53), "eth0")
    m = [meta for t, h, meta in stub.calls if (t, h) == ("filter", Hook.FORWARD)][0]
    assert (str(m.ct_origdst), m.ct_origdport) == (VIP, 53)
    assert (str(m.ct_replsrc), m.ct_replsport, str(m.ct_repldst)) == (POD1, 5353, CLIENT)
    assert "DNAT" in m.ct_status and m.ct_expire == 30 and m.ttl == 63


def test_snat_port_range_exhaustion_drops_at_confirm():
    """SNAT to one address and four ports: four clients sharing a source port get the four ports;
    a fifth finds no unique tuple, and the kernel's confirm step drops it (insert_failed)."""
    stub = StubEvaluator([StubRule("nat", Hook.POSTROUTING, lambda m: True, lambda: Decision(
        nat=NatAction(NatKind.SNAT, ip_address("192.168.100.10"), 2000, port_max=2003)))])
    pl = Pipeline(node(), IptablesRuleset(stub))
    pods = [f"10.244.1.{i}" for i in range(10, 15)]
    results = [pl.receive(udp(p, "192.168.100.9", 5000, 53), "cni0") for p in pods]
    ports = sorted(P.parse(r.packet).sport for r in results[:4])
    assert ports == [2000, 2001, 2002, 2003]
    assert {str(P.parse(r.packet).src) for r in results[:4]} == {"192.168.100.10"}
    assert results[4].verdict is Verdict.DROP and "insert failed" in results[4].reason
    assert pl.conntrack.stats["insert_failed"] == 1
    # each reply finds its own pod
    for r in results[:4]:
        h = P.parse(r.packet)
        back = P.parse(pl.receive(udp("192.168.100.9", "192.168.100.10", 53, h.sport), "eth0").packet)
        assert str(back.dst) == str(P.parse(r.original).src) and back.dport == 5000
