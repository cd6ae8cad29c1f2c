"""Property tests: generated rules survive render -> parse -> render; garbage only ever gives ParseError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.proxy.iptables.parser import ParseError, parse, parse_rule_tokens_general, tokenize
from dataplane.proxy.iptables.rules import (
    ADDRTYPES,
    CT_STATES,
    AddrtypeMatch,
    CommentMatch,
    ConnmarkTarget,
    ConntrackMatch,
    IPNet,
    Jump,
    LogTarget,
    MarkMatch,
    MarkTarget,
    Masquerade,
    MultiportMatch,
    Nat,
    NatRange,
    PortRange,
    PortsMatch,
    RecentMatch,
    Reject,
    Rule,
    SetMatch,
    StatisticMatch,
    Verdict,
)

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u32 = st.integers(0, 0xFFFFFFFF)
ports = st.builds(lambda a, b: PortRange(min(a, b), max(a, b)), st.integers(0, 65535), st.integers(0, 65535))


@st.composite
def nets(draw: st.DrawFn) -> IPNet:
    plen = draw(st.integers(0, 32))
    mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
    return IPNet(4, draw(u32) & mask, mask)


comments = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
ifnames = st.from_regex(r"[a-z][a-z0-9]{0,8}\+?", fullmatch=True)


def common_matches(proto: int | None) -> st.SearchStrategy:
    options = [
        st.builds(CommentMatch, comments),
        st.builds(MarkMatch, u32, u32, st.booleans(), st.sampled_from(["mark", "connmark"])),
        st.builds(StatisticMatch, st.just("random"), probability=st.integers(0, 2**31), neg=st.booleans()),
        st.integers(1, 1000).flatmap(lambda every: st.builds(
            StatisticMatch, st.just("nth"), every=st.just(every), packet=st.integers(0, every - 1),
            neg=st.booleans())),
        st.builds(lambda s, sn, d, dn: AddrtypeMatch(s, sn, d, dn and d != 0),
                  st.integers(1, (1 << len(ADDRTYPES)) - 1), st.booleans(),
                  st.integers(0, (1 << len(ADDRTYPES)) - 1), st.booleans()),
        st.builds(lambda s, n: ConntrackMatch(states=frozenset(s), states_neg=n),
                  st.sets(st.sampled_from(CT_STATES), min_size=1), st.booleans()),
        st.builds(lambda mode, name, secs, reap, side, neg: RecentMatch(
            mode, name, secs if mode in ("rcheck", "update") else 0,
            reap and bool(secs) and mode in ("rcheck", "update"), 0, False, None, side, neg),
            st.sampled_from(["set", "rcheck", "update", "remove"]), st.from_regex(r"[A-Z][A-Z0-9-]{0,20}", fullmatch=True),
            st.integers(0, 100000), st.booleans(), st.sampled_from(["rsource", "rdest"]), st.booleans()),
        st.builds(SetMatch, st.from_regex(r"[A-Z][A-Z-]{0,15}", fullmatch=True),
                  st.lists(st.sampled_from(["src", "dst"]), min_size=1, max_size=3).map(tuple), st.booleans()),
    ]
    if proto in (6, 17, 132):
        name = {6: "tcp", 17: "udp", 132: "sctp"}[proto]
        options.append(st.builds(lambda s, sn, d, dn: PortsMatch(name, s, sn and s is not None, d, dn and d is not None),
                                 st.none() | ports, st.booleans(), st.none() | ports, st.booleans())
                       .filter(lambda m: m.sport is not None or m.dport is not None))
        options.append(st.builds(MultiportMatch, st.sampled_from(["sports", "dports", "ports"]),
                                 st.lists(ports, min_size=1, max_size=7).map(tuple), st.booleans()))
    return st.one_of(options)


@st.composite
def rules(draw: st.DrawFn, table: str) -> Rule:
    proto = draw(st.sampled_from([None, 6, 17, 132, 1, 47]))
    matches = tuple(draw(st.lists(common_matches(proto), max_size=4)))
    proto_neg = bool(proto) and not matches and draw(st.booleans())
    targets = [st.sampled_from([Verdict("ACCEPT"), Verdict("DROP"), Verdict("RETURN"), Jump("X"), Jump("X", True),
                                None]),
               st.builds(MarkTarget, u32, u32),
               st.builds(ConnmarkTarget, st.sampled_from(["set", "save", "restore"]), u32, u32, u32)
               .map(lambda t: ConnmarkTarget(t.mode, 0, t.ctmask, t.nfmask) if t.mode != "set"
                    else ConnmarkTarget("set", t.value, t.ctmask)),
               st.builds(LogTarget, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=29),
                         st.integers(0, 7), st.sets(st.sampled_from(["tcp-sequence", "uid", "ip-options"])).map(frozenset)),
               ]
    if table == "filter":
        targets.append(st.sampled_from([Reject("icmp-port-unreachable"), Reject("icmp-host-prohibited")]))
    if table == "nat":
        port_ok = proto in (6, 17, 132) and not proto_neg
        targets.append(st.builds(lambda a, n, r, f: Nat("SNAT", NatRange(4, a, a + n), r, f),
                                 st.integers(1, 2**31), st.integers(0, 5), st.booleans(), st.booleans()))
        targets.append(st.builds(lambda a, p: Nat("DNAT", NatRange(4, a, a, p if port_ok else None,
                                                                   p if port_ok else None)),
                                 st.integers(1, 2**31), st.integers(1, 65535)))
        targets.append(st.builds(lambda f: Masquerade(random_fully=f), st.booleans()))
    target = draw(st.one_of(targets))
    return Rule("INPUT" if table == "filter" else "PREROUTING",
                src=draw(st.none() | nets()), src_neg=draw(st.booleans()),
                dst=draw(st.none() | nets()), dst_neg=draw(st.booleans()),
                iif=draw(st.none() | ifnames), iif_neg=draw(st.booleans()),
                oif=draw(st.none() | ifnames), oif_neg=draw(st.booleans()),
                proto=proto, proto_neg=proto_neg,
                matches=matches, target=target)


def _normalise(rule: Rule) -> Rule:
    """Negations of absent fields do not exist in the text; drop them for comparison."""
    rule.src_neg = rule.src_neg and rule.src is not None
    rule.dst_neg = rule.dst_neg and rule.dst is not None
    rule.iif_neg = rule.iif_neg and rule.iif is not None
    rule.oif_neg = rule.oif_neg and rule.oif is not None
    return rule


@SETTINGS
@given(st.sampled_from(["filter", "nat"]).flatmap(lambda t: st.tuples(st.just(t), st.lists(rules(t), min_size=1, max_size=5))))
def test_render_parse_render_is_identity(case: tuple[str, list[Rule]]) -> None:
    table, generated = case
    generated = [_normalise(r) for r in generated]
    base = "INPUT" if table == "filter" else "PREROUTING"
    text = (f"*{table}\n:{base} ACCEPT [0:0]\n:X - [0:0]\n" + "".join(r.render() + "\n" for r in generated)
            + "COMMIT\n")
    rs = parse(text)
    assert rs.render() == text
    parsed = rs.tables[table].chains[base].rules
    for got, want in zip(parsed, generated, strict=True):
        assert got.matches == want.matches
        assert got.target == want.target
        assert (got.src, got.dst, got.iif, got.oif) == (want.src, want.dst, want.iif, want.oif)
        # the general parser agrees with the fast path
        toks = tokenize(got.text)
        assert [r.render() for r in parse_rule_tokens_general(toks, 2, toks[1], table, 4)] == [got.render()]


VOCAB = ["-A", "INPUT", "X", "-j", "-g", "-m", "!", "-s", "-d", "-p", "-i", "-o", "tcp", "udp", "icmp", "all",
         "comment", "--comment", '"', "\\", "statistic", "--mode", "random", "nth", "--probability", "--every",
         "--packet", "mark", "--mark", "0x10/0x10", "conntrack", "--ctstate", "NEW", "--ctorigdst", "recent",
         "--set", "--rcheck", "--seconds", "--name", "--mask", "multiport", "--dports", "1,2:3", "set",
         "--match-set", "src,dst", "--dport", "--sport", "80:90", "10.0.0.0/8", "1.2.3.4", "::1", "DNAT",
         "--to-destination", "1.2.3.4:80", "MARK", "--set-xmark", "CONNMARK", "--save-mark", "LOG",
         "--log-level", "REJECT", "--reject-with", "tcp-reset", "ACCEPT", "RETURN", "addrtype", "--src-type",
         "LOCAL", "-c", "1", "[1:2]", "--tcp-flags", "SYN,ACK", "SYN", "--syn", "icmp", "--icmp-type", "8/0",
         "MASQUERADE", "--to-ports", "1-2", "--random-fully", "", "65536", "-1", "0x", "[", "*nat", ":X", "COMMIT"]


@SETTINGS
@given(st.lists(st.sampled_from(VOCAB), max_size=14), st.booleans(), st.sampled_from(["filter", "nat"]))
def test_token_garbage_gives_parse_error_only(tokens: list[str], strict: bool, table: str) -> None:
    base = "INPUT" if table == "filter" else "PREROUTING"
    text = f"*{table}\n:{base} ACCEPT [0:0]\n:X - [0:0]\n-A {base} {' '.join(tokens)}\nCOMMIT\n"
    try:
        rs = parse(text, strict=strict)
    except ParseError as exc:
        assert exc.line >= 1
        return
    rs.render()


@SETTINGS
@given(st.text(max_size=300), st.booleans())
def test_text_garbage_gives_parse_error_only(text: str, strict: bool) -> None:
    try:
        parse(text, strict=strict)
    except ParseError:
        pass
