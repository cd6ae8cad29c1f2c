"""The real-kernel lab: a small deterministic DNAT/SNAT/DROP/REJECT rule set loaded into a scratch node
namespace with iptables-legacy, iptables-nft and nft; the lab must observe exactly what the rules say,
and the engine pipeline (driven by a hand-written evaluator for the same rules) must agree per packet."""

from __future__ import annotations

import random
import time
from collections import Counter
from ipaddress import ip_address, ip_network

import pytest

from dataplane.engine.pipeline import EvalContext, IptablesRuleset, Pipeline
from dataplane.engine.types import Decision, Hook, NatAction, NatKind, PacketMeta, Verdict
from dataplane.testing.netfilter_lab import (Flow, LabError, NetfilterLab, differences,
                                             engine_observation)

CLIENT = "192.168.100.2"

IPTABLES = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.244.1.10:5353
-A PREROUTING -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.11:8080
-A POSTROUTING -s 10.99.0.0/16 -o eth1 -j SNAT --to-source 10.244.1.1
-A POSTROUTING -s 192.168.100.0/24 -o eth1 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -d 10.244.1.12/32 -j DROP
-A FORWARD -d 10.244.1.13/32 -p udp -j REJECT --reject-with icmp-port-unreachable
-A FORWARD -d 10.244.1.13/32 -p tcp -j REJECT --reject-with tcp-reset
-A FORWARD -d 10.244.1.14/32 -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""

NFT = """table ip lab {
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.96.0.10 udp dport 53 dnat to 10.244.1.10:5353
    ip daddr 10.96.0.11 tcp dport 80 dnat to 10.244.1.11:8080
  }
  chain post { type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.99.0.0/16 oifname "eth1" snat to 10.244.1.1
    ip saddr 192.168.100.0/24 oifname "eth1" masquerade
  }
  chain filter_forward { type filter hook forward priority filter; policy accept;
    ip daddr 10.244.1.12 drop
    ip daddr 10.244.1.13 meta l4proto udp reject with icmp type port-unreachable
    ip daddr 10.244.1.13 meta l4proto tcp reject with tcp reset
    ip daddr 10.244.1.14 reject with icmp type host-prohibited
  }
}
"""


class SameRulesByHand:
    """The rule set above, written as a stub evaluator for the pipeline."""

    def evaluate(self, table: str, hook: Hook, m: PacketMeta, context: EvalContext) -> Decision:
        dst, proto = str(m.dst), m.proto
        if (table, hook) == ("nat", Hook.PREROUTING):
            if dst == "10.96.0.10" and proto == 17 and m.dport == 53:
                return Decision(nat=NatAction(NatKind.DNAT, ip_address("10.244.1.10"), 5353))
            if dst == "10.96.0.11" and proto == 6 and m.dport == 80:
                return Decision(nat=NatAction(NatKind.DNAT, ip_address("10.244.1.11"), 8080))
        if (table, hook) == ("nat", Hook.POSTROUTING) and m.oif == "eth1":
            if m.src in ip_network("10.99.0.0/16"):
                return Decision(nat=NatAction(NatKind.SNAT, ip_address("10.244.1.1")))
            if m.src in ip_network("192.168.100.0/24"):
                return Decision(nat=NatAction(NatKind.MASQUERADE))
        if (table, hook) == ("filter", Hook.FORWARD):
            if dst == "10.244.1.12":
                return Decision(verdict=Verdict.DROP)
            if dst == "10.244.1.13" and proto == 17:
                return Decision(verdict=Verdict.REJECT, reject_with="icmp-port-unreachable")
            if dst == "10.244.1.13" and proto == 6:
                return Decision(verdict=Verdict.REJECT, reject_with="tcp-reset")
            if dst == "10.244.1.14":
                return Decision(verdict=Verdict.REJECT, reject_with="icmp-host-prohibited")
        return Decision()


def flows(n: int, seed: int) -> list[Flow]:
    rnd = random.Random(seed)
    srcs = [CLIENT, "10.99.3.4", "10.99.7.7", "172.16.0.9"]
    dsts = [("10.96.0.10", "udp", 53), ("10.96.0.11", "tcp", 80), ("10.96.0.10", "tcp", 53),
            ("10.244.1.12", "udp", 9), ("10.244.1.13", "udp", 9), ("10.244.1.13", "tcp", 9),
            ("10.244.1.14", "udp", 9), ("10.244.1.15", "tcp", 22), ("10.244.1.15", "icmp", 0),
            ("203.0.113.5", "udp", 53)]
    out = []
    for i in range(n):
        dst, proto, dport = rnd.choice(dsts)
        out.append(Flow(rnd.choice(srcs), dst, proto, sport=20000 + i, dport=dport))
    return out


def expected(flow: Flow) -> tuple:
    """What the rules say, written out independently of both the kernel and the engine."""
    masq = "10.244.1.1" if flow.src.startswith(("10.99.", "192.168.100.")) else flow.src
    if (flow.dst, flow.proto, flow.dport) == ("10.96.0.10", "udp", 53):
        return ("delivered", masq, "10.244.1.10:5353")
    if (flow.dst, flow.proto, flow.dport) == ("10.96.0.11", "tcp", 80):
        return ("delivered", masq, "10.244.1.11:8080")
    if flow.dst == "10.244.1.12":
        return ("dropped", None, None)
    if flow.dst == "10.244.1.13":
        return ("rejected", "tcp-reset" if flow.proto == "tcp" else "icmp type 3 code 3", None)
    if flow.dst == "10.244.1.14":
        return ("rejected", "icmp type 3 code 10", None)
    if flow.dst.startswith("10.244.1."):
        return ("delivered", masq, f"{flow.dst}:{flow.dport}" if flow.dport else flow.dst)
    if flow.dst == "10.96.0.10":  # tcp to the UDP-only service: routed back out to the client side
        return ("returned", flow.src, f"{flow.dst}:{flow.dport}")
    return ("returned", flow.src, f"{flow.dst}:{flow.dport}")


def summary(o) -> tuple:
    if o.outcome == "rejected":
        return (o.outcome, o.reject, None)
    return (o.outcome, o.src, o.endpoint)


@pytest.fixture
def lab(sandbox):
    return NetfilterLab.create(sandbox)


@pytest.mark.requires("root", "veth", "iptables-legacy", "conntrack")
def test_lab_observes_exactly_what_iptables_legacy_rules_say(lab):
    lab.load_iptables(IPTABLES, backend="legacy")
    fl = flows(400, seed=1)
    obs = lab.send(fl)
    assert [summary(o) for o in obs] == [expected(f) for f in fl]
    kinds = Counter(o.outcome for o in obs)
    assert set(kinds) == {"delivered", "dropped", "rejected", "returned"}
    # source ports survive MASQUERADE/SNAT when free; REJECT answers come from the node's eth0 address
    assert all(o.sport == o.flow.sport for o in obs if o.outcome == "delivered" and o.flow.proto != "icmp")
    assert {o.reject_src for o in obs if o.outcome == "rejected" and o.reject != "tcp-reset"} == {"192.168.100.1"}


@pytest.mark.requires("root", "veth", "iptables-nft", "conntrack")
def test_lab_with_iptables_nft_backend(lab):
    lab.load_iptables(IPTABLES, backend="nft")
    fl = flows(300, seed=2)
    assert [summary(o) for o in lab.send(fl)] == [expected(f) for f in fl]


@pytest.mark.requires("root", "veth", "nft", "conntrack")
def test_lab_with_native_nft_ruleset(lab):
    lab.load_nft(NFT)
    fl = flows(300, seed=3)
    assert [summary(o) for o in lab.send(fl)] == [expected(f) for f in fl]


@pytest.mark.requires("root", "veth", "iptables-legacy", "conntrack")
def test_engine_pipeline_agrees_with_kernel_packet_by_packet(lab):
    """2,000 real packets through the kernel, the same through the pipeline with the same rules."""
    lab.load_iptables(IPTABLES, backend="legacy")
    fl = flows(2000, seed=4)
    t0 = time.monotonic()
    kernel = lab.send(fl)
    elapsed = time.monotonic() - t0
    pipeline = Pipeline(lab.node_model(), IptablesRuleset(SameRulesByHand(), ("nat", "filter")))
    engine = [engine_observation(f, pipeline.receive(lab.probe_packet(f, i), "eth0"))
              for i, f in enumerate(fl)]
    assert differences(kernel, engine) == []
    assert elapsed < 30  # a few seconds in practice: no process per packet
    # the engine's conntrack holds exactly the connections the kernel confirmed
    assert len(pipeline.conntrack) == len(lab.conntrack_entries())


RULES6 = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d fd00:96::a/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00:244:1::10]:5353
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -d fd00:244:1::11/128 -j REJECT
COMMIT
"""


@pytest.mark.requires("root", "veth", "iptables-legacy", "conntrack")
def test_ipv6_probes_and_conntrack_flush(lab):
    lab.load_iptables(RULES6, family=6)
    fl = [Flow("fd00:100::2", "fd00:96::a", "udp", 30000 + i, 53) for i in range(50)]
    fl += [Flow("fd00:100::2", "fd00:244:1::11", "udp", 31000 + i, 53) for i in range(50)]
    obs = lab.send(fl)
    assert [o.endpoint for o in obs[:50]] == ["[fd00:244:1::10]:5353"] * 50
    assert {o.reject for o in obs[50:]} == {"icmp type 1 code 4"}  # ICMPv6 port unreachable
    assert len(lab.conntrack_entries()) == 50
    from dataplane.engine.pipeline import iptables_ruleset

    pipeline = Pipeline(lab.node_model(), iptables_ruleset(RULES6, family=6))
    engine = [engine_observation(f, pipeline.receive(lab.probe_packet(f, i), "eth0")) for i, f in enumerate(fl)]
    assert differences(obs, engine) == []
    lab.flush_conntrack()
    assert lab.conntrack_entries() == []


@pytest.mark.requires("root", "veth")
def test_bad_rules_are_a_clear_error(lab):
    with pytest.raises(LabError, match="iptables-legacy-restore"):
        lab.load_iptables("*nat\n-A NOPE -j BOGUS\nCOMMIT\n")
    with pytest.raises(LabError, match="backend must be legacy or nft"):
        lab.load_iptables("", backend="ipvs")
    with pytest.raises(LabError, match="outside the backend subnet"):
        NetfilterLab.create(lab.sandbox, backends=["10.1.1.1"])


OUTPUT_RULES = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A OUTPUT -d 10.96.0.10/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.244.1.10:5353
-A OUTPUT -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.11:8080
-A OUTPUT -d 10.96.0.12/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.12:8080
-A POSTROUTING -s 192.168.100.1/32 -o eth1 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -d 10.244.1.12/32 -j DROP
-A OUTPUT -d 10.244.1.13/32 -p udp -j REJECT
-A OUTPUT -d 10.244.1.13/32 -p tcp -j REJECT --reject-with tcp-reset
-A OUTPUT -d 10.96.0.14/32 -p udp -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""


@pytest.mark.requires("root", "veth", "iptables-legacy", "conntrack")
def test_locally_generated_packets_kernel_and_engine_agree(lab):
    """The node's own packets (host-network clients): nat OUTPUT DNAT and re-routing, filter OUTPUT
    seeing the translated address, MASQUERADE, and REJECT answers delivered back over loopback."""
    from dataplane.engine.pipeline import iptables_ruleset

    rnd = random.Random(3)
    fl = [Flow(rnd.choice(["192.168.100.1", "10.244.1.1"]),
               rnd.choice(["10.96.0.10", "10.96.0.11", "10.96.0.12", "10.96.0.14", "10.244.1.13",
                           "10.244.1.15", "203.0.113.5"]),
               rnd.choice(["tcp", "udp"]), 30000 + i, rnd.choice([53, 80])) for i in range(400)]
    lab.load_iptables(OUTPUT_RULES)
    kernel = lab.send(fl, origin="node")
    pipeline = Pipeline(lab.node_model(), iptables_ruleset(OUTPUT_RULES))
    engine = [engine_observation(f, pipeline.send(lab.probe_packet(f, i))) for i, f in enumerate(fl)]
    assert differences(kernel, engine) == []
    assert {o.outcome for o in kernel} == {"delivered", "returned", "rejected", "dropped"}
    masq = {o.src for o in kernel if o.outcome == "delivered" and o.flow.src == "192.168.100.1"}
    assert masq == {"10.244.1.1"}
    with pytest.raises(LabError, match="origin must be"):
        lab.send(fl[:1], origin="backend")
