"""Recursive-descent parser for nft's text syntax: `nft list ruleset` output and `nft -f` input.

Accepts the block form (`table ip t { chain c { ... } }`) and the command form kube-proxy's
knftables writes (`add table`, `add chain`, `add rule`, `add element`, `flush`, `delete`), for the
subset of statements kube-proxy and the CNI plugins use. Anything else is an `NftParseError` naming
the line and column, never a traceback. Like nft, it types constants by the expression they are
compared with, and checks references (jump targets, `@sets`, their key types) once the whole input
is read.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable

from dataplane.proxy.nftables import datatypes as dt
from dataplane.proxy.nftables.ast import (
    CHAIN_TYPES, FAMILIES, HOOKS, POLICIES, AnonSet, Binop, Chain, Concat, ConcatValue, Const, Counter, Ct,
    Element, Expr, Fib, Log, Mangle, Map, Match, Meta, Nat, Notrack, Numgen, Payload, Priority, Range, Reject,
    Rule, Ruleset, Set, SetRef, SetUpdate, Statement, Table, Value, Verdict, VerdictMap, priority_allowed,
    priority_names,
)
from dataplane.proxy.nftables.errors import NftParseError
from dataplane.proxy.nftables.lexer import Token, tokenize
from dataplane.proxy.nftables.validate import expr_dtype, jump_targets, validate_ruleset

VERDICTS = ("accept", "drop", "continue", "return")
JUMPS = ("jump", "goto")
OPS = {"==": "==", "!=": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">=",
       "eq": "==", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}
BINOPS = {"&": "&", "and": "&", "|": "|", "or": "|", "^": "^", "xor": "^"}
NAT_FLAGS = ("random", "fully-random", "persistent")
SET_FLAGS = ("constant", "interval", "timeout", "dynamic")
SET_POLICIES = ("performance", "memory")
REJECT_TYPES = ("icmp", "icmpv6", "icmpx")
EXPR_STARTS = set(dt.PAYLOAD_PROTOCOLS) | {"meta", "ct", "numgen", "fib"} | set(dt.META_UNQUALIFIED)


def parse_text(text: str) -> Ruleset:
    """Parse nft text into a Ruleset; raises NftParseError on anything wrong or unsupported."""
    # Parsing allocates millions of small objects and frees none: the cyclic GC would only rescan
    # them over and over (more than half the time on a kube-proxy dump), so it pauses meanwhile.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        parser = _Parser(text)
        parser.parse()
    finally:
        if was_enabled:
            gc.enable()
    try:
        validate_ruleset(parser.ruleset)
    except NftParseError as exc:
        if exc.line and exc.source_line is None and exc.line <= len(parser.lines):
            source = parser.lines[exc.line - 1]
            column = len(source) - len(source.lstrip()) + 1
            raise NftParseError(exc.message, exc.line, column, source) from None
        raise
    return parser.ruleset


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.tokens = tokenize(text)
        self.ruleset = Ruleset()
        self.seek(0)

    # ------------------------------------------------------------ token helpers
    # `tok` is a plain attribute (the current token), kept in step with `pos`: it is read millions
    # of times on a kube-proxy dump.

    def seek(self, pos: int) -> None:
        self.pos = pos
        self.tok: Token = self.tokens[pos]

    def peek(self, ahead: int = 1) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.tok
        if tok.kind != "EOF":
            self.pos += 1
            self.tok = self.tokens[self.pos]
        return tok

    def error(self, message: str, tok: Token | None = None) -> NftParseError:
        tok = tok or self.tok
        source = self.lines[tok.line - 1] if 0 < tok.line <= len(self.lines) else None
        return NftParseError(message, tok.line, tok.col, source)

    def describe(self, tok: Token) -> str:
        return {"NL": "end of line", "EOF": "end of input", "STRING": f'"{tok.text}"',
                "SETREF": f"@{tok.text}"}.get(tok.kind, f"'{tok.text}'")

    def is_word(self, *words: str) -> bool:
        tok = self.tok
        return tok.kind == "WORD" and (not words or tok.text in words)

    def expect_word(self, *words: str, what: str | None = None) -> str:
        tok = self.tok
        if tok.kind != "WORD" or (words and tok.text not in words):
            wanted = what or (" or ".join(f"'{w}'" for w in words) if words else "a word")
            raise self.error(f"expected {wanted}, found {self.describe(tok)}")
        return self.next().text

    def expect(self, kind: str, what: str) -> Token:
        if self.tok.kind != kind:
            raise self.error(f"expected {what}, found {self.describe(self.tok)}")
        return self.next()

    def name(self, what: str) -> str:
        """A table, chain or set name: nft's `string` token, which no keyword may be (nft 1.0.6
        also refuses quoted names here)."""
        tok = self.tok
        if tok.kind == "STRING":
            raise self.error(f"nft does not accept a quoted {what} here; use a plain name")
        if tok.kind != "WORD":
            raise self.error(f"expected {what}, found {self.describe(tok)}")
        check_name(tok.text, what, lambda message: self.error(message, tok))
        return self.next().text

    def handle_comment(self, default: int | None) -> int | None:
        """The `# handle N` that `nft -a` prints after an opening brace, if there is one."""
        if self.tok.kind == "HANDLE":
            return int(self.next().text)
        return default

    def skip_separators(self) -> None:
        while self.tok.kind in ("NL", "SEMI"):
            self.next()

    def skip_newlines(self) -> None:
        while self.tok.kind == "NL":
            self.next()

    def at_end_of_statement(self) -> bool:
        return self.tok.kind in ("NL", "SEMI", "RBRACE", "EOF", "HANDLE")

    def end_of_command(self) -> None:
        if self.tok.kind not in ("NL", "SEMI", "EOF"):
            raise self.error(f"unexpected {self.describe(self.tok)}: expected end of command")

    # ------------------------------------------------------------ top level

    def parse(self) -> None:
        while True:
            self.skip_separators()
            if self.tok.kind == "EOF":
                return
            tok = self.tok
            word = self.expect_word(what="a command (table, add, create, insert, flush, delete)")
            if word == "table":
                self.table_command(block_required=True)
            elif word in ("add", "create"):
                self.add_command(insert=False)
            elif word == "insert":
                self.expect_word("rule")
                self.rule_command(insert=True)
            elif word == "flush":
                self.flush_command()
            elif word == "delete":
                self.delete_command()
            else:
                raise self.error(f"unknown command '{word}' (supported: table, add, create, insert, flush, "
                                 "delete)", tok)

    def family(self) -> str:
        if self.is_word(*FAMILIES) and self.peek().kind in ("WORD", "STRING"):
            return self.next().text
        return "ip"

    def table_ref(self) -> Table:
        tok = self.tok
        family = self.family()
        name = self.name("a table name")
        table = self.ruleset.table(family, name)
        if table is None:
            raise self.error(f"no table {family} {name} (declare it first)", tok)
        return table

    def table_command(self, block_required: bool) -> Table:
        family = self.family()
        name = self.name("a table name")
        table = self.ruleset.table(family, name)
        if table is None:
            table = Table(family, name)
            self.ruleset.tables.append(table)
        if self.tok.kind == "LBRACE":
            self.next()
            table.handle = self.handle_comment(table.handle)
            self.table_body(table)
        elif block_required:
            raise self.error(f"expected '{{' after table {family} {name}")
        return table

    def add_command(self, insert: bool) -> None:
        tok = self.tok
        what = self.expect_word(what="table, chain, rule, set, map or element")
        if what == "table":
            self.table_command(block_required=False)
        elif what == "chain":
            table = self.table_ref()
            chain = self.chain_decl(table)
            if self.tok.kind == "LBRACE":
                self.next()
                self.chain_body(table, chain)
        elif what == "rule":
            self.rule_command(insert=False)
        elif what in ("set", "map"):
            table = self.table_ref()
            self.set_decl(table, what)
        elif what == "element":
            table = self.table_ref()
            nset = self.set_ref_in(table)
            nset.elements.extend(self.element_block(nset))
        else:
            raise self.error(f"cannot add '{what}' (supported: table, chain, rule, set, map, element)", tok)
        self.end_of_command()

    def rule_command(self, insert: bool) -> None:
        table = self.table_ref()
        tok = self.tok
        cname = self.name("a chain name")
        chain = table.chains.get(cname)
        if chain is None:
            raise self.error(f"no chain {cname} in table {table.family} {table.name}", tok)
        rule = self.rule(table, chain)
        # In a command (one transaction step at a time) every referenced chain and set must already
        # exist, as the kernel answers ENOENT otherwise; the block form may refer forward.
        for target in jump_targets(rule, table):
            if target not in table.chains:
                raise self.error(f"jump/goto to chain {target!r}, which is not declared yet", tok)
        for st in rule.statements:
            ref = st.right if isinstance(st, Match) else st.mapping if isinstance(st, VerdictMap) else None
            name = ref.name if isinstance(ref, SetRef) else st.set_name if isinstance(st, SetUpdate) else None
            if name is not None and name not in table.sets:
                raise self.error(f"set or map @{name} is not declared yet", tok)
        if insert:
            chain.rules.insert(0, rule)
        else:
            chain.rules.append(rule)

    def flush_command(self) -> None:
        tok = self.tok
        what = self.expect_word(what="ruleset, table, chain, set or map")
        if what == "ruleset":
            if self.is_word(*FAMILIES):
                fam = self.next().text
                self.ruleset.tables = [t for t in self.ruleset.tables if t.family != fam]
            else:
                self.ruleset.tables.clear()
        elif what == "table":
            table = self.table_ref()
            for chain in table.chains.values():
                chain.rules.clear()
            for nset in table.sets.values():
                nset.elements.clear()
        elif what == "chain":
            table = self.table_ref()
            self.chain_ref_in(table).rules.clear()
        elif what in ("set", "map"):
            table = self.table_ref()
            self.set_ref_in(table).elements.clear()
        else:
            raise self.error(f"cannot flush '{what}'", tok)
        self.end_of_command()

    def delete_command(self) -> None:
        tok = self.tok
        what = self.expect_word(what="table, chain, set, map, rule or element")
        if what == "table":
            table = self.table_ref()
            self.ruleset.tables.remove(table)
        elif what == "chain":
            table = self.table_ref()
            chain = self.chain_ref_in(table)
            del table.chains[chain.name]
        elif what in ("set", "map"):
            table = self.table_ref()
            del table.sets[self.set_ref_in(table).name]
        elif what == "element":
            table = self.table_ref()
            nset = self.set_ref_in(table)
            doomed = {e.key for e in self.element_block(nset)}
            nset.elements = [e for e in nset.elements if e.key not in doomed]
        elif what == "rule":
            table = self.table_ref()
            chain = self.chain_ref_in(table)
            self.expect_word("handle")
            htok = self.tok
            handle = self.integer("a rule handle")
            before = len(chain.rules)
            chain.rules = [r for r in chain.rules if r.handle != handle]
            if len(chain.rules) == before:
                raise self.error(f"no rule with handle {handle} in chain {chain.name}", htok)
        else:
            raise self.error(f"cannot delete '{what}'", tok)
        self.end_of_command()

    def chain_ref_in(self, table: Table) -> Chain:
        tok = self.tok
        name = self.name("a chain name")
        if name not in table.chains:
            raise self.error(f"no chain {name} in table {table.family} {table.name}", tok)
        return table.chains[name]

    def set_ref_in(self, table: Table) -> Set:
        tok = self.tok
        name = self.name("a set name")
        if name not in table.sets:
            raise self.error(f"no set or map {name} in table {table.family} {table.name}", tok)
        return table.sets[name]

    def integer(self, what: str) -> int:
        tok = self.tok
        text = self.expect_word(what=what)
        try:
            return int(text, 0)
        except ValueError:
            raise self.error(f"expected {what}, found '{text}'", tok) from None

    # ------------------------------------------------------------ tables

    def table_body(self, table: Table) -> None:
        while True:
            self.skip_separators()
            tok = self.tok
            if tok.kind == "RBRACE":
                self.next()
                return
            word = self.expect_word(what="chain, set, map, comment or flags (or '}')")
            if word == "comment":
                table.comment = self.expect("STRING", "a quoted comment").text
            elif word == "flags":
                table.flags = tuple(self.word_list("a table flag", ("dormant", "owner", "persist")))
            elif word == "chain":
                chain = self.chain_decl(table)
                self.expect("LBRACE", "'{' to open the chain")
                chain.handle = self.handle_comment(chain.handle)
                self.chain_body(table, chain)
            elif word in ("set", "map"):
                self.set_decl(table, word)
            else:
                raise self.error(f"unexpected '{word}' in table {table.name} (expected chain, set, map, "
                                 "comment or flags)", tok)

    def word_list(self, what: str, allowed: tuple[str, ...]) -> list[str]:
        items = []
        while True:
            tok = self.tok
            word = self.expect_word(what=what)
            if word not in allowed:
                raise self.error(f"unknown {what} '{word}' (supported: {', '.join(allowed)})", tok)
            items.append(word)
            if self.tok.kind != "COMMA":
                return items
            self.next()

    # ------------------------------------------------------------ chains

    def chain_decl(self, table: Table) -> Chain:
        name = self.name("a chain name")
        chain = table.chains.get(name)
        if chain is None:
            chain = Chain(name)
            table.chains[name] = chain
        return chain

    def chain_body(self, table: Table, chain: Chain) -> None:
        while True:
            self.skip_separators()
            tok = self.tok
            if tok.kind == "RBRACE":
                self.next()
                return
            if tok.kind == "EOF":
                raise self.error(f"chain {chain.name} is not closed (missing '}}')")
            if self.is_word("type"):
                self.next()
                self.base_chain_spec(table, chain, tok)
            elif self.is_word("policy"):
                self.next()
                chain.policy = self.expect_word(*POLICIES, what="accept or drop")
            elif self.is_word("comment") and self.peek().kind == "STRING" and \
                    self.peek(2).kind in ("NL", "SEMI", "RBRACE"):
                self.next()
                chain.comment = self.next().text
            else:
                chain.rules.append(self.rule(table, chain))

    def base_chain_spec(self, table: Table, chain: Chain, start: Token) -> None:
        tok = self.tok
        ctype = self.expect_word(what="a chain type")
        if ctype not in CHAIN_TYPES:
            raise self.error(f"unknown chain type '{ctype}' (expected {', '.join(CHAIN_TYPES)})", tok)
        self.expect_word("hook")
        tok = self.tok
        hook = self.expect_word(what="a hook")
        if hook not in HOOKS:
            raise self.error(f"unknown hook '{hook}' (expected {', '.join(HOOKS)})", tok)
        if hook in ("ingress", "egress") and table.family != "netdev" and table.family != "inet":
            raise self.error(f"hook {hook} needs a netdev (or inet) table", tok)
        if ctype == "nat" and table.family not in ("ip", "ip6", "inet"):
            raise self.error(f"nat chains need an ip, ip6 or inet table, not {table.family}", tok)
        if ctype == "nat" and hook not in ("prerouting", "input", "output", "postrouting"):
            raise self.error(f"nat chains cannot use hook {hook}", tok)
        if ctype == "route" and hook != "output":
            raise self.error("route chains are only valid at hook output", tok)
        if self.is_word("device"):
            raise self.error("netdev chains with 'device' are not supported")
        self.expect_word("priority")
        chain.type, chain.hook = ctype, hook
        chain.priority = self.priority(table.family, hook)
        if self.tok.kind == "SEMI":
            self.next()
        self.skip_newlines()
        if self.is_word("policy"):
            self.next()
            chain.policy = self.expect_word(*POLICIES, what="accept or drop")
        if chain.policy is None:
            chain.policy = "accept"

    def priority(self, family: str, hook: str) -> Priority:
        tok = self.tok
        word = self.expect_word(what="a priority")
        names = priority_names(family)
        if word in names:
            if not priority_allowed(word, family, hook):
                raise self.error(f"priority '{word}' is not valid for family {family} hook {hook}", tok)
            value = names[word]
            if self.is_word("+", "-"):
                sign = 1 if self.next().text == "+" else -1
                value += sign * self.integer("a priority offset")
            return Priority(value, word)
        try:
            return Priority(int(word, 0))
        except ValueError:
            raise self.error(f"'{word}' is not a priority (a number or one of {', '.join(names)})", tok) from None

    # ------------------------------------------------------------ sets and maps

    def set_decl(self, table: Table, kind: str) -> Set:
        tok = self.tok
        name = self.name(f"a {kind} name")
        self.expect("LBRACE", f"'{{' to open the {kind}")
        handle = self.handle_comment(None)
        fields: dict[str, object] = {}
        elements_tokens: int | None = None
        while True:
            self.skip_separators()
            t = self.tok
            if t.kind == "RBRACE":
                self.next()
                break
            word = self.expect_word(what=f"a {kind} property (type, flags, timeout, elements...)")
            if word == "type":
                key, data = self.set_type(kind)
                fields["key_type"], fields["data_type"] = key, data
            elif word == "typeof":
                key_exprs, data = self.set_typeof(kind)
                fields["typeof"] = key_exprs
                fields["key_type"] = tuple(expr_dtype(e) for e in key_exprs)
                fields["data_type"] = data
            elif word == "flags":
                fields["flags"] = tuple(self.word_list("a set flag", SET_FLAGS))
            elif word == "timeout":
                fields["timeout"] = self.time_value()
            elif word == "gc-interval":
                fields["gc_interval"] = self.time_value()
            elif word == "size":
                fields["size"] = self.integer("a set size")
            elif word == "policy":
                fields["policy"] = self.expect_word(*SET_POLICIES, what="performance or memory")
            elif word == "comment":
                fields["comment"] = self.expect("STRING", "a quoted comment").text
            elif word == "auto-merge":
                fields["auto_merge"] = True
            elif word == "elements":
                self.expect_word("=")
                elements_tokens = self.pos
                self.skip_braced()
            else:
                raise self.error(f"unknown {kind} property '{word}'", t)
        if "key_type" not in fields:
            raise self.error(f"{kind} {name} has no 'type'", tok)
        if "timeout" in fields and "timeout" not in fields.get("flags", ()):  # nft implies the flag
            fields["flags"] = tuple(fields.get("flags", ())) + ("timeout",)
        existing = table.sets.get(name)
        data_type = fields.pop("data_type")
        if existing is not None:
            if existing.key_type != fields["key_type"] or existing.is_map != (kind == "map"):
                raise self.error(f"{kind} {name} already exists with a different type", tok)
            nset = existing
        elif kind == "map":
            nset = Map(name, data_type=data_type, **fields)  # type: ignore[arg-type]
        else:
            nset = Set(name, **fields)  # type: ignore[arg-type]
        table.sets[name] = nset
        if handle is not None:
            nset.handle = handle
        if elements_tokens is not None:
            resume = self.pos
            self.seek(elements_tokens)
            nset.elements.extend(self.element_block(nset))
            self.seek(resume)
        return nset

    def skip_braced(self) -> None:
        self.expect("LBRACE", "'{'")
        depth = 1
        while depth:
            tok = self.next()
            if tok.kind == "EOF":
                raise self.error("unclosed '{'", tok)
            depth += {"LBRACE": 1, "RBRACE": -1}.get(tok.kind, 0)

    def set_type(self, kind: str) -> tuple[tuple[str, ...], str | None]:
        key: list[str] = []
        while True:
            tok = self.tok
            word = self.expect_word(what="a datatype")
            if word not in dt.SET_KEY_TYPES:
                raise self.error(f"unsupported set datatype '{word}' (supported: {', '.join(dt.SET_KEY_TYPES)})",
                                 tok)
            key.append(word)
            if not self.is_word("."):
                break
            self.next()
        data = None
        if kind == "map":
            self.expect_word(":")
            tok = self.tok
            data = self.expect_word(what="a map data type")
            if data not in dt.MAP_DATA_TYPES:
                raise self.error(f"unsupported map data type '{data}'", tok)
        elif self.is_word(":"):
            raise self.error("a set has no data type; declare a map instead")
        return tuple(key), data

    def set_typeof(self, kind: str) -> tuple[tuple[Expr, ...], str | None]:
        """`typeof ip saddr . tcp dport [: verdict | : <expr>]`: the key given by expressions."""
        parts = [self.primary()]
        while self.is_word("."):
            self.next()
            parts.append(self.primary())
        for part in parts:
            if expr_dtype(part) not in dt.SET_KEY_TYPES:
                raise self.error(f"unsupported set datatype {expr_dtype(part)!r}")
        data = None
        if kind == "map":
            self.expect_word(":", what="':' and the map's data")
            if self.is_word("verdict"):
                self.next()
                data = "verdict"
            else:
                tok = self.tok
                data = expr_dtype(self.primary())
                if data not in dt.MAP_DATA_TYPES:
                    raise self.error(f"unsupported map data type '{data}'", tok)
        elif self.is_word(":"):
            raise self.error("a set has no data type; declare a map instead")
        return tuple(parts), data

    def time_value(self) -> float:
        tok = self.tok
        text = self.expect_word(what="a time (like 3h or 10800s)")
        try:
            return dt.parse_time(text)
        except ValueError as exc:
            raise self.error(str(exc), tok) from None

    def element_block(self, nset: Set) -> list[Element]:
        data_type = nset.data_type if isinstance(nset, Map) else None
        return list(self.braced_elements(nset.key_type, data_type, allow_timeout=True).elements)

    def braced_elements(self, key_type: tuple[str, ...], data_type: str | None,
                        allow_timeout: bool = False) -> AnonSet:
        self.expect("LBRACE", "'{'")
        elements: list[Element] = []
        while True:
            self.skip_newlines()
            if self.tok.kind == "RBRACE":
                self.next()
                break
            elements.append(self.element(key_type, data_type, allow_timeout))
            self.skip_newlines()
            if self.tok.kind == "COMMA":
                self.next()
            elif self.tok.kind != "RBRACE":
                raise self.error(f"expected ',' or '}}' after a set element, found {self.describe(self.tok)}")
        if not elements:
            raise self.error("empty set")
        return AnonSet(tuple(elements), " . ".join(key_type))

    def element(self, key_type: tuple[str, ...], data_type: str | None, allow_timeout: bool) -> Element:
        key = self.concat_value(key_type)
        timeout = expires = None
        comment = None
        while self.is_word("timeout", "expires") or (self.is_word("comment") and self.peek().kind == "STRING"):
            tok = self.tok
            word = self.next().text
            if word == "comment":
                comment = self.next().text
                continue
            if not allow_timeout:
                raise self.error(f"'{word}' is only valid in named sets", tok)
            if word == "timeout":
                timeout = self.time_value()
            else:
                expires = self.time_value()
        data: Value | Verdict | None = None
        if data_type is not None:
            self.expect_word(":", what="':' and the mapped value")
            data = self.verdict() if data_type == "verdict" else self.scalar_value(data_type)
        elif self.is_word(":"):
            raise self.error("this is a set, not a map: elements have no ':' value")
        return Element(key, data, timeout, expires, comment)

    def concat_value(self, key_type: tuple[str, ...]) -> Value:
        parts = []
        for i, dtype in enumerate(key_type):
            if i:
                self.expect_word(".", what=f"'.' and the next part of a {' . '.join(key_type)} key")
            parts.append(self.scalar_value(dtype))
        return parts[0] if len(parts) == 1 else ConcatValue(tuple(parts))

    def scalar_value(self, dtype: str) -> Value:
        tok = self.tok
        if tok.kind == "STRING" and dtype == "ifname":
            self.next()
            return dt.parse_value(tok.text, dtype)
        if tok.kind != "WORD":
            raise self.error(f"expected a {dtype} value, found {self.describe(tok)}")
        text = self.next().text
        if dtype in dt.BITMASK_TYPES:
            while self.tok.kind == "COMMA" and self.peek().kind == "WORD" and \
                    self.peek().text in dt.SYMBOLS[dtype]:
                self.next()
                text += "," + self.next().text
        try:
            return dt.parse_value(text, dtype)
        except ValueError as exc:
            raise self.error(str(exc), tok) from None

    def verdict(self) -> Verdict:
        tok = self.tok
        word = self.expect_word(what="a verdict (accept, drop, jump <chain>, goto <chain>...)")
        if word in VERDICTS:
            return Verdict(word)
        if word in JUMPS:
            return Verdict(word, self.name("a chain name"))
        raise self.error(f"'{word}' is not a verdict", tok)

    # ------------------------------------------------------------ rules

    def rule(self, table: Table, chain: Chain) -> Rule:
        start = self.tok
        statements: list[Statement] = []
        rule = Rule(statements, line=start.line)
        while not self.at_end_of_statement():
            if self.is_word("comment") and self.peek().kind == "STRING":
                self.next()
                rule.comment = self.next().text
                continue
            statements.append(self.statement(table, chain))
        if self.tok.kind == "HANDLE":
            rule.handle = int(self.next().text)
        if not statements:
            raise self.error("empty rule", start)
        return rule

    def statement(self, table: Table, chain: Chain) -> Statement:
        tok = self.tok
        if tok.kind != "WORD":
            raise self.error(f"expected a statement, found {self.describe(tok)}")
        word = tok.text
        if word in VERDICTS or word in JUMPS:
            return self.verdict()
        if word == "counter":
            self.next()
            packets = nbytes = 0
            if self.is_word("packets"):
                self.next()
                packets = self.integer("a packet count")
                self.expect_word("bytes")
                nbytes = self.integer("a byte count")
            elif self.is_word("name"):
                raise self.error("named counters are not supported")
            return Counter(packets, nbytes)
        if word == "reject":
            return self.reject_statement(table)
        if word in ("dnat", "snat", "masquerade", "redirect"):
            return self.nat_statement(table, chain)
        if word == "log":
            return self.log_statement()
        if word == "notrack":
            self.next()
            return Notrack()
        if word in ("update", "add", "delete") and self.peek().kind == "SETREF":
            return self.set_statement(table)
        if word in EXPR_STARTS:
            return self.expression_statement(table)
        raise self.error(f"unsupported statement or expression '{word}'")

    def reject_statement(self, table: Table) -> Reject:
        self.next()
        if not self.is_word("with"):
            return Reject()
        self.next()
        tok = self.tok
        kind = self.expect_word(what="icmp, icmpv6, icmpx or tcp")
        if kind == "tcp":
            self.expect_word("reset")
            return Reject("tcp reset")
        if kind not in REJECT_TYPES:
            raise self.error(f"unknown reject type '{kind}'", tok)
        if kind == "icmpx" and table.family not in ("inet", "bridge", "netdev"):
            raise self.error("reject with icmpx needs an inet, bridge or netdev table", tok)
        if self.is_word("type"):
            self.next()
        code = self.expect_word(what="an ICMP reject code (port-unreachable, host-unreachable...)")
        return Reject(kind, code)

    def nat_statement(self, table: Table, chain: Chain) -> Nat:
        tok = self.tok
        kind = self.next().text
        family = None
        if kind in ("dnat", "snat") and self.is_word("ip", "ip6"):
            family = self.next().text
        if kind in ("dnat", "snat") and table.family == "inet" and family is None:
            raise self.error(f"{kind} in an inet table needs 'ip' or 'ip6' before 'to'", tok)
        if chain.type is not None and chain.type != "nat":
            raise self.error(f"{kind} is only valid in nat chains (chain {chain.name} is type {chain.type})",
                             tok)
        addr = port = None
        if self.is_word("to"):
            self.next()
            spec_tok = self.tok
            spec = self.expect_word(what="an address, address:port or :port")
            addr_dtype = "ipv6_addr" if (family == "ip6" or table.family == "ip6") else "ipv4_addr"
            try:
                addr, port = _nat_target(spec, addr_dtype, kind)
            except ValueError as exc:
                raise self.error(str(exc), spec_tok) from None
        elif kind in ("dnat", "snat"):
            raise self.error(f"{kind} needs 'to <address>'")
        flags: list[str] = []
        while self.is_word(*NAT_FLAGS):
            flags.append(self.next().text)
            if self.tok.kind == "COMMA":
                self.next()
        return Nat(kind, addr, port, tuple(flags), family)

    def log_statement(self) -> Log:
        self.next()
        prefix = level = None
        while self.is_word("prefix", "level"):
            word = self.next().text
            if word == "prefix":
                prefix = self.expect("STRING", "a quoted log prefix").text
            else:
                level = self.expect_word(what="a log level")
        return Log(prefix, level)

    def set_statement(self, table: Table) -> SetUpdate:
        op = self.next().text
        ref_name = self.setref()
        self.expect("LBRACE", "'{'")
        key = self.expression()
        timeout = None
        if self.is_word("timeout"):
            self.next()
            timeout = self.time_value()
        self.expect("RBRACE", "'}'")
        return SetUpdate(op, ref_name, key, timeout)

    # ------------------------------------------------------------ expressions

    def expression(self) -> Expr:
        parts = [self.primary()]
        while self.is_word("."):
            self.next()
            parts.append(self.primary())
        expr: Expr = parts[0] if len(parts) == 1 else Concat(tuple(parts))
        if self.is_word(*BINOPS):
            op = BINOPS[self.next().text]
            dtype = expr_dtype(expr)
            expr = Binop(op, expr, self.const_value(dtype))
        return expr

    def const_value(self, dtype: str) -> Const:
        tok = self.tok
        value = self.scalar_value(dtype)
        if not isinstance(value, Const):
            raise self.error(f"expected a single {dtype} value", tok)
        return value

    def primary(self) -> Expr:
        tok = self.tok
        word = self.expect_word(what="an expression (ip saddr, tcp dport, meta mark, ct state...)")
        if word in dt.PAYLOAD_PROTOCOLS:
            ftok = self.tok
            fld = self.expect_word(what=f"a {word} header field")
            if (word, fld) not in dt.PAYLOAD_TYPES:
                known = ", ".join(f for p, f in dt.PAYLOAD_TYPES if p == word)
                raise self.error(f"unsupported field '{word} {fld}' (supported: {known})", ftok)
            return Payload(word, fld)
        if word == "meta":
            ktok = self.tok
            key = self.expect_word(what="a meta key")
            if key not in dt.META_TYPES:
                raise self.error(f"unsupported meta key '{key}' (supported: {', '.join(dt.META_TYPES)})", ktok)
            return Meta(key)
        if word in dt.META_UNQUALIFIED:
            return Meta(word)
        if word == "ct":
            ktok = self.tok
            key = self.expect_word(what="a ct key")
            if key not in dt.CT_TYPES:
                raise self.error(f"unsupported ct key '{key}' (supported: {', '.join(dt.CT_TYPES)})", ktok)
            return Ct(key)
        if word == "numgen":
            mtok = self.tok
            mode = self.expect_word(what="random or inc")
            if mode not in ("random", "inc"):
                raise self.error(f"unknown numgen mode '{mode}' (random or inc)", mtok)
            self.expect_word("mod")
            mod = self.integer("a modulus")
            if mod <= 0:
                raise self.error("numgen modulus must be positive", mtok)
            offset = 0
            if self.is_word("offset"):
                self.next()
                offset = self.integer("an offset")
            return Numgen(mode, mod, offset)
        if word == "fib":
            flags = [self.expect_word(*dt.FIB_FLAGS, what="a fib key (saddr, daddr, mark, iif, oif)")]
            while self.is_word(".") and self.peek().kind == "WORD" and self.peek().text in dt.FIB_FLAGS:
                self.next()
                flags.append(self.next().text)
            rtok = self.tok
            result = self.expect_word(what="a fib result (type, oifname)")
            if result not in dt.FIB_RESULTS:
                raise self.error(f"unsupported fib result '{result}'", rtok)
            return Fib(tuple(flags), result)
        raise self.error(f"unsupported expression '{word}'", tok)

    def expression_statement(self, table: Table) -> Statement:
        tok = self.tok
        left = self.expression()
        dtype = expr_dtype(left)
        if self.is_word("vmap"):
            self.next()
            return VerdictMap(left, self.map_ref_or_inline(tuple(dtype.split(" . "))))
        if self.is_word("set"):
            if not isinstance(left, (Meta, Ct)) or left.key != "mark":
                raise self.error("only 'meta mark set' and 'ct mark set' are supported", tok)
            self.next()
            if self.is_word(*EXPR_STARTS):
                value_expr = self.expression()
                if expr_dtype(value_expr) != "mark":
                    raise self.error("the value of 'mark set' must be a mark", tok)
                return Mangle(left, value_expr)  # type: ignore[arg-type]
            return Mangle(left, self.const_value("mark"))
        op = "=="
        if self.is_word(*OPS):
            op = OPS[self.next().text]
        if self.at_end_of_statement():
            raise self.error(f"expected a value to compare with, found {self.describe(self.tok)}")
        right = self.rhs(dtype, op)
        if dtype in dt.BITMASK_TYPES and self.is_word("/") and isinstance(right, Const):
            self.next()
            mask = self.const_value(dtype)
            return Match(Binop("&", left, mask), op, right)
        return Match(left, op, right)

    def rhs(self, dtype: str, op: str) -> Value | SetRef | AnonSet:
        if self.tok.kind == "SETREF":
            if op not in ("==", "!="):
                raise self.error(f"'{op}' cannot compare with a set")
            return SetRef(self.setref())
        if self.tok.kind == "LBRACE":
            if op not in ("==", "!="):
                raise self.error(f"'{op}' cannot compare with a set")
            return self.braced_elements(tuple(dtype.split(" . ")), None)
        value = self.concat_value(tuple(dtype.split(" . ")))
        if op not in ("==", "!=") and not isinstance(value, Const):
            raise self.error(f"'{op}' needs a single value")
        return value

    def setref(self) -> str:
        tok = self.next()
        check_name(tok.text, "set name", lambda message: self.error(message, tok))
        return tok.text

    def map_ref_or_inline(self, key_type: tuple[str, ...]) -> SetRef | AnonSet:
        if self.tok.kind == "SETREF":
            return SetRef(self.setref())
        if self.tok.kind == "LBRACE":
            return self.braced_elements(key_type, "verdict")
        raise self.error(f"expected @map or '{{' after vmap, found {self.describe(self.tok)}")


# nft's scanner turns these into keywords, so they cannot name a table, chain or set (src/scanner.l)
KEYWORDS = frozenset("""
    table chain set map rule element elements add create insert replace delete flush list reset
    ip ip6 inet arp bridge netdev tcp udp udplite sctp dccp th icmp icmpv6 igmp ah esp comp ether vlan meta ct
    mark jump goto return accept drop continue queue reject dnat snat masquerade redirect counter counters log
    fwd dup limit quota numgen fib hash jhash symhash type typeof hook priority policy device devices flags
    timeout gc-interval size comment vmap update to with handle index position state status notrack
    random fully-random persistent mod offset define include describe monitor export import rt socket osf
    synproxy tproxy secmark ipsec exthdr frag hbh rt0 rt2 srh dst mh packets bytes prefix level
""".split())
_NAME_RE = re.compile(r"[A-Za-z_.][A-Za-z0-9_./:-]*\Z")


def check_name(name: str, what: str, fail: Callable[[str], Exception]) -> None:
    what = what.removeprefix("a ").removeprefix("an ")
    if not _NAME_RE.match(name):
        raise fail(f"{name!r} is not a valid {what}: nft names start with a letter, '_' or '.' and "
                   "contain only letters, digits and _ . / : -")
    if name in KEYWORDS:
        raise fail(f"{name!r} is an nft keyword and cannot be used as a {what}")


def _nat_target(spec: str, addr_dtype: str, kind: str) -> tuple[Const | Range | None, Const | Range | None]:
    """Split `10.0.0.1:80`, `10.0.0.1-10.0.0.9:1024-2000`, `[fd00::1]:80`, `fd00::1`, `:80`."""
    addr_text, port_text = spec, ""
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise ValueError(f"'{spec}': missing ']'")
        addr_text, rest = spec[1:end], spec[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"'{spec}': expected ':port' after ']'")
            port_text = rest[1:]
    elif addr_dtype == "ipv4_addr" or spec.startswith(":"):
        addr_text, _, port_text = spec.partition(":")
        if ":" in spec and not port_text:
            raise ValueError(f"'{spec}': missing port after ':'")
    if kind in ("masquerade", "redirect") and addr_text:
        raise ValueError(f"{kind} takes only a port ('to :port'), not an address")
    addr = dt.parse_value(addr_text, addr_dtype) if addr_text else None
    port = dt.parse_value(port_text, "inet_service") if port_text else None
    if addr is not None and not isinstance(addr, (Const, Range)):
        raise ValueError(f"'{addr_text}' is not a NAT address (prefixes are not supported)")
    if port is not None and not isinstance(port, (Const, Range)):
        raise ValueError(f"'{port_text}' is not a port")
    return addr, port  # type: ignore[return-value]

