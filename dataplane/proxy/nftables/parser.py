"""Read nftables rulesets: `nft list ruleset` text, `nft -f` scripts, or `nft -j list ruleset` JSON.

`parse` picks the format from the first non-blank character; every problem is an NftParseError with
a position (line/column for text, a JSON path for JSON).
"""

from __future__ import annotations

from dataplane.proxy.nftables.ast import Ruleset
from dataplane.proxy.nftables.errors import NftParseError
from dataplane.proxy.nftables.text_parser import parse_text

__all__ = ["NftParseError", "parse", "parse_json", "parse_text"]


def parse_json(text: str) -> Ruleset:
    from dataplane.proxy.nftables.json_parser import parse_json as _parse_json

    return _parse_json(text)


def parse(text: str) -> Ruleset:
    """Text or JSON, whichever `text` is."""
    if text.lstrip().startswith("{"):
        return parse_json(text)
    return parse_text(text)
