"""Many new flows through one node at once: the batch path behind `proxy trace --packets`.

Each flow is the first packet of a new connection against an empty conntrack table, so its path
is fixed by the rules alone: the tables run hook by hook, in the kernel's order, for all flows
together, each (table, hook) step as one numba batch (`BatchIptablesEvaluator`). Between steps
the flows carry what the kernel carries: the skb mark, the DNAT binding (and with it the
conntrack status DNAT and the original destination), the routing decision and the
out-interface. The per-packet `Pipeline` is the reference for this path (a test compares them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from dataplane.engine.iptables_batch import BatchIptablesEvaluator
from dataplane.engine.iptables_eval import HostAddresses, MatchContext
from dataplane.engine.node import Node, NoRoute
from dataplane.engine.rng import SplitMixRandom
from dataplane.engine.types import CtState, Hook, NatKind, PacketMeta, Verdict
from dataplane.proxy.iptables.rules import Ruleset

# (table, hook) steps in priority order: raw -300, mangle -150, nat(dst) -100, filter 0, nat(src) 100
PREROUTING = (("raw", Hook.PREROUTING), ("mangle", Hook.PREROUTING), ("nat", Hook.PREROUTING))
OUTPUT = (("raw", Hook.OUTPUT), ("mangle", Hook.OUTPUT), ("nat", Hook.OUTPUT), ("filter", Hook.OUTPUT))
INPUT = (("mangle", Hook.INPUT), ("filter", Hook.INPUT), ("nat", Hook.INPUT))
FORWARD = (("mangle", Hook.FORWARD), ("filter", Hook.FORWARD))
POSTROUTING = (("mangle", Hook.POSTROUTING), ("nat", Hook.POSTROUTING))


@dataclass
class FlowOutcome:
    """What happened to one flow's first packet."""

    verdict: Verdict = Verdict.ACCEPT
    endpoint: tuple[str, int] | None = None  # destination after DNAT, when it changed
    masquerade: bool = False  # source NAT (MASQUERADE or SNAT) applied
    snat_to: str | None = None
    local: bool = False
    oif: str | None = None
    reject_with: str | None = None
    rules_evaluated: int = 0
    reason: str = ""
    path: list[str] = field(default_factory=list)


@dataclass
class _Flow:
    meta: PacketMeta
    out: FlowOutcome
    alive: bool = True
    original_dst: object = None
    original_dport: int = 0
    nexthop: object = None


def run_new_flows(ruleset: Ruleset, node: Node, packets: Sequence[PacketMeta], *,
                  from_local: Sequence[bool] | None = None, seed: int = 0,
                  evaluator: BatchIptablesEvaluator | None = None) -> list[FlowOutcome]:
    """The first packet of each flow through the node; `packets[i].iif` says where it arrives
    (None with from_local[i] True for locally generated packets)."""
    batch = evaluator or BatchIptablesEvaluator(ruleset)
    ctx = MatchContext(addresses=HostAddresses.from_node(node), rng=SplitMixRandom(seed))
    local_out = list(from_local) if from_local is not None else [False] * len(packets)
    flows = []
    for p, lo in zip(packets, local_out):
        m = replace(p, ct_state=CtState.NEW, ct_status=frozenset(), oif=None, iif=None if lo else p.iif)
        flows.append(_Flow(m, FlowOutcome(), original_dst=p.dst, original_dport=p.dport))
    incoming = [f for f, lo in zip(flows, local_out) if not lo]
    outgoing = [f for f, lo in zip(flows, local_out) if lo]

    _steps(batch, ctx, incoming, PREROUTING)
    _route(node, incoming)
    _steps(batch, ctx, [f for f in incoming if f.out.local], INPUT)
    forwarded = [f for f in incoming if not f.out.local]
    for f in forwarded:
        if f.alive and not node.forwarding:
            _stop(f, Verdict.DROP, "forwarding is disabled on the node")
    _steps(batch, ctx, forwarded, FORWARD)
    _route(node, outgoing)
    _steps(batch, ctx, outgoing, OUTPUT)
    _route(node, [f for f in outgoing if f.alive and f.meta.dst != f.original_dst])  # DNAT: route again
    _steps(batch, ctx, forwarded + outgoing, POSTROUTING, node=node)
    return [f.out for f in flows]


def _stop(f: _Flow, verdict: Verdict, reason: str, reject_with: str | None = None) -> None:
    f.alive = False
    f.out.verdict, f.out.reason, f.out.reject_with = verdict, reason, reject_with


def _route(node: Node, flows: list[_Flow]) -> None:
    for f in flows:
        if not f.alive:
            continue
        try:
            r = node.route(f.meta.dst)
        except NoRoute as exc:
            _stop(f, Verdict.DROP, str(exc))
            continue
        f.out.local, f.out.oif = r.local, (None if r.local else r.oif)
        f.meta.oif = None if r.local else r.oif
        f.nexthop = r.nexthop


def _steps(batch: BatchIptablesEvaluator, ctx: MatchContext, flows: list[_Flow],
           steps: Sequence[tuple[str, Hook]], node: Node | None = None) -> None:
    for table, hook in steps:
        live = [f for f in flows if f.alive]
        if not live or table not in batch.ruleset.tables:
            continue
        if hook.value not in batch.ruleset.tables[table].chains:
            continue
        decisions = batch.evaluate_many(table, hook, [f.meta for f in live], ctx)
        for f, d in zip(live, decisions):
            f.out.path.append(f"{hook.value}:{table}")
            f.out.rules_evaluated += d.rules_evaluated
            if d.mark is not None:
                f.meta.mark = d.mark
            if d.ct_mark is not None:
                f.meta.ct_mark = d.ct_mark
            if d.verdict is Verdict.DROP:
                _stop(f, Verdict.DROP, f"dropped by {table} {hook.value}")
            elif d.verdict is Verdict.REJECT:
                _stop(f, Verdict.REJECT, f"rejected by {table} {hook.value}", d.reject_with)
            elif d.nat is not None:
                _apply_nat(f, d.nat, hook, node)


def _apply_nat(f: _Flow, nat, hook: Hook, node: Node | None) -> None:  # type: ignore[no-untyped-def]
    if nat.kind is NatKind.DNAT:
        if hook not in (Hook.PREROUTING, Hook.OUTPUT):
            _stop(f, Verdict.DROP, "DNAT is not valid at this hook")
            return
        if nat.addr_max is not None or nat.port_max is not None:
            raise NotImplementedError("DNAT to a range is not supported on the batch path")
        if nat.addr is not None:
            f.meta.dst = nat.addr
        if nat.port is not None:
            f.meta.dport = nat.port
        f.meta.ct_status = f.meta.ct_status | {"DNAT"}
        f.meta.ct_origdst, f.meta.ct_origdport = f.original_dst, f.original_dport  # type: ignore[assignment]
        if f.meta.dst != f.original_dst or f.meta.dport != f.original_dport:
            f.out.endpoint = (str(f.meta.dst), f.meta.dport)
        return
    if hook not in (Hook.POSTROUTING, Hook.INPUT):
        _stop(f, Verdict.DROP, f"{nat.kind.value} is not valid at this hook")
        return
    if nat.kind is NatKind.MASQUERADE:
        toward = f.nexthop or f.meta.dst
        source = node.source_for(f.meta.oif, toward) if node is not None else None
        if source is None:
            _stop(f, Verdict.DROP, f"MASQUERADE: out-interface {f.meta.oif} has no address")
            return
        f.out.snat_to = str(source)
    else:
        f.out.snat_to = str(nat.addr) if nat.addr is not None else None
    f.out.masquerade = True


def endpoint_text(out: FlowOutcome) -> list[str]:
    if out.endpoint is None:
        return []
    host, port = out.endpoint
    return [f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"]
