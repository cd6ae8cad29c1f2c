"""The evaluator, construct by construct, on small rulesets written the way `nft list` prints them."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from dataplane.engine.nft_eval import NftEvaluator
from dataplane.engine.types import CtState, Hook, NatKind, PacketMeta, Verdict
from dataplane.proxy.nftables.parser import parse_text


def chain(body: str, *, family: str = "ip", hook: str = "prerouting", ctype: str = "filter",
          prio: str = "0", policy: str = "accept", extra: str = "") -> str:
    return (f"table {family} t {{\n{extra}\tchain c {{\n\t\ttype {ctype} hook {hook} priority {prio}; policy {policy};\n"
            + "".join(f"\t\t{line}\n" for line in body.strip().splitlines()) + "\t}\n}\n")


def run(text: str, packet: PacketMeta, hook: Hook = Hook.PREROUTING, **kw):
    return NftEvaluator(parse_text(text), **kw).evaluate(packet, hook)


def tcp(src="192.168.1.10", dst="10.96.0.10", sport=40000, dport=80, **kw) -> PacketMeta:
    return PacketMeta.make(src, dst, "tcp", sport, dport, **kw)


def matched(decision) -> list[int]:
    return [s.rule_number for s in decision.trace if s.matched and s.rule_number]


# ---------------------------------------------------------------- matches


@pytest.mark.parametrize("rule,packet,hit", [
    ("ip saddr 192.168.1.10 drop", tcp(), True),
    ("ip saddr != 192.168.1.10 drop", tcp(), False),
    ("ip saddr 192.168.0.0/16 drop", tcp(), True),
    ("ip saddr 192.168.2.0/24 drop", tcp(), False),
    ("ip saddr 192.168.1.1-192.168.1.10 drop", tcp(), True),
    ("ip daddr { 10.96.0.1, 10.96.0.10 } drop", tcp(), True),
    ("ip daddr != { 10.96.0.1, 10.96.0.10 } drop", tcp(), False),
    ("tcp dport 80 drop", tcp(), True),
    ("tcp dport 80 drop", PacketMeta.make("1.1.1.1", "2.2.2.2", "udp", 1, 80), False),  # implicit l4proto tcp
    ("udp dport 53 drop", PacketMeta.make("1.1.1.1", "2.2.2.2", "udp", 1, 53), True),
    ("th dport 80 drop", PacketMeta.make("1.1.1.1", "2.2.2.2", "udp", 1, 80), True),
    ("tcp dport 1-1024 drop", tcp(), True),
    ("tcp dport { 22, 443 } drop", tcp(), False),
    ("tcp dport < 1024 drop", tcp(), True),
    ("tcp dport >= 1024 drop", tcp(), False),
    ("meta l4proto tcp drop", tcp(), True),
    ("meta l4proto { udp, icmp } drop", tcp(), False),
    ("ip protocol tcp drop", tcp(), True),
    ("meta nfproto ipv4 drop", tcp(), True),
    ("tcp flags syn / syn,ack drop", tcp(tcp_flags=0x02), True),
    ("tcp flags syn / syn,ack drop", tcp(tcp_flags=0x12), False),
    ("tcp flags syn drop", tcp(tcp_flags=0x12), True),
    ("icmp type echo-request drop", PacketMeta.make("1.1.1.1", "2.2.2.2", "icmp", icmp_type=8, icmp_code=0), True),
    ("icmp type echo-request drop", PacketMeta.make("1.1.1.1", "2.2.2.2", "icmp", icmp_type=0, icmp_code=0), False),
    ('iifname "eth0" drop', tcp(iif="eth0"), True),
    ('iifname "veth*" drop', tcp(iif="vethab12"), True),
    ('iifname "veth*" drop', tcp(iif="eth0"), False),
    ('oifname != "lo" drop', tcp(oif="eth1"), True),
    ('iifname { "a", "eth0" } drop', tcp(iif="eth0"), True),
    ("meta mark 0x00004000 drop", tcp(mark=0x4000), True),
    ("meta mark & 0x00004000 == 0x00004000 drop", tcp(mark=0x4001), True),
    ("meta mark & 0x00004000 != 0x00000000 drop", tcp(mark=0x1), False),
    ("ct state established,related drop", tcp(ct_state=CtState.RELATED), True),
    ("ct state established,related drop", tcp(ct_state=CtState.NEW), False),
    ("ct state new drop", tcp(ct_state=CtState.NEW), True),
    ("ct state invalid drop", tcp(ct_state=CtState.INVALID), True),
    ("ct state != established drop", tcp(ct_state=CtState.NEW), True),
    ("ct status dnat drop", tcp(ct_status=frozenset({"DNAT", "CONFIRMED"})), True),
    ("ct status dnat drop", tcp(ct_status=frozenset({"SNAT"})), False),
    ("ct mark 0x00000001 drop", tcp(ct_mark=1), True),
    ("ip daddr . tcp dport { 10.96.0.10 . 80, 10.96.0.11 . 443 } drop", tcp(), True),
    ("ip saddr { 192.0.0.0/8, 192.100.0.0/16 } drop", tcp(), True),  # overlapping: nft merges them
    ("ip saddr { 192.168.0.0/16, 192.168.1.0/24, 192.168.1.10 } drop", tcp(src="192.168.200.1"), True),
    ("ip daddr . tcp dport { 10.96.0.10 . 443 } drop", tcp(), False),
    ("ip6 saddr fd00::/8 drop", PacketMeta.make("fd00::1", "fd00::2", "tcp", 1, 2), True),
    ("ip saddr 0.0.0.0/0 drop", PacketMeta.make("fd00::1", "fd00::2", "tcp", 1, 2), False),  # ip needs IPv4
])
def test_match(rule, packet, hit):
    d = run(chain(rule, family="inet" if "ip6" in rule or "0.0.0.0/0" in rule else "ip"), packet)
    assert d.verdict == (Verdict.DROP if hit else Verdict.ACCEPT)


def test_fib_daddr_type_local_uses_the_local_addresses():
    text = chain("fib daddr type local drop")
    assert run(text, tcp(dst="192.168.100.2"), local_addresses=["192.168.100.2"]).verdict == Verdict.DROP
    assert run(text, tcp(dst="192.168.100.3"), local_addresses=["192.168.100.2"]).verdict == Verdict.ACCEPT
    assert run(text, tcp(dst="127.0.0.1")).verdict == Verdict.DROP


# ---------------------------------------------------------------- control flow


def test_jump_returns_and_goto_does_not():
    text = ("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy drop;\n"
            "\t\tjump a\n\t\tmeta mark 0x00000001 accept\n\t\tgoto b\n\t\taccept\n\t}\n"
            "\tchain a {\n\t\tmeta mark set 0x00000001\n\t}\n"
            "\tchain b {\n\t\treturn\n\t}\n}\n")
    d = run(text, tcp(), Hook.INPUT)
    assert d.verdict == Verdict.ACCEPT and d.mark == 1
    assert [(s.chain, s.rule_number) for s in d.trace] == [("c", 1), ("a", 1), ("c", 2)]
    d = run(text.replace("meta mark 0x00000001 accept", "meta mark 0x00000002 accept"), tcp(), Hook.INPUT)
    # goto b, then return from b ends the base chain: its policy (drop) applies, "accept" is never reached
    assert d.verdict == Verdict.DROP
    assert [(s.chain, s.rule_number) for s in d.trace][-2:] == [("b", 1), ("c", 0)]


def test_continue_and_counter():
    text = chain("counter packets 5 bytes 100 continue\nip saddr 192.168.1.10 counter packets 0 bytes 0 drop")
    ev = NftEvaluator(parse_text(text))
    assert ev.evaluate(tcp(length=60), Hook.PREROUTING).verdict == Verdict.DROP
    ev.evaluate(tcp(length=40), Hook.PREROUTING)
    assert ev.counters[("ip", "t", "c", 0, 0)] == [7, 200]  # continues from the listed values
    assert ev.counters[("ip", "t", "c", 1, 1)] == [2, 100]


def test_base_chains_run_in_priority_order_and_accept_only_ends_one_chain():
    text = ("table ip a {\n\tchain late {\n\t\ttype filter hook forward priority 10; policy accept;\n\t\tdrop\n\t}\n}\n"
            "table ip b {\n\tchain early {\n\t\ttype filter hook forward priority -10; policy accept;\n\t\taccept\n\t}\n}\n")
    d = run(text, tcp(), Hook.FORWARD)
    assert d.verdict == Verdict.DROP
    assert [s.chain for s in d.trace] == ["early", "late"]


def test_family_selects_the_tables_and_inet_sees_both():
    text = ("table ip4only {\n\tchain c {\n\t\ttype filter hook input priority 0; policy drop;\n\t}\n}\n"
            "table inet both {\n\tchain c {\n\t\ttype filter hook input priority 10; policy accept;\n\t\tmeta nfproto ipv6 drop\n\t}\n}\n")
    v4 = run(text, tcp(), Hook.INPUT)
    v6 = run(text, PacketMeta.make("fd00::1", "fd00::2", "tcp", 1, 2), Hook.INPUT)
    assert v4.verdict == Verdict.DROP and [s.table for s in v4.trace] == ["ip ip4only"]
    assert v6.verdict == Verdict.DROP and [s.table for s in v6.trace] == ["inet both"]


def test_nat_chains_run_at_the_nat_hook_priority_and_only_for_new_connections():
    """nf_nat hooks prerouting at -100 whatever the nat chain's own priority (nf_nat_register_fn)."""
    text = ("table ip t {\n"
            "\tchain f {\n\t\ttype filter hook prerouting priority -50; policy accept;\n\t\tmeta mark set 0x00000002\n\t}\n"
            "\tchain n {\n\t\ttype nat hook prerouting priority 50; policy accept;\n"
            "\t\tmeta mark 0x00000002 meta l4proto tcp dnat to 10.0.0.1:8080\n\t\tmeta l4proto tcp dnat to 10.0.0.2:8080\n\t}\n}\n")
    d = run(text, tcp(), Hook.PREROUTING)
    assert [s.chain for s in d.trace][:1] == ["n"]  # the nat chain ran first (at -100): mark not yet set
    assert d.nat.kind == NatKind.DNAT and d.nat.addr == ip_address("10.0.0.2") and d.nat.port == 8080
    est = run(text, tcp(ct_state=CtState.ESTABLISHED), Hook.PREROUTING)
    assert est.nat is None and {s.chain for s in est.trace} == {"f"}


def test_first_nat_binding_wins_and_later_nat_chains_are_skipped():
    text = ("table ip t {\n"
            "\tchain n1 {\n\t\ttype nat hook postrouting priority 100; policy accept;\n\t\tmasquerade fully-random\n\t}\n"
            "\tchain n2 {\n\t\ttype nat hook postrouting priority 110; policy accept;\n\t\tsnat to 1.2.3.4\n\t}\n}\n")
    d = run(text, tcp(), Hook.POSTROUTING)
    assert d.nat.kind == NatKind.MASQUERADE and d.nat.random_fully
    assert {s.chain for s in d.trace} == {"n1"}


def test_nat_statements_are_terminal():
    text = chain("meta l4proto tcp snat to 192.168.100.2-192.168.100.9:1024-2000\nmeta mark set 0x00000001",
                 ctype="nat", hook="postrouting", prio="srcnat")
    d = run(text, tcp(), Hook.POSTROUTING)
    assert d.nat.kind == NatKind.SNAT and d.nat.addr == ip_address("192.168.100.2") and d.nat.port == 1024
    assert d.mark is None and d.rules_evaluated == 1


@pytest.mark.parametrize("rule,family,packet,expect", [
    ("reject", "ip", tcp(), "icmp-port-unreachable"),
    ("reject with icmp host-unreachable", "ip", tcp(), "icmp-host-unreachable"),
    ("reject with tcp reset", "ip", tcp(), "tcp-reset"),
    ("reject", "inet", PacketMeta.make("fd00::1", "fd00::2", "udp", 1, 2), "icmp6-port-unreachable"),
])
def test_reject(rule, family, packet, expect):
    d = run(chain(rule, family=family, hook="input"), packet, Hook.INPUT)
    assert d.verdict == Verdict.REJECT and d.reject_with == expect


def test_mark_set_or_and_xor_like_kube_proxy():
    text = chain("meta mark set meta mark | 0x00004000\nmeta mark & 0x00004000 == 0x00000000 drop\n"
                 "meta mark set meta mark ^ 0x00004000\nct mark set 0x00000007")
    d = run(text, tcp(mark=0x1))
    assert d.verdict == Verdict.ACCEPT and d.mark is None and d.ct_mark == 7  # 0x1 -> 0x4001 -> 0x1: unchanged
    assert [s.note for s in d.trace[:3]] == ["mark set 0x4001", "", "mark set 0x1"]


# ---------------------------------------------------------------- sets and maps


SETS = """\tset cidrs {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.0/8, 172.16.0.5-172.16.0.9, 192.168.1.0/24 }
\t}

\tmap svc {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.10 . tcp . 80 : goto a, 10.96.0.10 . udp . 53 : drop }
\t}

\tset seen {
\t\ttype ipv4_addr
\t\tflags dynamic,timeout
\t\ttimeout 10s
\t\telements = { 192.168.1.99 expires 5s }
\t}

"""


def sets_table(body: str) -> str:
    return ("table ip t {\n" + SETS + "\tchain c {\n\t\ttype filter hook prerouting priority 0; policy accept;\n"
            + "".join(f"\t\t{line}\n" for line in body.strip().splitlines())
            + "\t}\n\n\tchain a {\n\t\tmeta mark set 0x00000001\n\t}\n}\n")


@pytest.mark.parametrize("src,hit", [("10.1.2.3", True), ("172.16.0.7", True), ("172.16.0.10", False),
                                     ("192.168.1.255", True), ("192.168.2.1", False), ("9.255.255.255", False)])
def test_interval_set(src, hit):
    d = run(sets_table("ip saddr @cidrs drop"), tcp(src=src))
    assert (d.verdict == Verdict.DROP) == hit


def test_concatenated_verdict_map():
    text = sets_table("ip daddr . meta l4proto . th dport vmap @svc\nmeta mark set 0x00000002")
    hit = run(text, tcp())
    assert hit.mark == 1  # goto a: a's end returns to the base chain's caller: policy, rule 2 never runs
    assert "vmap: 10.96.0.10 . tcp . 80 -> goto a" in hit.trace[0].note
    assert run(text, PacketMeta.make("1.1.1.1", "10.96.0.10", "udp", 1, 53)).verdict == Verdict.DROP
    miss = run(text, tcp(dport=81))
    assert miss.mark == 2 and not miss.trace[0].matched  # no element: the rule does not match


def test_element_timeouts_follow_the_injected_clock_and_update_refreshes():
    now = [1000.0]
    text = sets_table("ip saddr @seen drop\nupdate @seen { ip saddr }")
    ev = NftEvaluator(parse_text(text), clock=lambda: now[0])
    table = ev.ruleset.tables[0]
    assert ev.evaluate(tcp(src="192.168.1.99"), Hook.PREROUTING).verdict == Verdict.DROP  # expires in 5 s
    now[0] += 5.0
    assert ev.evaluate(tcp(src="192.168.1.99"), Hook.PREROUTING).verdict == Verdict.ACCEPT  # expired, re-added (10 s)
    now[0] += 9.9
    assert ev.evaluate(tcp(src="192.168.1.99"), Hook.PREROUTING).verdict == Verdict.DROP
    now[0] += 0.2
    assert ev.evaluate(tcp(src="192.168.1.99"), Hook.PREROUTING).verdict == Verdict.ACCEPT
    assert [str(e.key.value) for e in ev.set_elements(table, "seen")] == ["192.168.1.99"]
    assert ev.ruleset.tables[0].sets["seen"].elements[0].expires == 5  # the parsed ruleset is untouched


def test_hash_lookups_do_not_scan(monkeypatch):
    """A 20,000-element map is one dict lookup: the evaluator never iterates elements per packet."""
    elements = ", ".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} . tcp . 80 : drop" for i in range(20_000))
    text = ("table ip t {\n\tmap m {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n"
            f"\t\telements = {{ {elements} }}\n\t}}\n\tchain c {{\n\t\ttype filter hook prerouting priority 0; "
            "policy accept;\n\t\tip daddr . meta l4proto . th dport vmap @m\n\t}\n}\n")
    ev = NftEvaluator(parse_text(text))
    index = next(iter(ev._sets.values()))
    assert len(index.exact) == 20_000 and not index.intervals and not index.multi
    assert ev.evaluate(tcp(dst="10.0.78.31"), Hook.PREROUTING).verdict == Verdict.DROP
    assert ev.evaluate(tcp(dst="10.2.0.0"), Hook.PREROUTING).verdict == Verdict.ACCEPT


# ---------------------------------------------------------------- numgen


def test_numgen_random_is_reciprocal_scale_of_the_rng():
    text = chain("numgen random mod 3 vmap { 0 : jump a, 1 : jump b, 2 : jump d }",
                 extra="\tchain a {\n\t\tmeta mark set 0x0000000a\n\t}\n\n\tchain b {\n\t\tmeta mark set 0x0000000b\n\t}\n\n"
                       "\tchain d {\n\t\tmeta mark set 0x0000000d\n\t}\n\n")
    # reciprocal_scale(r, 3) = (r * 3) >> 32: the u32 range splits at ceil(k * 2^32 / 3)
    for r, mark in [(0, 0xA), (0x55555555, 0xA), (0x55555556, 0xB), (0xAAAAAAAA, 0xB), (0xAAAAAAAB, 0xD),
                    (0xFFFFFFFF, 0xD)]:
        assert run(text, tcp(), rng=lambda r=r: r).mark == mark, hex(r)


def test_numgen_offset_and_inc():
    text = chain("meta mark set 0x00000000\nnumgen inc mod 3 offset 5 vmap { 5 : accept, 6 : drop, 7 : accept }")
    ev = NftEvaluator(parse_text(text))
    verdicts = [ev.evaluate(tcp(), Hook.PREROUTING).verdict for _ in range(6)]
    assert verdicts == [Verdict.ACCEPT, Verdict.DROP, Verdict.ACCEPT] * 2  # 5, 6, 7, 5, 6, 7


def test_numgen_random_distribution_is_uniform():
    """30,000 draws over 7 buckets from a seeded RNG pass a chi-square test at p = 0.001."""
    import random

    rng = random.Random(7)
    text = chain("numgen random mod 7 vmap { " + ", ".join(f"{i} : jump e{i}" for i in range(7)) + " }",
                 extra="".join(f"\tchain e{i} {{\n\t\tmeta mark set 0x{i:08x}\n\t}}\n\n" for i in range(7)))
    ev = NftEvaluator(parse_text(text), rng=lambda: rng.getrandbits(32), trace=False)
    counts = [0] * 7
    for _ in range(30_000):
        d = ev.evaluate(tcp(), Hook.PREROUTING)
        counts[d.mark or 0] += 1
    expected = 30_000 / 7
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 22.46, counts  # chi-square critical value, 6 degrees of freedom, p = 0.001


def test_jump_stack_limit_is_enforced_when_parsing():
    """The kernel loads 15 nested jumps and refuses 16 with EMLINK (checked against it in test_nft_parse_errors)."""
    chains = "".join(f"\tchain j{i} {{\n\t\tjump j{i + 1}\n\t}}\n" for i in range(15)) + "\tchain j15 {\n\t}\n"
    text = ("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tjump j0\n\t}\n"
            + chains + "}\n")
    from dataplane.proxy.nftables.errors import NftParseError

    with pytest.raises(NftParseError, match="16 or more chains deep"):
        parse_text(text)
    ok = text.replace("\t\tjump j15\n", "")
    assert run(ok, tcp(), Hook.INPUT).rules_evaluated == 15  # c + j0..j13: 15 nested jumps are fine


def test_redirect_is_refused_clearly_rather_than_evaluated_wrongly():
    from dataplane.engine.nft_eval import EvalError

    text = chain("meta l4proto tcp redirect to :8080", ctype="nat", prio="dstnat")
    with pytest.raises(EvalError, match="redirect"):
        run(text, tcp())
