"""Read `nft -j list ruleset` (libnftables JSON schema 1) into the same AST as the text parser.

Only the subset the text parser knows; anything else is an NftParseError naming the JSON path
(`nftables[12].rule.expr[1]`). The result is checked by the same validator as text input.
"""

from __future__ import annotations

import json
from typing import Any

from dataplane.proxy.nftables import datatypes as dt
from dataplane.proxy.nftables.ast import (
    CHAIN_TYPES, FAMILIES, HOOKS, AnonSet, Binop, Chain, Concat, ConcatValue, Const, Counter, Ct, Element, Expr, Fib,
    Log, Mangle, Map, Match, Meta, Nat, Notrack, Numgen, Payload, Priority, Range, Reject, Rule, Ruleset, Set, SetRef,
    SetUpdate, Table, Value, Verdict, VerdictMap,
)
from dataplane.proxy.nftables.errors import NftParseError
from dataplane.proxy.nftables.validate import expr_dtype, validate_ruleset

_OPS = {"==": "==", "!=": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "in": "=="}
_VERDICTS = ("accept", "drop", "continue", "return")
_REJECT_DEFAULT = {"ip": ("icmp", "port-unreachable"), "ip6": ("icmpv6", "port-unreachable"),
                   "inet": ("icmpx", "port-unreachable")}


class _Err(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


def parse_json(text: str) -> Ruleset:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NftParseError(f"invalid JSON: {exc.msg}", exc.lineno, exc.colno) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nftables"), list):
        raise NftParseError('expected an object {"nftables": [...]} (nft -j list ruleset output)', path="$")
    ruleset = Ruleset()
    for i, item in enumerate(doc["nftables"]):
        path = f"nftables[{i}]"
        try:
            _item(ruleset, item)
        except _Err as exc:
            raise NftParseError(exc.message, path=path) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            message = str(exc) if isinstance(exc, dt.ValueError_) else f"malformed entry ({type(exc).__name__}: {exc})"
            raise NftParseError(message, path=path) from None
    validate_ruleset(ruleset)
    return ruleset


def _need(obj: dict[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _Err(f"missing '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _Err(f"'{key}' has the wrong type ({type(value).__name__})")
    return value


def _table(ruleset: Ruleset, obj: dict[str, Any]) -> Table:
    family, name = _need(obj, "family"), _need(obj, "table")
    table = ruleset.table(family, name)
    if table is None:
        raise _Err(f"table {family} {name} is not declared before its contents")
    return table


def _item(ruleset: Ruleset, item: Any) -> None:
    if not isinstance(item, dict) or len(item) != 1:
        raise _Err("each entry must be an object with one key")
    (kind, obj), = item.items()
    if kind == "metainfo":
        return
    if kind == "table":
        family = _need(obj, "family")
        if family not in FAMILIES:
            raise _Err(f"unknown family {family!r}")
        table = Table(family, _need(obj, "name"), comment=obj.get("comment"), handle=obj.get("handle"),
                      flags=tuple(obj.get("flags", ())))
        ruleset.tables.append(table)
    elif kind == "chain":
        table = _table(ruleset, obj)
        chain = Chain(_need(obj, "name"), handle=obj.get("handle"), comment=obj.get("comment"))
        if "hook" in obj:
            ctype, hook = _need(obj, "type"), _need(obj, "hook")
            if ctype not in CHAIN_TYPES or hook not in HOOKS:
                raise _Err(f"unsupported chain type/hook {ctype}/{hook}")
            if "dev" in obj:
                raise _Err("netdev chains with a device are not supported")
            chain.type, chain.hook = ctype, hook
            chain.priority = Priority(_need(obj, "prio", int))
            chain.policy = obj.get("policy", "accept")
        table.chains[chain.name] = chain
    elif kind in ("set", "map"):
        table = _table(ruleset, obj)
        key_type = obj.get("type")
        key = tuple(key_type) if isinstance(key_type, list) else (key_type,)
        for t in key:
            if t not in dt.SET_KEY_TYPES:
                raise _Err(f"unsupported set datatype {t!r}")
        flags = obj.get("flags", ())
        flags = tuple([flags] if isinstance(flags, str) else flags)
        fields: dict[str, Any] = dict(key_type=key, flags=flags, timeout=obj.get("timeout"),
                                      gc_interval=obj.get("gc-interval"), size=obj.get("size"),
                                      policy=obj.get("policy"), comment=obj.get("comment"), handle=obj.get("handle"),
                                      auto_merge=bool(obj.get("auto-merge", False)))
        if fields["policy"] == "performance":
            fields["policy"] = None
        if kind == "map":
            data = _need(obj, "map")
            if data not in dt.MAP_DATA_TYPES:
                raise _Err(f"unsupported map data type {data!r}")
            nset: Set = Map(_need(obj, "name"), data_type=data, **fields)
        else:
            nset = Set(_need(obj, "name"), **fields)
        nset.elements = [_element(e, key, nset.data_type if isinstance(nset, Map) else None)
                         for e in obj.get("elem", ())]
        table.sets[nset.name] = nset
    elif kind == "rule":
        table = _table(ruleset, obj)
        cname = _need(obj, "chain")
        if cname not in table.chains:
            raise _Err(f"rule for chain {cname!r}, which is not declared")
        exprs = _need(obj, "expr", list)
        statements = []
        for j, st in enumerate(exprs):
            try:
                statements.append(_statement(st, table))
            except _Err as exc:
                raise _Err(f"expr[{j}]: {exc.message}") from None
        table.chains[cname].rules.append(Rule(statements, comment=obj.get("comment"), handle=obj.get("handle")))
    else:
        raise _Err(f"unsupported object {kind!r}")


# ---------------------------------------------------------------- values

def _scalar(raw: Any, dtype: str) -> Value:
    if isinstance(raw, bool):
        raise _Err(f"{raw!r} is not a {dtype}")
    if isinstance(raw, int):
        if dtype in ("ipv4_addr", "ipv6_addr", "ifname"):
            raise _Err(f"{raw} is not a {dtype}")
        return Const(raw, dtype)
    if isinstance(raw, list) and dtype in dt.BITMASK_TYPES:
        bits = 0
        for name in raw:
            bits |= int(_scalar(name, dtype).value)  # type: ignore[union-attr, call-overload]
        return Const(bits, dtype)
    if isinstance(raw, dict) and "prefix" in raw:
        p = raw["prefix"]
        return dt.parse_value(f"{_need(p, 'addr')}/{_need(p, 'len', int)}", dtype)
    if isinstance(raw, dict) and "range" in raw:
        lo, hi = raw["range"]
        low, high = _scalar(lo, dtype), _scalar(hi, dtype)
        if not isinstance(low, Const) or not isinstance(high, Const):
            raise _Err(f"bad range {raw!r}")
        return Range(low.value, high.value, dtype)
    if isinstance(raw, str):
        return dt.parse_value(raw, dtype)
    raise _Err(f"cannot read {raw!r} as {dtype}")


def _value(raw: Any, key_type: tuple[str, ...]) -> Value:
    if len(key_type) > 1:
        if not isinstance(raw, dict) or "concat" not in raw or len(raw["concat"]) != len(key_type):
            raise _Err(f"expected a {' . '.join(key_type)} concatenation, found {raw!r}")
        return ConcatValue(tuple(_scalar(r, t) for r, t in zip(raw["concat"], key_type)))
    return _scalar(raw, key_type[0])


def _verdict(raw: Any) -> Verdict:
    if isinstance(raw, dict) and len(raw) == 1:
        (kind, body), = raw.items()
        if kind in _VERDICTS:
            return Verdict(kind)
        if kind in ("jump", "goto"):
            return Verdict(kind, _need(body, "target"))
    raise _Err(f"expected a verdict, found {raw!r}")


def _element(raw: Any, key_type: tuple[str, ...], data_type: str | None) -> Element:
    data: Value | Verdict | None = None
    if data_type is not None:
        if not isinstance(raw, list) or len(raw) != 2:
            raise _Err(f"map element must be [key, value], found {raw!r}")
        raw, raw_data = raw
        data = _verdict(raw_data) if data_type == "verdict" else _scalar(raw_data, data_type)
    timeout = expires = comment = None
    if isinstance(raw, dict) and "elem" in raw:
        meta = raw["elem"]
        raw = _need(meta, "val", (str, int, dict, list))
        timeout, expires, comment = meta.get("timeout"), meta.get("expires"), meta.get("comment")
    return Element(_value(raw, key_type), data, timeout, expires, comment)


# ---------------------------------------------------------------- expressions and statements

def _expr(raw: Any) -> Expr:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _Err(f"expected an expression, found {raw!r}")
    (kind, body), = raw.items()
    if kind == "payload":
        proto, fld = _need(body, "protocol"), _need(body, "field")
        if (proto, fld) not in dt.PAYLOAD_TYPES:
            raise _Err(f"unsupported payload field {proto} {fld}")
        return Payload(proto, fld)
    if kind == "meta":
        key = _need(body, "key")
        if key not in dt.META_TYPES:
            raise _Err(f"unsupported meta key {key!r}")
        return Meta(key)
    if kind == "ct":
        key = _need(body, "key")
        if key not in dt.CT_TYPES or "dir" in body:
            raise _Err(f"unsupported ct key {key!r}")
        return Ct(key)
    if kind == "numgen":
        mode, mod = _need(body, "mode"), _need(body, "mod", int)
        if mode not in ("random", "inc") or mod <= 0:
            raise _Err(f"bad numgen {body!r}")
        return Numgen(mode, mod, body.get("offset", 0))
    if kind == "fib":
        flags = body.get("flags", [])
        flags = tuple([flags] if isinstance(flags, str) else flags)
        result = _need(body, "result")
        if result not in dt.FIB_RESULTS or not flags or any(f not in dt.FIB_FLAGS for f in flags):
            raise _Err(f"unsupported fib {body!r}")
        return Fib(flags, result)
    if kind == "concat":
        return Concat(tuple(_expr(p) for p in body))
    if kind in ("&", "|", "^"):
        left = _expr(body[0])
        return Binop(kind, left, _scalar(body[1], expr_dtype(left)))  # type: ignore[arg-type]
    raise _Err(f"unsupported expression {kind!r}")


def _rhs(raw: Any, dtype: str) -> Value | SetRef | AnonSet:
    if isinstance(raw, str) and raw.startswith("@"):
        return SetRef(raw[1:])
    key_type = tuple(dtype.split(" . "))
    if isinstance(raw, dict) and "set" in raw:
        return AnonSet(tuple(_element(e, key_type, None) for e in raw["set"]), dtype)
    return _value(raw, key_type)


def _statement(raw: Any, table: Table) -> Any:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _Err(f"expected a statement, found {raw!r}")
    (kind, body), = raw.items()
    if kind in _VERDICTS or kind in ("jump", "goto"):
        return _verdict(raw)
    if kind == "match":
        op = _OPS.get(_need(body, "op"))
        if op is None:
            raise _Err(f"unsupported match operator {body['op']!r}")
        left = _expr(body.get("left"))
        return Match(left, op, _rhs(body.get("right"), expr_dtype(left)))
    if kind == "vmap":
        key = _expr(body.get("key"))
        data = body.get("data")
        if isinstance(data, str) and data.startswith("@"):
            return VerdictMap(key, SetRef(data[1:]))
        if isinstance(data, dict) and "set" in data:
            dtype = expr_dtype(key)
            return VerdictMap(key, AnonSet(tuple(_element(e, tuple(dtype.split(" . ")), "verdict")
                                                 for e in data["set"]), dtype))
        raise _Err(f"unsupported vmap data {data!r}")
    if kind == "counter":
        body = body or {}
        return Counter(body.get("packets", 0), body.get("bytes", 0))
    if kind == "mangle":
        target = _expr(body.get("key"))
        if not isinstance(target, (Meta, Ct)) or target.key != "mark":
            raise _Err("only meta mark and ct mark can be set")
        value = body.get("value")
        return Mangle(target, _expr(value) if isinstance(value, dict) else _scalar(value, "mark"))  # type: ignore[arg-type]
    if kind in ("dnat", "snat", "masquerade", "redirect"):
        body = body or {}
        family = body.get("family")
        addr_dtype = "ipv6_addr" if (family == "ip6" or table.family == "ip6") else "ipv4_addr"
        addr = _scalar(body["addr"], addr_dtype) if "addr" in body else None
        port = _scalar(body["port"], "inet_service") if "port" in body else None
        if isinstance(body.get("addr"), dict) and "map" in body["addr"]:
            raise _Err("NAT to a map is not supported")
        flags = body.get("flags", ())
        flags = tuple([flags] if isinstance(flags, str) else flags)
        return Nat(kind, addr, port, flags, family)  # type: ignore[arg-type]
    if kind == "reject":
        body = body or {}
        rtype, code = body.get("type"), body.get("expr")
        if rtype is None or (rtype, code) == _REJECT_DEFAULT.get(table.family):
            return Reject()
        if rtype == "tcp reset":
            return Reject("tcp reset")
        return Reject(rtype, code)
    if kind == "set":
        op, ref = _need(body, "op"), _need(body, "set")
        elem = body.get("elem")
        timeout = None
        if isinstance(elem, dict) and "elem" in elem:
            timeout = elem["elem"].get("timeout")
            elem = elem["elem"].get("val")
        return SetUpdate(op, ref.lstrip("@"), _expr(elem), timeout)
    if kind == "log":
        body = body or {}
        return Log(body.get("prefix"), body.get("level"))
    if kind == "notrack":
        return Notrack()
    raise _Err(f"unsupported statement {kind!r}")
