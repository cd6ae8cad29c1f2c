"""The reference iptables evaluator: traversal, each match with kernel semantics, traces, statistic."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from dataplane.engine.iptables_eval import EvaluationError, HostAddresses, IptablesEvaluator, MatchContext
from dataplane.engine.types import CtState, Hook, NatKind, PacketMeta, Verdict
from dataplane.proxy.iptables.parser import parse

KUBE_EXAMPLE = Path(__file__).parents[1] / "proxy" / "data" / "kube-proxy-1.11.txt"
HOST = HostAddresses.of({"eth0": ["192.168.100.2/24"], "cni0": ["10.244.0.1/24"], "lo": ["127.0.0.1/8"]})


def ctx(seed: int = 0, **kw: object) -> MatchContext:
    return MatchContext(HOST, rng=random.Random(seed), **kw)  # type: ignore[arg-type]


def evaluator(*rules: str, table: str = "filter", policy: str = "ACCEPT", chains: str = "X Y Z",
              family: int = 4) -> IptablesEvaluator:
    base = {"filter": "INPUT FORWARD OUTPUT", "nat": "PREROUTING INPUT OUTPUT POSTROUTING",
            "mangle": "PREROUTING INPUT FORWARD OUTPUT POSTROUTING"}[table].split()
    head = "".join(f":{c} {policy} [0:0]\n" for c in base) + "".join(f":{c} - [0:0]\n" for c in chains.split())
    return IptablesEvaluator(parse(f"*{table}\n{head}" + "".join(r + "\n" for r in rules) + "COMMIT\n",
                                   family=family))


def pkt(src: str = "10.244.1.5", dst: str = "10.96.0.50", proto: str = "tcp", sport: int = 40000,
        dport: int = 80, **kw: object) -> PacketMeta:
    return PacketMeta.make(src, dst, proto, sport, dport, **kw)


def verdict(ev: IptablesEvaluator, p: PacketMeta, hook: Hook = Hook.INPUT, table: str = "filter",
            context: MatchContext | None = None) -> Verdict:
    return ev.evaluate(table, hook, p, context or ctx()).verdict


# ---------------------------------------------------------------- the kube-proxy example (§1.11)

@pytest.fixture(scope="module")
def kube() -> IptablesEvaluator:
    return IptablesEvaluator(parse(KUBE_EXAMPLE.read_text()))


def test_clusterip_trace_shows_the_sep_dnat(kube: IptablesEvaluator) -> None:
    d = kube.evaluate("nat", Hook.PREROUTING, pkt("10.244.9.9", "10.96.0.50", iif="cni0"), ctx(seed=3))
    assert d.verdict is Verdict.ACCEPT and d.nat is not None and d.nat.kind is NatKind.DNAT
    assert (str(d.nat.addr), d.nat.port) in {("10.244.1.5", 8080), ("10.244.2.7", 8080)}
    steps = [(s.chain, s.rule_number, s.matched) for s in d.trace]
    assert steps[:3] == [("PREROUTING", 1, True), ("KUBE-SERVICES", 1, True),
                         ("KUBE-SVC-CDGGSHYLG3RE2FKL", 1, False)]  # pod source: no masquerade mark
    last = d.trace[-1]
    assert last.chain.startswith("KUBE-SEP-") and last.matched and "-j DNAT --to-destination" in last.rule_text
    assert last.rule_text == [r for r in KUBE_EXAMPLE.read_text().splitlines()
                              if r.startswith(f"-A {last.chain} -p tcp")][0]
    assert d.rules_evaluated == sum(1 for s in d.trace if s.note != "return" and s.rule_number)
    assert d.mark == 0


def test_clusterip_all_branches(kube: IptablesEvaluator) -> None:
    branches = kube.evaluate_branches("nat", Hook.PREROUTING, pkt("10.244.9.9", "10.96.0.50"), ctx())
    assert [(str(b.decision.nat.addr), b.probability) for b in branches] == [("10.244.1.5", 0.5), ("10.244.2.7", 0.5)]


def test_hairpin_is_marked_for_masquerade(kube: IptablesEvaluator) -> None:
    branches = kube.evaluate_branches("nat", Hook.PREROUTING, pkt("10.244.1.5", "10.96.0.50"), ctx())
    marks = {str(b.decision.nat.addr): b.decision.mark for b in branches}
    assert marks == {"10.244.1.5": 0x4000, "10.244.2.7": 0}


def test_off_cluster_source_is_marked(kube: IptablesEvaluator) -> None:
    d = kube.evaluate("nat", Hook.PREROUTING, pkt("192.168.100.50", "10.96.0.60"), ctx())
    assert d.mark == 0x4000 and str(d.nat.addr) == "10.244.3.9"


def test_nodeport_needs_a_local_destination(kube: IptablesEvaluator) -> None:
    d = kube.evaluate("nat", Hook.PREROUTING, pkt("192.168.100.50", "192.168.100.2", dport=30080), ctx())
    assert str(d.nat.addr) == "10.244.3.9" and d.mark == 0x4000
    d = kube.evaluate("nat", Hook.PREROUTING, pkt("192.168.100.50", "192.168.100.77", dport=30080), ctx())
    assert d.nat is None and d.verdict is Verdict.ACCEPT
    assert d.trace[-1].note == "policy ACCEPT" and d.rules_evaluated == 1 + 3


def test_postrouting_masquerades_marked_packets_and_clears_the_mark(kube: IptablesEvaluator) -> None:
    d = kube.evaluate("nat", Hook.POSTROUTING, pkt(oif="eth0", mark=0x4000 | 0x1), ctx())
    assert d.nat is not None and d.nat.kind is NatKind.MASQUERADE and d.nat.random_fully
    assert d.mark == 0x1  # --set-xmark 0x0/0x4000 clears only the masquerade bit
    d = kube.evaluate("nat", Hook.POSTROUTING, pkt(oif="eth0", mark=0x1), ctx())
    assert d.nat is None and d.mark == 0x1


# ---------------------------------------------------------------- traversal

def test_jump_return_goto_and_policy() -> None:
    ev = evaluator("-A INPUT -j X", "-A INPUT -j ACCEPT", "-A X -j Y", "-A X -j DROP",
                   "-A Y -j RETURN", policy="DROP")
    d = ev.evaluate("filter", Hook.INPUT, pkt(), ctx())
    assert d.verdict is Verdict.DROP and [(s.chain, s.rule_number) for s in d.trace] == [
        ("INPUT", 1), ("X", 1), ("Y", 1), ("X", 2)]
    # goto: when Y returns, control goes back to INPUT (X's caller is skipped)
    ev = evaluator("-A INPUT -j X", "-A INPUT -j ACCEPT", "-A X -g Y", "-A X -j DROP", "-A Y -j RETURN",
                   policy="DROP")
    assert verdict(ev, pkt()) is Verdict.ACCEPT
    # goto from the built-in chain: returning ends at the policy
    ev = evaluator("-A INPUT -g Y", "-A INPUT -j ACCEPT", "-A Y -p udp -j ACCEPT", policy="DROP")
    d = ev.evaluate("filter", Hook.INPUT, pkt(), ctx())
    assert d.verdict is Verdict.DROP and d.trace[-1].note == "policy DROP" and d.trace[-2].note == "return"
    # RETURN in the built-in chain falls to the policy
    assert verdict(evaluator("-A INPUT -j RETURN", "-A INPUT -j ACCEPT", policy="DROP"), pkt()) is Verdict.DROP


def test_reject_and_no_target() -> None:
    ev = evaluator("-A INPUT -p udp", "-A INPUT -p tcp -j REJECT --reject-with tcp-reset")
    d = ev.evaluate("filter", Hook.INPUT, pkt(), ctx())
    assert d.verdict is Verdict.REJECT and d.reject_with == "tcp-reset" and d.rules_evaluated == 2


def test_hook_without_chain_accepts() -> None:
    ev = evaluator("-A INPUT -j DROP")
    assert ev.evaluate("nat", Hook.PREROUTING, pkt(), ctx()).verdict is Verdict.ACCEPT
    assert ev.evaluate("filter", Hook.PREROUTING, pkt(), ctx()).rules_evaluated == 0


def test_chain_loop_is_refused() -> None:
    with pytest.raises(EvaluationError, match="loop"):
        evaluator("-A INPUT -j X", "-A X -j Y", "-A Y -g X")


def test_wrong_family_is_refused() -> None:
    with pytest.raises(EvaluationError, match="IPv6"):
        evaluator("-A INPUT -j DROP").evaluate("filter", Hook.INPUT, pkt("2001:db8::1", "2001:db8::2"), ctx())


def test_ipv6_rules() -> None:
    ev = evaluator("-A INPUT -s 2001:db8::/64 -p tcp -m tcp --dport 80 -j DROP", family=6)
    assert verdict(ev, pkt("2001:db8::1", "2001:db8:1::2")) is Verdict.DROP
    assert verdict(ev, pkt("2001:db9::1", "2001:db8:1::2")) is Verdict.ACCEPT


def test_icmpv6_types() -> None:
    ev = evaluator("-A INPUT -p ipv6-icmp --icmpv6-type echo-request -j DROP",
                   "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 1/4 -j REJECT", family=6)
    icmp6 = {"proto": "icmpv6", "sport": 0, "dport": 0}
    assert verdict(ev, pkt("2001:db8::1", "2001:db8::2", icmp_type=128, icmp_code=0, **icmp6)) is Verdict.DROP
    assert verdict(ev, pkt("2001:db8::1", "2001:db8::2", icmp_type=1, icmp_code=4, **icmp6)) is Verdict.REJECT
    assert verdict(ev, pkt("2001:db8::1", "2001:db8::2", icmp_type=1, icmp_code=3, **icmp6)) is Verdict.ACCEPT


def test_lenient_unknown_rules_are_skipped_with_a_note() -> None:
    rs = parse("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m owner --uid-owner 0 -j DROP\n-A INPUT -j DROP\nCOMMIT\n",
               strict=False)
    d = IptablesEvaluator(rs).evaluate("filter", Hook.INPUT, pkt(), ctx())
    assert d.verdict is Verdict.DROP and "unknown rule" in d.trace[0].note and not d.trace[0].matched


# ---------------------------------------------------------------- matches

@pytest.mark.parametrize("rule, packet, hit", [
    ("-s 10.244.0.0/16", pkt(), True),
    ("! -s 10.244.0.0/16", pkt(), False),
    ("-d 10.96.0.50/32", pkt(), True),
    ("-s 10.0.0.0/255.0.255.0", pkt("10.9.0.9"), True),
    ("-s 10.0.0.0/255.0.255.0", pkt("10.9.1.9"), False),
    ("-i eth+", pkt(iif="eth0"), True),
    ("-i eth+", pkt(iif="veth0"), False),
    ("-i eth0", pkt(iif=None), False),
    ("-i +", pkt(iif=None), True),  # a zero-length mask matches even no interface
    ("! -o eth0", pkt(oif=None), True),
    ("-p udp", pkt(), False),
    ("! -p udp", pkt(), True),
    ("-p tcp -m tcp --dport 80:90", pkt(dport=90), True),
    ("-p tcp -m tcp ! --dport 80:90", pkt(dport=90), False),
    ("-p tcp -m tcp --sport 40000 --dport 81", pkt(), False),
    ("-p tcp -m tcp --syn", pkt(tcp_flags=0x02), True),
    ("-p tcp -m tcp --syn", pkt(tcp_flags=0x12), False),
    ("-p tcp -m tcp ! --syn", pkt(tcp_flags=0x10), True),
    ("-p tcp -m multiport --dports 22,80:81", pkt(), True),
    ("-p tcp -m multiport --sports 22,80:81", pkt(), False),
    ("-p tcp -m multiport --ports 40000", pkt(), True),
    ("-p tcp -m multiport ! --ports 40000,80", pkt(), False),
    ("-p icmp -m icmp --icmp-type 8", pkt(proto="icmp", sport=0, dport=0, icmp_type=8, icmp_code=0), True),
    ("-p icmp -m icmp --icmp-type 3/3", pkt(proto="icmp", sport=0, dport=0, icmp_type=3, icmp_code=1), False),
    ("-p icmp -m icmp --icmp-type any", pkt(proto="icmp", sport=0, dport=0, icmp_type=0, icmp_code=0), True),
    ("-m mark --mark 0x4000/0x4000", pkt(mark=0x4001), True),
    ("-m mark --mark 0x4000", pkt(mark=0x4001), False),
    ("-m connmark ! --mark 0x1/0xf", pkt(ct_mark=0x11), False),
    ("-m comment --comment anything", pkt(), True),
    ("-m conntrack --ctstate NEW", pkt(), True),
    ("-m conntrack ! --ctstate NEW,RELATED", pkt(ct_state=CtState.ESTABLISHED), True),
    ("-m conntrack --ctstate DNAT", pkt(ct_state=CtState.ESTABLISHED, ct_status=frozenset({"DNAT"})), True),
    ("-m conntrack --ctstate INVALID", pkt(ct_state=CtState.INVALID), True),
    ("-m conntrack --ctorigdst 10.96.0.0/12", pkt(ct_state=CtState.INVALID), False),  # no conntrack entry
    ("-m conntrack --ctorigdst 10.96.0.0/12", pkt("10.244.1.5", "10.244.2.7", ct_origdst=PacketMeta.make(
        "1.1.1.1", "10.96.0.50", "tcp").dst), True),
    ("-m conntrack --ctrepldst 10.244.1.5", pkt(), True),  # reply tuple of an un-NATed connection
    ("-m conntrack --ctdir REPLY", pkt(), False),
    ("-m conntrack --ctdir ORIGINAL", pkt(), True),
    ("-m conntrack --ctstatus NONE", pkt(), False),  # status mask 0 never matches (kernel)
    ("-m conntrack ! --ctstatus ASSURED", pkt(ct_status=frozenset({"CONFIRMED"})), True),
    ("-m conntrack --ctproto 17", pkt(), False),
    ("-m conntrack --ctorigsrcport 40000 --ctorigdstport 80:80", pkt(), True),
    ("-m conntrack --ctexpire 10:20", pkt(ct_expire=15), True),
    ("-m state --state ESTABLISHED", pkt(ct_state=CtState.ESTABLISHED), True),
    ("-m state ! --state NEW", pkt(), False),
    ("-m addrtype --dst-type LOCAL", pkt(dst="192.168.100.2"), True),
    ("-m addrtype --dst-type LOCAL", pkt(dst="127.0.0.53"), True),
    ("-m addrtype --dst-type LOCAL", pkt(dst="192.168.100.3"), False),
    ("-m addrtype --dst-type UNICAST", pkt(dst="192.168.100.3"), True),
    ("-m addrtype --dst-type BROADCAST", pkt(dst="192.168.100.255"), True),
    ("-m addrtype --dst-type MULTICAST", pkt(dst="224.0.0.1", proto="udp"), True),
    ("-m addrtype ! --src-type LOCAL --dst-type LOCAL", pkt("10.244.1.5", "10.244.0.1"), True),
    ("-m addrtype --dst-type LOCAL --limit-iface-in", pkt(dst="192.168.100.2", iif="eth0"), True),
    ("-m addrtype --dst-type LOCAL --limit-iface-in", pkt(dst="192.168.100.2", iif="cni0"), False),
])
def test_match(rule: str, packet: PacketMeta, hit: bool) -> None:
    ev = evaluator(f"-A INPUT {rule} -j DROP")
    assert verdict(ev, packet) is (Verdict.DROP if hit else Verdict.ACCEPT)


def test_mark_target_is_seen_by_later_matches() -> None:
    ev = evaluator("-A INPUT -j MARK --or-mark 0x10", "-A INPUT -m mark --mark 0x10/0x10 -j CONNMARK --save-mark",
                   "-A INPUT -j MARK --set-xmark 0x0/0xffffffff", "-A INPUT -m mark --mark 0x0 -j X",
                   "-A X -j CONNMARK --restore-mark --mask 0xf0")
    d = ev.evaluate("filter", Hook.INPUT, pkt(mark=0x1, ct_mark=0x100), ctx())
    assert d.ct_mark == 0x11 and d.mark == 0x10


@pytest.mark.parametrize("spec, before, after", [
    ("--set-xmark 0x4000/0x4000", 0x1, 0x4001),
    ("--and-mark 0xf", 0x1234, 0x4),
    ("--xor-mark 0x3", 0x1, 0x2),
    ("--set-mark 0x5", 0xFFFF, 0x5),
    ("--set-mark 0x5/0xf", 0xFF, 0xF5),
])
def test_mark_target_arithmetic(spec: str, before: int, after: int) -> None:
    d = evaluator(f"-A INPUT -j MARK {spec}").evaluate("filter", Hook.INPUT, pkt(mark=before), ctx())
    assert d.mark == after


# ---------------------------------------------------------------- statistic

def test_statistic_quantisation_and_draw() -> None:
    """p=1/3 is stored as lround(2^31/3) = 715827883 and matches when (r & 0x7fffffff) < that."""
    ev = evaluator("-A INPUT -m statistic --mode random --probability 0.3333333333 -j DROP")
    rule = ev.ruleset.tables["filter"].chains["INPUT"].rules[0]
    assert rule.matches[0].probability == 715827883
    draws = iter([715827882, 715827883, 0x80000000 | 5, 0xFFFFFFFF])
    context = MatchContext(HOST, rng=lambda: next(draws))
    assert [verdict(ev, pkt(), context=context) for _ in range(4)] == [
        Verdict.DROP, Verdict.ACCEPT, Verdict.DROP, Verdict.ACCEPT]


def test_statistic_draws_one_number_per_rule_in_order() -> None:
    ev = evaluator("-A INPUT -m statistic --mode random --probability 0.5 -j X",
                   "-A INPUT -m statistic --mode random ! --probability 0.5 -j Y", "-A INPUT -j ACCEPT",
                   "-A X -j DROP", "-A Y -p tcp -j REJECT")
    seen: list[int] = []
    values = iter([0x40000000, 0x3FFFFFFF])

    def rng() -> int:
        seen.append(next(values))
        return seen[-1]
    d = ev.evaluate("filter", Hook.INPUT, pkt(), MatchContext(HOST, rng=rng))
    assert seen == [0x40000000, 0x3FFFFFFF]  # rule 1 missed, rule 2 (inverted) drew below p -> no match
    assert d.verdict is Verdict.ACCEPT
    # the same seed reproduces the same outcomes
    runs = [[ev.evaluate("filter", Hook.INPUT, pkt(), c).verdict for _ in range(50)]
            for c in (ctx(seed=7), ctx(seed=7))]
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_statistic_branch_probabilities_are_exact() -> None:
    ev = evaluator("-A INPUT -m statistic --mode random --probability 0.3333333333 -j X",
                   "-A INPUT -m statistic --mode random --probability 0.5000000000 -j Y", "-A INPUT -j Z",
                   "-A X -j MARK --set-mark 1", "-A Y -j MARK --set-mark 2", "-A Z -j MARK --set-mark 3")
    branches = ev.evaluate_branches("filter", Hook.INPUT, pkt(), ctx())
    q1 = 715827883 / 2**31
    # X and Y return, so later rules still run: 4 paths, each ending in Z's mark 3
    assert sorted(b.choices for b in branches) == [(False, False), (False, True), (True, False), (True, True)]
    probs = {b.choices: b.probability for b in branches}
    assert probs[(True, True)] == q1 * 0.5 and probs[(False, False)] == (1 - q1) * 0.5
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-15)
    assert {b.decision.mark for b in branches} == {3}


def test_statistic_distribution_follows_the_cascade() -> None:
    ev = evaluator("-A INPUT -m statistic --mode random --probability 0.3333333333 -j X",
                   "-A INPUT -m statistic --mode random --probability 0.5000000000 -j Y", "-A INPUT -j Z",
                   "-A X -j DROP", "-A Y -p tcp -j REJECT", "-A Z -j ACCEPT")
    ev.trace_enabled = False
    c, n = ctx(seed=11), 6000
    counts = Counter(ev.evaluate("filter", Hook.INPUT, pkt(), c).verdict for _ in range(n))
    q1 = 715827883 / 2**31
    expected = {Verdict.DROP: q1, Verdict.REJECT: (1 - q1) / 2, Verdict.ACCEPT: (1 - q1) / 2}
    chi2 = sum((counts[v] - n * p) ** 2 / (n * p) for v, p in expected.items())
    assert chi2 < 13.8  # 2 degrees of freedom, p = 0.001
    branches = ev.evaluate_branches("filter", Hook.INPUT, pkt(), ctx())
    assert {b.decision.verdict: b.probability for b in branches} == expected


def test_nth_counter_follows_the_kernel() -> None:
    """libxt_statistic stores count = (every-1) - packet; xt_statistic matches when it wraps to 0."""
    ev = evaluator("-A INPUT -m statistic --mode nth --every 3 --packet 1 -j DROP",
                   "-A INPUT -m statistic --mode nth --every 2 --packet 0 -j REJECT")
    out = [verdict(ev, pkt()) for _ in range(7)]
    # rule 1 hits packets 2, 5, ...; rule 2's counter only moves when rule 2 is reached (1, 3, 4, 6, 7)
    assert out == [Verdict.REJECT, Verdict.DROP, Verdict.ACCEPT, Verdict.REJECT, Verdict.DROP, Verdict.ACCEPT,
                   Verdict.REJECT]


def test_branches_leave_state_untouched() -> None:
    ev = evaluator("-A INPUT -m recent --set --name L", "-A INPUT -m statistic --mode nth --every 2 --packet 0 -j X",
                   "-A INPUT -m statistic --mode random --probability 0.5 -j DROP")
    before = dict(ev._nth)
    branches = ev.evaluate_branches("filter", Hook.INPUT, pkt(), ctx())
    assert [b.probability for b in branches] == [0.5, 0.5]
    assert ev._nth == before and ev.recent.addresses("L") == []
