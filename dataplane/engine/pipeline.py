"""One node's netfilter path for a packet: hooks, tables at their priorities, conntrack and NAT.

    from the wire:  PREROUTING -> routing -> INPUT (local)  |  FORWARD -> POSTROUTING
    local process:  OUTPUT -> POSTROUTING  (-> PREROUTING -> INPUT when sent to itself)

At each hook the registered tables run in priority order (raw -300, conntrack -200, mangle -150,
destination NAT -100, filter 0, security 50, source NAT 100, confirm last). Rule sets plug in
through the `Ruleset` protocol, so iptables, nftables and IPVS evaluators share conntrack and NAT.
NAT tables are consulted only for a connection's first packet; every packet is rewritten from
the connection's tuples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dataplane.engine import packet as pkt
from dataplane.engine.clock import Clock, ManualClock
from dataplane.engine.rng import SplitMixRandom
from dataplane.engine.conntrack import ORIGINAL, REPLY, Connection, ConntrackTable, Timeouts, Tracked
from dataplane.engine.nat import Manip, Nat, NatRange, manip_of
from dataplane.engine.node import Node, NoRoute
from dataplane.engine.types import CtState, Decision, Hook, NatKind, PacketMeta, TraceStep, Verdict

PRI_RAW, PRI_CONNTRACK, PRI_MANGLE, PRI_NAT_DST, PRI_FILTER, PRI_SECURITY, PRI_NAT_SRC = (
    -300, -200, -150, -100, 0, 50, 100)
PRI_CONFIRM = 2**31 - 1


@dataclass(frozen=True)
class TableHook:
    """A base chain: `table` runs at `hook` with `priority`. kind "nat" chains are consulted by the
    NAT step (first packet only); kind "filter" (and route) chains run for every packet."""

    table: str
    hook: Hook
    priority: int
    kind: str = "filter"


IPTABLES_LAYOUT: tuple[TableHook, ...] = (
    TableHook("raw", Hook.PREROUTING, PRI_RAW), TableHook("raw", Hook.OUTPUT, PRI_RAW),
    *(TableHook("mangle", h, PRI_MANGLE) for h in Hook),
    TableHook("nat", Hook.PREROUTING, PRI_NAT_DST, "nat"), TableHook("nat", Hook.OUTPUT, PRI_NAT_DST, "nat"),
    TableHook("nat", Hook.INPUT, PRI_NAT_SRC, "nat"), TableHook("nat", Hook.POSTROUTING, PRI_NAT_SRC, "nat"),
    *(TableHook("filter", h, PRI_FILTER) for h in (Hook.INPUT, Hook.FORWARD, Hook.OUTPUT)),
    *(TableHook("security", h, PRI_SECURITY) for h in (Hook.INPUT, Hook.FORWARD, Hook.OUTPUT)),
)


@dataclass
class EvalContext:
    """What an evaluator may need beyond the packet: the node (addrtype), time and randomness
    (statistic, recent, numgen), and the packet's conntrack entry."""

    node: Node
    now: float
    rng: random.Random
    tracked: Tracked | None = None
    family: int = 4


class Evaluator(Protocol):
    """The per-table rule evaluator (iptables, nftables, IPVS): never mutates the packet."""

    def evaluate(self, table: str, hook: Hook, packet: PacketMeta, context: EvalContext) -> Decision: ...


class Ruleset(Protocol):
    """An evaluator plus the base chains it registers."""

    def hooks(self, family: int) -> Sequence[TableHook]: ...

    def evaluate(self, table: str, hook: Hook, packet: PacketMeta, context: EvalContext) -> Decision: ...


class Stage(Protocol):
    """An extra step between a hook's tables (IPVS's netfilter hooks): `steps()` names the
    (hook, priority, name) slots it takes; `run()` may rewrite `state.data`, re-route, return a
    DROP/REJECT `Decision`, or send the packet on itself and raise `Stolen`."""

    def steps(self, family: int) -> Sequence[tuple[Hook, int, str]]: ...

    def run(self, name: str, hook: Hook, pipeline: "Pipeline", state: "_State",
            result: "PacketResult") -> Decision | None: ...


class Stolen(Exception):
    """NF_STOLEN: a stage took the packet over and already finished its path."""


@dataclass
class IptablesRuleset:
    """Adapts an iptables-style evaluator: the fixed table layout, limited to tables present."""

    evaluator: Evaluator
    tables: tuple[str, ...] = ("raw", "mangle", "nat", "filter")

    def hooks(self, family: int) -> Sequence[TableHook]:
        return [h for h in IPTABLES_LAYOUT if h.table in self.tables]

    def evaluate(self, table: str, hook: Hook, packet: PacketMeta, context: EvalContext) -> Decision:
        return self.evaluator.evaluate(table, hook, packet, context)


def iptables_ruleset(text: str, *, family: int = 4) -> IptablesRuleset:
    """An iptables-save dump, parsed and wrapped for the pipeline (the reference evaluator)."""
    from dataplane.engine.iptables_eval import IptablesEvaluator
    from dataplane.proxy.iptables.parser import parse

    parsed = parse(text, family=family)
    return IptablesRuleset(IptablesEvaluator(parsed), tuple(parsed.tables))


@dataclass
class PacketResult:
    """What the node did with one packet."""

    verdict: Verdict
    packet: bytes  # the bytes as they left (or as they were when dropped)
    original: bytes
    path: list[str] = field(default_factory=list)  # "HOOK:table" (and HOOK:conntrack/nat/confirm)
    trace: list[TraceStep] = field(default_factory=list)
    ct_state: CtState = CtState.NEW
    conntrack: Connection | None = None
    direction: str = ORIGINAL
    local: bool = False  # delivered to a local socket
    oif: str | None = None
    nexthop: object | None = None
    nat_applied: list[str] = field(default_factory=list)
    reject_with: str | None = None
    response: bytes | None = None  # the ICMP error or TCP reset a REJECT sends back, as it leaves
    response_result: "PacketResult | None" = None  # that answer's own trip through the node
    reason: str = ""
    mark: int = 0
    rules_evaluated: int = 0

    @property
    def meta(self) -> PacketMeta:
        return pkt.meta_of(self.packet)


class _Stop(Exception):
    def __init__(self, verdict: Verdict, reason: str, reject_with: str | None = None) -> None:
        super().__init__(reason)
        self.verdict, self.reason, self.reject_with = verdict, reason, reject_with


_REJECT_CODES_V4 = {"icmp-net-unreachable": 0, "icmp-host-unreachable": 1, "icmp-proto-unreachable": 2,
                    "icmp-port-unreachable": 3, "icmp-net-prohibited": 9, "icmp-host-prohibited": 10,
                    "icmp-admin-prohibited": 13}
_REJECT_CODES_V6 = {"icmp6-no-route": 0, "no-route": 0, "icmp6-adm-prohibited": 1, "adm-prohibited": 1,
                    "icmp6-addr-unreachable": 3, "addr-unreach": 3, "icmp6-port-unreachable": 4,
                    "port-unreach": 4}


class Pipeline:
    """One node: its rules, conntrack table and NAT, driven packet by packet."""

    def __init__(self, node: Node, ruleset: Ruleset | None = None, *, clock: Clock | None = None,
                 timeouts: Timeouts | None = None, seed: int | None = 0) -> None:
        self.node = node
        self.ruleset = ruleset
        self.clock = clock or ManualClock()
        # SplitMix: the stream the numba evaluators reproduce (dataplane.engine.rng)
        self.rng = SplitMixRandom(seed or 0)
        self.conntrack = ConntrackTable(self.clock, timeouts)
        self.nat = Nat(self.conntrack, self.rng)
        self.stages: list[Stage] = []  # extra steps at hooks (IPVS), run at their priorities

    # ---- entry points
    def receive(self, data: bytes, iif: str) -> PacketResult:
        """A packet arriving on interface `iif` (PREROUTING first)."""
        self.node.interface(iif)
        return self._run(data, iif=iif, local_out=False)

    def send(self, data: bytes) -> PacketResult:
        """A packet a local process sends (OUTPUT first)."""
        return self._run(data, iif=None, local_out=True)

    def process(self, packets: Iterable[tuple[bytes, str | None]]) -> list[PacketResult]:
        """Many packets in order: (bytes, iif) pairs, iif None for locally generated ones."""
        return [self.send(d) if iif is None else self.receive(d, iif) for d, iif in packets]

    # ---- the path
    def _run(self, data: bytes, *, iif: str | None, local_out: bool,
             attached: Tracked | None = None) -> PacketResult:
        """`attached`: a locally made answer (REJECT's ICMP error or reset) carries the conntrack
        entry of the packet it answers, as nf_ct_attach gives it, instead of being tracked anew."""
        headers = pkt.parse(data)
        st = _State(data=data, iif=iif, family=headers.family, tracked=attached)
        res = PacketResult(verdict=Verdict.ACCEPT, packet=data, original=data)
        try:
            if local_out:
                self._route(st, res)
                self._hook(Hook.OUTPUT, st, res, retrack=attached is None)
                before = st.headers().dst
                if before != headers.dst:
                    self._route(st, res)  # DNAT in OUTPUT: route again
                self._hook(Hook.POSTROUTING, st, res)
                if res.local:
                    st.iif, st.oif = "lo", None
                    self._hook(Hook.PREROUTING, st, res, retrack=False)
                    self._hook(Hook.INPUT, st, res)
            else:
                self._hook(Hook.PREROUTING, st, res)
                self._route(st, res)
                if res.local:
                    self._hook(Hook.INPUT, st, res)
                else:
                    if not self.node.forwarding:
                        raise _Stop(Verdict.DROP, "forwarding is disabled on the node")
                    if st.headers().ttl <= 1:
                        raise _Stop(Verdict.DROP, "TTL exceeded in transit", "ttl-exceeded")
                    st.data = pkt.decrement_ttl(st.data)  # ip_forward: before the FORWARD hook
                    self._hook(Hook.FORWARD, st, res)
                    self._hook(Hook.POSTROUTING, st, res)
        except Stolen:
            pass
        except _Stop as stop:
            res.verdict, res.reason, res.reject_with = stop.verdict, stop.reason, stop.reject_with
            if stop.verdict is Verdict.REJECT or stop.reject_with == "ttl-exceeded":
                res.response_result = self._reject_response(st, stop.reject_with)
                if res.response_result is not None and res.response_result.verdict is Verdict.ACCEPT:
                    res.response = res.response_result.packet
        res.packet = st.data
        res.mark = st.mark
        if st.tracked is not None:
            res.ct_state = st.tracked.state
            res.conntrack = st.tracked.conn
            res.direction = st.tracked.direction
        return res

    def _route(self, st: "_State", res: PacketResult) -> None:
        dst = st.headers().dst
        try:
            r = self.node.route(dst)
        except NoRoute as exc:
            raise _Stop(Verdict.DROP, str(exc)) from None
        res.local, res.oif, res.nexthop = r.local, (None if r.local else r.oif), r.nexthop
        st.oif = None if r.local else r.oif

    def _hook(self, hook: Hook, st: "_State", res: PacketResult, *, retrack: bool = True) -> None:
        steps: list[tuple[int, int, str, Callable[[], None]]] = []
        chains = list(self.ruleset.hooks(st.family)) if self.ruleset is not None else []
        for i, th in enumerate(chains):
            if th.hook is hook and th.kind != "nat":
                steps.append((th.priority, i, th.table, lambda th=th: self._table(th, st, res)))
        if hook in (Hook.PREROUTING, Hook.OUTPUT) and retrack:
            steps.append((PRI_CONNTRACK, -1, "conntrack", lambda: self._track(st)))
        for stage in self.stages:
            for s_hook, s_pri, s_name in stage.steps(st.family):
                if s_hook is hook:
                    steps.append((s_pri, -1, s_name,
                                  lambda stage=stage, s_name=s_name: self._stage(stage, s_name, hook, st, res)))
        nat_chains = sorted((th for th in chains if th.hook is hook and th.kind == "nat"),
                            key=lambda th: th.priority)
        if hook is not Hook.FORWARD:  # NAT hooks: DST at PREROUTING/OUTPUT, SRC at INPUT/POSTROUTING
            nat_pri = PRI_NAT_DST if manip_of(hook) is Manip.DST else PRI_NAT_SRC
            steps.append((nat_pri, -1, "nat", lambda: self._nat(hook, nat_chains, st, res)))
        if hook in (Hook.POSTROUTING, Hook.INPUT):
            steps.append((PRI_CONFIRM, -1, "confirm", lambda: self._confirm(st)))
        for _pri, _i, name, run in sorted(steps, key=lambda s: (s[0], s[1])):
            res.path.append(f"{hook.value}:{name}")
            run()

    def _meta(self, st: "_State") -> PacketMeta:
        m = st.headers().to_meta(iif=st.iif, oif=st.oif, mark=st.mark)
        t = st.tracked
        m.ct_state = t.state if t is not None else CtState.INVALID
        if t is not None and t.conn is not None:
            c = t.conn
            m.ct_mark = c.mark
            m.ct_origsrc, m.ct_origdst = c.original.src, c.original.dst
            if c.original.has_ports:
                m.ct_origsport, m.ct_origdport = c.original.sport, c.original.dport
            m.ct_direction = t.direction
            m.ct_replsrc, m.ct_repldst = c.reply.src, c.reply.dst
            if c.reply.has_ports:
                m.ct_replsport, m.ct_repldport = c.reply.sport, c.reply.dport
            m.ct_expire = max(0, int(c.timeout_at - self.clock.now()))
            # --ctstatus names: SNAT/DNAT (the kernel's IPS_SRC_NAT/IPS_DST_NAT), CONFIRMED, ...
            names = {"SRC_NAT": "SNAT", "DST_NAT": "DNAT", "CONFIRMED": "CONFIRMED",
                     "SEEN_REPLY": "SEEN_REPLY", "ASSURED": "ASSURED"}
            m.ct_status = frozenset(names[s] for s in c.status if s in names)
        return m

    def _context(self, st: "_State") -> EvalContext:
        return EvalContext(node=self.node, now=self.clock.now(), rng=self.rng, tracked=st.tracked,
                           family=st.family)

    def _table(self, th: TableHook, st: "_State", res: PacketResult) -> Decision:
        assert self.ruleset is not None
        d = self.ruleset.evaluate(th.table, th.hook, self._meta(st), self._context(st))
        res.trace.extend(d.trace)
        res.rules_evaluated += d.rules_evaluated
        if d.mark is not None:
            st.mark = d.mark
        if d.ct_mark is not None and st.tracked is not None and st.tracked.conn is not None:
            st.tracked.conn.mark = d.ct_mark
        if d.verdict is Verdict.DROP:
            raise _Stop(Verdict.DROP, f"dropped by {th.table} {th.hook.value}")
        if d.verdict is Verdict.REJECT:
            raise _Stop(Verdict.REJECT, f"rejected by {th.table} {th.hook.value}", d.reject_with)
        return d

    def _stage(self, stage: Stage, name: str, hook: Hook, st: "_State", res: PacketResult) -> None:
        d = stage.run(name, hook, self, st, res)
        if d is None:
            return
        res.trace.extend(d.trace)
        res.rules_evaluated += d.rules_evaluated
        if d.verdict is Verdict.DROP:
            raise _Stop(Verdict.DROP, f"dropped by {name} {hook.value}")
        if d.verdict is Verdict.REJECT:
            raise _Stop(Verdict.REJECT, f"rejected by {name} {hook.value}", d.reject_with)

    def _track(self, st: "_State") -> None:
        st.tracked = self.conntrack.track(st.headers())

    def _nat(self, hook: Hook, chains: list[TableHook], st: "_State", res: PacketResult) -> None:
        """nf_nat_inet_fn: consult nat chains for a new connection, then rewrite the packet."""
        t = st.tracked
        if t is None or t.conn is None:
            return
        manip = manip_of(hook)
        conn = t.conn
        icmp_error = t.state is CtState.RELATED and st.headers().is_icmp_error  # translated only
        if not icmp_error and t.state in (CtState.NEW, CtState.RELATED) and not conn.confirmed \
                and not self.nat.initialized(conn, manip):
            for th in chains:
                d = self._table(th, st, res)
                if d.nat is not None:
                    self._setup(d.nat, manip, st, res)
                    break
            if not self.nat.initialized(conn, manip):
                self.nat.null_binding(conn, manip)
        before = st.headers()
        st.data = self.nat.apply(st.data, t, hook)
        if st.headers() is not before:
            b, a = _endpoint(before, manip), _endpoint(st.headers(), manip)
            if a != b:
                res.nat_applied.append(f"{hook.value}: {b} -> {a}")

    def _setup(self, action, manip: Manip, st: "_State", res: PacketResult) -> None:  # type: ignore[no-untyped-def]
        wanted = Manip.SRC if action.kind in (NatKind.SNAT, NatKind.MASQUERADE) else Manip.DST
        if wanted is not manip:
            raise _Stop(Verdict.DROP, f"{action.kind.value} is not valid at this hook")
        masq = None
        if action.kind is NatKind.MASQUERADE:
            h = st.headers()
            masq = self.node.source_for(st.oif, res.nexthop if res.nexthop is not None else h.dst)  # type: ignore[arg-type]
            if masq is None:
                raise _Stop(Verdict.DROP, f"MASQUERADE: out-interface {st.oif} has no IPv{h.family} address")
            assert st.tracked is not None and st.tracked.conn is not None
            st.tracked.conn.labels["masquerade_oif"] = st.oif
        assert st.tracked is not None and st.tracked.conn is not None
        self.nat.setup(st.tracked.conn, NatRange.from_action(action, masq), manip)

    def _confirm(self, st: "_State") -> None:
        t = st.tracked
        if t is not None and t.conn is not None and not self.conntrack.confirm(t):
            raise _Stop(Verdict.DROP, "conntrack insert failed: the translated tuple clashes")

    def _reject_response(self, st: "_State", reject_with: str | None) -> "PacketResult | None":
        """nf_send_unreach / nf_send_reset: build the answer, attach the rejected packet's conntrack
        entry (RELATED, other direction) and send it through this node's OUTPUT path, where NAT
        makes it look like it came from the original destination."""
        raw = self._reject_packet(st.data, reject_with, st.iif)
        if raw is None:
            return None
        t = st.tracked
        attached = None
        if t is not None and t.conn is not None:
            attached = Tracked(CtState.RELATED, t.conn, REPLY if t.direction == ORIGINAL else ORIGINAL)
        return self._run(raw, iif=None, local_out=True, attached=attached)

    def _reject_packet(self, data: bytes, reject_with: str | None, iif: str | None = None) -> bytes | None:
        h = pkt.parse(data)
        how = (reject_with or "").lower().replace("_", "-")
        if how in ("tcp-reset", "tcp-rst"):
            return pkt.tcp_reset(data) if h.proto == pkt.TCP and not h.tcp_flags & pkt.TCP_RST else None
        if h.is_icmp_error:
            return None  # never an ICMP error about an ICMP error
        icmp_type = None
        if how == "ttl-exceeded":  # ip_forward's ICMP time exceeded (code 0: in transit)
            icmp_type, code = (11, 0) if h.family == 4 else (3, 0)
        elif h.family == 4:
            code = _REJECT_CODES_V4.get(how or "icmp-port-unreachable", 3)
        else:
            code = _REJECT_CODES_V6.get(how or "icmp6-port-unreachable", 4)
        src = h.dst if self.node.is_local(h.dst) else None
        if src is None and h.family == 6 and iif not in (None, "lo"):
            # icmp6_send: "select a more meaningful saddr from input if" (no route prefsrc here)
            src = self.node.source_for(iif, h.src)
        if src is None:  # icmp_send: the address routing picks toward the sender
            try:
                back = self.node.route(h.src)
            except NoRoute:
                return None
            src = h.src if back.local else self.node.source_for(back.oif, back.nexthop or h.src)
        if src is None:
            return None
        return pkt.icmp_error(data, src=src, icmp_type=icmp_type, icmp_code=code)


@dataclass
class _State:
    data: bytes
    iif: str | None
    family: int
    oif: str | None = None
    mark: int = 0
    tracked: Tracked | None = None
    _parsed: tuple[bytes, pkt.Headers] | None = None

    def headers(self) -> pkt.Headers:
        """The current bytes, parsed once per rewrite."""
        if self._parsed is None or self._parsed[0] is not self.data:
            self._parsed = (self.data, pkt.parse(self.data))
        return self._parsed[1]


def _endpoint(h: pkt.Headers, manip: Manip) -> str:
    addr, port = (h.src, h.sport) if manip is Manip.SRC else (h.dst, h.dport)
    if h.proto in (pkt.TCP, pkt.UDP):
        return f"[{addr}]:{port}" if h.family == 6 else f"{addr}:{port}"
    return str(addr)
