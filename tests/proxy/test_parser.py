"""The iptables-save parser: canonical rendering, strict errors, lenient mode, fast path = general path.

Canonical forms asserted here were taken from what iptables-save 1.8.9 prints for the same rules
(the kernel comparison itself is in test_parser_kernel.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dataplane.proxy.iptables.parser import (
    ParseError,
    parse,
    parse_rule_tokens_general,
    tokenize,
)
from dataplane.proxy.iptables.rules import (
    ConnmarkTarget,
    Jump,
    MarkTarget,
    Nat,
    PortsMatch,
    StatisticMatch,
    save_string,
)
from dataplane.proxy.iptables.sample import kube_proxy_dump

DATA = Path(__file__).parent / "data"
KUBE_EXAMPLE = DATA / "kube-proxy-1.11.txt"


def one_rule(spec: str, table: str = "filter", chain: str = "INPUT", family: int = 4) -> str:
    """Parse a single rule in a minimal table and render it back."""
    rs = parse(f"*{table}\n:{chain} ACCEPT [0:0]\n:X - [0:0]\n-A {chain} {spec}\nCOMMIT\n", family=family)
    (rule,) = rs.tables[table].chains[chain].rules
    return rule.render_spec()


@pytest.mark.parametrize("given, canonical", [
    # the ipt_entry part comes first, in -s -d -i -o -p order; hosts get /32, networks are masked
    ("-p tcp -d 10.96.0.1 -s 10.1.2.3/8 -j ACCEPT", "-s 10.0.0.0/8 -d 10.96.0.1/32 -p tcp -j ACCEPT"),
    ("-m comment --comment x -m tcp -p tcp -d 10.96.0.50 --dport 80 -j X",
     "-d 10.96.0.50/32 -p tcp -m comment --comment x -m tcp --dport 80 -j X"),
    ("-p tcp --dport 80 -j ACCEPT", "-p tcp -m tcp --dport 80 -j ACCEPT"),  # implicit -m tcp
    ("-p udp --sport 1024: --dport :53 -j ACCEPT", "-p udp -m udp --sport 1024:65535 --dport 0:53 -j ACCEPT"),
    ("-p tcp --syn -j ACCEPT", "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT"),
    ("-p tcp ! --tcp-flags ALL NONE -j DROP", "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,PSH,ACK,URG NONE -j DROP"),
    ("-p 47 -j ACCEPT", "-p gre -j ACCEPT"),
    ("-p all -j ACCEPT", "-j ACCEPT"),
    ("-s 10.0.0.0/255.0.255.0 -j ACCEPT", "-s 10.0.0.0/255.0.255.0 -j ACCEPT"),
    ("-p icmp --icmp-type echo-request -j ACCEPT", "-p icmp -m icmp --icmp-type 8 -j ACCEPT"),
    ("-p icmp --icmp-type port-unreachable -j ACCEPT", "-p icmp -m icmp --icmp-type 3/3 -j ACCEPT"),
    ("-m comment --comment 'a' -j ACCEPT", "-m comment --comment \"\\'a\\'\" -j ACCEPT"),
    ('-m comment --comment "" -j ACCEPT', '-m comment --comment "" -j ACCEPT'),
    ("-m mark --mark 0x4000/0xffffffff -j ACCEPT", "-m mark --mark 0x4000 -j ACCEPT"),
    ("-m mark ! --mark 16/0x10 -j ACCEPT", "-m mark ! --mark 0x10/0x10 -j ACCEPT"),
    ("-m mark --mark 010/0X1f -j ACCEPT", "-m mark --mark 0x8/0x1f -j ACCEPT"),  # strtoul base 0: octal
    ("-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
    ("-m conntrack --ctdir REPLY --ctorigdst 10.96.0.1/32 --ctstate NEW -j ACCEPT",
     "-m conntrack --ctstate NEW --ctorigdst 10.96.0.1 --ctdir REPLY -j ACCEPT"),
    ("-m addrtype --dst-type LOCAL ! --src-type BROADCAST,LOCAL -j ACCEPT",
     "-m addrtype ! --src-type LOCAL,BROADCAST --dst-type LOCAL -j ACCEPT"),
    ("-m recent --name X --rcheck --seconds 10 --reap -j ACCEPT",
     "-m recent --rcheck --seconds 10 --reap --name X --mask 255.255.255.255 --rsource -j ACCEPT"),
    ("-m statistic --mode random --probability 0.3333333333 -j X",
     "-m statistic --mode random --probability 0.33333333349 -j X"),
    ("-m statistic --mode random --probability 0.2 -j X", "-m statistic --mode random --probability 0.20000000019 -j X"),
    ("-m statistic --mode nth --packet 1 --every 3 -j X", "-m statistic --mode nth --every 3 --packet 1 -j X"),
    ("-j MARK --or-mark 0x4000", "-j MARK --set-xmark 0x4000/0x4000"),
    ("-j MARK --xor-mark 0x4000", "-j MARK --set-xmark 0x4000/0x0"),
    ("-j MARK --and-mark 0x4000", "-j MARK --set-xmark 0x0/0xffffbfff"),
    ("-j MARK --set-mark 0x4000/0xffff", "-j MARK --set-xmark 0x4000/0xffff"),
    ("-j CONNMARK --save-mark", "-j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
    ("-j CONNMARK --restore-mark --mask 0xff", "-j CONNMARK --restore-mark --nfmask 0xff --ctmask 0xff"),
    ("-j CONNMARK --or-mark 5", "-j CONNMARK --set-xmark 0x5/0x5"),
    ("-j REJECT", "-j REJECT --reject-with icmp-port-unreachable"),
    ("-p tcp -j REJECT --reject-with tcp-rst", "-p tcp -j REJECT --reject-with tcp-reset"),
    ("-j LOG --log-level debug --log-uid --log-prefix x", "-j LOG --log-prefix x --log-level 7 --log-uid"),
    ("-j LOG --log-level warning", "-j LOG"),
    ("-g X", "-g X"),
    ("-p tcp -m multiport --dports 80,443,8000:9000 -j ACCEPT",
     "-p tcp -m multiport --dports 80,443,8000:9000 -j ACCEPT"),
    ("-m set --match-set S src,dst -j ACCEPT", "-m set --match-set S src,dst -j ACCEPT"),
    ("--protocol tcp --source 10.0.0.1 --in-interface lo --match tcp --destination-port 22 --jump ACCEPT",
     "-s 10.0.0.1/32 -i lo -p tcp -m tcp --dport 22 -j ACCEPT"),
    # an option goes to the most recently loaded module that knows it
    ("-m connmark --mark 1 -m mark --mark 2 -j ACCEPT", "-m connmark --mark 0x1 -m mark --mark 0x2 -j ACCEPT"),
    ("-p tcp --dport 80 -m tcp --sport 5 -j ACCEPT", "-p tcp -m tcp --dport 80 -m tcp --sport 5 -j ACCEPT"),
])
def test_canonical_rendering(given: str, canonical: str) -> None:
    assert one_rule(given) == canonical


@pytest.mark.parametrize("given, canonical", [
    ("-p tcp -j DNAT --to-destination 10.244.1.5:8080", "-p tcp -j DNAT --to-destination 10.244.1.5:8080"),
    ("-j DNAT --to-destination 10.244.1.5", "-j DNAT --to-destination 10.244.1.5"),
    ("-p udp -j DNAT --to-destination 10.0.0.1-10.0.0.9:80-90 --persistent --random",
     "-p udp -j DNAT --to-destination 10.0.0.1-10.0.0.9:80-90 --random --persistent"),
    ("-p tcp -j DNAT --to-destination :8080", "-p tcp -j DNAT --to-destination :8080"),
    ("-j MASQUERADE --random-fully", "-j MASQUERADE --random-fully"),
    ("-p tcp -j MASQUERADE --random --to-ports 1000-2000", "-p tcp -j MASQUERADE --to-ports 1000-2000 --random"),
    ("-p tcp -j SNAT --random-fully --to-source 1.2.3.4-1.2.3.6:1000-2000",
     "-p tcp -j SNAT --to-source 1.2.3.4-1.2.3.6:1000-2000 --random-fully"),
])
def test_nat_targets_render_canonically(given: str, canonical: str) -> None:
    chain = "PREROUTING" if "DNAT" in given else "POSTROUTING"
    assert one_rule(given, table="nat", chain=chain) == canonical


def test_reject_is_filter_only() -> None:
    err = _error("*mangle\n:INPUT ACCEPT [0:0]\n-A INPUT -j REJECT\nCOMMIT\n")
    assert err.line == 3 and "only valid in the filter table" in str(err)


def test_ipv6_rules() -> None:
    assert one_rule("-s 2001:db8::1 -p 58 -j ACCEPT", family=6) == "-s 2001:db8::1/128 -p ipv6-icmp -j ACCEPT"
    assert one_rule("-p tcp -j DNAT --to-destination [fd00::5]:8080", "nat", "PREROUTING", 6) == \
        "-p tcp -j DNAT --to-destination [fd00::5]:8080"
    assert one_rule("-j REJECT", family=6) == "-j REJECT --reject-with icmp6-port-unreachable"


def test_multiple_addresses_expand_to_rules() -> None:
    rs = parse("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.1,10.0.0.2 -d 1.1.1.1,2.2.2.2 -j DROP\nCOMMIT\n")
    rules = rs.tables["filter"].chains["INPUT"].rules
    assert [r.render() for r in rules] == [
        "-A INPUT -s 10.0.0.1/32 -d 1.1.1.1/32 -j DROP", "-A INPUT -s 10.0.0.1/32 -d 2.2.2.2/32 -j DROP",
        "-A INPUT -s 10.0.0.2/32 -d 1.1.1.1/32 -j DROP", "-A INPUT -s 10.0.0.2/32 -d 2.2.2.2/32 -j DROP"]
    assert {r.line for r in rules} == {3}


def test_model_fields() -> None:
    rs = parse(KUBE_EXAMPLE.read_text())
    nat = rs.tables["nat"]
    svc = nat.chains["KUBE-SVC-CDGGSHYLG3RE2FKL"]
    stat = svc.rules[1].matches[1]
    assert isinstance(stat, StatisticMatch) and stat.probability == 0x40000000
    assert isinstance(svc.rules[1].target, Jump) and svc.rules[1].target.chain == "KUBE-SEP-AFGSLHOD2HFNCBX4"
    dnat = nat.chains["KUBE-SEP-AFGSLHOD2HFNCBX4"].rules[1]
    assert isinstance(dnat.target, Nat) and dnat.target.range.render() == "10.244.1.5:8080"
    mark = nat.chains["KUBE-MARK-MASQ"].rules[0].target
    assert isinstance(mark, MarkTarget) and (mark.value, mark.mask) == (0x4000, 0x4000)
    assert svc.rules[0].src_neg and svc.rules[0].src.render() == "10.244.0.0/16"
    ports = svc.rules[0].matches[1]
    assert isinstance(ports, PortsMatch) and ports.dport.lo == ports.dport.hi == 80
    assert nat.chains["PREROUTING"].policy == "ACCEPT" and nat.chains["KUBE-SERVICES"].policy is None
    assert svc.rules[1].line == 26


def test_kube_proxy_example_round_trips() -> None:
    text = KUBE_EXAMPLE.read_text()
    assert parse(text).render() == text


def test_sample_dump_round_trips_and_counts() -> None:
    text = kube_proxy_dump(30, 4)
    rs = parse(text)
    assert rs.render() == text
    assert rs.tables["nat"].rule_count() == 30 * (1 + 1 + 4 * 3) + 1 + 7


def test_counters_and_comments_round_trip() -> None:
    text = ("# Generated by iptables-save v1.8.9\n*filter\n:INPUT DROP [12:3456]\n:FORWARD ACCEPT [0:0]\n"
            ":OUTPUT ACCEPT [0:0]\n[3:180] -A INPUT -i lo -j ACCEPT\nCOMMIT\n# Completed\n")
    rs = parse(text)
    assert rs.render() == text
    chain = rs.tables["filter"].chains["INPUT"]
    assert (chain.policy, chain.packets, chain.bytes) == ("DROP", 12, 3456)
    assert chain.rules[0].counters == (3, 180)


def test_undeclared_builtin_chains_exist() -> None:
    rs = parse("*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n")
    assert rs.tables["nat"].chains["PREROUTING"].policy == "ACCEPT"
    assert rs.render() == "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n"


def test_tokenizer_quoting() -> None:
    assert tokenize('-A X -m comment --comment "a b" -j Y') == ["-A", "X", "-m", "comment", "--comment", "a b", "-j", "Y"]
    assert tokenize(r'--comment "say \"hi\" \\ \'x\'"') == ["--comment", "say \"hi\" \\ 'x'"]
    assert tokenize('a"b c"d "" e') == ["ab cd", "", "e"]
    assert tokenize("x 'a b'") == ["x", "'a", "b'"]  # single quotes are not quotes to iptables-restore
    for value in ["plain", "with space", 'q"uote', "back\\slash", "it's", "", "ns/svc:port -> 10.0.0.1:80"]:
        line = f"-A X -m comment --comment {save_string(value)} -j Y"
        assert tokenize(line)[5] == value


# ---------------------------------------------------------------- errors

def _error(text: str, **kw: object) -> ParseError:
    with pytest.raises(ParseError) as exc:
        parse(text, **kw)  # type: ignore[arg-type]
    return exc.value


def table(*rules: str, name: str = "filter") -> str:
    chains = {"filter": ":INPUT ACCEPT [0:0]\n", "nat": ":PREROUTING ACCEPT [0:0]\n"}[name]
    return f"*{name}\n{chains}:X - [0:0]\n" + "".join(r + "\n" for r in rules) + "COMMIT\n"


@pytest.mark.parametrize("rule, option, words", [
    ("-A INPUT -m bogus --x 1 -j ACCEPT", "-m bogus", "not supported"),
    ("-A INPUT -p tcp --dport 80 --frobnicate -j ACCEPT", "--frobnicate", "unknown option"),
    ("-A INPUT -p udp --tcp-flags SYN SYN -j ACCEPT", "--tcp-flags", "unknown option"),
    ("-A INPUT -j NFQUEUE --queue-num 3", "--queue-num", "NFQUEUE"),
    ("-A INPUT -j NOSUCHCHAIN", "-j NOSUCHCHAIN", "no chain"),
    ("-A INPUT -j INPUT", "-j INPUT", "built-in chain"),
    ("-A INPUT -s 10.0.0.300 -j ACCEPT", "-s", "invalid IPv4"),
    ("-A INPUT -s example.com -j ACCEPT", "-s", "not resolved"),
    ("-A INPUT -p tcp --dport 70000 -j ACCEPT", "--dport", "out of range"),
    ("-A INPUT -p tcp --dport 90:80 -j ACCEPT", "--dport", "reversed"),
    ("-A INPUT -m recent --name X --rcheck ! --seconds 5 -j ACCEPT", "--seconds", "cannot negate"),
    ("-A INPUT -m statistic --mode nth --every 2 -j ACCEPT", "--packet", "both --every and --packet"),
    ("-A INPUT -m statistic --mode random --probability 1.5 -j X", "--probability", "not in 0..1"),
    ("-A INPUT -m multiport --dports 1,2 -j ACCEPT", "-m multiport", "needs `-p tcp`"),
    ("-A INPUT -j REJECT --reject-with tcp-reset", "--reject-with", "needs `-p tcp`"),
    ("-A INPUT -j DNAT --to-destination 1.2.3.4", "-j DNAT", "only valid in the nat table"),
    ("-A INPUT ! -j ACCEPT", "-j", "cannot negate"),
    ("-A INPUT -s 1.1.1.1 -s 2.2.2.2 -j ACCEPT", "-s", "given twice"),
    ("-A INPUT -m comment --comment", "--comment", "needs 1 argument"),
    ('-A INPUT -m comment --comment "open', "", "unterminated"),
    ("-I INPUT -j ACCEPT", "-I", "only -A, -N, -F, -X"),
    ("-A NOPE -j ACCEPT", "-A", "does not exist"),
    ("-A INPUT -j MARK --set-mark 1 --or-mark 2", "--set-xmark", "exactly one"),
    ("-A INPUT -m conntrack --ctstate NEWISH -j ACCEPT", "--ctstate", "unknown value 'NEWISH'"),
    ("-A INPUT -j X -j Y", "-j", "given twice"),
    ("-A INPUT -m mark --mark 1_000 -j ACCEPT", "--mark", "invalid number"),
    ("-A INPUT -m statistic --mode random --probability 0.5 --every 2 -j X", "--every", "--mode nth"),
])
def test_strict_errors_name_line_and_option(rule: str, option: str, words: str) -> None:
    err = _error(table("-A INPUT -j ACCEPT", rule))
    assert err.line == 5, err
    assert err.option == option, err
    assert words in str(err), err
    assert str(err).startswith("line 5")


@pytest.mark.parametrize("text, line, words", [
    ("-A INPUT -j ACCEPT\n", 1, "outside a table"),
    ("*filter\n:INPUT ACCEPT [0:0]\n", 2, "missing COMMIT"),
    ("*filter\n*nat\nCOMMIT\n", 2, "missing COMMIT"),
    ("*bogus\nCOMMIT\n", 1, "unknown table"),
    ("*filter\n:INPUT BOGUS [0:0]\nCOMMIT\n", 2, "ACCEPT or DROP"),
    ("*filter\n:X ACCEPT [0:0]\nCOMMIT\n", 2, "cannot have a policy"),
    ("*filter\n:X - [0:0]\n:X - [0:0]\nCOMMIT\n", 3, "declared twice"),
    ("*filter\n:X - [a:b]\nCOMMIT\n", 2, "bad counters"),
    ("*filter\nCOMMIT\n*filter\nCOMMIT\n", 3, "appears twice"),
    ("COMMIT\n", 1, "outside a table"),
    ("*filter\nfoo bar\nCOMMIT\n", 2, "cannot parse"),
])
def test_structural_errors(text: str, line: int, words: str) -> None:
    err = _error(text)
    assert err.line == line and words in str(err), err
    # structural errors are errors in lenient mode too
    assert _error(text, strict=False).line == line


@pytest.mark.parametrize("rules, line, words", [
    # as the kernel's iptables-restore decides (checked with iptables-legacy-restore)
    (["-A POSTROUTING -j DNAT --to-destination 1.2.3.4"], 5, "DNAT is only valid from PREROUTING/OUTPUT, not POSTROUTING"),
    (["-A PREROUTING -j MASQUERADE"], 5, "not PREROUTING"),
    (["-A X -j MASQUERADE", "-A OUTPUT -j X"], 5, "chain X is reached from OUTPUT"),
    (["-A X -p tcp -j DNAT --to-destination 1.2.3.4", "-A POSTROUTING -p tcp -j X"], 5, "reached from POSTROUTING"),
])
def test_targets_are_checked_against_their_hooks(rules: list[str], line: int, words: str) -> None:
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:X - [0:0]\n"
            + "".join(r + "\n" for r in rules) + "COMMIT\n")
    err = _error(text, check_hooks=True)
    assert err.line == line and words in str(err), err
    rs = parse(text, strict=False, check_hooks=True)
    assert [u.line for u in rs.unknown] == [line]
    assert parse(text).tables["nat"].rule_count() == len(rules)  # representable: only checked on request


def test_targets_reachable_from_allowed_hooks_load() -> None:
    text = ("*nat\n:X - [0:0]\n-A X -j DNAT --to-destination 1.2.3.4\n-A PREROUTING -j X\n-A OUTPUT -j X\n"
            "-A INPUT -j SNAT --to-source 1.2.3.4\nCOMMIT\n*filter\n:X - [0:0]\n-A X -j REJECT --reject-with icmp-port-unreachable\n"
            "-A INPUT -j X\nCOMMIT\n")
    assert parse(text, check_hooks=True).render() == text


def test_lenient_mode_keeps_unknown_rules() -> None:
    text = table("-A INPUT -j ACCEPT", "-A INPUT -m owner --uid-owner 0 -j DROP", "-A X -j NFQUEUE --queue-num 1",
                 "-A INPUT -j GONE", "-A INPUT -j X")
    rs = parse(text, strict=False)
    assert [(u.line, u.option) for u in rs.unknown] == [(5, "-m owner"), (6, "--queue-num"), (7, "-j GONE")]
    rules = rs.tables["filter"].chains["INPUT"].rules
    assert [r.unknown is not None for r in rules] == [False, True, True, False]
    assert rules[1].text == "-A INPUT -m owner --uid-owner 0 -j DROP"
    assert rs.render() == text  # unknown rules render verbatim


# ---------------------------------------------------------------- fast path == general path

def _general(line: str, table_name: str = "filter") -> list[str]:
    toks = tokenize(line)
    return [r.render() for r in parse_rule_tokens_general(toks, 2, toks[1], table_name, 4)]


@pytest.mark.parametrize("path", ["kube-proxy-1.11.txt", "varied-restore.txt"])
def test_fast_path_equals_general_parser(path: str) -> None:
    text = (DATA / path).read_text()
    if path == "varied-restore.txt":
        text = text.replace("-A KUBE-FORWARD -j NFQUEUE --queue-num 3\n", "")
    rs = parse(text)
    for t in rs.tables.values():
        for rule in t.rules:
            general = _general(rule.text, t.name)
            assert rule.render() in general, rule.text


def test_sample_dump_fast_path_equals_general_parser() -> None:
    rs = parse(kube_proxy_dump(5, 3))
    for rule in rs.tables["nat"].rules:
        assert [rule.render()] == _general(rule.text, "nat")
        assert rule.render() == rule.text


def test_connmark_target_fields() -> None:
    rs = parse(table("-A INPUT -j CONNMARK --save-mark --nfmask 0xf0 --ctmask 0xf"))
    t = rs.tables["filter"].chains["INPUT"].rules[0].target
    assert isinstance(t, ConnmarkTarget) and (t.mode, t.nfmask, t.ctmask) == ("save", 0xF0, 0xF)


def test_chain_commands_of_restore_input() -> None:
    """kube-proxy's restore input declares stale chains (flushing them) and deletes them with -X."""
    text = ("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SEP-OLD - [0:0]\n-N NEWC\n-A KUBE-SERVICES -j NEWC\n"
            "-A NEWC -j RETURN\n-A KUBE-SEP-OLD -j RETURN\n-F KUBE-SEP-OLD\n-X KUBE-SEP-OLD\n-F NEWC\nCOMMIT\n")
    rs = parse(text)
    assert rs.render() == "*nat\n:KUBE-SERVICES - [0:0]\n:NEWC - [0:0]\n-A KUBE-SERVICES -j NEWC\nCOMMIT\n"
    assert "KUBE-SEP-OLD" not in rs.tables["nat"].chains


@pytest.mark.parametrize("command, words", [
    ("-X KUBE-SERVICES", "line 4 jumps to it"),
    ("-X Y", "still has 1 rule"),
    ("-X PREROUTING", "built-in chain"),
    ("-X NOPE", "does not exist"),
    ("-N Y", "already exists"),
    ("-X Y Z", "exactly one chain"),
])
def test_chain_command_errors(command: str, words: str) -> None:
    err = _error(f"*nat\n:KUBE-SERVICES - [0:0]\n:Y - [0:0]\n-A Y -j KUBE-SERVICES\n{command}\nCOMMIT\n")
    assert err.line == 5 and words in str(err), err
