"""The numba batch evaluator agrees with the reference evaluator, random choices included.

Random rule sets are written as iptables-save text and parsed by our parser, so the kernel sees
exactly what a dump would give; packets are drawn from small pools so that rules do match. Both
evaluators run the same packets in the same order from the same SplitMix seed.
"""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.engine import iptables_numba as K
from dataplane.engine.iptables_batch import BatchIptablesEvaluator
from dataplane.engine.iptables_eval import HostAddresses, IptablesEvaluator, MatchContext
from dataplane.engine.rng import SplitMixRandom
from dataplane.engine.types import CtState, Hook, PacketMeta, Verdict
from dataplane.proxy.iptables.parser import parse

ADDRS = ["10.244.1.5", "10.244.2.7", "10.96.0.10", "192.168.100.2", "192.168.100.3", "8.8.4.4"]
NETS = ["10.244.0.0/16", "10.96.0.10/32", "192.168.100.0/24", "10.244.2.0/24", "0.0.0.0/0"]
IFACES = ["eth0", "eth1", "veth12", "lo"]
IFACE_PATTERNS = ["eth0", "eth+", "veth+", "lo"]
PORTS = [53, 80, 443, 8080, 30080, 40000]
USER_CHAINS = ["C0", "C1", "C2", "C3"]
HOST = HostAddresses.of({"eth0": ["192.168.100.2/24"], "lo": ["127.0.0.1/8"]})


def _neg(draw) -> str:  # type: ignore[no-untyped-def]
    return "! " if draw(st.booleans()) else ""


@st.composite
def rule_spec(draw, chain_index: int, table: str, base: str = "") -> str:  # type: ignore[no-untyped-def]
    parts: list[str] = []
    if draw(st.integers(0, 3)) == 0:
        parts.append(f"{_neg(draw)}-s {draw(st.sampled_from(NETS))}")
    if draw(st.integers(0, 2)) == 0:
        parts.append(f"{_neg(draw)}-d {draw(st.sampled_from(NETS))}")
    if draw(st.integers(0, 4)) == 0:
        parts.append(f"{_neg(draw)}-i {draw(st.sampled_from(IFACE_PATTERNS))}")
    proto = draw(st.sampled_from([None, "tcp", "udp", "icmp"]))
    if proto:
        parts.append(f"{_neg(draw) if draw(st.integers(0, 5)) == 0 else ''}-p {proto}")
    matches = draw(st.lists(st.sampled_from(
        ["comment", "ports", "mark", "connmark", "addrtype", "ctstate", "ctorigdst", "multiport",
         "random", "nth", "state", "icmp"]), max_size=3, unique=True))
    neg_proto = parts and parts[-1].startswith("! -p")
    for m in matches:
        if m == "comment":
            parts.append('-m comment --comment "ns/svc:http"')
        elif m == "ports" and proto in ("tcp", "udp") and not neg_proto:
            lo = draw(st.sampled_from(PORTS))
            hi = draw(st.sampled_from([lo, lo + 100]))
            spec = f"{lo}:{hi}" if hi != lo else str(lo)
            opt = draw(st.sampled_from(["--dport", "--sport"]))
            text = f"-m {proto} {_neg(draw)}{opt} {spec}"
            if proto == "tcp" and draw(st.booleans()):
                text += " --tcp-flags SYN,ACK SYN"
            parts.append(text)
        elif m == "icmp" and proto == "icmp" and not neg_proto:
            parts.append(f"-m icmp {_neg(draw)}--icmp-type {draw(st.sampled_from(['8', '0', 'any', '3/3']))}")
        elif m == "multiport" and proto in ("tcp", "udp") and not neg_proto:
            ports = ",".join(str(p) for p in draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3)))
            parts.append(f"-m multiport {_neg(draw)}--{draw(st.sampled_from(['dports', 'sports', 'ports']))} {ports}")
        elif m == "mark":
            parts.append(f"-m mark {_neg(draw)}--mark {draw(st.sampled_from(['0x4000/0x4000', '0x1', '0x0/0xff']))}")
        elif m == "connmark":
            parts.append(f"-m connmark {_neg(draw)}--mark {draw(st.sampled_from(['0x1', '0x2/0x2']))}")
        elif m == "addrtype":
            side = draw(st.sampled_from(["--dst-type", "--src-type"]))
            parts.append(f"-m addrtype {_neg(draw)}{side} {draw(st.sampled_from(['LOCAL', 'UNICAST', 'LOCAL,BROADCAST']))}")
        elif m == "ctstate":
            states = draw(st.sampled_from(["NEW", "ESTABLISHED,RELATED", "INVALID", "DNAT", "NEW,SNAT"]))
            parts.append(f"-m conntrack {_neg(draw)}--ctstate {states}")
        elif m == "ctorigdst":
            extra = draw(st.sampled_from(["", " --ctstate NEW"]))
            parts.append(f"-m conntrack{extra} {_neg(draw)}--ctorigdst {draw(st.sampled_from(ADDRS))}")
        elif m == "state":
            parts.append(f"-m state {_neg(draw)}--state {draw(st.sampled_from(['NEW', 'ESTABLISHED']))}")
        elif m == "random":
            p = draw(st.sampled_from(["0.10000000009", "0.33333333349", "0.50000000000", "1.00000000000"]))
            parts.append(f"-m statistic --mode random {'! ' if draw(st.integers(0, 4)) == 0 else ''}--probability {p}")
        elif m == "nth":
            every = draw(st.integers(2, 4))
            parts.append(f"-m statistic --mode nth --every {every} --packet {draw(st.integers(0, every - 1))}")
    targets = ["ACCEPT", "DROP", "RETURN", "REJECT", "LOG", "MARK", "CONNMARK", "none"]
    later = USER_CHAINS[chain_index + 1:] if chain_index >= 0 else USER_CHAINS
    if later:
        targets += ["jump", "goto"]
    if table == "nat":
        # iptables-restore (and our parser) refuse source NAT reachable from PREROUTING and
        # destination NAT reachable from POSTROUTING
        targets += ["DNAT", "DNATRANGE"] if base == "PREROUTING" else ["SNAT", "MASQUERADE"]
    t = draw(st.sampled_from(targets))
    if t == "jump":
        parts.append(f"-j {draw(st.sampled_from(later))}")
    elif t == "goto":
        parts.append(f"-g {draw(st.sampled_from(later))}")
    elif t == "REJECT":
        if table == "nat":
            parts.append("-j DROP")
        else:
            parts.append(f"-j REJECT --reject-with {draw(st.sampled_from(['icmp-port-unreachable', 'icmp-host-prohibited']))}")
    elif t == "MARK":
        parts.append(f"-j MARK --set-xmark {draw(st.sampled_from(['0x4000/0x4000', '0x1/0xffffffff', '0x0/0x4000']))}")
    elif t == "CONNMARK":
        parts.append("-j CONNMARK --set-xmark 0x2/0x2")
    elif t == "DNAT":
        ports_ok = proto in ("tcp", "udp") and not neg_proto
        parts.append(f"-j DNAT --to-destination {draw(st.sampled_from(['10.244.1.5:8080', '10.244.2.7'] if ports_ok else ['10.244.2.7']))}")
    elif t == "DNATRANGE":  # not compiled: exercises the hand-over to the reference evaluator
        if proto in ("tcp", "udp") and not neg_proto:
            parts.append("-j DNAT --to-destination 10.244.1.5:8080-8090")
        else:
            parts.append("-j DNAT --to-destination 10.244.1.5-10.244.1.9")
    elif t == "SNAT":
        parts.append("-j SNAT --to-source 192.168.100.2")
    elif t == "MASQUERADE":
        parts.append(f"-j MASQUERADE{draw(st.sampled_from(['', ' --random-fully']))}")
    elif t != "none":
        parts.append(f"-j {t}")
    return " ".join(parts)


@st.composite
def ruleset_text(draw) -> tuple[str, str, str]:  # type: ignore[no-untyped-def]
    table = draw(st.sampled_from(["filter", "nat"]))
    base = "INPUT" if table == "filter" else draw(st.sampled_from(["PREROUTING", "POSTROUTING"]))
    builtins = ["INPUT", "FORWARD", "OUTPUT"] if table == "filter" else ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
    policy = draw(st.sampled_from(["ACCEPT", "DROP"])) if table == "filter" else "ACCEPT"
    lines = [f"*{table}"]
    lines += [f":{c} {policy if c == base else 'ACCEPT'} [0:0]" for c in builtins]
    lines += [f":{c} - [0:0]" for c in USER_CHAINS]
    for idx, chain in [(-1, base)] + list(enumerate(USER_CHAINS)):
        for spec in draw(st.lists(rule_spec(idx, table, base), max_size=6)):
            lines.append(f"-A {chain} {spec}".rstrip())
    lines.append("COMMIT")
    return "\n".join(lines) + "\n", table, base


@st.composite
def packet(draw) -> PacketMeta:  # type: ignore[no-untyped-def]
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    kw: dict[str, object] = {}
    if proto == "icmp":
        kw.update(icmp_type=draw(st.sampled_from([8, 0, 3])), icmp_code=draw(st.sampled_from([0, 3])))
        sport = dport = 0
    else:
        sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
        if proto == "tcp":
            kw["tcp_flags"] = draw(st.sampled_from([0x02, 0x12, 0x10]))
    state = draw(st.sampled_from(list(CtState)))
    status = frozenset(draw(st.lists(st.sampled_from(["SNAT", "DNAT", "CONFIRMED", "SEEN_REPLY"]), unique=True)))
    origdst = draw(st.sampled_from([None, *ADDRS]))
    return PacketMeta.make(draw(st.sampled_from(ADDRS)), draw(st.sampled_from(ADDRS)), proto, sport, dport,
                           iif=draw(st.sampled_from([None, *IFACES])), mark=draw(st.sampled_from([0, 1, 0x4000, 0x4001])),
                           ct_mark=draw(st.sampled_from([0, 1, 2, 3])), ct_state=state, ct_status=status,
                           ct_origdst=ip_address(origdst) if origdst else None, **kw)


def _key(d):  # type: ignore[no-untyped-def]
    return (d.verdict, d.nat, d.mark, d.ct_mark, d.reject_with if d.verdict is Verdict.REJECT else None,
            d.rules_evaluated)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ruleset_text(), st.lists(packet(), min_size=1, max_size=25), st.integers(0, 2**32))
def test_batch_agrees_with_reference(spec, packets, seed):
    text, table, base = spec
    rules = parse(text)
    reference = IptablesEvaluator(parse(text), trace=False)
    batch = BatchIptablesEvaluator(rules)
    ref_ctx = MatchContext(addresses=HOST, rng=SplitMixRandom(seed))
    batch_ctx = MatchContext(addresses=HOST, rng=SplitMixRandom(seed))
    expected = [_key(reference.evaluate(table, base, p, ref_ctx)) for p in packets]
    got = [_key(d) for d in batch.evaluate_many(table, base, packets, batch_ctx)]
    assert got == expected
    assert batch_ctx.rng.state == ref_ctx.rng.state  # the same number of draws


def _kube_like(n: int) -> str:
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
    rules = ["-A PREROUTING -j KUBE-SERVICES", "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"]
    for s in range(n):
        lines.append(f":KUBE-SVC-{s} - [0:0]")
        rules.append(f"-A KUBE-SERVICES -d 10.96.0.{s}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{s}")
        for e in range(3):
            lines.append(f":KUBE-SEP-{s}-{e} - [0:0]")
            prob = {0: "-m statistic --mode random --probability 0.33333333349 ", 1: "-m statistic --mode random --probability 0.50000000000 ", 2: ""}[e]
            rules.append(f"-A KUBE-SVC-{s} {prob}-j KUBE-SEP-{s}-{e}")
            rules.append(f"-A KUBE-SEP-{s}-{e} -s 10.244.{e}.{s}/32 -j KUBE-MARK-MASQ")
            rules.append(f"-A KUBE-SEP-{s}-{e} -p tcp -m tcp -j DNAT --to-destination 10.244.{e}.{s}:8080")
    return "\n".join(lines + rules + ["COMMIT"]) + "\n"


def test_kube_proxy_shaped_table_counts_rules_and_spreads_endpoints():
    rules = parse(_kube_like(50))
    batch = BatchIptablesEvaluator(rules)
    ctx = MatchContext(addresses=HOST, rng=SplitMixRandom(7))
    pkts = [PacketMeta.make("192.168.100.9", "10.96.0.49", "tcp", 1000 + i, 80) for i in range(3000)]
    decisions = batch.evaluate_many("nat", Hook.PREROUTING, pkts, ctx)
    assert batch.fallback_packets == 0
    # PREROUTING jump + 50 service rules + KUBE-SVC (1..3) + SEP (2): the last service's depth
    assert {d.rules_evaluated for d in decisions} <= {1 + 50 + k + 2 for k in (1, 2, 3)}
    counts: dict[str, int] = {}
    for d in decisions:
        assert d.nat is not None and d.nat.port == 8080
        counts[str(d.nat.addr)] = counts.get(str(d.nat.addr), 0) + 1
    assert set(counts) == {"10.244.0.49", "10.244.1.49", "10.244.2.49"}
    assert all(800 < c < 1200 for c in counts.values()), counts


def test_unknown_rules_are_handed_to_the_reference_evaluator():
    text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 22 -m recent --set --name SSH --mask 255.255.255.255 --rsource\n-A INPUT -p tcp -m tcp --dport 22 -m recent --rcheck --seconds 60 --hitcount 3 --name SSH --mask 255.255.255.255 --rsource -j DROP\nCOMMIT\n"
    batch = BatchIptablesEvaluator(parse(text))
    ctx = MatchContext(addresses=HOST, rng=SplitMixRandom(1))
    pkts = [PacketMeta.make("10.244.1.5", "192.168.100.2", "tcp", 40000 + i, 22) for i in range(4)]
    verdicts = [d.verdict for d in batch.evaluate_many("filter", "INPUT", pkts, ctx)]
    assert verdicts == [Verdict.ACCEPT, Verdict.ACCEPT, Verdict.DROP, Verdict.DROP]
    assert batch.fallback_packets == 4
    assert batch.compiled("filter").fallback_rules == 2


def test_compiled_arrays_describe_the_rules():
    compiled = K.compile_table(parse(_kube_like(2)).table("nat"))
    assert compiled.fallback_rules == 0
    assert len(compiled.rules) == 2 + 2 * (1 + 3 * 3)
    svc = compiled.rule_refs.index(next(r for r in compiled.rule_refs if r.chain == "KUBE-SERVICES"))
    assert compiled.quick[svc] == K.QUICK_EQ and compiled.quick_mask[svc] == 0xFFFFFFFF


def test_batch_refuses_a_non_splitmix_stream():
    import random

    batch = BatchIptablesEvaluator(parse(_kube_like(1)))
    with pytest.raises(TypeError, match="SplitMixRandom"):
        batch.evaluate_many("nat", "PREROUTING", [PacketMeta.make("1.1.1.1", "10.96.0.0", "tcp", 1, 80)],
                            MatchContext(rng=random.Random(1)))
