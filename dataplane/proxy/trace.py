"""`dataplane proxy trace`: what one node does with a packet, rule by rule.

The rules come from an iptables-save dump or are generated from Kubernetes objects; the node is
described by kube-proxy's own flags (node IPs, cluster CIDR). The packet goes through the engine's
pipeline (conntrack, NAT, the reference evaluator with traces), so the answer is what the kernel
would do: verdict, endpoint after DNAT, masquerade, and every rule tested on the way, like the
kernel's TRACE target. Probabilistic jumps are either sampled (seeded) or enumerated.
nftables rulesets (generated, or `nft list ruleset` / `nft -j` dumps) go through the same pipeline
with the nftables evaluator; their `numgen random` outcomes are enumerated with exact shares.

The JSON field names (`verdict`, `endpoints`, `masquerade`, `rules`) are an interface other tools
script against: keep them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from dataplane.engine import packet as pkt
from dataplane.engine.node import Interface, Node, Route
from dataplane.engine.rng import SplitMixRandom
from dataplane.engine.types import PROTO_NUMBERS, Hook, Verdict

CLUSTER_IFACE = "cni0"  # where pods of this node sit, as the bridge plugin names it
UPLINK_IFACE = "eth0"


class TraceInputError(ValueError):
    """The packet or node description cannot be traced as given."""


@dataclass(frozen=True)
class NodeSpec:
    """The node as kube-proxy's flags describe it."""

    node_ips: tuple[str, ...]
    cluster_cidrs: tuple[str, ...] = ()
    node_prefix: int = 24  # the node IPs' subnet on the uplink (only routing details depend on it)

    def build(self) -> Node:
        uplink = []
        for ip in self.node_ips:
            a = ipaddress.ip_address(ip)
            uplink.append(f"{a}/{self.node_prefix if a.version == 4 else 64}")
        pods = []
        routes = [Route.of("default", UPLINK_IFACE), Route.of("::/0", UPLINK_IFACE)]
        for cidr in self.cluster_cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            pods.append(f"{next(net.hosts())}/{net.prefixlen}")  # the bridge's gateway address
            routes.append(Route.of(str(net), CLUSTER_IFACE))
        interfaces = [Interface.of(UPLINK_IFACE, *uplink)]
        if pods:
            interfaces.append(Interface.of(CLUSTER_IFACE, *pods))
        return Node.simple(interfaces, routes)

    def ingress_for(self, src: str) -> str:
        """Pods arrive on the bridge, everything else on the uplink."""
        a = ipaddress.ip_address(src)
        for cidr in self.cluster_cidrs:
            if a in ipaddress.ip_network(cidr, strict=False):
                return CLUSTER_IFACE
        return UPLINK_IFACE


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    dport: int
    proto: str = "tcp"
    sport: int = 40000

    def __post_init__(self) -> None:
        try:
            s, d = ipaddress.ip_address(self.src), ipaddress.ip_address(self.dst)
        except ValueError as exc:
            raise TraceInputError(str(exc)) from None
        if s.version != d.version:
            raise TraceInputError(f"--src {self.src} and --dst {self.dst} are of different IP families")
        if self.proto not in ("tcp", "udp", "sctp"):
            raise TraceInputError(f"--proto must be tcp, udp or sctp, not {self.proto!r}")
        for name, port in (("--sport", self.sport), ("--dport", self.dport)):
            if not 1 <= port <= 65535:
                raise TraceInputError(f"{name} {port} is not a port (1..65535)")

    def packet(self) -> bytes:
        if self.proto == "sctp":
            raise TraceInputError("SCTP packets cannot be crafted yet; trace tcp or udp")
        return pkt.build(self.src, self.dst, self.proto, sport=self.sport, dport=self.dport)


class ScriptedRandom(SplitMixRandom):
    """A stream whose 31-bit draws (statistic matches) follow a script of hits and misses.

    0 is below every non-zero probability and 0x7FFFFFFF above every probability below 1, so a
    script forces each `statistic --mode random` rule one way; draws past the script hit. Other
    draws (NAT port choice) come from the seeded SplitMix stream.
    """

    def __init__(self, script: tuple[bool, ...], seed: int = 0) -> None:
        super().__init__(seed)
        self.script = script
        self.position = 0

    def getrandbits(self, k: int) -> int:
        if k != 31:
            return super().getrandbits(k)
        hit = self.script[self.position] if self.position < len(self.script) else True
        self.position += 1
        return 0 if hit else 0x7FFFFFFF


@dataclass
class TraceResult:
    verdict: str
    endpoints: list[str]
    masquerade: bool
    rules: list[dict[str, Any]]
    nat: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    conntrack: str | None = None
    reject_with: str | None = None
    reason: str = ""
    branches: list[dict[str, Any]] | None = None
    rules_evaluated: int = 0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict, "endpoints": self.endpoints,
                               "masquerade": self.masquerade, "rules": self.rules,
                               "rules_evaluated": self.rules_evaluated, "nat": self.nat,
                               "path": self.path, "conntrack": self.conntrack}
        if self.reject_with:
            out["reject_with"] = self.reject_with
        if self.reason:
            out["reason"] = self.reason
        if self.branches is not None:
            out["branches"] = self.branches
        return out


def _pipeline(ruleset_text: str, family: int, node: Node, rng: SplitMixRandom):  # type: ignore[no-untyped-def]
    from dataplane.engine.pipeline import Pipeline, iptables_ruleset

    pipe = Pipeline(node, iptables_ruleset(ruleset_text, family=family))
    # Rule evaluation draws (statistic) come from the injected stream, in flow order, exactly as
    # the batch path draws them; NAT port choice has a stream of its own.
    pipe.rng = rng
    pipe.nat.rng = SplitMixRandom(rng.state ^ 0x5DEECE66D)
    return pipe


def _run(ruleset_text: str, spec: NodeSpec, flow: Flow, *, from_local: bool, rng: SplitMixRandom):  # type: ignore[no-untyped-def]
    family = ipaddress.ip_address(flow.src).version
    pipe = _pipeline(ruleset_text, family, spec.build(), rng)
    data = flow.packet()
    return pipe.send(data) if from_local else pipe.receive(data, spec.ingress_for(flow.src)), pipe


def _summarise(res: Any, flow: Flow, now: float) -> TraceResult:  # type: ignore[no-untyped-def]
    after = pkt.meta_of(res.packet)
    endpoints = []
    if str(after.dst) != flow.dst or after.dport != flow.dport:
        host = f"[{after.dst}]" if after.family == 6 else str(after.dst)
        endpoints.append(f"{host}:{after.dport}")
    masquerade = any(n.startswith("POSTROUTING") or n.startswith("INPUT") for n in res.nat_applied)
    rules = [{"table": s.table, "chain": s.chain, "rule": s.rule_number, "text": s.rule_text,
              "matched": s.matched, **({"note": s.note} if s.note else {})} for s in res.trace]
    return TraceResult(verdict=res.verdict.value, endpoints=endpoints, masquerade=masquerade, rules=rules,
                       nat=list(res.nat_applied), path=list(res.path),
                       conntrack=res.conntrack.describe(now) if res.conntrack is not None else None,
                       reject_with=res.reject_with, reason=res.reason,
                       rules_evaluated=res.rules_evaluated)


def trace(ruleset_text: str, spec: NodeSpec, flow: Flow, *, from_local: bool = False, seed: int = 0,
          all_branches: bool = False, max_branches: int = 4096) -> TraceResult:
    """Trace one packet of a new flow; with `all_branches`, every probabilistic outcome."""
    res, pipe = _run(ruleset_text, spec, flow, from_local=from_local, rng=SplitMixRandom(seed))
    result = _summarise(res, flow, pipe.clock.now())
    if all_branches:
        result.branches = _branches(ruleset_text, spec, flow, from_local, seed, max_branches)
        result.endpoints = sorted({e for b in result.branches for e in b["endpoints"]})
    return result


def _statistic_choices(res: Any) -> list[tuple[float, bool]]:  # type: ignore[no-untyped-def]
    """(probability, hit) for every statistic draw, from the evaluator's trace notes."""
    out = []
    for step in res.trace:
        for part in step.note.split("; "):
            words = part.split()
            if len(words) == 3 and words[0] == "probability" and words[2] in ("drawn", "missed"):
                out.append((float(words[1]), words[2] == "drawn"))
    return out


def _branches(ruleset_text: str, spec: NodeSpec, flow: Flow, from_local: bool, seed: int,
              max_branches: int) -> list[dict[str, Any]]:
    """Depth-first over the statistic choices: each run forces a prefix, records what it met."""
    todo: list[tuple[bool, ...]] = [()]
    seen: set[tuple[bool, ...]] = set()
    out = []
    while todo:
        script = todo.pop()
        res, pipe = _run(ruleset_text, spec, flow, from_local=from_local, rng=ScriptedRandom(script, seed))
        choices = _statistic_choices(res)
        taken = tuple(hit for _, hit in choices)
        if taken in seen:
            continue
        seen.add(taken)
        prob = 1.0
        for k, (p, hit) in enumerate(choices):
            prob *= p if hit else 1.0 - p
            if k >= len(script) and hit and p < 1.0:
                todo.append((*taken[:k], False))
        summary = _summarise(res, flow, pipe.clock.now())
        out.append({"probability": round(prob, 9), "verdict": summary.verdict,
                    "endpoints": summary.endpoints, "masquerade": summary.masquerade})
        if len(out) > max_branches:
            raise TraceInputError(f"more than {max_branches} branches; trace without --all-branches")
    out.sort(key=lambda b: (-b["probability"], b["endpoints"]))
    return out


def trace_flows(ruleset_text: str, spec: NodeSpec, flows: list[Flow], *, seed: int = 0,
                with_rules: bool = False) -> list[dict[str, Any]]:
    """Many new flows, each against fresh conntrack, sharing one random stream in flow order.

    The batch goes through the numba path (`engine.flows`); `with_rules` traces each flow through
    the per-packet pipeline instead, adding the `rules` list (much slower)."""
    if with_rules:
        out = []
        rng = SplitMixRandom(seed)
        for flow in flows:
            res, pipe = _run(ruleset_text, spec, flow, from_local=False, rng=rng)
            out.append(_summarise(res, flow, pipe.clock.now()).as_json())
        return out
    from dataplane.engine.flows import endpoint_text, run_new_flows
    from dataplane.engine.types import PacketMeta
    from dataplane.proxy.iptables.parser import parse

    family = ipaddress.ip_address(flows[0].src).version if flows else 4
    ruleset = parse(ruleset_text, family=family)
    metas = [PacketMeta.make(f.src, f.dst, f.proto, f.sport, f.dport, tcp_flags=0x02 if f.proto == "tcp" else 0,
                             iif=spec.ingress_for(f.src)) for f in flows]
    outcomes = run_new_flows(ruleset, spec.build(), metas, seed=seed)
    records = []
    for o in outcomes:
        rec: dict[str, Any] = {"verdict": o.verdict.value, "endpoints": endpoint_text(o),
                               "masquerade": o.masquerade, "rules_evaluated": o.rules_evaluated}
        if o.reject_with:
            rec["reject_with"] = o.reject_with
        if o.reason:
            rec["reason"] = o.reason
        records.append(rec)
    return records


# ---- IPVS mode: the layout's iptables rules and ipsets, then IPVS at LOCAL_IN (engine.ipvs_hook)

def _ipvs_node(layout: Any, spec: NodeSpec, seed: int):  # type: ignore[no-untyped-def]
    from dataplane.proxy.ipvs.pipeline import IpvsRulesError, ipvs_node

    try:
        return ipvs_node(layout, spec.build(), seed=seed)
    except IpvsRulesError as exc:
        raise TraceInputError(str(exc)) from None


def _ipvs_packet(node: Any, spec: NodeSpec, flow: Flow, from_local: bool):  # type: ignore[no-untyped-def]
    node.stage.events.clear()
    data = flow.packet()
    return node.pipeline.send(data) if from_local else node.pipeline.receive(data, spec.ingress_for(flow.src))


def _ipvs_summary(res: Any, node: Any, flow: Flow) -> TraceResult:  # type: ignore[no-untyped-def]
    """The iptables trace's fields; each "ipvs" rule also names the virtual server, the scheduler
    and its state, and the real server chosen."""
    result = _summarise(res, flow, node.pipeline.clock.now())
    events = iter(node.stage.events)
    for rule in result.rules:
        if rule["table"] == "ipvs":
            event = next(events, None)
            if event is not None:
                rule.update(event.summary())
    return result


def trace_ipvs(layout: Any, spec: NodeSpec, flow: Flow, *, from_local: bool = False, seed: int = 0) -> TraceResult:
    """Trace one packet of a new flow through an IPVS-mode node built from `layout` (an IpvsLayout).
    IPVS schedulers are deterministic: there are no probabilistic branches to enumerate."""
    if flow.proto == "sctp":
        raise TraceInputError("IPVS SCTP connection state is not modelled; trace tcp or udp")
    node = _ipvs_node(layout, spec, seed)
    return _ipvs_summary(_ipvs_packet(node, spec, flow, from_local), node, flow)


def trace_ipvs_flows(layout: Any, spec: NodeSpec, flows: list[Flow], *, seed: int = 0,
                     with_rules: bool = False) -> list[dict[str, Any]]:
    """Many new flows in order through ONE IPVS node, as a node sees successive connections: the
    scheduler moves on (rr takes the next real server), persistence templates hold."""
    node = _ipvs_node(layout, spec, seed)
    records = []
    for flow in flows:
        if flow.proto == "sctp":
            raise TraceInputError("IPVS SCTP connection state is not modelled; trace tcp or udp")
        summary = _ipvs_summary(_ipvs_packet(node, spec, flow, False), node, flow)
        rec: dict[str, Any] = {"verdict": summary.verdict, "endpoints": summary.endpoints,
                               "masquerade": summary.masquerade, "rules_evaluated": summary.rules_evaluated}
        if summary.reject_with:
            rec["reject_with"] = summary.reject_with
        if summary.reason:
            rec["reason"] = summary.reason
        if with_rules:
            rec["rules"] = summary.rules
        records.append(rec)
    return records


# ---- nftables mode: the ruleset's base chains at their hooks (engine.nft_eval), in the same pipeline

NUMGEN_SPAN = 1 << 32  # numgen random draws a u32 (get_random_u32)


def _numgen_start(index: int, mod: int) -> int:
    """The smallest u32 r with reciprocal_scale(r, mod) = (r * mod) >> 32 equal to `index`."""
    return -(-index * NUMGEN_SPAN // mod)


def numgen_probability(index: int, mod: int) -> float:
    """The exact chance that `numgen random mod N` yields `index`: the share of u32 values that
    reciprocal_scale maps to it (1/N when N divides 2**32, within 2**-32 of it otherwise)."""
    return (_numgen_start(index + 1, mod) - _numgen_start(index, mod)) / NUMGEN_SPAN


class ScriptedNumgen(SplitMixRandom):
    """A stream whose 32-bit draws (`numgen random`) follow a script of (mod, index) choices: each
    becomes the smallest u32 that the kernel's reciprocal_scale maps to that index. Draws past the
    script pick index 0; other draws come from the seeded SplitMix stream."""

    def __init__(self, script: tuple[tuple[int, int], ...], seed: int = 0) -> None:
        super().__init__(seed)
        self.script = script
        self.position = 0

    def getrandbits(self, k: int) -> int:
        if k != 32:
            return super().getrandbits(k)
        choice = self.script[self.position] if self.position < len(self.script) else None
        self.position += 1
        return 0 if choice is None else _numgen_start(choice[1], choice[0])


def parse_nft(text: str) -> Any:
    """An nftables ruleset from `nft list ruleset` text, an `nft -f` script or `nft -j` JSON."""
    from dataplane.proxy.nftables.parser import NftParseError, parse

    try:
        ruleset = parse(text)
    except NftParseError as exc:
        raise TraceInputError(str(exc)) from None
    if not ruleset.tables:
        raise TraceInputError("the nftables ruleset has no tables: nothing to trace")
    return ruleset


def _nft_evaluator(ruleset: Any) -> Any:
    from dataplane.engine.nft_eval import NftEvaluator

    return NftEvaluator(ruleset)


def _nft_run(evaluator: Any, spec: NodeSpec, flow: Flow, *, from_local: bool, rng: SplitMixRandom):  # type: ignore[no-untyped-def]
    """One packet through a fresh node (empty conntrack, the ruleset's sets as loaded): the
    evaluator is reused, its indexes built once, its dynamic state reset."""
    from dataplane.engine.nft_eval import EvalError, NftRuleset
    from dataplane.engine.pipeline import Pipeline

    family = ipaddress.ip_address(flow.src).version
    if not any(evaluator.base_chains(family, hook) for hook in Hook):
        tables = ", ".join(f"{t.family} {t.name}" for t in evaluator.ruleset.tables)
        raise TraceInputError(f"no base chain of the ruleset sees IPv{family} packets (its tables: {tables})")
    pipe = Pipeline(spec.build())
    evaluator.clock = pipe.clock.now  # set timeouts on the pipeline's clock
    evaluator.reset()
    pipe.ruleset = NftRuleset(evaluator)
    pipe.rng = rng  # numgen draws, in flow order, as in the iptables trace
    pipe.nat.rng = SplitMixRandom(rng.state ^ 0x5DEECE66D)
    data = flow.packet()
    try:
        res = pipe.send(data) if from_local else pipe.receive(data, spec.ingress_for(flow.src))
    except EvalError as exc:
        raise TraceInputError(str(exc)) from None
    return res, pipe


def _numgen_choices(res: Any) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(mod, index) for every `numgen random` draw, from the evaluator's trace notes
    ("numgen random mod 3 offset 5 -> 6")."""
    out = []
    for step in res.trace:
        for part in step.note.split("; "):
            words = part.split()
            if len(words) >= 6 and words[:3] == ["numgen", "random", "mod"] and words[-2] == "->":
                offset = int(words[5]) if words[4] == "offset" else 0
                out.append((int(words[3]), int(words[-1]) - offset))
    return out


def trace_nft(ruleset_text: str, spec: NodeSpec, flow: Flow, *, from_local: bool = False, seed: int = 0,
              all_branches: bool = False, max_branches: int = 4096) -> TraceResult:
    """Trace one packet of a new flow through an nftables ruleset (text or JSON); with
    `all_branches`, every `numgen random` outcome with its exact probability."""
    evaluator = _nft_evaluator(parse_nft(ruleset_text))
    res, pipe = _nft_run(evaluator, spec, flow, from_local=from_local, rng=SplitMixRandom(seed))
    result = _summarise(res, flow, pipe.clock.now())
    if all_branches:
        result.branches = _nft_branches(evaluator, spec, flow, from_local, seed, max_branches)
        result.endpoints = sorted({e for b in result.branches for e in b["endpoints"]})
    return result


def _nft_branches(evaluator: Any, spec: NodeSpec, flow: Flow, from_local: bool, seed: int,
                  max_branches: int) -> list[dict[str, Any]]:
    """Depth-first over the numgen draws: each run forces a prefix of choices (index 0 past it)
    and queues every other index of each draw it met for the first time."""
    todo: list[tuple[tuple[int, int], ...]] = [()]
    out = []
    while todo:
        script = todo.pop()
        res, pipe = _nft_run(evaluator, spec, flow, from_local=from_local, rng=ScriptedNumgen(script, seed))
        choices = _numgen_choices(res)
        prob = 1.0
        for k, (mod, index) in enumerate(choices):
            prob *= numgen_probability(index, mod)
            if k >= len(script):
                todo.extend((*choices[:k], (mod, j)) for j in range(mod - 1, 0, -1))
        summary = _summarise(res, flow, pipe.clock.now())
        out.append({"probability": round(prob, 9), "verdict": summary.verdict,
                    "endpoints": summary.endpoints, "masquerade": summary.masquerade})
        if len(out) > max_branches:
            raise TraceInputError(f"more than {max_branches} branches; trace without --all-branches")
    out.sort(key=lambda b: (-b["probability"], b["endpoints"]))
    return out


def trace_nft_flows(ruleset_text: str, spec: NodeSpec, flows: list[Flow], *, seed: int = 0,
                    with_rules: bool = False) -> list[dict[str, Any]]:
    """Many new flows, each against fresh conntrack and sets, sharing one random stream in flow
    order. Per-packet path (the nftables evaluator has no batch kernel): the ruleset is parsed and
    indexed once, then each flow costs about the same whatever the ruleset's size."""
    evaluator = _nft_evaluator(parse_nft(ruleset_text))
    rng = SplitMixRandom(seed)
    records = []
    for flow in flows:
        res, pipe = _nft_run(evaluator, spec, flow, from_local=False, rng=rng)
        summary = _summarise(res, flow, pipe.clock.now())
        if with_rules:
            records.append(summary.as_json())
            continue
        rec: dict[str, Any] = {"verdict": summary.verdict, "endpoints": summary.endpoints,
                               "masquerade": summary.masquerade, "rules_evaluated": summary.rules_evaluated}
        if summary.reject_with:
            rec["reject_with"] = summary.reject_with
        if summary.reason:
            rec["reason"] = summary.reason
        records.append(rec)
    return records


def render_text(result: TraceResult, flow: Flow) -> str:
    """The human form: every rule tested, then verdict, NAT and the conntrack entry."""
    lines = [f"packet: {flow.proto.upper()} {flow.src}:{flow.sport} -> {flow.dst}:{flow.dport}"]
    for r in result.rules:
        mark = "match   " if r["matched"] else "no match"
        where = f"{r['table']}:{r['chain']}:{r['rule']}"
        text = r["text"] or r.get("note", "")
        note = f"   [{r['note']}]" if r.get("note") and r["text"] else ""
        lines.append(f"  {mark}  {where:<40} {text}{note}")
    lines.append(f"verdict: {result.verdict}" + (f" ({result.reject_with})" if result.reject_with else "")
                 + (f" - {result.reason}" if result.reason else ""))
    for n in result.nat:
        lines.append(f"nat: {n}")
    lines.append(f"endpoints: {', '.join(result.endpoints) or '(none: no DNAT)'}")
    lines.append(f"masquerade: {'yes' if result.masquerade else 'no'}")
    if result.conntrack:
        lines.append(f"conntrack: {result.conntrack}")
    lines.append(f"rules evaluated: {result.rules_evaluated}")
    if result.branches is not None:
        lines.append("branches:")
        for b in result.branches:
            lines.append(f"  p={b['probability']:.6f}  {b['verdict']:<6}  "
                         f"{', '.join(b['endpoints']) or '-'}  masquerade={'yes' if b['masquerade'] else 'no'}")
    return "\n".join(lines)


__all__ = ["Flow", "NodeSpec", "TraceInputError", "TraceResult", "render_text", "trace", "trace_ipvs",
           "trace_ipvs_flows", "trace_nft", "trace_nft_flows", "PROTO_NUMBERS", "Verdict"]
