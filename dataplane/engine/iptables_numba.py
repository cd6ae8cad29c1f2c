"""The numba fast path for iptables: a table compiled into flat arrays, evaluated in batches.

The pure-Python evaluator (`iptables_eval`) is the specification; this module must agree with it
on every packet (property tests check that, random choices included: both draw from
`rng.SplitMixRandom`, one 31-bit number (`getrandbits(31)`, uniform like the kernel's
`get_random_u32() & 0x7FFFFFFF`) per `statistic --mode random` match actually reached, in kernel
order).

What compiles: the ipt_entry fields (-s -d -i -o -p with negation), tcp/udp/sctp ports and tcp
flags, icmp type, comment, statistic (random, nth), mark, connmark, addrtype (per-packet address
types computed by the driver from the node's local addresses), conntrack --ctstate / --ctstatus /
--ctorigdst / --ctorigdstport, multiport; targets ACCEPT, DROP, RETURN, REJECT, jump, goto, DNAT and
SNAT to a single address/port, MASQUERADE, MARK, CONNMARK --set-xmark, LOG. Anything else makes
its rule a FALLBACK rule: a packet that reaches one is handed back and re-evaluated by the
reference evaluator, so semantics are never approximated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from dataplane.proxy.iptables import rules as R

# ---------------------------------------------------------------- codes shared with the kernel

T_NONE, T_ACCEPT, T_DROP, T_RETURN, T_JUMP, T_GOTO, T_REJECT = 0, 1, 2, 3, 4, 5, 6
T_DNAT, T_SNAT, T_MASQ, T_MARK, T_CONNMARK, T_FALLBACK = 7, 8, 9, 10, 11, 12

V_ACCEPT, V_DROP, V_REJECT, V_FALLBACK = 0, 1, 2, 3
NAT_NONE, NAT_DNAT, NAT_SNAT, NAT_MASQ = 0, 1, 2, 3

# field-present flags of a rule
F_SRC, F_DST, F_IIF, F_OIF, F_PROTO = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
F_SPORT, F_DPORT, F_TCPFLAGS, F_ICMP, F_MARK = 1 << 5, 1 << 6, 1 << 7, 1 << 8, 1 << 9
F_CONNMARK, F_ADDRTYPE_SRC, F_ADDRTYPE_DST, F_CTSTATE, F_CTSTATUS = 1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14
F_CTORIGDST, F_CTORIGDSTPORT, F_MULTIPORT, F_STAT_RANDOM, F_STAT_NTH = 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19
F_CT_STATES_GIVEN = 1 << 20  # the conntrack match had --ctstate: without a ct, that alone decides
F_CT_OPTIONS = F_CTSTATUS | F_CTORIGDST | F_CTORIGDSTPORT

# conntrack state bits as xt_conntrack numbers them (XT_CONNTRACK_STATE_BIT(ctinfo) etc.)
CT_BITS = {"INVALID": 1 << 0, "ESTABLISHED": 1 << 1, "RELATED": 1 << 2, "NEW": 1 << 3,
           "UNTRACKED": 1 << 4, "SNAT": 1 << 5, "DNAT": 1 << 6}
CT_NO_CONNTRACK = CT_BITS["INVALID"] | CT_BITS["UNTRACKED"]  # nf_ct_get() gives no entry
CTSTATUS_BITS = {"EXPECTED": 1 << 0, "SEEN_REPLY": 1 << 1, "ASSURED": 1 << 2, "CONFIRMED": 1 << 3}
MAX_DEPTH = 64

RULE_FIELDS = [
    ("flags", np.uint32), ("neg", np.uint32), ("post", np.uint32),
    ("src_hi", np.uint64), ("src_lo", np.uint64), ("smask_hi", np.uint64), ("smask_lo", np.uint64),
    ("dst_hi", np.uint64), ("dst_lo", np.uint64), ("dmask_hi", np.uint64), ("dmask_lo", np.uint64),
    ("iif", np.int32), ("oif", np.int32), ("proto", np.int32),
    ("sport_lo", np.int32), ("sport_hi", np.int32), ("dport_lo", np.int32), ("dport_hi", np.int32),
    ("tcp_mask", np.int32), ("tcp_comp", np.int32), ("icmp_type", np.int32), ("icmp_lo", np.int32),
    ("icmp_hi", np.int32), ("mark_val", np.uint32), ("mark_mask", np.uint32),
    ("cmark_val", np.uint32), ("cmark_mask", np.uint32), ("at_src", np.uint32), ("at_dst", np.uint32),
    ("ctstate", np.uint32), ("ctstatus", np.uint32),
    ("ctod_hi", np.uint64), ("ctod_lo", np.uint64), ("ctodm_hi", np.uint64), ("ctodm_lo", np.uint64),
    ("ctodp_lo", np.int32), ("ctodp_hi", np.int32),
    ("mp_kind", np.int32), ("mp_start", np.int32), ("mp_count", np.int32),
    ("stat_prob", np.uint32), ("stat_every", np.int32), ("stat_slot", np.int32),
    ("target", np.int32), ("jump", np.int32), ("nat_hi", np.uint64), ("nat_lo", np.uint64),
    ("nat_port", np.int32), ("nat_flags", np.int32), ("set_val", np.uint32), ("set_mask", np.uint32),
]

# negation bits (same positions as the F_ flags they negate)
N_SPORT_BIT, N_DPORT_BIT = F_SPORT, F_DPORT

PACKET_FIELDS = [
    ("src_hi", np.uint64), ("src_lo", np.uint64), ("dst_hi", np.uint64), ("dst_lo", np.uint64),
    ("proto", np.int32), ("sport", np.int32), ("dport", np.int32), ("tcp_flags", np.int32),
    ("icmp_type", np.int32), ("icmp_code", np.int32), ("iif_bits", np.uint64), ("oif_bits", np.uint64),
    ("mark", np.uint32), ("ct_mark", np.uint32), ("at_src", np.uint32), ("at_dst", np.uint32),
    ("ct_state", np.uint32), ("ct_status", np.uint32),
    ("ctod_hi", np.uint64), ("ctod_lo", np.uint64), ("ctodport", np.int32),
]

RESULT_FIELDS = [
    ("verdict", np.int32), ("nat", np.int32), ("nat_hi", np.uint64), ("nat_lo", np.uint64),
    ("nat_port", np.int32), ("nat_flags", np.int32), ("mark", np.uint32), ("ct_mark", np.uint32),
    ("rules", np.int32), ("reject", np.int32), ("fallback_rule", np.int32),
]
RULE_DTYPE = np.dtype(RULE_FIELDS)
# The first test of every rule reads only three small parallel arrays: kube-proxy's long chains
# are mostly `-d VIP/32` rules, rejected by one masked compare without touching the rest of the
# rule. quick[i]: 0 = no quick test, 1 = skip unless (dst & mask) == value, 2 = skip if equal (! -d).
QUICK_NONE, QUICK_EQ, QUICK_NE = 0, 1, 2
PACKET_DTYPE = np.dtype(PACKET_FIELDS)
RESULT_DTYPE = np.dtype(RESULT_FIELDS)

NAT_RANDOM_FULLY = 1


def _split(v: int) -> tuple[int, int]:
    return v >> 64, v & 0xFFFF_FFFF_FFFF_FFFF


def _net(net: R.IPNet, family: int) -> tuple[int, int, int, int]:
    """(addr_hi, addr_lo, mask_hi, mask_lo) on the 128-bit layout (IPv4 in the low half)."""
    a_hi, a_lo = _split(net.addr)
    m_hi, m_lo = _split(net.mask)
    return a_hi, a_lo, m_hi, m_lo


@dataclass
class CompiledTable:
    """One table as arrays. `chain_index` maps names; built-in chains carry their policy."""

    table: str
    family: int
    chain_index: dict[str, int]
    chain_start: np.ndarray
    chain_end: np.ndarray
    chain_policy: np.ndarray  # V_ACCEPT / V_DROP for built-ins, -1 for user chains
    rules: np.ndarray  # RULE_DTYPE
    quick: np.ndarray  # uint8 per rule (QUICK_*)
    quick_value: np.ndarray  # uint64: the low 64 bits of the -d address
    quick_mask: np.ndarray  # uint64
    rule_refs: list[R.Rule]  # rules[i] came from rule_refs[i]
    iface_patterns: list[str]  # bit i of a packet's iif_bits/oif_bits: matches pattern i
    multiport: np.ndarray  # (lo, hi) pairs, int32
    stat_counters: np.ndarray  # state of `statistic --mode nth` rules (the kernel's master->count)
    stat_keys: list[tuple[int, int]]  # slot -> (id(rule), match index), the reference's nth key
    fallback_rules: int  # how many rules could not be compiled


class _Unsupported(Exception):
    pass


class _Row(list):  # type: ignore[type-arg]
    """One rule's fields in RULE_DTYPE order, set by name; many rows become one array at once."""

    __slots__ = ()
    INDEX = {name: i for i, (name, _) in enumerate(RULE_FIELDS)}
    ZERO = [0] * len(RULE_FIELDS)

    @classmethod
    def new(cls) -> "_Row":
        return cls(cls.ZERO)

    def __getitem__(self, key):  # type: ignore[no-untyped-def,override]
        return list.__getitem__(self, self.INDEX[key] if isinstance(key, str) else key)

    def __setitem__(self, key, value):  # type: ignore[no-untyped-def,override]
        list.__setitem__(self, self.INDEX[key] if isinstance(key, str) else key, value)


def compile_table(table: R.Table, family: int = 4) -> CompiledTable:
    """Flatten `table` into arrays; rules the kernel path cannot express become FALLBACK rules."""
    names = list(table.chains)
    chain_index = {n: i for i, n in enumerate(names)}
    ordered: list[R.Rule] = []
    start = np.zeros(len(names), np.int32)
    end = np.zeros(len(names), np.int32)
    policy = np.full(len(names), -1, np.int32)
    for i, name in enumerate(names):
        chain = table.chains[name]
        start[i] = len(ordered)
        ordered.extend(chain.rules)
        end[i] = len(ordered)
        if chain.policy is not None:
            policy[i] = V_DROP if chain.policy == "DROP" else V_ACCEPT
    rows: list[tuple[int, ...]] = []
    patterns: dict[str, int] = {}
    multiport: list[tuple[int, int]] = []
    nth_initial: list[int] = []
    nth_keys: list[tuple[int, int]] = []
    fallback = 0
    for rule in ordered:
        row = _Row.new()
        n_nth = len(nth_initial)
        try:
            _compile_rule(rule, row, chain_index, patterns, multiport, nth_initial, nth_keys, family)
        except _Unsupported:
            del nth_initial[n_nth:], nth_keys[n_nth:]
            row = _Row.new()
            row["target"] = T_FALLBACK
            fallback += 1
        rows.append(tuple(row))
    rules = np.array(rows, RULE_DTYPE) if rows else np.zeros(0, RULE_DTYPE)
    has_dst = (rules["flags"] & F_DST) != 0
    quick = np.where(has_dst, np.where((rules["neg"] & F_DST) != 0, QUICK_NE, QUICK_EQ), QUICK_NONE)
    return CompiledTable(table.name, family, chain_index, start, end, policy, rules,
                         quick.astype(np.uint8), rules["dst_lo"].copy(), rules["dmask_lo"].copy(), ordered,
                         sorted(patterns, key=patterns.__getitem__),
                         np.array(multiport or [(0, 0)], np.int32).reshape(-1, 2),
                         np.array(nth_initial or [0], np.int64), nth_keys, fallback)


def _iface_bit(name: str, patterns: dict[str, int]) -> int:
    if name not in patterns:
        if len(patterns) >= 64:
            raise _Unsupported("more than 64 interface patterns")
        patterns[name] = len(patterns)
    return patterns[name]


def _compile_rule(rule: R.Rule, r: _Row, chains: dict[str, int], patterns: dict[str, int],
                  multiport: list[tuple[int, int]], nth: list[int], nth_keys: list[tuple[int, int]],
                  family: int) -> None:
    if rule.unknown is not None:
        raise _Unsupported(rule.unknown)
    flags = neg = post = 0
    side_effect_seen = False

    def put(flag: int, negated: bool) -> None:
        nonlocal flags, neg, post
        flags |= flag
        if negated:
            neg |= flag
        if side_effect_seen:
            post |= flag

    if rule.src is not None:
        r["src_hi"], r["src_lo"], r["smask_hi"], r["smask_lo"] = _net(rule.src, family)
        put(F_SRC, rule.src_neg)
    if rule.dst is not None:
        r["dst_hi"], r["dst_lo"], r["dmask_hi"], r["dmask_lo"] = _net(rule.dst, family)
        put(F_DST, rule.dst_neg)
    if rule.iif is not None:
        r["iif"] = _iface_bit(rule.iif, patterns)
        put(F_IIF, rule.iif_neg)
    if rule.oif is not None:
        r["oif"] = _iface_bit(rule.oif, patterns)
        put(F_OIF, rule.oif_neg)
    if rule.proto is not None and not (rule.proto == 0 and not rule.proto_neg):
        r["proto"] = rule.proto
        put(F_PROTO, rule.proto_neg)
    for k, m in enumerate(rule.matches):
        if isinstance(m, R.CommentMatch):
            continue
        if isinstance(m, R.PortsMatch):
            if m.flags_neg:
                raise _Unsupported("negated --tcp-flags")
            if m.sport is not None:
                r["sport_lo"], r["sport_hi"] = m.sport.lo, m.sport.hi
                put(F_SPORT, m.sport_neg)
            if m.dport is not None:
                r["dport_lo"], r["dport_hi"] = m.dport.lo, m.dport.hi
                put(F_DPORT, m.dport_neg)
            if m.flags_mask is not None:
                r["tcp_mask"], r["tcp_comp"] = m.flags_mask, m.flags_comp
                put(F_TCPFLAGS, False)
        elif isinstance(m, R.IcmpMatch):
            r["icmp_type"], r["icmp_lo"], r["icmp_hi"] = m.type, m.code_lo, m.code_hi
            put(F_ICMP, m.neg)
        elif isinstance(m, R.MarkMatch):
            if m.module == "mark":
                r["mark_val"], r["mark_mask"] = m.value, m.mask
                put(F_MARK, m.neg)
            else:
                r["cmark_val"], r["cmark_mask"] = m.value, m.mask
                put(F_CONNMARK, m.neg)
        elif isinstance(m, R.AddrtypeMatch):
            if m.limit_iface_in or m.limit_iface_out:
                raise _Unsupported("addrtype --limit-iface-*")
            if m.src_types:
                r["at_src"] = m.src_types
                put(F_ADDRTYPE_SRC, m.src_neg)
            if m.dst_types:
                r["at_dst"] = m.dst_types
                put(F_ADDRTYPE_DST, m.dst_neg)
        elif isinstance(m, (R.ConntrackMatch, R.StateMatch)):
            if flags & (F_CTSTATE | F_CT_OPTIONS):
                raise _Unsupported("two conntrack matches in one rule")
            _compile_conntrack(m, r, put)
        elif isinstance(m, R.MultiportMatch):
            if flags & F_MULTIPORT:
                raise _Unsupported("two multiport matches")
            r["mp_kind"] = {"sports": 1, "dports": 2, "ports": 3}[m.kind]
            r["mp_start"], r["mp_count"] = len(multiport), len(m.ports)
            multiport.extend((p.lo, p.hi) for p in m.ports)
            put(F_MULTIPORT, m.neg)
        elif isinstance(m, R.StatisticMatch):
            if side_effect_seen:
                raise _Unsupported("two side-effecting matches")
            if m.mode == "random":
                r["stat_prob"] = m.probability
                put(F_STAT_RANDOM, m.neg)
            else:
                r["stat_every"] = m.every - 1
                r["stat_slot"] = len(nth)
                nth.append((m.every - 1) - m.packet)  # libxt_statistic: count = every - packet
                nth_keys.append((id(rule), k))
                put(F_STAT_NTH, m.neg)
            side_effect_seen = True
        else:
            raise _Unsupported(type(m).__name__)
    r["flags"], r["neg"], r["post"] = flags, neg, post
    _compile_target(rule.target, r, chains, family)


def _compile_conntrack(m: R.ConntrackMatch | R.StateMatch, r: _Row, put) -> None:  # type: ignore[no-untyped-def]
    if isinstance(m, R.StateMatch):
        r["ctstate"] = _bits(m.states, CT_BITS)
        put(F_CTSTATE, m.neg)
        return
    unsupported = (m.proto, m.origsrc, m.replsrc, m.repldst, m.origsrcport, m.replsrcport,
                   m.repldstport, m.expire, m.direction)
    if any(x is not None for x in unsupported):
        raise _Unsupported("conntrack option")
    if m.states is not None:
        r["ctstate"] = _bits(m.states, CT_BITS)
        put(F_CTSTATE, m.states_neg)
        put(F_CT_STATES_GIVEN, False)
    if m.statuses is not None:
        r["ctstatus"] = _bits(m.statuses, CTSTATUS_BITS)
        put(F_CTSTATUS, m.statuses_neg)
    if m.origdst is not None:
        r["ctod_hi"], r["ctod_lo"], r["ctodm_hi"], r["ctodm_lo"] = _net(m.origdst.net, m.origdst.net.family)
        put(F_CTORIGDST, m.origdst.neg)
    if m.origdstport is not None:
        r["ctodp_lo"], r["ctodp_hi"] = m.origdstport.ports.lo, m.origdstport.ports.hi
        put(F_CTORIGDSTPORT, m.origdstport.neg)


def _bits(names: frozenset[str], table: dict[str, int]) -> int:
    if any(n not in table for n in names):
        raise _Unsupported(f"state {sorted(set(names) - set(table))}")
    out = 0
    for n in names:
        out |= table[n]
    return out


REJECT_CODES = {name: i for i, name in enumerate(sorted(set(R.REJECT_TYPES_4.values()) |
                                                          set(R.REJECT_TYPES_6.values())))}
REJECT_NAMES = {i: n for n, i in REJECT_CODES.items()}


def _compile_target(t: R.Target | None, r: _Row, chains: dict[str, int], family: int) -> None:
    if t is None:
        r["target"] = T_NONE
    elif isinstance(t, R.Verdict):
        r["target"] = {"ACCEPT": T_ACCEPT, "DROP": T_DROP, "RETURN": T_RETURN}[t.name]
    elif isinstance(t, R.Jump):
        if t.chain not in chains:
            raise _Unsupported(f"jump to missing chain {t.chain}")
        r["target"], r["jump"] = (T_GOTO if t.goto else T_JUMP), chains[t.chain]
    elif isinstance(t, R.Reject):
        r["target"], r["jump"] = T_REJECT, REJECT_CODES[t.reject_with]
    elif isinstance(t, R.Nat):
        rng = t.range
        if rng is None or t.random or t.persistent:
            raise _Unsupported("NAT option")
        if rng.addr_lo is None or (rng.addr_hi not in (None, rng.addr_lo)):
            raise _Unsupported("NAT address range")
        if rng.port_lo is not None and rng.port_hi not in (None, rng.port_lo):
            raise _Unsupported("NAT port range")
        r["target"] = T_DNAT if t.name == "DNAT" else T_SNAT
        r["nat_hi"], r["nat_lo"] = _split(rng.addr_lo)
        r["nat_port"] = rng.port_lo if rng.port_lo is not None else -1
        r["nat_flags"] = NAT_RANDOM_FULLY if t.random_fully else 0
    elif isinstance(t, R.Masquerade):
        if t.ports is not None or t.random:
            raise _Unsupported("MASQUERADE option")
        r["target"] = T_MASQ
        r["nat_port"] = -1
        r["nat_flags"] = NAT_RANDOM_FULLY if t.random_fully else 0
    elif isinstance(t, R.MarkTarget):
        r["target"], r["set_val"], r["set_mask"] = T_MARK, t.value, t.mask
    elif isinstance(t, R.ConnmarkTarget) and t.mode == "set":
        r["target"], r["set_val"], r["set_mask"] = T_CONNMARK, t.value, t.ctmask
    elif isinstance(t, R.LogTarget):
        r["target"] = T_NONE
    else:
        raise _Unsupported(type(t).__name__)


# ---------------------------------------------------------------- the kernel loop


@numba.njit(cache=True, inline="always")
def _next_u32(state: np.ndarray) -> np.uint32:
    s = state[0] + np.uint64(0x9E3779B97F4A7C15)
    state[0] = s
    z = s
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.uint32(z >> np.uint64(32))


@numba.njit(cache=True, inline="always")
def _pure_ok(r, p, mp, which: np.uint32, mark, ct_mark) -> bool:  # type: ignore[no-untyped-def]
    """Every side-effect-free check of rule `r` among the `which` flags (marks as they are now,
    after MARK/CONNMARK targets earlier in the traversal)."""
    flags = r.flags & which
    neg = r.neg
    if flags & F_DST:
        ok = (p.dst_lo & r.dmask_lo) == r.dst_lo and (p.dst_hi & r.dmask_hi) == r.dst_hi
        if ok == bool(neg & F_DST):
            return False
    if flags & F_SRC:
        ok = (p.src_lo & r.smask_lo) == r.src_lo and (p.src_hi & r.smask_hi) == r.src_hi
        if ok == bool(neg & F_SRC):
            return False
    if flags & F_PROTO:
        if (p.proto == r.proto) == bool(neg & F_PROTO):
            return False
    if flags & F_DPORT:
        ok = r.dport_lo <= p.dport <= r.dport_hi
        if ok == bool(neg & F_DPORT):
            return False
    if flags & F_SPORT:
        ok = r.sport_lo <= p.sport <= r.sport_hi
        if ok == bool(neg & F_SPORT):
            return False
    if flags & F_IIF:
        ok = (p.iif_bits >> np.uint64(r.iif)) & np.uint64(1) == np.uint64(1)
        if ok == bool(neg & F_IIF):
            return False
    if flags & F_OIF:
        ok = (p.oif_bits >> np.uint64(r.oif)) & np.uint64(1) == np.uint64(1)
        if ok == bool(neg & F_OIF):
            return False
    if flags & F_TCPFLAGS:
        if (p.tcp_flags & r.tcp_mask) != r.tcp_comp:
            return False
    if flags & F_ICMP:
        if r.icmp_type == 255:
            ok = True
        else:
            ok = p.icmp_type == r.icmp_type and r.icmp_lo <= p.icmp_code <= r.icmp_hi
        if ok == bool(neg & F_ICMP):
            return False
    if flags & F_MARK:
        if ((mark & r.mark_mask) == r.mark_val) == bool(neg & F_MARK):
            return False
    if flags & F_CONNMARK:
        if ((ct_mark & r.cmark_mask) == r.cmark_val) == bool(neg & F_CONNMARK):
            return False
    if flags & F_ADDRTYPE_SRC:
        if ((p.at_src & r.at_src) != 0) == bool(neg & F_ADDRTYPE_SRC):
            return False
    if flags & F_ADDRTYPE_DST:
        if ((p.at_dst & r.at_dst) != 0) == bool(neg & F_ADDRTYPE_DST):
            return False
    if flags & F_CTSTATE:
        if ((p.ct_state & r.ctstate) != 0) == bool(neg & F_CTSTATE):
            return False
    if flags & F_MULTIPORT:
        ok = False
        for k in range(r.mp_start, r.mp_start + r.mp_count):
            if (r.mp_kind & 1) and mp[k, 0] <= p.sport <= mp[k, 1]:
                ok = True
            if (r.mp_kind & 2) and mp[k, 0] <= p.dport <= mp[k, 1]:
                ok = True
        if ok == bool(neg & F_MULTIPORT):
            return False
    if flags & F_CT_OPTIONS:
        if p.ct_state & CT_NO_CONNTRACK:
            # conntrack_mt: with no conntrack entry only --ctstate is looked at, the rest fails
            return (flags & F_CT_STATES_GIVEN) != 0
        if flags & F_CTSTATUS:
            if ((p.ct_status & r.ctstatus) != 0) == bool(neg & F_CTSTATUS):
                return False
        if flags & F_CTORIGDST:
            ok = (p.ctod_lo & r.ctodm_lo) == r.ctod_lo and (p.ctod_hi & r.ctodm_hi) == r.ctod_hi
            if ok == bool(neg & F_CTORIGDST):
                return False
        if flags & F_CTORIGDSTPORT:
            ok = r.ctodp_lo <= p.ctodport <= r.ctodp_hi
            if ok == bool(neg & F_CTORIGDSTPORT):
                return False
    return True


@numba.njit(cache=True)
def _evaluate(rules, quick, qval, qmask, chain_start, chain_end, chain_policy, mp, counters, entry, packets, out,
              rng_state, first):  # type: ignore[no-untyped-def]
    """Evaluate packets[first:]; stop at the first packet that reaches a FALLBACK rule and return
    its index (len(packets) when none did), with the random stream and the nth counters put back
    as they were before that packet, so the reference evaluator can take it from there."""
    stack_chain = np.empty(MAX_DEPTH, np.int32)
    stack_rule = np.empty(MAX_DEPTH, np.int32)
    undo_slot = np.empty(MAX_DEPTH, np.int32)
    undo_value = np.empty(MAX_DEPTH, np.int64)
    for n in range(first, packets.shape[0]):
        saved_rng = rng_state[0]
        n_undo = 0
        p = packets[n]
        o = out[n]
        mark = p.mark
        ct_mark = p.ct_mark
        depth = 0
        chain = entry
        i = chain_start[chain]
        count = 0
        verdict = -1
        o.nat = NAT_NONE
        o.fallback_rule = -1
        o.reject = -1
        while verdict < 0:
            if i >= chain_end[chain]:
                if depth == 0:
                    verdict = chain_policy[entry]
                    break
                depth -= 1
                chain = stack_chain[depth]
                i = stack_rule[depth]
                continue
            # fast scan over rules whose destination test fails (the O(n) part of kube-proxy)
            end = chain_end[chain]
            d = p.dst_lo
            j = i
            while j < end:
                q = quick[j]
                if q == QUICK_EQ:
                    if (d & qmask[j]) != qval[j]:
                        j += 1
                        continue
                elif q == QUICK_NE:
                    if (d & qmask[j]) == qval[j]:
                        j += 1
                        continue
                break
            count += j - i
            i = j
            if i >= end:
                continue
            count += 1
            r = rules[i]
            pp = p
            matched = _pure_ok(r, pp, mp, ~r.post, mark, ct_mark)
            if matched and (r.flags & F_STAT_RANDOM):
                draw = _next_u32(rng_state) >> np.uint32(1)  # == SplitMixRandom.getrandbits(31)
                hit = draw < r.stat_prob
                matched = hit != bool(r.neg & F_STAT_RANDOM)
            if matched and (r.flags & F_STAT_NTH):
                slot = r.stat_slot
                if n_undo == MAX_DEPTH:
                    verdict = V_FALLBACK
                    o.fallback_rule = i
                    break
                undo_slot[n_undo] = slot
                undo_value[n_undo] = counters[slot]
                n_undo += 1
                nval = 0 if counters[slot] == r.stat_every else counters[slot] + 1
                counters[slot] = nval
                matched = (nval == 0) != bool(r.neg & F_STAT_NTH)
            if matched and r.post != 0:
                matched = _pure_ok(r, pp, mp, r.post, mark, ct_mark)
            if not matched:
                i += 1
                continue
            t = r.target
            if t == T_NONE:
                i += 1
            elif t == T_ACCEPT:
                verdict = V_ACCEPT
            elif t == T_DROP:
                verdict = V_DROP
            elif t == T_REJECT:
                verdict = V_REJECT
                o.reject = r.jump
            elif t == T_RETURN:
                if depth == 0:
                    verdict = chain_policy[entry]
                else:
                    depth -= 1
                    chain = stack_chain[depth]
                    i = stack_rule[depth]
            elif t == T_JUMP:
                if depth == MAX_DEPTH:
                    verdict = V_FALLBACK
                    o.fallback_rule = i
                else:
                    stack_chain[depth] = chain
                    stack_rule[depth] = i + 1
                    depth += 1
                    chain = r.jump
                    i = chain_start[chain]
            elif t == T_GOTO:
                chain = r.jump
                i = chain_start[chain]
            elif t == T_MARK:
                mark = (mark & ~r.set_mask) ^ r.set_val
                i += 1
            elif t == T_CONNMARK:
                ct_mark = (ct_mark & ~r.set_mask) ^ r.set_val
                i += 1
            elif t == T_DNAT or t == T_SNAT or t == T_MASQ:
                verdict = V_ACCEPT
                o.nat = NAT_DNAT if t == T_DNAT else (NAT_SNAT if t == T_SNAT else NAT_MASQ)
                o.nat_hi = r.nat_hi
                o.nat_lo = r.nat_lo
                o.nat_port = r.nat_port
                o.nat_flags = r.nat_flags
            else:  # T_FALLBACK
                verdict = V_FALLBACK
                o.fallback_rule = i
        o.verdict = verdict
        o.mark = mark
        o.ct_mark = ct_mark
        o.rules = count
        if verdict == V_FALLBACK:
            rng_state[0] = saved_rng
            for k in range(n_undo - 1, -1, -1):
                counters[undo_slot[k]] = undo_value[k]
            return n
    return packets.shape[0]


# ---------------------------------------------------------------- batch preparation


@dataclass
class PacketContext:
    """Per-packet facts the rules need beyond headers: interfaces, address types, conntrack."""

    iif: str | None = None
    oif: str | None = None
    src_type: int = 0  # bit mask over rules.ADDRTYPES, e.g. 1 << 2 for LOCAL
    dst_type: int = 0
    ct_state: int = CT_BITS["NEW"]
    ct_status: int = 0
    ct_mark: int = 0
    ct_origdst: int | None = None  # the address as an int (default: the packet's dst)
    ct_origdport: int | None = None


def iface_matches(pattern: str, name: str | None) -> bool:
    """iptables' interface match: exact, or a prefix when the pattern ends with '+'."""
    if name is None:
        return False
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def prepare(compiled: CompiledTable, headers: np.ndarray, contexts: Sequence[PacketContext]) -> np.ndarray:
    """Header rows (packet.header_dtype) plus contexts -> the kernel's packet array."""
    n = len(headers)
    out = np.zeros(n, PACKET_DTYPE)
    for name in ("src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "mark"):
        out[name] = headers[name]
    out["proto"] = headers["proto"]
    out["tcp_flags"] = headers["tcp_flags"]
    out["icmp_type"] = headers["icmp_type"]
    out["icmp_code"] = headers["icmp_code"]
    patterns = compiled.iface_patterns
    cache: dict[str | None, int] = {}

    def bits(name: str | None) -> int:
        if name not in cache:
            cache[name] = sum(1 << k for k, pat in enumerate(patterns) if iface_matches(pat, name))
        return cache[name]

    for k, c in enumerate(contexts):
        row = out[k]
        row["iif_bits"] = bits(c.iif)
        row["oif_bits"] = bits(c.oif)
        row["at_src"], row["at_dst"] = c.src_type, c.dst_type
        row["ct_state"], row["ct_status"], row["ct_mark"] = c.ct_state, c.ct_status, c.ct_mark
        od = c.ct_origdst
        if od is None:
            row["ctod_hi"], row["ctod_lo"] = row["dst_hi"], row["dst_lo"]
        else:
            row["ctod_hi"], row["ctod_lo"] = _split(od)
        row["ctodport"] = c.ct_origdport if c.ct_origdport is not None else row["dport"]
    return out


def evaluate(compiled: CompiledTable, chain: str, packets: np.ndarray, rng_state: np.ndarray,
             first: int = 0, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Run packets[first:] (PACKET_DTYPE) through built-in `chain`; one RESULT_DTYPE row each.

    Returns (results, stop): evaluation stops at index `stop` when that packet reaches a rule the
    kernel cannot evaluate (stop == len(packets) when none did); `rng_state` (a one-element uint64
    array holding a SplitMixRandom's state) and the nth counters are then as before that packet.
    """
    if chain not in compiled.chain_index:
        raise KeyError(f"table {compiled.table} has no chain {chain}")
    entry = compiled.chain_index[chain]
    if compiled.chain_policy[entry] < 0:
        raise ValueError(f"{chain} is not a built-in chain of {compiled.table}")
    if out is None:
        out = np.zeros(len(packets), RESULT_DTYPE)
    stop = _evaluate(compiled.rules, compiled.quick, compiled.quick_value, compiled.quick_mask,
                     compiled.chain_start, compiled.chain_end, compiled.chain_policy,
                     compiled.multiport, compiled.stat_counters, entry, packets, out, rng_state, first)
    return out, int(stop)
