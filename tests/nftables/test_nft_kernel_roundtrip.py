"""Parser and renderer against the real nft: load a ruleset with `nft -f`, list it, parse the listing,
render it, load the rendering into a second namespace, and check the kernel lists the same thing."""

from __future__ import annotations

import pytest

from conftest import DATA, normalized, nft_list, nft_load
from dataplane.proxy.nftables.parser import parse, parse_json, parse_text
from dataplane.proxy.nftables.render import render

pytestmark = pytest.mark.requires("root", "nft")

RULESETS = ["varied.nft", "kube_proxy.nft", "cni_plugins.nft"]


@pytest.fixture(autouse=True)
def _need_nft():
    from dataplane.testing import require

    require("root", "nft")


@pytest.mark.parametrize("name", RULESETS)
def test_listing_renders_back_byte_for_byte(sandbox, name):
    ns = sandbox.netns("nft")
    nft_load(ns, (DATA / name).read_text())
    listing = nft_list(ns)
    assert render(parse_text(listing)) == listing


@pytest.mark.parametrize("name", RULESETS)
def test_rendering_loads_into_a_fresh_namespace_and_lists_the_same(sandbox, name):
    first, second = sandbox.netns("nft"), sandbox.netns("nft")
    nft_load(first, (DATA / name).read_text())
    listing = nft_list(first)
    nft_load(second, render(parse_text(listing)))
    relisted = nft_list(second)
    assert normalized(parse_text(relisted)) == normalized(parse_text(listing))
    # outside element blocks (whose order is the kernel's hash order) the text is identical
    strip = lambda text: [line for line in text.splitlines() if "expires" not in line and not line.startswith("\t\t\t")
                          and "elements =" not in line]
    assert strip(relisted) == strip(listing)


@pytest.mark.parametrize("name", RULESETS)
def test_source_text_and_listing_parse_to_the_same_ruleset(sandbox, name):
    """Our reading of the input file equals our reading of what the kernel made of it, modulo what
    nft itself normalises: element timeouts equal to the set's default, `expires`, and rule spelling
    (`{ 172.30.0.0/16 }` lists as `172.30.0.0/16`), so rules are compared by count and base chains
    by hook and priority."""
    ns = sandbox.netns("nft")
    source = (DATA / name).read_text()
    nft_load(ns, source)
    listed = parse_text(nft_list(ns))
    ours = parse_text(source)
    assert [(t.family, t.name, sorted(t.chains), sorted(t.sets)) for t in ours.tables] == \
        [(t.family, t.name, sorted(t.chains), sorted(t.sets)) for t in listed.tables]
    for t_ours, t_listed in zip(ours.tables, listed.tables):
        for cname, chain in t_ours.chains.items():
            other = t_listed.chains[cname]
            assert (len(chain.rules), chain.hook, chain.priority, chain.policy, chain.comment) == \
                (len(other.rules), other.hook, other.priority, other.policy, other.comment), cname
        for sname, s in t_ours.sets.items():
            assert _elements(s) == _elements(t_listed.sets[sname]), sname
            assert (s.key_type, s.timeout, s.comment) == (t_listed.sets[sname].key_type, t_listed.sets[sname].timeout,
                                                          t_listed.sets[sname].comment)


def _elements(s) -> list[str]:
    import dataclasses

    from dataplane.proxy.nftables.render import element

    return sorted(element(dataclasses.replace(e, expires=None, timeout=None if e.timeout == s.timeout else e.timeout))
                  for e in s.elements)


@pytest.mark.parametrize("name", RULESETS)
def test_json_listing_parses_to_the_same_ruleset_as_the_text_listing(sandbox, name):
    ns = sandbox.netns("nft")
    nft_load(ns, (DATA / name).read_text())
    text, js = nft_list(ns), nft_list(ns, "-j")
    assert normalized(parse_json(js), json_limits=True) == normalized(parse_text(text), json_limits=True)
    assert parse(js).tables[0].name == parse(text).tables[0].name  # format detection


def test_handles_from_nft_a_are_read(sandbox):
    ns = sandbox.netns("nft")
    nft_load(ns, (DATA / "kube_proxy.nft").read_text())
    with_handles = parse_text(nft_list(ns, "-a"))
    from_json = parse_json(nft_list(ns, "-j"))
    for t_text, t_json in zip(with_handles.tables, from_json.tables):
        for cname, chain in t_text.chains.items():
            handles = [r.handle for r in chain.rules]
            assert all(h is not None for h in handles)
            assert handles == [r.handle for r in t_json.chains[cname].rules]
    assert render(with_handles, handles=True) == nft_list(ns, "-a")
