"""Helpers for the nftables tests: load text into a scratch namespace with the real nft, list it back,
and compare rulesets modulo what the kernel decides on its own (hash-set element order, `expires`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dataplane.proxy.nftables.ast import Ruleset
from dataplane.proxy.nftables.render import element
from dataplane.testing.sandbox import Netns

DATA = Path(__file__).parent / "data"


def nft_load(ns: Netns, text: str) -> None:
    res = ns.run(["nft", "-f", "-"], input=text, check=False)
    assert res.returncode == 0, f"real nft refused the input:\n{res.stderr}"


def nft_list(ns: Netns, *flags: str) -> str:
    return ns.run(["nft", *flags, "list", "ruleset"]).stdout


def normalized(ruleset: Ruleset, *, json_limits: bool = False) -> Ruleset:
    """A copy with elements sorted and `expires` dropped (and, for comparing with nft 1.0.6's JSON, the
    fields its JSON output leaves out: table and chain comments, the set flag `dynamic`, `auto-merge`)."""
    out = dataclasses.replace(ruleset, tables=[])
    for table in ruleset.tables:
        t = dataclasses.replace(table, chains={}, sets={})
        if json_limits:
            t.comment = None
        for name, s in table.sets.items():
            elements = sorted((dataclasses.replace(e, expires=None) for e in s.elements), key=element)
            flags = tuple(f for f in s.flags if not (json_limits and f == "dynamic"))
            t.sets[name] = dataclasses.replace(s, elements=elements, flags=flags,
                                               auto_merge=False if json_limits else s.auto_merge)
        for name, c in table.chains.items():
            t.chains[name] = dataclasses.replace(c, comment=None if json_limits else c.comment)
        out.tables.append(t)
    return out


@pytest.fixture
def data() -> Path:
    return DATA
