"""The numba fast path for nftables: a parsed ruleset compiled into flat arrays, evaluated in batches.

`nft_eval.NftEvaluator` is the specification; this module must agree with it on every packet,
`numgen random` choices included: both draw one `get_random_u32()` from `rng.SplitMixRandom`
(the high half of one 64-bit output) per numgen expression actually evaluated, in rule order, and
map it as the kernel does (nft_numgen.c: reciprocal_scale(r, mod) + offset = ((r * mod) >> 32) + offset).

Layout: every rule is a run of "ops" (one per statement) in one int64 table, each carrying its
expression; lookup keys are rows of their own table. Named and anonymous sets/maps become one
pool of open-addressing hash tables (linear probing, load <= 1/2; a concatenation is up to
MAX_PARTS words), direct tables for small integer keys (numgen's 0..N-1), and sorted interval
arrays searched by bisection (single-field ranges and prefixes), so a verdict-map dispatch costs
one hash probe whatever the number of services. Per packet, the kernel fills one small array of
its fields (-1 = absent), so an expression is one load.

What compiles (IPv4 packets, tables of family ip and inet): base chains by hook and priority,
jump/goto/return/continue, accept/drop/reject, matches of ip saddr/daddr/protocol/length,
th/tcp/udp/sctp ports, tcp flags, icmp type/code, meta l4proto/nfproto/protocol/mark/length/
iifname/oifname (exact names), ct state/status/mark/direction, fib saddr/daddr type, `numgen
random`, `&`/`|`/`^` with a constant, against constants, prefixes, ranges and sets; verdict maps;
counter; meta/ct mark set; dnat/snat/masquerade to one address and port; log/notrack (no effect).
Anything else (numgen inc, dynamic or timed sets, `update @set`, NAT ranges, ifname wildcards,
concatenations with ranges, redirect, IPv6) compiles to a FALLBACK op: a packet that reaches one
is handed back whole to the reference evaluator, so semantics are never approximated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

import numba
import numpy as np

from dataplane.proxy.nftables import datatypes as dt
from dataplane.proxy.nftables.ast import (
    AnonSet, Binop, Chain, Concat, ConcatValue, Const, Counter, Ct, Element, Fib, Log, Mangle, Match, Meta, Nat,
    Notrack, Numgen, Payload, Prefix, Range, Reject, Rule, Ruleset, SetRef, SetUpdate, Table,
    Verdict as NftVerdict, VerdictMap,
)
from dataplane.proxy.nftables.validate import JUMP_STACK_SIZE, expr_dtype

# ---------------------------------------------------------------- codes shared with the kernel

# expressions: E_* (column 0 of an expression row). Codes below N_FIELDS name a packet field: the
# kernel fills one small array per packet (-1 where the packet has no such field) and an
# expression is one load; then constants and numgen.
(E_IP_SADDR, E_IP_DADDR, E_IP_PROTOCOL, E_LENGTH, E_TH_SPORT, E_TH_DPORT, E_TCP_SPORT, E_TCP_DPORT, E_UDP_SPORT,
 E_UDP_DPORT, E_SCTP_SPORT, E_SCTP_DPORT, E_TCP_FLAGS, E_ICMP_TYPE, E_ICMP_CODE, E_NFPROTO, E_ETHERTYPE, E_MARK,
 E_IIF, E_OIF, E_CT_STATE, E_CT_STATUS, E_CT_MARK, E_CT_DIR, E_FIB_SADDR, E_FIB_DADDR, E_MISSING) = range(27)
N_FIELDS = 27
E_CONST, E_NUMGEN = 27, 28
_PORT_FIELDS = {("tcp", "sport"): E_TCP_SPORT, ("tcp", "dport"): E_TCP_DPORT, ("udp", "sport"): E_UDP_SPORT,
                ("udp", "dport"): E_UDP_DPORT, ("sctp", "sport"): E_SCTP_SPORT, ("sctp", "dport"): E_SCTP_DPORT}
BIN_NONE, BIN_AND, BIN_OR, BIN_XOR = 0, 1, 2, 3

# statements: OP_* (column 0 of an op row)
(OP_CMP, OP_FLAGS, OP_RANGE, OP_LOOKUP, OP_VMAP, OP_VERDICT, OP_COUNTER, OP_SET_MARK, OP_SET_CTMARK, OP_NAT,
 OP_REJECT, OP_NOP, OP_FALLBACK) = range(13)
OP_COLUMNS = 11
CMP_EQ, CMP_NE, CMP_LT, CMP_GT, CMP_LE, CMP_GE = range(6)
_CMP = {"==": CMP_EQ, "!=": CMP_NE, "<": CMP_LT, ">": CMP_GT, "<=": CMP_LE, ">=": CMP_GE}

# verdict kinds
K_CONTINUE, K_ACCEPT, K_DROP, K_REJECT, K_JUMP, K_GOTO, K_RETURN, K_NOTFOUND = range(8)
_KINDS = {"continue": K_CONTINUE, "accept": K_ACCEPT, "drop": K_DROP, "jump": K_JUMP, "goto": K_GOTO,
          "return": K_RETURN}

# results
V_ACCEPT, V_DROP, V_REJECT, V_FALLBACK = 0, 1, 2, 3
NAT_NONE, NAT_DNAT, NAT_SNAT, NAT_MASQ = 0, 1, 2, 3
NATF_FULLY, NATF_RANDOM, NATF_PERSISTENT, NATF_NO_ADDR = 1, 2, 4, 8
HOOK_IDS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}

NO_VALUE = 0xFFFFFFFF  # an absent field in a packet or result row (no ICMP type, no port, unknown interface)
# packet columns (one uint32 row per packet: IPv4 fields all fit, and a narrow row halves the memory traffic)
(P_SRC, P_DST, P_PROTO, P_SPORT, P_DPORT, P_TCP_FLAGS, P_ICMP_TYPE, P_ICMP_CODE, P_IIF, P_OIF, P_MARK,
 P_CT_MARK, P_LENGTH, P_CT_STATE, P_HAS_CT, P_CT_STATUS, P_CT_DIR, P_FIB_SRC, P_FIB_DST, P_NAT_ELIGIBLE,
 P_UNSUPPORTED) = range(21)
PACKET_COLUMNS = 21
# result columns (uint32)
R_VERDICT, R_NAT, R_NAT_ADDR, R_NAT_PORT, R_NAT_FLAGS, R_MARK, R_CT_MARK, R_RULES, R_REJECT = range(9)
RESULT_COLUMNS = 9

MAX_PARTS = 4  # words of a concatenated key
KEY_COLUMNS = 1 + 5 * MAX_PARTS
MAX_PENDING = 64  # counter hits of one packet, applied when it completes
_EMPTY = np.int64(-(2**63))  # an unused hash slot's first word (no real key word is negative)
_L4_PROTOS = {"tcp": 6, "udp": 17, "sctp": 132}
CT_STATE_BITS = {"INVALID": 1, "ESTABLISHED": 2, "RELATED": 4, "NEW": 8, "UNTRACKED": 64}


class _Unsupported(Exception):
    pass


@dataclass
class CompiledRuleset:
    """The arrays the kernel reads, plus what the driver needs to translate in and out."""

    ops: np.ndarray  # (n_ops, OP_COLUMNS) int64: op, its operands, its expression (columns 6-10)
    exprs: np.ndarray  # (n_exprs, 5) int64: code, arg1, arg2, binop, binop constant
    keys: np.ndarray  # (n_keys, KEY_COLUMNS) int64: number of parts, then each part's expression row
    rule_ops: np.ndarray  # (n_rules, 2) int32: first op, end
    chain_rules: np.ndarray  # (n_chains, 2) int32: first rule, end
    hook_chains: np.ndarray  # (5, n) int32 per hook: base chain ids in run order, -1 padded
    chain_flags: np.ndarray  # (n_chains,) int32: bit 0 nat chain, bit 1 policy drop
    set_meta: np.ndarray  # (n_sets, 7) int64: hash offset, capacity, parts, interval start, end, exact
    # elements, dense (1: a direct table indexed by the key, for small integer keys)
    hash_keys: np.ndarray  # (slots, MAX_PARTS) int64
    hash_values: np.ndarray  # (slots,) int64
    iv_lo: np.ndarray  # interval pool (sorted per set)
    iv_hi: np.ndarray
    iv_values: np.ndarray
    counter_packets: np.ndarray  # per counter slot
    counter_bytes: np.ndarray
    counter_hit: np.ndarray  # uint8: the slot has been counted (the reference's dict has the key)
    counter_keys: list[tuple[str, str, str, int, int]]
    ifnames: dict[str, int]  # interface name -> id used in exprs and keys
    reject_names: list[str]
    chain_names: list[tuple[str, str, str]]  # (family, table, chain)
    fallback_ops: int = 0
    fallback_reasons: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- compilation

class _Compiler:
    def __init__(self, ruleset: Ruleset, base_chains: dict[str, list[tuple[Table, Chain]]]) -> None:
        self.ruleset = ruleset
        self.base_chains = base_chains
        self.ops: list[list[int]] = []
        self.exprs: list[tuple[int, ...]] = []
        self.expr_index: dict[tuple[int, ...], int] = {}
        self.keys: list[tuple[int, ...]] = []
        self.rule_ops: list[tuple[int, int]] = []
        self.chain_rules: list[tuple[int, int]] = []
        self.chain_flags: list[int] = []
        self.chain_id: dict[tuple[int, str], int] = {}
        self.chain_names: list[tuple[str, str, str]] = []
        self.sets: list[tuple[int, list[tuple[tuple[int, ...], int]], list[tuple[int, int, int]]]] = []
        self.named_set: dict[tuple[int, str], int] = {}
        self.ifnames: dict[str, int] = {}
        self.reject_names: list[str] = []
        self.counter_keys: list[tuple[str, str, str, int, int]] = []
        self.counter_init: list[tuple[int, int]] = []
        self.fallback_reasons: list[str] = []

    def compile(self) -> CompiledRuleset:
        tables = [t for t in self.ruleset.tables if t.family in ("ip", "inet")]
        for t in tables:
            for name in t.chains:
                self.chain_id[(id(t), name)] = len(self.chain_id)
                self.chain_names.append((t.family, t.name, name))
        for t in tables:
            dynamic = {st.set_name for c in t.chains.values() for r in c.rules for st in r.statements
                       if isinstance(st, SetUpdate)}
            for chain in t.chains.values():
                first = len(self.rule_ops)
                for pos, rule in enumerate(chain.rules):
                    self._rule(t, chain, pos, rule, dynamic)
                self.chain_rules.append((first, len(self.rule_ops)))
                self.chain_flags.append((1 if chain.type == "nat" else 0) | (2 if chain.policy == "drop" else 0))
        width = max([len(v) for v in self.base_chains.values()] + [1])
        hooks = np.full((len(HOOK_IDS), width), -1, np.int32)
        for hook, chains in self.base_chains.items():
            for k, (t, c) in enumerate(chains):
                hooks[HOOK_IDS[hook], k] = self.chain_id[(id(t), c.name)]
        return self._arrays(hooks)

    def _arrays(self, hooks: np.ndarray) -> CompiledRuleset:
        meta = np.zeros((max(len(self.sets), 1), 7), np.int64)
        total = sum(_table_size(parts, exact) for parts, exact, _ in self.sets)
        hkeys = np.full((max(total, 1), MAX_PARTS), _EMPTY, np.int64)
        hvals = np.zeros(max(total, 1), np.int64)
        lo: list[int] = []
        hi: list[int] = []
        ivv: list[int] = []
        offset = 0
        for s, (parts, exact, intervals) in enumerate(self.sets):
            cap = _table_size(parts, exact)
            dense = _is_dense(parts, exact)
            if dense:  # small integer keys (numgen's 0..N-1): the key is the slot
                for (key,), value in exact:
                    hkeys[offset + key, 0] = key
                    hvals[offset + key] = value
            else:
                _fill(hkeys, hvals, offset, cap, exact)
            intervals.sort()
            meta[s] = (offset, cap, parts, len(lo), len(lo) + len(intervals), len(exact), dense)
            for a, b, v in intervals:
                lo.append(a)
                hi.append(b)
                ivv.append(v)
            offset += cap
        n_counters = len(self.counter_keys)
        return CompiledRuleset(
            ops=self._op_array(),
            exprs=np.array(self.exprs or [(E_MISSING, 0, 0, 0, 0)], np.int64).reshape(-1, 5),
            keys=np.array(self.keys or [(0,) * KEY_COLUMNS], np.int64).reshape(-1, KEY_COLUMNS),
            rule_ops=np.array(self.rule_ops or [(0, 0)], np.int32).reshape(-1, 2),
            chain_rules=np.array(self.chain_rules or [(0, 0)], np.int32).reshape(-1, 2),
            hook_chains=hooks, chain_flags=np.array(self.chain_flags or [0], np.int32),
            set_meta=meta, hash_keys=hkeys, hash_values=hvals,
            iv_lo=np.array(lo or [0], np.int64), iv_hi=np.array(hi or [0], np.int64),
            iv_values=np.array(ivv or [0], np.int64),
            counter_packets=np.array([c[0] for c in self.counter_init] or [0], np.int64),
            counter_bytes=np.array([c[1] for c in self.counter_init] or [0], np.int64),
            counter_hit=np.zeros(max(n_counters, 1), np.uint8), counter_keys=self.counter_keys,
            ifnames=self.ifnames, reject_names=self.reject_names, chain_names=self.chain_names,
            fallback_ops=sum(1 for op in self.ops if op[0] == OP_FALLBACK), fallback_reasons=self.fallback_reasons)

    def _skippable(self, op: list[int]) -> bool:
        """A lookup in a set with no elements whose key draws nothing: it fails without evaluating."""
        _, exact, intervals = self.sets[op[2]]
        key = self.keys[op[1]]
        return not exact and not intervals and all(key[1 + 5 * j] != E_NUMGEN for j in range(key[0]))

    def _op_array(self) -> np.ndarray:
        """The op rows, with a one-expression op's expression copied into columns 6-10 (one load
        chain less per op in the kernel)."""
        ops = np.zeros((max(len(self.ops), 1), OP_COLUMNS), np.int64)
        if not self.ops:
            ops[0, 0] = OP_NOP
        for i, row in enumerate(self.ops):
            ops[i, :6] = row
            if row[0] in (OP_CMP, OP_FLAGS, OP_RANGE, OP_SET_MARK, OP_SET_CTMARK):
                ops[i, 6:] = self.exprs[row[1]]
            elif row[0] in (OP_LOOKUP, OP_VMAP):
                ops[i, 4] = self._skippable(row)
        return ops

    # -- rules and statements
    def _rule(self, table: Table, chain: Chain, pos: int, rule: Rule, dynamic: set[str]) -> None:
        first = len(self.ops)
        for index, st in enumerate(rule.statements):
            try:
                self.ops.append(self._statement(table, chain, pos, index, st, dynamic))
            except _Unsupported as exc:
                self.ops.append([OP_FALLBACK, 0, 0, 0, 0, 0])
                self.fallback_reasons.append(f"{table.name} {chain.name} rule {pos + 1}: {exc}")
                break  # the reference takes the packet from here: later statements are never reached
        self.rule_ops.append((first, len(self.ops)))

    def _statement(self, table: Table, chain: Chain, pos: int, index: int, st: object,
                   dynamic: set[str]) -> list[int]:
        if isinstance(st, NftVerdict):
            return [OP_VERDICT, self._verdict(table, st), 0, 0, 0, 0]
        if isinstance(st, (Match, VerdictMap)) and self._absent(st.left if isinstance(st, Match) else st.key):
            # a field IPv4 packets never have (ip6 ...): the rule stops here, whatever the right side
            return [OP_CMP, self._add_expr((E_MISSING, 0, 0, BIN_NONE, 0)), CMP_EQ, 0, 0, 0]
        if isinstance(st, Match):
            return self._match(table, st, dynamic)
        if isinstance(st, VerdictMap):
            return [OP_VMAP, self._key(st.key), self._set(table, st.mapping, st.key, dynamic), 0, 0, 0]
        if isinstance(st, Counter):
            self.counter_keys.append((table.family, table.name, chain.name, pos, index))
            self.counter_init.append((st.packets, st.bytes))
            return [OP_COUNTER, len(self.counter_keys) - 1, 0, 0, 0, 0]
        if isinstance(st, Mangle):
            value = self._expr(st.value) if not isinstance(st.value, Const) else self._const_expr(st.value)
            return [OP_SET_MARK if isinstance(st.target, Meta) else OP_SET_CTMARK, value, 0, 0, 0, 0]
        if isinstance(st, Nat):
            return self._nat(st)
        if isinstance(st, Reject):
            name = _reject_name_v4(st)
            if name not in self.reject_names:
                self.reject_names.append(name)
            return [OP_REJECT, self.reject_names.index(name), 0, 0, 0, 0]
        if isinstance(st, (Log, Notrack)):
            return [OP_NOP, 0, 0, 0, 0, 0]
        raise _Unsupported(type(st).__name__)

    @staticmethod
    def _absent(e: object) -> bool:
        """Whether the expression is missing from every IPv4 packet (the first part, for a concatenation)."""
        parts = e.parts if isinstance(e, Concat) else (e,)
        for part in parts:
            inner = part.left if isinstance(part, Binop) else part
            try:
                code = _base_expr(inner)[0]
            except _Unsupported:
                return False
            if code == E_MISSING:
                return True
            if code == E_NUMGEN:  # a draw before the missing part still happens
                return False
        return False

    def _verdict(self, table: Table, v: NftVerdict) -> int:
        kind = _KINDS.get(v.kind)
        if kind is None:
            raise _Unsupported(f"verdict {v.kind}")
        target = 0
        if kind in (K_JUMP, K_GOTO):
            cid = self.chain_id.get((id(table), v.target))  # type: ignore[arg-type]
            if cid is None:
                raise _Unsupported(f"jump to a missing chain {v.target}")
            target = cid
        return (kind << 32) | target

    def _match(self, table: Table, m: Match, dynamic: set[str]) -> list[int]:
        right = m.right
        if isinstance(right, (SetRef, AnonSet)) or isinstance(right, ConcatValue):
            if isinstance(right, ConcatValue):
                right = AnonSet((Element(right),), expr_dtype(m.left))
            if m.op not in ("==", "!="):
                raise _Unsupported(f"set lookup with {m.op}")
            return [OP_LOOKUP, self._key(m.left), self._set(table, right, m.left, dynamic),
                    1 if m.op == "!=" else 0, 0, 0]
        left = self._expr(m.left)
        dtype = expr_dtype(m.left)
        if isinstance(m.left, Concat):
            raise _Unsupported("concatenation against a non-constant")
        if dtype in dt.BITMASK_TYPES and not isinstance(m.left, Binop) and isinstance(right, Const):
            return [OP_FLAGS, left, _scalar(right.value, self.ifnames), 1 if m.op == "!=" else 0, 0, 0]
        if isinstance(right, Const):
            if dtype == "ifname" and m.op not in ("==", "!="):
                raise _Unsupported("ordering of interface names")
            if isinstance(right.value, str) and right.value.endswith("*"):
                raise _Unsupported("interface name wildcard")
            return [OP_CMP, left, _CMP[m.op], _scalar(right.value, self.ifnames), 0, 0]
        if isinstance(right, (Prefix, Range)):
            if m.op not in ("==", "!="):
                raise _Unsupported(f"{m.op} against a range")
            lo, hi = _interval(right)
            return [OP_RANGE, left, lo, hi, 1 if m.op == "!=" else 0, 0]
        raise _Unsupported(type(right).__name__)

    def _nat(self, st: Nat) -> list[int]:
        if st.kind == "redirect":
            raise _Unsupported("redirect")
        if isinstance(st.addr, Range) or isinstance(st.port, Range):
            raise _Unsupported("NAT range")
        flags = (NATF_FULLY if "fully-random" in st.flags else 0) | (NATF_RANDOM if "random" in st.flags else 0) \
            | (NATF_PERSISTENT if "persistent" in st.flags else 0)
        addr = 0
        if st.addr is None:
            flags |= NATF_NO_ADDR
        elif isinstance(st.addr.value, IPv4Address):
            addr = int(st.addr.value)
        else:
            raise _Unsupported("non-IPv4 NAT address")
        port = int(st.port.value) if st.port is not None else -1  # type: ignore[call-overload]
        kind = {"dnat": NAT_DNAT, "snat": NAT_SNAT, "masquerade": NAT_MASQ}[st.kind]
        return [OP_NAT, kind, addr, port, flags, 0]

    # -- expressions and keys
    def _add_expr(self, row: tuple[int, ...]) -> int:
        if row[0] == E_NUMGEN:  # every numgen is its own draw site; never shared
            self.exprs.append(row)
            return len(self.exprs) - 1
        found = self.expr_index.get(row)
        if found is None:
            found = self.expr_index[row] = len(self.exprs)
            self.exprs.append(row)
        return found

    def _const_expr(self, c: Const) -> int:
        return self._add_expr((E_CONST, _scalar(c.value, self.ifnames), 0, BIN_NONE, 0))

    def _expr(self, e: object) -> int:
        if isinstance(e, Binop):
            inner = self.exprs[self._expr(e.left)]
            if inner[3] != BIN_NONE or inner[0] == E_NUMGEN:
                raise _Unsupported("nested binop")
            op = {"&": BIN_AND, "|": BIN_OR, "^": BIN_XOR}[e.op]
            return self._add_expr((inner[0], inner[1], inner[2], op, _scalar(e.right.value, self.ifnames)))
        return self._add_expr((*_base_expr(e), BIN_NONE, 0))

    def _key(self, e: object) -> int:
        parts = e.parts if isinstance(e, Concat) else (e,)
        if len(parts) > MAX_PARTS:
            raise _Unsupported(f"concatenation of more than {MAX_PARTS}")
        row = [len(parts)]
        for p in parts:  # each part's expression row inline: one load chain less per part
            row.extend(self.exprs[self._expr(p)])
        row += [0] * (KEY_COLUMNS - len(row))
        self.keys.append(tuple(row))
        return len(self.keys) - 1

    def _set(self, table: Table, ref: SetRef | AnonSet, key_expr: object, dynamic: set[str]) -> int:
        if isinstance(ref, SetRef):
            found = self.named_set.get((id(table), ref.name))
            if found is not None:
                return found
            nset = table.sets.get(ref.name)
            if nset is None:
                raise _Unsupported(f"missing set @{ref.name}")
            if ref.name in dynamic or "timeout" in nset.flags or "dynamic" in nset.flags:
                raise _Unsupported(f"dynamic or timed set @{ref.name}")
            elements = nset.elements
        else:
            elements = list(ref.elements)
        parts = len(key_expr.parts) if isinstance(key_expr, Concat) else 1
        exact: dict[tuple[int, ...], int] = {}
        intervals: list[tuple[int, int, int]] = []
        for el in elements:
            if el.timeout is not None or el.expires is not None:
                raise _Unsupported("set element with a timeout")
            value = self._element_value(table, el)
            key = el.key
            if isinstance(key, ConcatValue):
                if len(key.parts) != parts or not all(isinstance(p, Const) for p in key.parts):
                    raise _Unsupported("concatenated element with ranges")
                words = tuple(_scalar(p.value, self.ifnames) for p in key.parts)  # type: ignore[union-attr]
                exact[words] = value  # a later duplicate wins, as in SetIndex
            elif parts != 1:
                raise _Unsupported("element shape differs from the key")
            elif isinstance(key, Const):
                if isinstance(key.value, str) and key.value.endswith("*"):
                    raise _Unsupported("interface name wildcard element")
                exact[(_scalar(key.value, self.ifnames),)] = value
            else:
                lo, hi = _interval(key)
                intervals.append((lo, hi, value))
        intervals = _merge(sorted(intervals))
        self.sets.append((parts, list(exact.items()), intervals))
        sid = len(self.sets) - 1
        if isinstance(ref, SetRef):
            self.named_set[(id(table), ref.name)] = sid
        return sid

    def _element_value(self, table: Table, el: Element) -> int:
        if isinstance(el.data, NftVerdict):
            return self._verdict(table, el.data)
        return K_NOTFOUND << 32  # a set element, or map data that is not a verdict: a vmap does not match


def _merge(intervals: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Overlapping plain intervals joined, as SetIndex does; those with data stay as they are."""
    plain = K_NOTFOUND << 32
    out: list[tuple[int, int, int]] = []
    for lo, hi, v in intervals:
        if out and v == plain and out[-1][2] == plain and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi), plain)
            continue
        out.append((lo, hi, v))
    return out


def _base_expr(e: object) -> tuple[int, int, int]:
    if isinstance(e, Payload):
        proto, fld = e.protocol, e.field
        if proto == "ip":
            code = {"saddr": E_IP_SADDR, "daddr": E_IP_DADDR, "protocol": E_IP_PROTOCOL, "length": E_LENGTH}.get(fld)
            return (code, 0, 0) if code is not None else (E_MISSING, 0, 0)
        if proto == "ip6":
            return (E_MISSING, 0, 0)  # no IPv6 header in an IPv4 packet
        if proto == "th":
            return (E_TH_SPORT if fld == "sport" else E_TH_DPORT, 0, 0)
        if (proto, fld) in _PORT_FIELDS:
            return (_PORT_FIELDS[(proto, fld)], 0, 0)
        if (proto, fld) == ("tcp", "flags"):
            return (E_TCP_FLAGS, 0, 0)
        if proto == "icmp":
            return (E_ICMP_TYPE if fld == "type" else E_ICMP_CODE, 0, 0)
        raise _Unsupported(f"payload {proto} {fld}")
    if isinstance(e, Meta):
        code = {"l4proto": E_IP_PROTOCOL, "nfproto": E_NFPROTO, "protocol": E_ETHERTYPE, "mark": E_MARK,
                "iifname": E_IIF, "oifname": E_OIF, "length": E_LENGTH}.get(e.key, E_MISSING)
        return (code, 0, 0)
    if isinstance(e, Ct):
        code = {"state": E_CT_STATE, "status": E_CT_STATUS, "mark": E_CT_MARK, "direction": E_CT_DIR}.get(e.key)
        if code is None:
            raise _Unsupported(f"ct {e.key}")
        return (code, 0, 0)
    if isinstance(e, Numgen):
        if e.mode != "random":
            raise _Unsupported(f"numgen {e.mode}")
        return (E_NUMGEN, e.mod, e.offset)
    if isinstance(e, Fib):
        if e.result != "type":
            return (E_MISSING, 0, 0)
        return (E_FIB_DADDR if "daddr" in e.flags else E_FIB_SADDR, 0, 0)
    raise _Unsupported(type(e).__name__)


def _scalar(value: object, ifnames: dict[str, int]) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, IPv4Address):
        return int(value)
    if isinstance(value, IPv6Address):
        raise _Unsupported("IPv6 constant")
    if isinstance(value, str):
        return ifnames.setdefault(value, len(ifnames))
    raise _Unsupported(f"constant {value!r}")


def _interval(v: object) -> tuple[int, int]:
    if isinstance(v, Prefix):
        if v.network.version != 4:
            raise _Unsupported("IPv6 prefix")
        return int(v.network.network_address), int(v.network.broadcast_address)
    if isinstance(v, Range):
        if isinstance(v.low, str):
            raise _Unsupported("range of names")
        return _scalar(v.low, {}), _scalar(v.high, {})
    raise _Unsupported(type(v).__name__)


def _reject_name_v4(st: Reject) -> str:
    if st.type == "tcp reset":
        return "tcp-reset"
    kind, code = st.type, st.code or "port-unreachable"
    if kind in (None, "icmpx"):
        kind = "icmp"
    return f"{'icmp' if kind == 'icmp' else 'icmp6'}-{code}"


DENSE_LIMIT = 64


def _is_dense(parts: int, exact: list[tuple[tuple[int, ...], int]]) -> bool:
    return parts == 1 and bool(exact) and all(0 <= k[0] < DENSE_LIMIT for k, _ in exact)


def _table_size(parts: int, exact: list[tuple[tuple[int, ...], int]]) -> int:
    if _is_dense(parts, exact):
        return max(k[0] for k, _ in exact) + 1
    return _capacity(len(exact))


def _capacity(n: int) -> int:
    cap = 4
    while cap < 2 * n:
        cap <<= 1
    return cap


def _fill(keys: np.ndarray, values: np.ndarray, offset: int, cap: int,
          items: list[tuple[tuple[int, ...], int]]) -> None:
    if not items:
        return
    words = np.zeros((len(items), MAX_PARTS), np.int64)
    for i, (k, _) in enumerate(items):
        words[i, :len(k)] = k
    _insert_all(keys, values, offset, cap, words, np.array([v for _, v in items], np.int64))


@numba.njit(cache=True, inline="always")
def _hash(k0: np.int64, k1: np.int64, k2: np.int64, k3: np.int64) -> np.uint64:
    """Four independent multiplies, then a finalizer (the multiplies pipeline; one dependent chain)."""
    h = (np.uint64(k0) * np.uint64(0x9E3779B97F4A7C15)) ^ (np.uint64(k1) * np.uint64(0xC2B2AE3D27D4EB4F)) \
        ^ (np.uint64(k2) * np.uint64(0x165667B19E3779F9)) ^ (np.uint64(k3) * np.uint64(0xD6E8FEB86659FD93))
    h = (h ^ (h >> np.uint64(32))) * np.uint64(0xBF58476D1CE4E5B9)
    return h ^ (h >> np.uint64(29))


@numba.njit(cache=True)
def _insert_all(keys, values, offset, cap, words, vals):  # type: ignore[no-untyped-def]
    mask = np.uint64(cap - 1)
    for i in range(words.shape[0]):
        slot = _hash(words[i, 0], words[i, 1], words[i, 2], words[i, 3]) & mask
        while keys[offset + np.int64(slot), 0] != _EMPTY:
            slot = (slot + np.uint64(1)) & mask
        for j in range(MAX_PARTS):
            keys[offset + np.int64(slot), j] = words[i, j]
        values[offset + np.int64(slot)] = vals[i]


# ---------------------------------------------------------------- the kernel
# The hot path passes only scalars to helpers: an array handed to a function costs an atomic
# reference-count increment and decrement per call, which dominated the first version.


@numba.njit(cache=True, inline="always")
def _splitmix_u32(state: np.uint64) -> tuple[np.uint64, np.int64]:
    """(next state, SplitMixRandom.u32()): the high half of one SplitMix64 output."""
    s = state + np.uint64(0x9E3779B97F4A7C15)
    z = s
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return s, np.int64(z >> np.uint64(32))


@numba.njit(cache=True, inline="always")
def _binop(v: np.int64, bop: np.int64, bconst: np.int64) -> np.int64:
    if bop == BIN_AND:
        return v & bconst
    if bop == BIN_OR:
        return v | bconst
    if bop == BIN_XOR:
        return v ^ bconst
    return v


@numba.njit(cache=True, error_model="numpy", boundscheck=False)
def _evaluate(ops, keys, rule_ops, chain_rules, hook_chains, chain_flags, set_meta, hkeys, hvals, iv_lo,
              iv_hi, iv_vals, cnt_packets, cnt_bytes, cnt_hit, hook, packets, out, rng_state,
              first):  # type: ignore[no-untyped-def]
    """Evaluate packets[first:] at `hook`; stop at the first packet that reaches a FALLBACK op and
    return its index (len(packets) when none did), with the random stream as before that packet
    and its counter hits not applied, so the reference evaluator can take the whole packet."""
    stack_chain = np.empty(JUMP_STACK_SIZE, np.int64)
    stack_rule = np.empty(JUMP_STACK_SIZE, np.int64)
    pending = np.empty(MAX_PENDING, np.int64)
    f = np.empty(N_FIELDS, np.int64)  # this packet's fields, by expression code
    n_base = hook_chains.shape[1]
    rng = rng_state[0]
    for n in range(first, packets.shape[0]):
        proto = np.int64(packets[n, P_PROTO])
        sport = np.int64(packets[n, P_SPORT])
        dport = np.int64(packets[n, P_DPORT])
        has_ct = packets[n, P_HAS_CT] != 0
        ports = proto == 6 or proto == 17 or proto == 132 or proto == 33 or proto == 136
        f[E_IP_SADDR] = packets[n, P_SRC]
        f[E_IP_DADDR] = packets[n, P_DST]
        f[E_IP_PROTOCOL] = proto
        f[E_LENGTH] = packets[n, P_LENGTH]
        f[E_TH_SPORT] = sport if ports else -1
        f[E_TH_DPORT] = dport if ports else -1
        f[E_TCP_SPORT] = sport if proto == 6 else -1
        f[E_TCP_DPORT] = dport if proto == 6 else -1
        f[E_UDP_SPORT] = sport if proto == 17 else -1
        f[E_UDP_DPORT] = dport if proto == 17 else -1
        f[E_SCTP_SPORT] = sport if proto == 132 else -1
        f[E_SCTP_DPORT] = dport if proto == 132 else -1
        f[E_TCP_FLAGS] = packets[n, P_TCP_FLAGS] if proto == 6 else -1
        icmp_type = np.int64(packets[n, P_ICMP_TYPE])
        icmp_code = np.int64(packets[n, P_ICMP_CODE])
        f[E_ICMP_TYPE] = icmp_type if proto == 1 and icmp_type != NO_VALUE else -1
        f[E_ICMP_CODE] = icmp_code if proto == 1 and icmp_code != NO_VALUE else -1
        f[E_NFPROTO] = 2
        f[E_ETHERTYPE] = 0x0800
        mark = np.int64(packets[n, P_MARK])
        ct_mark = np.int64(packets[n, P_CT_MARK])
        f[E_MARK] = mark
        f[E_IIF] = packets[n, P_IIF]
        f[E_OIF] = packets[n, P_OIF]
        f[E_CT_STATE] = packets[n, P_CT_STATE]
        f[E_CT_STATUS] = packets[n, P_CT_STATUS] if has_ct else -1
        f[E_CT_MARK] = ct_mark if has_ct else -1
        f[E_CT_DIR] = packets[n, P_CT_DIR] if has_ct else -1
        f[E_FIB_SADDR] = packets[n, P_FIB_SRC]
        f[E_FIB_DADDR] = packets[n, P_FIB_DST]
        f[E_MISSING] = -1
        length = f[E_LENGTH]
        saved_rng = rng
        n_pending = 0
        rules = 0
        verdict = V_ACCEPT
        nat = NAT_NONE
        nat_addr = np.int64(0)
        nat_port = np.int64(-1)
        nat_flags = np.int64(0)
        reject = np.int64(-1)
        fallback = packets[n, P_UNSUPPORTED] != 0
        for b in range(n_base):
            if fallback:
                break
            base = np.int64(hook_chains[hook, b])
            if base < 0:
                break
            if chain_flags[base] & 1:
                if nat != NAT_NONE or packets[n, P_NAT_ELIGIBLE] == 0:
                    continue
            depth = 0
            chain = base
            r = np.int64(chain_rules[chain, 0])
            outcome = -1
            while outcome < 0:
                if r >= chain_rules[chain, 1]:
                    if depth > 0:
                        depth -= 1
                        chain = stack_chain[depth]
                        r = stack_rule[depth]
                        continue
                    outcome = K_DROP if chain_flags[base] & 2 else K_ACCEPT
                    break
                rules += 1
                kind = K_CONTINUE
                target = np.int64(0)
                acted = False  # a verdict ended the rule
                for o in range(rule_ops[r, 0], rule_ops[r, 1]):
                    op = ops[o, 0]
                    if op <= OP_RANGE or op == OP_SET_MARK or op == OP_SET_CTMARK:  # one expression
                        code = ops[o, 6]
                        if code < N_FIELDS:
                            v = f[code]
                        elif code == E_CONST:
                            v = ops[o, 7]
                        else:  # numgen random: reciprocal_scale(get_random_u32(), mod) + offset
                            rng, draw = _splitmix_u32(rng)
                            v = np.int64((np.uint64(draw) * np.uint64(ops[o, 7])) >> np.uint64(32)) + ops[o, 8]
                        ok = v >= 0
                        if ok:
                            v = _binop(v, ops[o, 9], ops[o, 10])
                        if not ok:
                            if op == OP_SET_MARK or op == OP_SET_CTMARK:
                                fallback = True  # the reference fails here too: let it say so
                            break
                        if op == OP_CMP:
                            c = ops[o, 2]
                            w = ops[o, 3]
                            if c == CMP_EQ:
                                hit = v == w
                            elif c == CMP_NE:
                                hit = v != w
                            elif c == CMP_LT:
                                hit = v < w
                            elif c == CMP_GT:
                                hit = v > w
                            elif c == CMP_LE:
                                hit = v <= w
                            else:
                                hit = v >= w
                            if not hit:
                                break
                        elif op == OP_FLAGS:
                            if ((v & ops[o, 2]) != 0) == (ops[o, 3] != 0):
                                break
                        elif op == OP_RANGE:
                            if (ops[o, 2] <= v <= ops[o, 3]) == (ops[o, 4] != 0):
                                break
                        elif op == OP_SET_MARK:
                            mark = v & 0xFFFFFFFF
                            f[E_MARK] = mark
                        else:
                            ct_mark = v & 0xFFFFFFFF
                            if has_ct:
                                f[E_CT_MARK] = ct_mark
                    elif op == OP_LOOKUP or op == OP_VMAP:
                        s = ops[o, 2]
                        if ops[o, 4] != 0 and (op == OP_VMAP or ops[o, 3] == 0):
                            break  # an empty set, a key without numgen: no match, present or not
                        k = ops[o, 1]
                        nparts = keys[k, 0]
                        ok = True
                        w0 = np.int64(0)
                        w1 = np.int64(0)
                        w2 = np.int64(0)
                        w3 = np.int64(0)
                        for j in range(nparts):
                            c0 = 1 + 5 * j
                            code = keys[k, c0]
                            if code < N_FIELDS:
                                v = f[code]
                            elif code == E_CONST:
                                v = keys[k, c0 + 1]
                            else:
                                rng, draw = _splitmix_u32(rng)
                                v = np.int64((np.uint64(draw) * np.uint64(keys[k, c0 + 1])) >> np.uint64(32)) \
                                    + keys[k, c0 + 2]
                            ok = v >= 0
                            if ok:
                                v = _binop(v, keys[k, c0 + 3], keys[k, c0 + 4])
                            if not ok:
                                break
                            if j == 0:
                                w0 = v
                            elif j == 1:
                                w1 = v
                            elif j == 2:
                                w2 = v
                            else:
                                w3 = v
                        if not ok:
                            break
                        # the set's hash table (linear probing), then its sorted intervals
                        found = False
                        data = np.int64(0)
                        offset = set_meta[s, 0]
                        if set_meta[s, 6]:  # dense
                            if 0 <= w0 < set_meta[s, 1] and hkeys[offset + w0, 0] == w0:
                                found = True
                                data = hvals[offset + w0]
                        elif set_meta[s, 5]:  # a hash table with elements
                            mask = np.uint64(set_meta[s, 1] - 1)
                            slot = _hash(w0, w1, w2, w3) & mask
                            while True:
                                row = offset + np.int64(slot)
                                k0 = hkeys[row, 0]
                                if k0 == _EMPTY:
                                    break
                                if k0 == w0 and hkeys[row, 1] == w1 and hkeys[row, 2] == w2 and hkeys[row, 3] == w3:
                                    found = True
                                    data = hvals[row]
                                    break
                                slot = (slot + np.uint64(1)) & mask
                        lo = set_meta[s, 3]
                        hi = set_meta[s, 4]
                        if not found and nparts == 1 and hi > lo:
                            a = lo
                            z = hi
                            while a < z:  # the first interval starting above the key
                                mid = (a + z) >> 1
                                if iv_lo[mid] <= w0:
                                    a = mid + 1
                                else:
                                    z = mid
                            if a - 1 >= lo and w0 <= iv_hi[a - 1]:
                                found = True
                                data = iv_vals[a - 1]
                        if op == OP_LOOKUP:
                            if found == (ops[o, 3] != 0):
                                break
                        else:
                            if not found or (data >> 32) == K_NOTFOUND:
                                break
                            kind = data >> 32
                            target = data & 0xFFFFFFFF
                            acted = True
                            break
                    elif op == OP_VERDICT:
                        kind = ops[o, 1] >> 32
                        target = ops[o, 1] & 0xFFFFFFFF
                        acted = True
                        break
                    elif op == OP_COUNTER:
                        if n_pending == MAX_PENDING:
                            fallback = True
                            break
                        pending[n_pending] = ops[o, 1]
                        n_pending += 1
                    elif op == OP_NAT:
                        kind = K_ACCEPT
                        nat = ops[o, 1]
                        nat_addr = ops[o, 2]
                        nat_port = ops[o, 3]
                        nat_flags = ops[o, 4]
                        acted = True
                        break
                    elif op == OP_REJECT:
                        kind = K_REJECT
                        reject = ops[o, 1]
                        acted = True
                        break
                    elif op == OP_NOP:
                        pass
                    else:  # OP_FALLBACK
                        fallback = True
                        break
                if fallback:
                    break
                r += 1
                if not acted or kind == K_CONTINUE:
                    continue
                if kind == K_JUMP:
                    if depth == JUMP_STACK_SIZE:
                        fallback = True  # the reference raises its jump-stack error
                        break
                    stack_chain[depth] = chain
                    stack_rule[depth] = r
                    depth += 1
                    chain = target
                    r = np.int64(chain_rules[chain, 0])
                elif kind == K_GOTO:
                    chain = target
                    r = np.int64(chain_rules[chain, 0])
                elif kind == K_RETURN:
                    if depth > 0:
                        depth -= 1
                        chain = stack_chain[depth]
                        r = stack_rule[depth]
                    else:
                        outcome = K_DROP if chain_flags[base] & 2 else K_ACCEPT
                else:
                    outcome = kind
            if fallback:
                break
            if outcome == K_DROP:
                verdict = V_DROP
                break
            if outcome == K_REJECT:
                verdict = V_REJECT
                break
        if fallback:
            rng_state[0] = saved_rng
            out[n, R_VERDICT] = V_FALLBACK
            return n
        for q in range(n_pending):
            slot_c = pending[q]
            cnt_packets[slot_c] += 1
            cnt_bytes[slot_c] += length
            cnt_hit[slot_c] = 1
        out[n, R_VERDICT] = verdict
        out[n, R_NAT] = nat
        out[n, R_NAT_ADDR] = nat_addr
        out[n, R_NAT_PORT] = nat_port if nat_port >= 0 else NO_VALUE
        out[n, R_NAT_FLAGS] = nat_flags
        out[n, R_MARK] = mark
        out[n, R_CT_MARK] = ct_mark
        out[n, R_RULES] = rules
        out[n, R_REJECT] = reject if reject >= 0 else NO_VALUE
    rng_state[0] = rng
    return packets.shape[0]


def compile_ruleset(ruleset: Ruleset, base_chains: dict[str, list[tuple[Table, Chain]]]) -> CompiledRuleset:
    """Flatten `ruleset`; `base_chains` maps each hook name to its IPv4 base chains in run order
    (the reference evaluator's `base_chains(4, hook)`, so both agree on order by construction)."""
    return _Compiler(ruleset, base_chains).compile()


def evaluate(c: CompiledRuleset, hook: str, packets: np.ndarray, rng_state: np.ndarray, first: int,
             out: np.ndarray) -> int:
    """Run packets[first:] (PACKET_COLUMNS uint32 rows) at `hook`, one RESULT_COLUMNS uint32 row each
    into `out`; returns the index where a packet needs the reference evaluator (len(packets) when
    none did), with `rng_state` (a SplitMixRandom's state) as before that packet."""
    return int(_evaluate(c.ops, c.keys, c.rule_ops, c.chain_rules, c.hook_chains, c.chain_flags,
                         c.set_meta, c.hash_keys, c.hash_values, c.iv_lo, c.iv_hi, c.iv_values,
                         c.counter_packets, c.counter_bytes, c.counter_hit, HOOK_IDS[hook], packets, out,
                         rng_state, first))

