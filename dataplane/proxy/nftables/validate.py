"""Checks nft (or the kernel) would make on a whole ruleset, done after parsing, as knftables' fake does.

References must resolve (jump targets, `@sets`), key types must match, dynamic-set updates need a
`dynamic` set, NAT needs a nat base chain, and the jump graph must be loop-free and at most 15 jumps deep
(NFT_JUMP_STACK_SIZE = 16 levels), because the kernel refuses such a ruleset when it is loaded.
"""

from __future__ import annotations

from dataplane.proxy.nftables import datatypes as dt
from dataplane.proxy.nftables.ast import (
    AnonSet, Binop, Chain, Concat, Const, Ct, Element, Expr, Fib, Map, Match, Meta, Nat, Numgen, Payload, Rule, Ruleset,
    SetRef, SetUpdate, Table, Verdict, VerdictMap,
)
from dataplane.proxy.nftables.errors import NftParseError

JUMP_STACK_SIZE = 16  # include/net/netfilter/nf_tables.h NFT_JUMP_STACK_SIZE
# the kernel refuses a 16th nested jump with EMLINK (measured here: 15 load, 16 fail)
_TOO_DEEP = f"jumps nest {JUMP_STACK_SIZE} or more chains deep (the kernel allows {JUMP_STACK_SIZE - 1}: EMLINK)"


def expr_dtype(expr: Expr) -> str:
    """The nft datatype of an expression: concatenations join their parts with ' . '."""
    if isinstance(expr, Payload):
        return dt.PAYLOAD_TYPES[(expr.protocol, expr.field)]
    if isinstance(expr, Meta):
        return dt.META_TYPES[expr.key]
    if isinstance(expr, Ct):
        return dt.CT_TYPES[expr.key]
    if isinstance(expr, Numgen):
        return "integer"
    if isinstance(expr, Fib):
        return dt.FIB_RESULTS[expr.result]
    if isinstance(expr, Concat):
        return " . ".join(expr_dtype(p) for p in expr.parts)
    if isinstance(expr, Binop):
        return expr_dtype(expr.left)
    raise TypeError(f"not an expression: {expr!r}")


def _error(table: Table, chain: Chain | None, rule: Rule | None, message: str) -> NftParseError:
    where = f"table {table.family} {table.name}" + (f", chain {chain.name}" if chain else "")
    return NftParseError(f"{where}: {message}", rule.line or 0 if rule else 0, 1 if rule and rule.line else 0)


def jump_targets(rule: Rule, table: Table) -> list[str]:
    """Chains a rule can jump or go to, including through verdict maps."""
    out: list[str] = []
    for st in rule.statements:
        if isinstance(st, Verdict) and st.target:
            out.append(st.target)
        elif isinstance(st, VerdictMap):
            elements = st.mapping.elements if isinstance(st.mapping, AnonSet) else \
                table.sets[st.mapping.name].elements if st.mapping.name in table.sets else ()
            out.extend(e.data.target for e in elements if isinstance(e.data, Verdict) and e.data.target)
    return out


def validate_ruleset(ruleset: Ruleset) -> None:
    for table in ruleset.tables:
        for nset in table.sets.values():
            _check_elements(table, nset.name, nset.elements, nset.flags, None, None)
            if nset.interval and not nset.auto_merge and len(nset.key_type) == 1:
                _check_overlaps(table, nset.name, nset.elements)
        for chain in table.chains.values():
            for rule in chain.rules:
                _check_rule(table, chain, rule)
        _check_graph(table)


def _check_elements(table: Table, name: str, elements: list[Element] | tuple[Element, ...],
                    flags: tuple[str, ...], chain: Chain | None, rule: Rule | None) -> None:
    for e in elements:
        if e.timeout is not None and "timeout" not in flags:
            raise _error(table, chain, rule, f"set {name}: element timeout needs the set flag 'timeout'")
        if isinstance(e.data, Verdict) and e.data.target:
            _check_target(table, chain, rule, e.data.target)


def _check_overlaps(table: Table, name: str, elements: list[Element]) -> None:
    """nft refuses overlapping intervals in a named set unless it has auto-merge."""
    from dataplane.proxy.nftables.ast import Prefix, Range
    from dataplane.proxy.nftables.datatypes import format_value

    spans = []
    for e in elements:
        if isinstance(e.key, Prefix):
            spans.append((e.key.network.network_address, e.key.network.broadcast_address, e))
        elif isinstance(e.key, Range):
            spans.append((e.key.low, e.key.high, e))
        elif isinstance(e.key, Const):
            spans.append((e.key.value, e.key.value, e))
    spans.sort(key=lambda t: (t[0], t[1]))  # type: ignore[arg-type, return-value]
    for (_, hi, a), (lo, _, b) in zip(spans, spans[1:]):
        if lo <= hi:  # type: ignore[operator]
            raise _error(table, None, None, f"set {name}: conflicting intervals specified: "
                         f"{format_value(a.key)} and {format_value(b.key)}")


def _check_target(table: Table, chain: Chain | None, rule: Rule | None, target: str) -> None:
    if target not in table.chains:
        raise _error(table, chain, rule, f"jump/goto to chain {target!r}, which does not exist")
    if table.chains[target].is_base:
        raise _error(table, chain, rule, f"cannot jump or goto base chain {target!r}")


_L4_PAYLOADS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}


def _check_rule(table: Table, chain: Chain, rule: Rule) -> None:
    seen_l4 = False
    l4: int | None = None  # the transport protocol this rule has pinned down so far
    for st in rule.statements:
        if isinstance(st, Match) and st.op == "==":
            for part in (st.left.parts if isinstance(st.left, Concat) else (st.left,)):
                implied = _L4_PAYLOADS.get(part.protocol) if isinstance(part, Payload) else None
                if implied is not None:
                    if l4 is not None and l4 != implied:
                        raise _error(table, chain, rule, f"conflicting protocols specified: "
                                     f"{dt.format_scalar(l4, 'inet_proto')} vs. {part.protocol}")
                    l4 = implied
            if isinstance(st.left, Meta) and st.left.key == "l4proto" and isinstance(st.right, Const):
                l4 = int(st.right.value)  # type: ignore[call-overload]
        if isinstance(st, Verdict) and st.target:
            _check_target(table, chain, rule, st.target)
        elif isinstance(st, Match):
            dtype = expr_dtype(st.left)
            if isinstance(st.left, (Payload,)) and st.left.protocol in ("tcp", "udp", "sctp", "th") or \
                    isinstance(st.left, Meta) and st.left.key == "l4proto" or \
                    isinstance(st.left, Payload) and (st.left.protocol, st.left.field) in (("ip", "protocol"),
                                                                                          ("ip6", "nexthdr")):
                seen_l4 = True
            if isinstance(st.right, SetRef):
                nset = table.sets.get(st.right.name)
                if nset is None:
                    raise _error(table, chain, rule, f"set @{st.right.name} does not exist")
                if nset.is_map:
                    raise _error(table, chain, rule, f"@{st.right.name} is a map, not a set")
                if " . ".join(nset.key_type) != dtype:
                    raise _error(table, chain, rule, f"set @{nset.name} holds {' . '.join(nset.key_type)}, "
                                 f"not {dtype}")
        elif isinstance(st, VerdictMap):
            dtype = expr_dtype(st.key)
            if isinstance(st.mapping, SetRef):
                nmap = table.sets.get(st.mapping.name)
                if nmap is None:
                    raise _error(table, chain, rule, f"map @{st.mapping.name} does not exist")
                if not isinstance(nmap, Map) or nmap.data_type != "verdict":
                    raise _error(table, chain, rule, f"@{nmap.name} is not a verdict map")
                if " . ".join(nmap.key_type) != dtype:
                    raise _error(table, chain, rule, f"map @{nmap.name} is keyed by {' . '.join(nmap.key_type)}, "
                                 f"not {dtype}")
            else:
                _check_elements(table, "(anonymous)", st.mapping.elements, (), chain, rule)
        elif isinstance(st, SetUpdate):
            nset = table.sets.get(st.set_name)
            if nset is None:
                raise _error(table, chain, rule, f"set @{st.set_name} does not exist")
            if "dynamic" not in nset.flags and "timeout" not in nset.flags:
                raise _error(table, chain, rule, f"'{st.op} @{nset.name}' needs a set with flags dynamic")
            if " . ".join(nset.key_type) != expr_dtype(st.key):
                raise _error(table, chain, rule, f"set @{nset.name} holds {' . '.join(nset.key_type)}, "
                             f"not {expr_dtype(st.key)}")
        elif isinstance(st, Nat) and st.port is not None and not seen_l4:
            raise _error(table, chain, rule, f"{st.kind} to a port needs a transport protocol match first "
                         "(e.g. meta l4proto tcp)")


def _check_graph(table: Table) -> None:
    """No loops, depth <= 16, and NAT only under nat base chains (linear in chains + jumps)."""
    edges = {name: sorted(set(t for r in c.rules for t in jump_targets(r, table))) for name, c in table.chains.items()}
    height: dict[str, int] = {}  # longest jump path below a chain
    on_path: list[str] = []
    active: set[str] = set()

    def visit(name: str) -> int:
        if name in height:
            return height[name]
        if name in active:
            loop = on_path[on_path.index(name):] + [name]
            raise _error(table, table.chains[name], None, f"jump loop: {' -> '.join(loop)}")
        if len(on_path) >= JUMP_STACK_SIZE:
            raise _error(table, table.chains[name], None, _TOO_DEEP)
        active.add(name)
        on_path.append(name)
        h = 0
        for target in edges.get(name, ()):
            h = max(h, 1 + visit(target))
        on_path.pop()
        active.discard(name)
        height[name] = h
        return h

    has_nat = {name for name, c in table.chains.items()
               if any(isinstance(s, Nat) for r in c.rules for s in r.statements)}
    for name in (c.name for c in table.chains.values() if c.is_base):  # the kernel checks what hooks reach
        if visit(name) >= JUMP_STACK_SIZE:
            raise _error(table, table.chains[name], None, _TOO_DEEP)
    for base in (c for c in table.chains.values() if c.is_base and c.type != "nat"):
        seen, todo = {base.name}, [base.name]
        while todo:
            name = todo.pop()
            if name in has_nat:
                raise _error(table, table.chains[name], None,
                             f"NAT statement reached from base chain {base.name} of type {base.type}")
            for target in edges.get(name, ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
