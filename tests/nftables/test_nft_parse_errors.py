"""Strictness: bad or unsupported input is one NftParseError with a position, never a traceback; where
the real nft also refuses the input, both refuse it (a real load into a scratch namespace)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA
from dataplane.proxy.nftables.errors import NftParseError
from dataplane.proxy.nftables.parser import parse, parse_json, parse_text

T = "table ip t {{\n\tchain c {{\n\t\t{rule}\n\t}}\n\tchain d {{\n\t}}\n\tset s {{\n\t\ttype ipv4_addr\n\t}}\n}}\n"

# (input, the line it is on, words the message must contain): nft refuses every one of these too.
INVALID = [
    (T.format(rule="ip saddr 10.0.0.300 accept"), 3, "IPv4 address"),
    (T.format(rule="tcp dport 70000 accept"), 3, "out of range"),
    (T.format(rule="ip saddr accept"), 3, "IPv4 address"),
    (T.format(rule="meta l4proto tcp udp dport 80 accept"), 3, "conflicting protocols specified: tcp vs. udp"),
    (T.format(rule="tcp dport 80 udp sport 53 accept"), 3, "conflicting protocols"),
    (T.format(rule="jump nowhere"), 3, "does not exist"),
    (T.format(rule="ip daddr @missing accept"), 3, "does not exist"),
    (T.format(rule="tcp dport @s accept"), 3, "holds ipv4_addr"),
    (T.format(rule="ct state bogus accept"), 3, "ct_state"),
    (T.format(rule="meta mark set 0x1 . 2"), 3, ""),
    (T.format(rule="frobnicate"), 3, "frobnicate"),
    ("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tdnat to 10.0.0.1\n"
     "\t}\n}\n", 4, "nat chains"),
    ("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tjump d\n\t}\n"
     "\tchain d {\n\t\tjump e\n\t}\n\tchain e {\n\t\tip saddr 1.1.1.1 goto d\n\t}\n}\n", 0, "loop"),
    ("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tjump j0\n\t}\n"
     + "".join(f"\tchain j{i} {{\n\t\tjump j{i + 1}\n\t}}\n" for i in range(15)) + "\tchain j15 {\n\t}\n}\n", 0,
     "16 or more chains deep"),
    ("table ip t {\n\tchain c {\n\t\ttype nat hook forward priority 0; policy accept;\n\t}\n}\n", 3, "hook forward"),
    ("table ip t {\n\tchain c {\n\t\ttype filter hook output priority dstnat; policy accept;\n\t}\n}\n", 3,
     "not valid"),
    ("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy maybe;\n\t}\n}\n", 3, "accept or drop"),
    ("table ip t {\n\tchain c {\n", 3, "not closed"),
    ("table ip t {\n\tmap m {\n\t\ttype ipv4_addr : verdict\n\t\telements = { 1.1.1.1 }\n\t}\n}\n", 4, "':'"),
    ("table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 1.1.1.1 timeout 1h }\n\t}\n}\n", 0, "timeout"),
    ("add rule ip t c accept\n", 1, "no table"),
    ("table ip u {\n\tset s {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.0.0.1-10.0.0.5, "
     "10.0.0.5-10.0.0.9 }\n\t}\n}\n", 0, "conflicting intervals specified: 10.0.0.1-10.0.0.5 and 10.0.0.5-10.0.0.9"),
    ("table ip t {\n\tchain fwd {\n\t}\n}\n", 2, "keyword"),
    ("table ip t {\n\tchain a=b {\n\t}\n}\n", 2, "not a valid chain name"),
    ("table ip t {\n\tchain 9abc {\n\t}\n}\n", 2, "not a valid chain name"),
    ('table ip t {\n\tchain "my chain" {\n\t}\n}\n', 2, "quoted"),
    ("table ip t {\n\tchain c {\n\t\tmeta l4proto tcp comment \"unterminated\n\t}\n}\n", 3, "unterminated"),
]

# valid nft we do not support: still a clean, positioned error
UNSUPPORTED = [
    (T.format(rule="ip dscp cs1 accept"), 3, "number"),
    (T.format(rule="limit rate 10/second accept"), 3, "limit"),
    (T.format(rule="meta skuid 0 accept"), 3, "skuid"),
    ("define x = 1\n", 1, "define"),
    ("table ip t {\n\tset s {\n\t\ttypeof ct original ip saddr\n\t}\n}\n", 3, "unsupported ct key 'original'"),
    (T.format(rule="ip saddr $x accept"), 3, "variables"),
]


@pytest.mark.parametrize("text,line,words", INVALID + UNSUPPORTED)
def test_bad_input_is_a_positioned_error(text, line, words):
    with pytest.raises(NftParseError) as info:
        parse_text(text)
    assert info.value.line == line
    assert words in str(info.value)
    if line:
        assert info.value.column >= 1
        assert "^" in str(info.value)  # the source line with a caret under the spot


@pytest.mark.requires("root", "nft")
@pytest.mark.parametrize("text,line,words", INVALID)
def test_real_nft_refuses_the_same_input(sandbox, text, line, words):
    ns = sandbox.netns("nft")
    res = ns.run(["nft", "-f", "-"], input=text, check=False)  # a real load: `nft -c` misses kernel checks
    assert res.returncode != 0, "real nft accepted input we reject"


@pytest.mark.requires("root", "nft")
def test_real_nft_accepts_what_we_accept(sandbox):
    ns = sandbox.netns("nft")
    for name in ("varied.nft", "kube_proxy.nft"):
        text = (DATA / name).read_text()
        parse_text(text)
        assert ns.run(["nft", "-c", "-f", "-"], input=text, check=False).returncode == 0


def test_json_errors_name_the_path():
    doc = {"nftables": [{"table": {"family": "ip", "name": "t"}},
                        {"chain": {"family": "ip", "table": "t", "name": "c"}},
                        {"rule": {"family": "ip", "table": "t", "chain": "c",
                                  "expr": [{"accept": None}, {"xt": {"type": "match", "name": "foo"}}]}}]}
    with pytest.raises(NftParseError) as info:
        parse_json(json.dumps(doc))
    assert info.value.path == "nftables[2]" and "expr[1]" in str(info.value) and "xt" in str(info.value)
    with pytest.raises(NftParseError, match="invalid JSON"):
        parse("{ not json")
    with pytest.raises(NftParseError, match="nftables"):
        parse_json("[1, 2]")


SOURCE = (DATA / "varied.nft").read_text()
_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(st.text(alphabet=st.sampled_from(list("{};,\"@#.:/-=!<>&|^ \t\nabcdeiptlnrs0123456789x")), max_size=200))
def test_garbage_never_raises_anything_but_a_parse_error(text):
    try:
        parse_text(text)
    except NftParseError:
        pass


@_settings
@given(st.integers(0, len(SOURCE) - 1), st.integers(1, 20), st.text(max_size=8))
def test_mangled_real_ruleset_never_raises_anything_but_a_parse_error(start, length, insert):
    try:
        parse_text(SOURCE[:start] + insert + SOURCE[start + length:])
    except NftParseError:
        pass


@_settings
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["table", "chain", "rule", "set", "map", "family", "name", "expr",
                                         "match", "left", "right", "op", "payload", "elem", "type", "hook"]),
                        inner, max_size=4), max_leaves=20))
def test_json_garbage_never_raises_anything_but_a_parse_error(doc):
    try:
        parse_json(json.dumps({"nftables": [doc] if not isinstance(doc, list) else doc}))
    except NftParseError:
        pass
