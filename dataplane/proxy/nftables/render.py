"""Render a Ruleset as nft text, in the exact layout `nft list ruleset` prints.

The output is valid `nft -f` input, and for rulesets read from `nft list ruleset` it reproduces the
listing byte for byte (tabs, blank lines between blocks, element wrapping, property order), which
is how the tests check both the parser and the renderer against the real nft.
"""

from __future__ import annotations

import re

from dataplane.proxy.nftables import datatypes as dt
from dataplane.proxy.nftables.ast import (
    AnonSet, Binop, Chain, Concat, ConcatValue, Const, Counter, Ct, Element, Fib, Log, Mangle, Map, Match, Meta,
    Nat, Notrack, Numgen, Payload, Prefix, Range, Reject, Rule, Ruleset, Set, SetRef, SetUpdate, Table, Verdict,
    VerdictMap, priority_allowed, priority_names, PRIORITY_NAME_RANGE,
)
from dataplane.proxy.nftables.validate import expr_dtype

_PLAIN_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_./:\-]*$")
_META_UNQUALIFIED_PRINT = ("iif", "oif", "iifname", "oifname", "iifgroup", "oifgroup")
_REJECT_DEFAULT = {"ip": ("icmp", "port-unreachable"), "ip6": ("icmpv6", "port-unreachable"),
                   "inet": ("icmpx", "port-unreachable"), "bridge": ("icmpx", "port-unreachable"),
                   "netdev": ("icmpx", "port-unreachable")}


def render(ruleset: Ruleset, *, handles: bool = False) -> str:
    """The whole ruleset as `nft list ruleset` prints it (`handles`: as `nft -a` does)."""
    return "".join(render_table(t, handles=handles) for t in ruleset.tables)


def render_table(table: Table, *, handles: bool = False) -> str:
    head = f"table {table.family} {_name(table.name)} {{"
    if handles and table.handle is not None:
        head += f" # handle {table.handle}"
    lines = [head]
    if table.flags:
        lines.append(f"\tflags {','.join(table.flags)}")
    if table.comment is not None:
        lines.append(f'\tcomment "{table.comment}"')
    blocks = [_set_block(s, handles) for s in table.sets.values()]
    blocks += [_chain_block(c, table.family, handles) for c in table.chains.values()]
    body = "\n\n".join(blocks)
    return "\n".join(lines) + ("\n" + body if body else "") + "\n}\n"


def _name(name: str) -> str:
    return name if _PLAIN_NAME.match(name) else f'"{name}"'


def _set_block(s: Set, handles: bool) -> str:
    kind = "map" if isinstance(s, Map) else "set"
    head = f"\t{kind} {_name(s.name)} {{" + (f" # handle {s.handle}" if handles and s.handle is not None else "")
    lines = [head]
    if s.typeof is not None:
        typ = " . ".join(expr(e) for e in s.typeof) + (f" : {s.data_type}" if isinstance(s, Map) else "")
        lines.append(f"\t\ttypeof {typ}")
    else:
        typ = " . ".join(s.key_type) + (f" : {s.data_type}" if isinstance(s, Map) else "")
        lines.append(f"\t\ttype {typ}")
    if s.policy is not None and s.policy != "performance":
        lines.append(f"\t\tpolicy {s.policy}")
    if s.size is not None:
        lines.append(f"\t\tsize {s.size}")
    flags = [f for f in ("constant", "dynamic", "interval", "timeout") if f in s.flags]
    if flags:
        lines.append(f"\t\tflags {','.join(flags)}")
    if s.auto_merge:
        lines.append("\t\tauto-merge")
    if s.timeout is not None:
        lines.append(f"\t\ttimeout {dt.format_time(s.timeout)}")
    if s.gc_interval is not None:
        lines.append(f"\t\tgc-interval {dt.format_time(s.gc_interval)}")
    if s.comment is not None:
        lines.append(f'\t\tcomment "{s.comment}"')
    if s.elements:
        per_line = dt.element_wrap(s.key_type, anonymous=False)
        lines.append("\t\telements = " + _elements(s.elements, per_line))
    lines.append("\t}")
    return "\n".join(lines)


def _elements(elements: list[Element] | tuple[Element, ...], per_line: int) -> str:
    out = ["{ "]
    count = 0
    for i, e in enumerate(elements):
        if i:
            if per_line == 0 or count < per_line:
                out.append(", ")
            else:
                out.append(",\n\t\t\t     ")
                count = 0
        out.append(element(e))
        count += 1
    out.append(" }")
    return "".join(out)


def element(e: Element) -> str:
    text = dt.format_value(e.key)
    if e.timeout is not None:
        text += f" timeout {dt.format_time(e.timeout)}"
    if e.expires is not None:
        text += f" expires {dt.format_time(e.expires)}"
    if e.comment is not None:
        text += f' comment "{e.comment}"'
    if e.data is not None:
        text += " : " + (verdict(e.data) if isinstance(e.data, Verdict) else dt.format_value(e.data))
    return text


def _chain_block(c: Chain, family: str, handles: bool) -> str:
    head = f"\tchain {_name(c.name)} {{" + (f" # handle {c.handle}" if handles and c.handle is not None else "")
    lines = [head]
    if c.comment is not None:
        lines.append(f'\t\tcomment "{c.comment}"')
    if c.is_base:
        lines.append(f"\t\ttype {c.type} hook {c.hook} priority {priority(c, family)}; "
                     f"policy {c.policy or 'accept'};")
    lines += ["\t\t" + rule(r, family, handles) for r in c.rules]
    lines.append("\t}")
    return "\n".join(lines)


def priority(c: Chain, family: str) -> str:
    """nft's spelling: the nearest allowed named priority within +-10, else the number."""
    assert c.priority is not None and c.hook is not None
    value = c.priority.value
    for name, base in priority_names(family).items():
        offset = value - base
        if abs(offset) <= PRIORITY_NAME_RANGE and priority_allowed(name, family, c.hook):
            return name if offset == 0 else f"{name} {'+' if offset > 0 else '-'} {abs(offset)}"
    return str(value)


def rule(r: Rule, family: str = "ip", handles: bool = False) -> str:
    text = " ".join(statement(s, family) for s in r.statements)
    if r.comment is not None:
        text += f' comment "{r.comment}"'
    if handles and r.handle is not None:
        text += f" # handle {r.handle}"
    return text


def expr(e: object) -> str:
    if isinstance(e, Payload):
        return f"{e.protocol} {e.field}"
    if isinstance(e, Meta):
        return e.key if e.key in _META_UNQUALIFIED_PRINT else f"meta {e.key}"
    if isinstance(e, Ct):
        return f"ct {e.key}"
    if isinstance(e, Numgen):
        return f"numgen {e.mode} mod {e.mod}" + (f" offset {e.offset}" if e.offset else "")
    if isinstance(e, Fib):
        return f"fib {' . '.join(e.flags)} {e.result}"
    if isinstance(e, Concat):
        return " . ".join(expr(p) for p in e.parts)
    if isinstance(e, Binop):
        return f"{expr(e.left)} {e.op} {dt.format_value(e.right)}"
    raise TypeError(f"cannot render expression {e!r}")


def rhs(v: object) -> str:
    if isinstance(v, SetRef):
        return f"@{_name(v.name)}" if _PLAIN_NAME.match(v.name) else f"@{v.name}"
    if isinstance(v, AnonSet):
        return _elements(v.elements, 0)
    if isinstance(v, (Const, Prefix, Range, ConcatValue)):
        return dt.format_value(v)
    raise TypeError(f"cannot render value {v!r}")


def verdict(v: Verdict) -> str:
    return f"{v.kind} {_name(v.target)}" if v.target else v.kind


def statement(s: object, family: str = "ip") -> str:
    if isinstance(s, Match):
        left = s.left
        if isinstance(left, Binop) and left.op == "&" and expr_dtype(left.left) in dt.BITMASK_TYPES \
                and s.op == "==":
            return f"{expr(left.left)} {rhs(s.right)} / {dt.format_value(left.right)}"
        if s.op == "==" and not isinstance(left, Binop):
            return f"{expr(left)} {rhs(s.right)}"
        return f"{expr(left)} {s.op} {rhs(s.right)}"
    if isinstance(s, Verdict):
        return verdict(s)
    if isinstance(s, VerdictMap):
        return f"{expr(s.key)} vmap {rhs(s.mapping)}"
    if isinstance(s, Counter):
        return f"counter packets {s.packets} bytes {s.bytes}"
    if isinstance(s, Mangle):
        value = dt.format_value(s.value) if isinstance(s.value, Const) else expr(s.value)
        return f"{expr(s.target)} set {value}"
    if isinstance(s, Nat):
        return _nat(s)
    if isinstance(s, Reject):
        if s.type is None or (s.type, s.code) == _REJECT_DEFAULT.get(family):
            return "reject"
        if s.type == "tcp reset":
            return "reject with tcp reset"
        return f"reject with {s.type} {s.code}"
    if isinstance(s, SetUpdate):
        timeout = f" timeout {dt.format_time(s.timeout)}" if s.timeout is not None else ""
        return f"{s.op} @{s.set_name} {{ {expr(s.key)}{timeout} }}"
    if isinstance(s, Log):
        text = "log"
        if s.prefix is not None:
            text += f' prefix "{s.prefix}"'
        if s.level is not None and s.level != "warn":
            text += f" level {s.level}"
        return text
    if isinstance(s, Notrack):
        return "notrack"
    raise TypeError(f"cannot render statement {s!r}")


def _nat(s: Nat) -> str:
    text = s.kind + (f" {s.family}" if s.family else "")
    if s.addr is not None or s.port is not None:
        addr = dt.format_value(s.addr) if s.addr is not None else ""
        if addr and s.port is not None and ":" in addr:
            addr = f"[{addr}]"
        text += " to " + addr + (f":{dt.format_value(s.port)}" if s.port is not None else "")
    if s.flags:
        text += " " + ",".join(s.flags)
    return text
