"""Tokens of nft's text syntax, with line and column for error messages.

Words are maximal runs of characters other than whitespace and `{ } ; , " #`; that keeps chain names
like `service-ULMVA6XW-ns1/svc1/tcp/p80`, addresses, CIDRs and `addr:port` whole, as nft prints them
(operators such as `.`, `:` and `==` are separate words because nft prints spaces around them).
Newlines are tokens: they end rules. `# handle N` (from `nft -a`) becomes a HANDLE token.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from dataplane.proxy.nftables.errors import NftParseError

SPECIALS = {"{": "LBRACE", "}": "RBRACE", ";": "SEMI", ",": "COMMA"}
_HANDLE_RE = re.compile(r"#\s*handle\s+(\d+)\s*$")
_TOKEN_RE = re.compile(r"""
    (?P<ws>[ \t\r]+)
  | (?P<comment>\#.*)
  | (?P<string>"[^"]*")
  | (?P<open>")
  | (?P<special>[{};,])
  | (?P<cont>\\[ \t\r]*$)
  | (?P<word>[^ \t\r{};,"\#]+)
""", re.VERBOSE)


class Token(NamedTuple):
    """A named tuple rather than a dataclass: a kube-proxy dump has millions of tokens."""

    kind: str  # WORD, STRING, SETREF, NL, LBRACE, RBRACE, SEMI, COMMA, HANDLE, EOF
    text: str
    line: int
    col: int


def tokenize(text: str) -> list[Token]:
    lines = text.split("\n")
    tokens: list[Token] = []
    append = tokens.append
    for lineno, line in enumerate(lines, 1):
        continued = False
        for m in _TOKEN_RE.finditer(line):
            kind = m.lastgroup
            if kind == "ws":
                continue
            col = m.start() + 1
            value = m.group()
            if kind == "word":
                if value[0] == "@":
                    if len(value) == 1:
                        raise NftParseError("'@' must be followed by a set name", lineno, col, line)
                    append(Token("SETREF", value[1:], lineno, col))
                elif value[0] == "$":
                    raise NftParseError(f"variables ({value}) are not supported; expand `define`s first",
                                        lineno, col, line)
                else:
                    append(Token("WORD", value, lineno, col))
            elif kind == "special":
                append(Token(SPECIALS[value], value, lineno, col))
            elif kind == "string":
                append(Token("STRING", value[1:-1], lineno, col))
            elif kind == "comment":
                h = _HANDLE_RE.match(value)
                if h:
                    append(Token("HANDLE", h.group(1), lineno, col))
            elif kind == "cont":
                continued = True
            else:  # an opening quote without its closing one
                raise NftParseError('unterminated string (missing closing ")', lineno, col, line)
        if not continued:
            append(Token("NL", "\n", lineno, len(line) + 1))
    append(Token("EOF", "", len(lines), 1))
    return tokens
