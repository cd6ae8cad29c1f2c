"""The reference iptables evaluator: one table's built-in chain for one packet, with kernel semantics.

It walks rules as `ipt_do_table` does: every match of a rule must match; a jump pushes a return
point, a goto does not; RETURN (or the end of a user chain) pops, and at a built-in chain it falls
to the policy; MARK, CONNMARK and LOG continue; ACCEPT, DROP, REJECT and the NAT targets end the
table. Matches follow the kernel's xt_*.c, including their odd corners (`-i +` matches a packet
with no interface, `--ctstatus NONE` never matches, `-m recent` only updates on a hit). Each rule
tested becomes a `TraceStep`, like the TRACE target's output.

Randomness: `statistic --mode random` draws one 31-bit number per rule evaluated, in rule order,
and matches when it is below the rule's quantised probability (xt_statistic.c). The draw comes from
`context.rng.getrandbits(31)`, so a seeded `random.Random` reproduces a run. `evaluate_branches`
instead enumerates every outcome of the statistic rules with its exact probability.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dataplane.engine.ipset import IpsetStore
from dataplane.engine.recent import RecentTables
from dataplane.engine.types import (
    CtState,
    Decision,
    Hook,
    NatAction,
    NatKind,
    PacketMeta,
    TraceStep,
    Verdict,
)
from dataplane.proxy.iptables.rules import (
    ALL_ONES,
    STATISTIC_SCALE,
    AddrtypeMatch,
    Chain,
    CommentMatch,
    ConnmarkTarget,
    ConntrackMatch,
    IcmpMatch,
    Jump,
    LogTarget,
    MarkMatch,
    MarkTarget,
    Masquerade,
    Match,
    MultiportMatch,
    Nat,
    PortsMatch,
    RecentMatch,
    Reject,
    Rule,
    Ruleset,
    SetMatch,
    StateMatch,
    StatisticMatch,
    Table,
    Verdict as VerdictTarget,
)

# RTN_* route types (xt_addrtype's bit numbers)
RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, RTN_MULTICAST = 1, 2, 3, 5


class EvaluationError(RuntimeError):
    """The rules cannot be evaluated as given (a chain loop, a missing set, a wrong family)."""


@dataclass
class HostAddresses:
    """The node's view for `-m addrtype`: which addresses are local or broadcast, per interface.

    `local` maps an interface name to the addresses on it (the kernel's local routing table);
    `broadcast` the same for subnet broadcast addresses. 127.0.0.0/8 is local on `lo`.
    """

    local: dict[str, set[int]] = field(default_factory=dict)
    broadcast: dict[str, set[int]] = field(default_factory=dict)
    local6: dict[str, set[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, addresses: dict[str, list[str]]) -> "HostAddresses":
        """From {"eth0": ["192.168.100.2/24"], ...} (interface addresses with prefix)."""
        h = cls()
        for ifname, addrs in addresses.items():
            for a in addrs:
                itf = ipaddress.ip_interface(a)
                if itf.version == 4:
                    h.local.setdefault(ifname, set()).add(int(itf.ip))
                    if itf.network.prefixlen < 31:
                        h.broadcast.setdefault(ifname, set()).add(int(itf.network.broadcast_address))
                else:
                    h.local6.setdefault(ifname, set()).add(int(itf.ip))
        return h

    @classmethod
    def from_node(cls, node: Any) -> "HostAddresses":
        """From the pipeline's `Node` (interfaces with ip_interface addresses, extra_local)."""
        h = cls.of({itf.name: [str(a) for a in itf.addresses] for itf in node.interfaces})
        for a in getattr(node, "extra_local", ()):
            (h.local if a.version == 4 else h.local6).setdefault("", set()).add(int(a))
        return h

    def addr_type(self, family: int, addr: int, dev: str | None) -> int:
        """inet_dev_addr_type(): the route type of `addr`, limited to `dev` when given."""
        if family == 6:
            if addr >> 120 == 0xFF:
                return RTN_MULTICAST
            if addr == 1:
                return RTN_LOCAL if dev in (None, "lo") else RTN_UNICAST
            for ifname, addrs in self.local6.items():
                if addr in addrs:
                    return RTN_LOCAL if dev is None or dev == ifname or ifname == "" else RTN_UNICAST
            return RTN_UNICAST
        if addr >> 24 == 0 or addr == 0xFFFFFFFF:
            return RTN_BROADCAST
        if addr >> 28 == 0xE:
            return RTN_MULTICAST
        if addr >> 24 == 127:
            return RTN_LOCAL if dev in (None, "lo") else RTN_UNICAST
        for table, rtype in ((self.local, RTN_LOCAL), (self.broadcast, RTN_BROADCAST)):
            for ifname, addrs in table.items():
                if addr in addrs:
                    return rtype if dev is None or dev == ifname or ifname == "" else RTN_UNICAST
        return RTN_UNICAST


@dataclass
class MatchContext:
    """What evaluation needs besides the packet, for use without the pipeline.

    The pipeline's `EvalContext` works too: the evaluator reads `now`, `rng` and either
    `addresses` (a HostAddresses) or `node`.
    """

    addresses: HostAddresses = field(default_factory=HostAddresses)
    now: float = 0.0
    rng: Any = None  # random.Random (getrandbits) or a callable returning 31-bit ints


@dataclass
class Branch:
    """One outcome of the statistic rules and its probability (`evaluate_branches`)."""

    probability: float
    decision: Decision
    choices: tuple[bool, ...] = ()


class _Walk:
    """The mutable state of one traversal."""

    __slots__ = ("mark", "ct_mark", "trace", "evaluated", "draw", "addresses", "now", "note")

    def __init__(self, packet: PacketMeta, draw: Callable[[int], bool], now: float,
                 addresses: Callable[[], HostAddresses]) -> None:
        self.mark = packet.mark
        self.ct_mark = packet.ct_mark
        self.trace: list[TraceStep] = []
        self.evaluated = 0
        self.draw = draw
        self.addresses = addresses
        self.now = now
        self.note = ""  # what the current rule's matches want the trace to say


def _iface_match(rule_if: str, dev: str | None) -> bool:
    if rule_if.endswith("+"):
        return (dev or "").startswith(rule_if[:-1])
    return dev == rule_if


class IptablesEvaluator:
    """Evaluates a parsed `Ruleset`; keeps the state rules carry (nth counters, recent lists).

    Implements the pipeline's `Evaluator` protocol: `evaluate(table, hook, packet, context)`.
    """

    def __init__(self, ruleset: Ruleset, *, ipsets: IpsetStore | None = None,
                 recent: RecentTables | None = None, trace: bool = True) -> None:
        self.ruleset = ruleset
        self.ipsets = ipsets or IpsetStore()
        self.recent = recent or RecentTables()
        self.trace_enabled = trace
        self._nth: dict[tuple[int, int], int] = {}  # (id(rule), match index) -> counter
        for table in ruleset.tables.values():
            self._check_loops(table)
            for rule in table.rules:
                for i, m in enumerate(rule.matches):
                    if isinstance(m, StatisticMatch) and m.mode == "nth":
                        # libxt_statistic: count = (every - 1) - packet
                        self._nth[(id(rule), i)] = (m.every - 1) - m.packet
                    elif isinstance(m, RecentMatch):
                        self.recent.register(m.name, m.family, m.mask.addr if m.mask else None)

    # ---- public API
    def evaluate(self, table: str, hook: Hook | str, packet: PacketMeta, context: Any = None) -> Decision:
        """Traverse `table`'s built-in chain for `hook`; statistic draws come from context.rng."""
        ctx = context or MatchContext()
        rng = getattr(ctx, "rng", None)
        if rng is None:
            def draw(q: int) -> bool:
                raise EvaluationError("a statistic --mode random rule needs context.rng")
        else:
            bits = getattr(rng, "getrandbits", None)
            source: Callable[[], int] = (lambda: bits(31)) if bits else rng

            def draw(q: int) -> bool:
                return (source() & 0x7FFFFFFF) < q
        return self._run(table, hook, packet, ctx, draw)

    def evaluate_branches(self, table: str, hook: Hook | str, packet: PacketMeta,
                          context: Any = None, *, max_branches: int = 100_000) -> list[Branch]:
        """Every outcome of the statistic rules the packet meets, with its probability.

        Stateful matches (nth counters, recent lists) see the same state in every branch, and
        the state is left as it was before the call.
        """
        ctx = context or MatchContext()
        snap_recent = self.recent.snapshot()
        snap_nth = dict(self._nth)
        out: list[Branch] = []
        todo: list[tuple[bool, ...]] = [()]
        try:
            while todo:
                prefix = todo.pop()
                taken: list[bool] = []
                prob = [1.0]

                def draw(q: int, prefix: tuple[bool, ...] = prefix, taken: list[bool] = taken,
                         prob: list[float] = prob) -> bool:
                    p = q / STATISTIC_SCALE
                    k = len(taken)
                    if k < len(prefix):
                        c = prefix[k]
                    elif q == 0:
                        c = False
                    elif q >= STATISTIC_SCALE:
                        c = True
                    else:
                        c = True
                        todo.append((*taken, False))
                    taken.append(c)
                    prob[0] *= p if c else 1.0 - p
                    return c

                d = self._run(table, hook, packet, ctx, draw)
                out.append(Branch(prob[0], d, tuple(taken)))
                self.recent.restore(snap_recent)
                self._nth.update(snap_nth)
                if len(out) > max_branches:
                    raise EvaluationError(f"more than {max_branches} branches")
        finally:
            self.recent.restore(snap_recent)
            self._nth.update(snap_nth)  # in place: a batch evaluator may share this dict
        out.sort(key=lambda b: b.choices, reverse=True)
        return out

    # ---- traversal (ipt_do_table)
    def _run(self, table_name: str, hook: Hook | str, packet: PacketMeta, ctx: Any,
             draw: Callable[[int], bool]) -> Decision:
        hook_name = hook.value if isinstance(hook, Hook) else str(hook)
        try:
            table = self.ruleset.tables[table_name]
        except KeyError:
            return Decision(Verdict.ACCEPT)
        chain = table.chains.get(hook_name)
        if chain is None or not chain.builtin:
            return Decision(Verdict.ACCEPT)
        if packet.family != self.ruleset.family:
            raise EvaluationError(f"an IPv{packet.family} packet cannot be evaluated against "
                                  f"IPv{self.ruleset.family} rules")
        cache: list[HostAddresses] = []

        def addresses() -> HostAddresses:
            if not cache:
                a = getattr(ctx, "addresses", None)
                if a is None and getattr(ctx, "node", None) is not None:
                    a = HostAddresses.from_node(ctx.node)
                cache.append(a or HostAddresses())
            return cache[0]

        w = _Walk(packet, draw, float(getattr(ctx, "now", 0.0)), addresses)
        base = chain
        stack: list[tuple[Chain, int]] = []
        idx = 0
        record = self.trace_enabled
        while True:
            rules = chain.rules
            if idx >= len(rules):
                if chain is base:
                    return self._policy(table, base, w)
                if record:
                    w.trace.append(TraceStep(table.name, chain.name, len(rules) + 1, "", False, "return"))
                if not stack:
                    return self._policy(table, base, w)
                chain, idx = stack.pop()
                continue
            rule = rules[idx]
            w.evaluated += 1
            if rule.unknown is not None:
                if record:
                    w.trace.append(TraceStep(table.name, chain.name, idx + 1, rule.text, False,
                                             f"unknown rule not evaluated (assumed no match): {rule.unknown}"))
                idx += 1
                continue
            w.note = ""
            ok = self._rule_matches(rule, packet, w)
            if record:
                w.trace.append(TraceStep(table.name, chain.name, idx + 1, rule.text or rule.render(), ok,
                                         w.note))
            idx += 1
            if not ok:
                continue
            t = rule.target
            if t is None:
                continue
            tt = type(t)
            if tt is Jump:
                if len(stack) > 64 * 1024:
                    raise EvaluationError("jump stack overflow")
                if not t.goto:
                    stack.append((chain, idx))
                chain, idx = table.chains[t.chain], 0
                continue
            if tt is VerdictTarget:
                if t.name == "RETURN":
                    if not stack:
                        return self._policy(table, base, w)
                    chain, idx = stack.pop()
                    continue
                return self._decision(Verdict.ACCEPT if t.name == "ACCEPT" else Verdict.DROP, w)
            if tt is MarkTarget:
                w.mark = (w.mark & (ALL_ONES ^ t.mask)) ^ t.value
                continue
            if tt is ConnmarkTarget:
                self._connmark(t, w)
                continue
            if tt is LogTarget:
                continue
            if tt is Reject:
                d = self._decision(Verdict.REJECT, w)
                d.reject_with = t.reject_with
                return d
            if tt is Nat or tt is Masquerade:
                d = self._decision(Verdict.ACCEPT, w)
                d.nat = self._nat_action(t, packet.family)
                return d
            raise EvaluationError(f"line {rule.line}: target {t.name} cannot be evaluated")

    def _policy(self, table: Table, base: Chain, w: _Walk) -> Decision:
        pol = base.policy or "ACCEPT"
        if self.trace_enabled:
            w.trace.append(TraceStep(table.name, base.name, 0, "", False, f"policy {pol}"))
        return self._decision(Verdict.ACCEPT if pol == "ACCEPT" else Verdict.DROP, w)

    @staticmethod
    def _decision(verdict: Verdict, w: _Walk) -> Decision:
        return Decision(verdict=verdict, mark=w.mark, ct_mark=w.ct_mark, trace=w.trace,
                        rules_evaluated=w.evaluated)

    @staticmethod
    def _connmark(t: ConnmarkTarget, w: _Walk) -> None:
        if t.mode == "set":
            w.ct_mark = (w.ct_mark & (ALL_ONES ^ t.ctmask)) ^ t.value
        elif t.mode == "save":
            w.ct_mark = (w.ct_mark & (ALL_ONES ^ t.ctmask)) ^ (w.mark & t.nfmask)
        else:
            w.mark = (w.mark & (ALL_ONES ^ t.nfmask)) ^ (w.ct_mark & t.ctmask)

    @staticmethod
    def _nat_action(t: Nat | Masquerade, family: int) -> NatAction:
        if isinstance(t, Masquerade):
            p = t.ports
            return NatAction(NatKind.MASQUERADE, None, p.lo if p else None, t.random_fully,
                             None, p.hi if p else None, t.random)
        r = t.range
        cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        lo = cls(r.addr_lo) if r and r.addr_lo is not None else None
        hi = cls(r.addr_hi) if r and r.addr_hi is not None and r.addr_hi != r.addr_lo else None
        return NatAction(NatKind.DNAT if t.name == "DNAT" else NatKind.SNAT, lo,
                         r.port_lo if r else None, t.random_fully, hi,
                         r.port_hi if r and r.port_hi != r.port_lo else None, t.random, t.persistent)

    # ---- matching
    def _rule_matches(self, rule: Rule, p: PacketMeta, w: _Walk) -> bool:
        if rule.src is not None and ((int(p.src) & rule.src.mask) == rule.src.addr) == rule.src_neg:
            return False
        if rule.dst is not None and ((int(p.dst) & rule.dst.mask) == rule.dst.addr) == rule.dst_neg:
            return False
        if rule.iif is not None and _iface_match(rule.iif, p.iif) == rule.iif_neg:
            return False
        if rule.oif is not None and _iface_match(rule.oif, p.oif) == rule.oif_neg:
            return False
        if rule.proto is not None and (p.proto == rule.proto) == rule.proto_neg:
            return False
        for i, m in enumerate(rule.matches):
            if not self._match(m, rule, i, p, w):
                return False
        return True

    def _match(self, m: Match, rule: Rule, i: int, p: PacketMeta, w: _Walk) -> bool:
        tm = type(m)
        if tm is CommentMatch:
            return True
        if tm is PortsMatch:
            return _ports(m, p)
        if tm is StatisticMatch:
            if m.mode == "random":
                hit = w.draw(m.probability)
                w.note = f"probability {m.probability_float:.11f} {'drawn' if hit else 'missed'}"
                return hit != m.neg
            key = (id(rule), i)
            old = self._nth[key]
            new = 0 if old == m.every - 1 else old + 1
            self._nth[key] = new
            return (new == 0) != m.neg
        if tm is MarkMatch:
            value = w.mark if m.module == "mark" else w.ct_mark
            return ((value & m.mask) == m.value) != m.neg
        if tm is AddrtypeMatch:
            return _addrtype(m, p, w.addresses())
        if tm is ConntrackMatch:
            return _conntrack(m, p)
        if tm is StateMatch:
            return (_ct_statebit(p) in m.states) != m.neg
        if tm is MultiportMatch:
            return _multiport(m, p)
        if tm is IcmpMatch:
            if m.type == 255 and m.module == "icmp":
                ok = True
            else:
                ok = (p.icmp_type == m.type and p.icmp_code is not None
                      and m.code_lo <= p.icmp_code <= m.code_hi)
            return ok != m.neg
        if tm is RecentMatch:
            addr = int(p.src if m.side == "rsource" else p.dst)
            ttl = p.ttl + 1 if p.oif is not None else p.ttl  # "TTL as seen before forwarding"
            return self.recent.match(name=m.name, mode=m.mode, family=p.family, addr=addr, ttl=ttl,
                                     now=w.now, seconds=m.seconds, hitcount=m.hitcount, reap=m.reap,
                                     rttl=m.rttl, invert=m.neg)
        if tm is SetMatch:
            return self.ipsets.test(m.name, p, m.directions) != m.neg
        raise EvaluationError(f"line {rule.line}: match -m {m.module} cannot be evaluated")

    @staticmethod
    def _check_loops(table: Table) -> None:
        """iptables-restore refuses a jump loop (mark_source_chains); so do we, naming the chain."""
        edges = {name: {r.target.chain for r in c.rules if type(r.target) is Jump}
                 for name, c in table.chains.items()}
        state: dict[str, int] = {}
        for root in edges:
            if state.get(root):
                continue
            stack = [(root, iter(sorted(edges[root])))]
            state[root] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    state[node] = 2
                    stack.pop()
                    continue
                if state.get(nxt) == 1:
                    raise EvaluationError(f"table {table.name}: chain loop through {nxt} "
                                          f"(via {' -> '.join(n for n, _ in stack)} -> {nxt})")
                if not state.get(nxt):
                    state[nxt] = 1
                    stack.append((nxt, iter(sorted(edges.get(nxt, ())))))


def _ports(m: PortsMatch, p: PacketMeta) -> bool:
    if m.sport is not None and (m.sport.lo <= p.sport <= m.sport.hi) == m.sport_neg:
        return False
    if m.dport is not None and (m.dport.lo <= p.dport <= m.dport.hi) == m.dport_neg:
        return False
    if m.flags_mask is not None and ((p.tcp_flags & m.flags_mask) == m.flags_comp) == m.flags_neg:
        return False
    return True


def _multiport(m: MultiportMatch, p: PacketMeta) -> bool:
    for r in m.ports:
        if m.kind == "sports":
            hit = r.lo <= p.sport <= r.hi
        elif m.kind == "dports":
            hit = r.lo <= p.dport <= r.hi
        else:
            hit = r.lo <= p.dport <= r.hi or r.lo <= p.sport <= r.hi
        if hit:
            return not m.neg
    return m.neg


def _addrtype(m: AddrtypeMatch, p: PacketMeta, hosts: HostAddresses) -> bool:
    dev = p.iif if m.limit_iface_in else p.oif if m.limit_iface_out else None
    if m.src_types:
        t = hosts.addr_type(p.family, int(p.src), dev)
        if bool(m.src_types & (1 << t)) == m.src_neg:
            return False
    if m.dst_types:
        t = hosts.addr_type(p.family, int(p.dst), dev)
        if bool(m.dst_types & (1 << t)) == m.dst_neg:
            return False
    return True


def _ct_statebit(p: PacketMeta) -> str:
    return p.ct_state.value


def _conntrack(m: ConntrackMatch, p: PacketMeta) -> bool:
    """conntrack_mt (revision 3)."""
    # nf_ct_get() gives no entry for INVALID and for UNTRACKED packets (xt_conntrack.c)
    has_ct = p.ct_state not in (CtState.INVALID, CtState.UNTRACKED)
    if m.states is not None:
        bits = {p.ct_state.value}
        if has_ct:
            if "SNAT" in p.ct_status:
                bits.add("SNAT")
            if "DNAT" in p.ct_status:
                bits.add("DNAT")
        if bool(bits & m.states) == m.states_neg:
            return False
    if not has_ct:
        return m.states is not None
    if m.direction is not None and (p.ct_direction == m.direction) is False:
        return False
    orig = (p.ct_origsrc or p.src, p.ct_origdst or p.dst,
            p.ct_origsport if p.ct_origsport is not None else p.sport,
            p.ct_origdport if p.ct_origdport is not None else p.dport)
    repl = (p.ct_replsrc or orig[1], p.ct_repldst or orig[0],
            p.ct_replsport if p.ct_replsport is not None else orig[3],
            p.ct_repldport if p.ct_repldport is not None else orig[2])
    if m.proto is not None and (p.proto == m.proto) == m.proto_neg:
        return False
    for a, value in ((m.origsrc, orig[0]), (m.origdst, orig[1]), (m.replsrc, repl[0]), (m.repldst, repl[1])):
        if a is not None and ((int(value) & a.net.mask) == a.net.addr) == a.neg:
            return False
    for c, port in ((m.origsrcport, orig[2]), (m.origdstport, orig[3]),
                    (m.replsrcport, repl[2]), (m.repldstport, repl[3])):
        if c is not None and (c.ports.lo <= port <= c.ports.hi) == c.neg:
            return False
    if m.statuses is not None and bool(m.statuses & p.ct_status) == m.statuses_neg:
        return False
    if m.expire is not None:
        left = p.ct_expire or 0
        if (m.expire.lo <= left <= m.expire.hi) == m.expire_neg:
            return False
    return True
