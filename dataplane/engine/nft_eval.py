"""The nftables evaluator: what the kernel's nf_tables does with one packet at one hook.

Kernel semantics it follows (net/netfilter/nf_tables_core.c, nft_*.c, nf_nat_core.c):
- every base chain of a matching family (ip/inet for IPv4, ip6/inet for IPv6) registered at the hook
  runs in priority order (equal priorities: creation order); `accept` ends one base chain, the next
  still runs; `drop`/`reject` end the hook;
- nat-type chains are not hooked on their own: nf_nat registers one hook per hook point at the fixed
  NAT priority (-100 at prerouting/output, 100 at postrouting/input) and runs the nat chains from
  there, by their own priority, only for a connection's first packet (ct NEW), and stops once one
  of them has set up the binding;
- jump pushes a return point (at most 16, NFT_JUMP_STACK_SIZE), goto does not, return and the end
  of a regular chain pop, and a base chain that falls through applies its policy;
- a failed match, or a map lookup that finds nothing, moves on to the next rule (NFT_BREAK);
- dnat/snat/masquerade/redirect and reject are terminal statements;
- `numgen random mod N offset K` = reciprocal_scale(get_random_u32(), N) + K = ((r * N) >> 32) + K,
  `numgen inc` counts from 0 (nft_numgen.c); the RNG and the clock are injectable;
- set/map lookups are hash lookups (O(1)); interval sets use a sorted search (O(log n)); elements
  expire by their timeout on the injected clock; `update @set { ... }` adds or refreshes one.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING

from dataplane.engine.types import CtState, Decision, Hook, NatAction, NatKind, PacketMeta, TraceStep, Verdict
from dataplane.proxy.nftables import datatypes as dt
from dataplane.proxy.nftables import render
from dataplane.proxy.nftables.ast import (
    AnonSet, Binop, Chain, Concat, ConcatValue, Const, Counter, Ct, Element, Fib, Log, Mangle, Match, Meta, Nat,
    Notrack, Numgen, Payload, Prefix, Range, Reject, Rule, Ruleset, Set, SetRef, SetUpdate, Table, Value,
    Verdict as NftVerdict, VerdictMap,
)
from dataplane.proxy.nftables.validate import JUMP_STACK_SIZE, expr_dtype

if TYPE_CHECKING:
    from dataplane.engine.pipeline import EvalContext, TableHook

NAT_HOOK_PRIORITY = {"prerouting": -100, "output": -100, "postrouting": 100, "input": 100}
_CT_STATE_BITS = {CtState.INVALID: 1, CtState.ESTABLISHED: 2, CtState.RELATED: 4, CtState.NEW: 8,
                  CtState.UNTRACKED: 64}
_PORT_PROTOS = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp", 136: "udplite"}
_PAYLOAD_PROTO = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}
_REJECT_NAMES = {("icmp", "port-unreachable"): "icmp-port-unreachable",
                 ("icmpv6", "port-unreachable"): "icmp6-port-unreachable",
                 ("tcp reset", None): "tcp-reset"}


class EvalError(RuntimeError):
    """The ruleset asks for something the kernel would refuse at run time (e.g. jump stack overflow)."""


def _random_u32() -> int:
    return random.getrandbits(32)


def default_fib_type(local: frozenset[IPv4Address | IPv6Address]) -> Callable[[IPv4Address | IPv6Address], str]:
    def fib_type(addr: IPv4Address | IPv6Address) -> str:
        if addr in local or addr.is_loopback:
            return "local"
        if addr.is_multicast:
            return "multicast"
        if addr == IPv4Address("255.255.255.255"):
            return "broadcast"
        return "unicast"
    return fib_type


# ---------------------------------------------------------------- set index

def _key_of(value: Value) -> object:
    """A hashable lookup key for an exact element (a constant or a concatenation of constants)."""
    if isinstance(value, Const):
        return value.value
    if isinstance(value, ConcatValue):
        return tuple(_key_of(p) for p in value.parts)
    raise TypeError(value)


def _bounds(value: Value) -> tuple[object, object]:
    if isinstance(value, Const):
        return value.value, value.value
    if isinstance(value, Prefix):
        return value.network.network_address, value.network.broadcast_address
    if isinstance(value, Range):
        return value.low, value.high
    raise TypeError(value)


def _is_exact(value: Value) -> bool:
    if isinstance(value, Const):
        return not (value.dtype == "ifname" and str(value.value).endswith("*"))
    if isinstance(value, ConcatValue):
        return all(_is_exact(p) for p in value.parts)
    return False


@dataclass
class _Entry:
    element: Element
    expires_at: float | None  # absolute time on the evaluator's clock; None = never


@dataclass
class SetIndex:
    """One set's elements as a hash (exact keys) plus a sorted interval list (ranges, prefixes)."""

    name: str
    default_timeout: float | None
    exact: dict[object, _Entry] = field(default_factory=dict)
    starts: list[object] = field(default_factory=list)  # sorted interval starts (single-field sets)
    intervals: list[tuple[object, object, _Entry]] = field(default_factory=list)
    multi: list[tuple[tuple[tuple[object, object], ...], _Entry]] = field(default_factory=list)  # concat ranges
    wildcards: list[tuple[str, _Entry]] = field(default_factory=list)  # ifname prefixes ("veth*")

    @classmethod
    def build(cls, name: str, elements: Iterable[Element], now: float, default_timeout: float | None = None,
              has_timeout: bool = False) -> "SetIndex":
        index = cls(name, default_timeout)
        for e in elements:
            if e.expires is not None:
                expires_at: float | None = now + e.expires
            elif e.timeout is not None:
                expires_at = now + e.timeout
            elif has_timeout and default_timeout is not None:
                expires_at = now + default_timeout
            else:
                expires_at = None
            index.add(e, expires_at)
        index.intervals = _merged(sorted(index.intervals, key=lambda t: t[0]))  # type: ignore[arg-type, return-value]
        index.starts = [t[0] for t in index.intervals]
        return index

    def add(self, e: Element, expires_at: float | None) -> None:
        entry = _Entry(e, expires_at)
        key = e.key
        if _is_exact(key):
            self.exact[_key_of(key)] = entry
        elif isinstance(key, Const):  # ifname wildcard
            self.wildcards.append((str(key.value)[:-1], entry))
        elif isinstance(key, ConcatValue):
            self.multi.append((tuple(_bounds(p) for p in key.parts), entry))
        else:
            lo, hi = _bounds(key)
            self.intervals.append((lo, hi, entry))

    def lookup(self, key: object, now: float) -> Element | None:
        entry = self.exact.get(key)
        if entry is not None and (entry.expires_at is None or entry.expires_at > now):
            return entry.element
        if self.starts:
            i = bisect.bisect_right(self.starts, key) - 1  # type: ignore[arg-type]
            if i >= 0:
                lo, hi, entry = self.intervals[i]
                if key <= hi and (entry.expires_at is None or entry.expires_at > now):  # type: ignore[operator]
                    return entry.element
        for bounds, entry in self.multi:
            if all(_within(k, lo, hi) for k, (lo, hi) in zip(key, bounds)) and \
                    (entry.expires_at is None or entry.expires_at > now):  # type: ignore[arg-type]
                return entry.element
        for prefix, entry in self.wildcards:
            if isinstance(key, str) and key.startswith(prefix):
                return entry.element
        return None


def _merged(intervals: list[tuple[object, object, "_Entry"]]) -> list[tuple[object, object, "_Entry"]]:
    """Overlapping intervals joined, as nft does for anonymous and auto-merge sets, so that one
    sorted search finds a key. Elements with data or an expiry stay as they are (nft refuses
    overlaps there)."""
    out: list[tuple[object, object, _Entry]] = []
    for lo, hi, entry in intervals:
        if out:
            plo, phi, pentry = out[-1]
            plain = entry.element.data is None and pentry.element.data is None \
                and entry.expires_at is None and pentry.expires_at is None
            if plain and lo <= phi:  # type: ignore[operator]
                out[-1] = (plo, max(phi, hi), pentry)  # type: ignore[type-var]
                continue
        out.append((lo, hi, entry))
    return out


def _within(k: object, lo: object, hi: object) -> bool:
    try:
        return lo <= k <= hi  # type: ignore[operator]
    except TypeError:  # an IPv4 key against IPv6 bounds
        return False


# ---------------------------------------------------------------- evaluation state

@dataclass
class _Packet:
    """The packet plus what rules changed on the way (marks), as registers would hold it."""

    meta: PacketMeta
    mark: int
    ct_mark: int


class _Break(Exception):
    """A rule stopped matching (NFT_BREAK)."""


@dataclass
class _Outcome:
    verdict: str  # accept, drop, reject, jump, goto, return, continue
    target: str | None = None
    nat: NatAction | None = None
    reject_with: str | None = None
    note: str = ""


@dataclass(frozen=True)
class _BaseChain:
    table: Table
    chain: Chain
    order: int  # creation order, for equal priorities


class NftEvaluator:
    """Evaluates packets against one ruleset. Stateful like the kernel: counters, dynamic sets and
    `numgen inc` counters change as packets pass; the ruleset itself is never modified."""

    def __init__(self, ruleset: Ruleset, *, rng: Callable[[], int] = _random_u32,
                 clock: Callable[[], float] = time.monotonic,
                 local_addresses: Iterable[str | IPv4Address | IPv6Address] = (),
                 fib_type: Callable[[IPv4Address | IPv6Address], str] | None = None,
                 trace: bool = True) -> None:
        self.ruleset = ruleset
        self.rng = rng
        self.clock = clock
        self.trace_enabled = trace
        local = frozenset(ip_address(a) if isinstance(a, str) else a for a in local_addresses)
        self.fib_type = fib_type or default_fib_type(local)
        now = clock()
        self._sets: dict[tuple[int, str], SetIndex] = {}
        self._anon: dict[int, SetIndex] = {}
        self._anon_keep: list[AnonSet] = []  # keeps id()s stable
        self._numgen_inc: dict[int, int] = {}
        self._flag_match: dict[int, bool] = {}  # id(Match) -> "any of these bits" semantics (ct state...)
        self._rule_text: dict[int, str] = {}
        # (family, table, chain, rule index, statement index) -> [packets, bytes], starting from the
        # values the ruleset was read with (a listing's counters continue from the kernel's)
        self.counters: dict[tuple[str, str, str, int, int], list[int]] = {}
        for table in ruleset.tables:
            for nset in table.sets.values():
                self._sets[(id(table), nset.name)] = SetIndex.build(
                    nset.name, nset.elements, now, nset.timeout, "timeout" in nset.flags)
            for chain in table.chains.values():
                for rule in chain.rules:
                    self._index_anonymous(rule, now)
        self._hooks: dict[tuple[int, str], list[_BaseChain]] = {}
        # sets that rules write (`update @affinity-...`): the only ones reset() has to rebuild
        self._written = {(id(table), st.set_name): (table, table.sets[st.set_name])
                         for table in ruleset.tables for chain in table.chains.values()
                         for rule in chain.rules for st in rule.statements
                         if isinstance(st, SetUpdate) and st.set_name in table.sets}

    def reset(self) -> None:
        """Back to the state the ruleset was loaded with (sets written by rules, `numgen inc`
        counters, counters), rebuilding only the sets rules write: independent flows traced one
        after another then cost what one does, whatever the ruleset's size."""
        now = self.clock()
        for key, (_, nset) in self._written.items():
            self._sets[key] = SetIndex.build(nset.name, nset.elements, now, nset.timeout, "timeout" in nset.flags)
        self._numgen_inc.clear()
        self.counters.clear()

    def _index_anonymous(self, rule: Rule, now: float) -> None:
        for st in rule.statements:
            anon = st.right if isinstance(st, Match) else st.mapping if isinstance(st, VerdictMap) else None
            if isinstance(anon, AnonSet):
                self._anon[id(anon)] = SetIndex.build("(anonymous)", anon.elements, now)
                self._anon_keep.append(anon)

    # ------------------------------------------------------------ public API

    def base_chains(self, family: int, hook: Hook | str) -> list[_BaseChain]:
        """The base chains that see an IPv`family` packet at `hook`, in the order the kernel runs them."""
        hook_name = (hook.value if isinstance(hook, Hook) else hook).lower()
        cached = self._hooks.get((family, hook_name))
        if cached is not None:
            return cached
        families = ("ip", "inet") if family == 4 else ("ip6", "inet")
        found: list[_BaseChain] = []
        for table in self.ruleset.tables:
            if table.family not in families:
                continue
            for chain in table.chains.values():
                if chain.hook == hook_name:
                    found.append(_BaseChain(table, chain, len(found)))

        def sort_key(bc: _BaseChain) -> tuple[int, int, int]:
            prio = bc.chain.priority.value if bc.chain.priority else 0
            if bc.chain.type == "nat":  # runs inside nf_nat's hook, at the fixed NAT priority
                return (NAT_HOOK_PRIORITY.get(hook_name, prio), prio, bc.order)
            return (prio, -2**31, bc.order)

        found.sort(key=sort_key)
        self._hooks[(family, hook_name)] = found
        return found

    def evaluate(self, packet: PacketMeta, hook: Hook | str) -> Decision:
        """Run every base chain at `hook` for this packet; the result says what the hook decided."""
        state = _Packet(packet, packet.mark, packet.ct_mark)
        decision = Decision()
        hook_name = (hook.value if isinstance(hook, Hook) else hook).lower()
        nat_done = False
        for bc in self.base_chains(packet.family, hook_name):
            if bc.chain.type == "nat":
                if nat_done or packet.ct_state != CtState.NEW or packet.ct_direction != "ORIGINAL":
                    continue
            outcome = self._run_base_chain(bc.table, bc.chain, state, decision)
            if outcome.nat is not None:
                decision.nat = outcome.nat
                nat_done = True
            if outcome.verdict in ("drop", "reject"):
                decision.verdict = Verdict.DROP if outcome.verdict == "drop" else Verdict.REJECT
                decision.reject_with = outcome.reject_with
                break
        return self._finish(decision, state, packet)

    def evaluate_chain(self, table: Table, chain: Chain, packet: PacketMeta) -> Decision:
        """One base chain only: what a hook pipeline (dataplane.engine.pipeline) runs at its priority."""
        state = _Packet(packet, packet.mark, packet.ct_mark)
        decision = Decision()
        outcome = self._run_base_chain(table, chain, state, decision)
        decision.nat = outcome.nat
        if outcome.verdict in ("drop", "reject"):
            decision.verdict = Verdict.DROP if outcome.verdict == "drop" else Verdict.REJECT
            decision.reject_with = outcome.reject_with
        return self._finish(decision, state, packet)

    @staticmethod
    def _finish(decision: Decision, state: _Packet, packet: PacketMeta) -> Decision:
        if state.mark != packet.mark:
            decision.mark = state.mark
        if state.ct_mark != packet.ct_mark:
            decision.ct_mark = state.ct_mark
        return decision

    def set_elements(self, table: Table, name: str) -> list[Element]:
        """The live (unexpired) elements of a named set, including those added by `update`."""
        index = self._sets[(id(table), name)]
        now = self.clock()
        live = [e for e in index.exact.values() if e.expires_at is None or e.expires_at > now]
        live += [e for *_, e in index.intervals if e.expires_at is None or e.expires_at > now]
        return [e.element for e in live]

    # ------------------------------------------------------------ chains

    def _run_base_chain(self, table: Table, base: Chain, state: _Packet, decision: Decision) -> _Outcome:
        stack: list[tuple[Chain, int]] = []
        chain, pos = base, 0
        while True:
            if pos >= len(chain.rules):
                if stack:
                    chain, pos = stack.pop()
                    continue
                return self._policy(table, base, decision)
            rule = chain.rules[pos]
            outcome = self._run_rule(table, chain, pos, rule, state, decision)
            pos += 1
            if outcome is None or outcome.verdict == "continue":
                continue
            if outcome.verdict in ("jump", "goto"):
                if outcome.verdict == "jump":
                    if len(stack) >= JUMP_STACK_SIZE:
                        raise EvalError(f"jump stack overflow (more than {JUMP_STACK_SIZE}) at chain {chain.name}")
                    stack.append((chain, pos))
                chain, pos = table.chains[outcome.target], 0  # type: ignore[index]
                continue
            if outcome.verdict == "return":
                if stack:
                    chain, pos = stack.pop()
                    continue
                return self._policy(table, base, decision)
            return outcome

    def _policy(self, table: Table, base: Chain, decision: Decision) -> _Outcome:
        policy = base.policy or "accept"
        if self.trace_enabled:
            decision.trace.append(TraceStep(f"{table.family} {table.name}", base.name, 0, f"policy {policy}", True,
                                            f"policy {policy}"))
        return _Outcome(policy)

    def _run_rule(self, table: Table, chain: Chain, pos: int, rule: Rule, state: _Packet,
                  decision: Decision) -> _Outcome | None:
        decision.rules_evaluated += 1
        notes: list[str] = []
        outcome: _Outcome | None = None
        matched = True
        try:
            for index, st in enumerate(rule.statements):
                outcome = self._statement(table, chain, (pos, index), st, state, notes)
                if outcome is not None:
                    break
        except _Break:
            matched = False
            outcome = None
        if self.trace_enabled:
            text = self._rule_text.get(id(rule))
            if text is None:
                text = self._rule_text[id(rule)] = render.rule(rule, table.family)
            if rule.handle is not None:
                notes.insert(0, f"handle {rule.handle}")
            decision.trace.append(TraceStep(f"{table.family} {table.name}", chain.name, pos + 1, text, matched,
                                            "; ".join(notes)))
        return outcome

    # ------------------------------------------------------------ statements

    def _statement(self, table: Table, chain: Chain, where: tuple[int, int], st: object, state: _Packet,
                   notes: list[str]) -> _Outcome | None:
        if isinstance(st, Match):
            if not self._match(table, st, state, notes):
                raise _Break
            return None
        if isinstance(st, NftVerdict):
            return _Outcome(st.kind, st.target)
        if isinstance(st, VerdictMap):
            key = self._value(st.key, state, notes)
            if key is None:
                raise _Break
            index = self._index(table, st.mapping)
            found = index.lookup(key, self.clock())
            if found is None or not isinstance(found.data, NftVerdict):
                if self.trace_enabled:
                    notes.append(f"vmap: {_show(key, expr_dtype(st.key))} not found")
                raise _Break
            if self.trace_enabled:
                notes.append(f"vmap: {_show(key, expr_dtype(st.key))} -> {render.verdict(found.data)}")
            return _Outcome(found.data.kind, found.data.target)
        if isinstance(st, Counter):
            c = self.counters.setdefault((table.family, table.name, chain.name, *where), [st.packets, st.bytes])
            c[0] += 1
            c[1] += state.meta.length
            return None
        if isinstance(st, Mangle):
            value = st.value.value if isinstance(st.value, Const) else self._value(st.value, state, notes)
            if isinstance(st.target, Meta):
                state.mark = int(value)  # type: ignore[arg-type]
                notes.append(f"mark set 0x{state.mark:x}")
            else:
                state.ct_mark = int(value)  # type: ignore[arg-type]
                notes.append(f"ct mark set 0x{state.ct_mark:x}")
            return None
        if isinstance(st, Nat):
            return self._nat(st, notes)
        if isinstance(st, Reject):
            return _Outcome("reject", reject_with=_reject_name(st, table.family, state.meta))
        if isinstance(st, SetUpdate):
            self._set_update(table, st, state, notes)
            return None
        if isinstance(st, Log):
            notes.append(f"log {st.prefix or ''}".rstrip())
            return None
        if isinstance(st, Notrack):
            notes.append("notrack (no effect in the evaluator)")
            return None
        raise EvalError(f"unsupported statement {st!r}")

    def _index(self, table: Table, ref: SetRef | AnonSet) -> SetIndex:
        if isinstance(ref, SetRef):
            return self._sets[(id(table), ref.name)]
        return self._anon[id(ref)]

    def _set_update(self, table: Table, st: SetUpdate, state: _Packet, notes: list[str]) -> None:
        key = self._value(st.key, state, notes)
        if key is None:
            raise _Break
        index = self._sets[(id(table), st.set_name)]
        now = self.clock()
        timeout = st.timeout if st.timeout is not None else index.default_timeout
        expires_at = now + timeout if timeout is not None else None
        existing = index.exact.get(key)
        alive = existing is not None and (existing.expires_at is None or existing.expires_at > now)
        if st.op == "delete":
            index.exact.pop(key, None)
        elif st.op == "update" or not alive:
            element = Element(_const_for(key, table.sets[st.set_name]), timeout=st.timeout)
            index.exact[key] = _Entry(element, expires_at)
        if self.trace_enabled:
            notes.append(f"{st.op} @{st.set_name} {{ {_show(key, expr_dtype(st.key))} }}")

    def _nat(self, st: Nat, notes: list[str]) -> _Outcome:
        if st.kind == "redirect":
            # the kernel DNATs to the in-interface's primary address; NatAction cannot say that yet
            raise EvalError("`redirect` is parsed but not evaluated: NatAction has no REDIRECT kind")
        kind = {"dnat": NatKind.DNAT, "snat": NatKind.SNAT, "masquerade": NatKind.MASQUERADE}[st.kind]
        addr, addr_max = _bounds_of(st.addr)
        port, port_max = _bounds_of(st.port)
        action = NatAction(kind, addr, port, random_fully="fully-random" in st.flags,  # type: ignore[arg-type]
                           addr_max=addr_max if addr_max != addr else None,  # type: ignore[arg-type]
                           port_max=port_max if port_max != port else None,  # type: ignore[arg-type]
                           random="random" in st.flags, persistent="persistent" in st.flags)
        if self.trace_enabled:
            notes.append(render.statement(st))
        return _Outcome("accept", nat=action)

    # ------------------------------------------------------------ matching

    def _match(self, table: Table, m: Match, state: _Packet, notes: list[str]) -> bool:
        left = self._value(m.left, state, notes)
        if left is None:
            return False  # the field does not exist in this packet (the implicit dependency fails)
        right = m.right
        if isinstance(right, (SetRef, AnonSet)):
            found = self._index(table, right).lookup(left, self.clock()) is not None
            return found if m.op == "==" else not found
        flags = self._flag_match.get(id(m))
        if flags is None:
            flags = self._flag_match[id(m)] = (expr_dtype(m.left) in dt.BITMASK_TYPES
                                               and not isinstance(m.left, Binop) and isinstance(right, Const))
        if flags:
            hit = bool(int(left) & int(right.value))  # type: ignore[call-overload]
            return hit if m.op == "==" else not hit
        if m.op in ("==", "!="):
            hit = _equals(left, right)
            return hit if m.op == "==" else not hit
        value = right.value  # type: ignore[union-attr]
        try:
            return {"<": left < value, ">": left > value, "<=": left <= value,  # type: ignore[operator]
                    ">=": left >= value}[m.op]  # type: ignore[operator]
        except TypeError:
            return False

    def _value(self, e: object, state: _Packet, notes: list[str]) -> object:
        p = state.meta
        if isinstance(e, Payload):
            return _payload(e, p)
        if isinstance(e, Meta):
            key = e.key
            if key == "l4proto":
                return p.proto
            if key == "nfproto":
                return 2 if p.family == 4 else 10
            if key == "protocol":
                return 0x0800 if p.family == 4 else 0x86DD
            if key == "mark":
                return state.mark
            if key == "iifname":
                return p.iif or ""
            if key == "oifname":
                return p.oif or ""
            if key == "length":
                return p.length
            return None
        if isinstance(e, Ct):
            if e.key == "state":
                return _CT_STATE_BITS[p.ct_state]
            if p.ct_state in (CtState.UNTRACKED, CtState.INVALID):
                return None  # no conntrack entry: ct keys other than state do not exist
            if e.key == "status":
                bits = 0
                for name in p.ct_status:
                    bits |= dt.CT_STATUSES.get(name.lower(), 0)
                return bits
            if e.key == "mark":
                return state.ct_mark
            if e.key == "direction":
                return 0 if p.ct_direction == "ORIGINAL" else 1
            return None
        if isinstance(e, Numgen):
            if e.mode == "random":
                r = self.rng() & 0xFFFFFFFF
                value = ((r * e.mod) >> 32) + e.offset  # reciprocal_scale(get_random_u32(), mod) + offset
            else:
                last = self._numgen_inc.get(id(e), e.mod - 1)
                nxt = last + 1 if last + 1 < e.mod else 0
                self._numgen_inc[id(e)] = nxt
                value = nxt + e.offset
            if self.trace_enabled:
                # mod and offset spelled out: branch enumeration (proxy trace --all-branches) reads them
                offset = f" offset {e.offset}" if e.offset else ""
                notes.append(f"numgen {e.mode} mod {e.mod}{offset} -> {value}")
            return value
        if isinstance(e, Fib):
            if e.result != "type":
                return None
            addr = p.dst if "daddr" in e.flags else p.src
            kind = self.fib_type(addr)
            if self.trace_enabled:
                notes.append(f"fib {addr} type {kind}")
            return dt.FIB_ADDRTYPES[kind]
        if isinstance(e, Concat):
            parts = []
            for part in e.parts:
                v = self._value(part, state, notes)
                if v is None:
                    return None
                parts.append(v)
            return tuple(parts)
        if isinstance(e, Binop):
            v = self._value(e.left, state, notes)
            if v is None:
                return None
            r = int(e.right.value)  # type: ignore[call-overload]
            return {"&": v & r, "|": v | r, "^": v ^ r}[e.op]  # type: ignore[operator]
        raise EvalError(f"unsupported expression {e!r}")


def _bounds_of(value: Const | Range | None) -> tuple[object, object]:
    if isinstance(value, Range):
        return value.low, value.high
    if isinstance(value, Const):
        return value.value, value.value
    return None, None


def _payload(e: Payload, p: PacketMeta) -> object:
    proto, fld = e.protocol, e.field
    if proto == "ip":
        if p.family != 4:
            return None
        return {"saddr": p.src, "daddr": p.dst, "protocol": p.proto, "length": p.length}.get(fld)
    if proto == "ip6":
        if p.family != 6:
            return None
        return {"saddr": p.src, "daddr": p.dst, "nexthdr": p.proto}.get(fld)
    if proto == "th":
        if p.proto not in _PORT_PROTOS:
            return None  # the kernel would read raw header bytes; we only model port-carrying protocols
        return p.sport if fld == "sport" else p.dport
    if _PAYLOAD_PROTO.get(proto) != p.proto:
        return None
    if proto in ("icmp", "icmpv6"):
        return p.icmp_type if fld == "type" else p.icmp_code
    if fld == "flags":
        return p.tcp_flags
    return p.sport if fld == "sport" else p.dport


def _equals(left: object, right: object) -> bool:
    if isinstance(right, Const):
        if right.dtype == "ifname" and isinstance(right.value, str) and right.value.endswith("*"):
            return isinstance(left, str) and left.startswith(right.value[:-1])
        return left == right.value
    if isinstance(right, Prefix):
        return isinstance(left, (IPv4Address, IPv6Address)) and left.version == right.network.version \
            and left in right.network
    if isinstance(right, Range):
        return _within(left, right.low, right.high)
    if isinstance(right, ConcatValue):
        return isinstance(left, tuple) and len(left) == len(right.parts) and \
            all(_equals(lv, rv) for lv, rv in zip(left, right.parts))
    return False


def _const_for(key: object, nset: Set) -> Value:
    if isinstance(key, tuple):
        return ConcatValue(tuple(Const(k, t) for k, t in zip(key, nset.key_type)))
    return Const(key, nset.key_type[0])


def _show(key: object, dtype: str) -> str:
    """A lookup key as nft would print it: `10.96.0.10 . tcp . 80`."""
    if isinstance(key, tuple):
        return " . ".join(dt.format_scalar(k, t) for k, t in zip(key, dtype.split(" . ")))
    return dt.format_scalar(key, dtype)


def _reject_name(st: Reject, family: str, p: PacketMeta) -> str:
    if st.type == "tcp reset":
        return "tcp-reset"
    kind, code = st.type, st.code or "port-unreachable"
    if kind in (None, "icmpx"):
        kind = "icmp" if p.family == 4 else "icmpv6"
    return f"{'icmp' if kind == 'icmp' else 'icmp6'}-{code}"


# ---------------------------------------------------------------- the hook pipeline's view

class NftRuleset:
    """Adapts an NftEvaluator to dataplane.engine.pipeline's `Ruleset`: one TableHook per base chain.

    The pipeline owns conntrack and NAT (nat chains only for a connection's first packet, at the
    fixed NAT priority, first binding wins); randomness, time and `fib ... type` come from its
    EvalContext, so a seeded pipeline is reproducible.
    """

    def __init__(self, evaluator: NftEvaluator) -> None:
        self.evaluator = evaluator
        self._chains: dict[str, tuple[Table, Chain]] = {}

    @classmethod
    def from_text(cls, text: str, *, clock: Callable[[], float] | None = None) -> "NftRuleset":
        """`clock`: the pipeline's clock (`pipeline.clock.now`), so set-element timeouts agree with it."""
        from dataplane.proxy.nftables.parser import parse

        return cls(NftEvaluator(parse(text), clock=clock or time.monotonic))

    def hooks(self, family: int) -> list["TableHook"]:
        from dataplane.engine.pipeline import TableHook

        out = []
        for hook in Hook:
            for bc in self.evaluator.base_chains(family, hook):
                key = f"{bc.table.family} {bc.table.name} {bc.chain.name}"
                self._chains[key] = (bc.table, bc.chain)
                prio = bc.chain.priority.value if bc.chain.priority else 0
                out.append(TableHook(key, hook, prio, "nat" if bc.chain.type == "nat" else "filter"))
        return out

    def evaluate(self, table: str, hook: Hook, packet: PacketMeta, context: "EvalContext") -> Decision:
        t, chain = self._chains[table]
        ev = self.evaluator
        saved = ev.rng, ev.fib_type
        node = context.node
        ev.rng = lambda: context.rng.getrandbits(32)
        ev.fib_type = lambda addr: "local" if node.is_local(addr) else _NOT_LOCAL(addr)
        try:
            return ev.evaluate_chain(t, chain, packet)
        finally:
            ev.rng, ev.fib_type = saved


_NOT_LOCAL = default_fib_type(frozenset())
