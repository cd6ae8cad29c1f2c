"""`dataplane proxy trace`: what one node does with a packet, rule by rule.

The rules come from an iptables-save dump or are generated from Kubernetes objects; the node is
described by kube-proxy's own flags (node IPs, cluster CIDR). The packet goes through the engine's
pipeline (conntrack, NAT, the reference evaluator with traces), so the answer is what the kernel
would do: verdict, endpoint after DNAT, masquerade, and every rule tested on the way, like the
kernel's TRACE target. Probabilistic jumps are either sampled (seeded) or enumerated.

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
from dataplane.engine.types import PROTO_NUMBERS, Verdict

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


__all__ = ["Flow", "NodeSpec", "TraceInputError", "TraceResult", "render_text", "trace", "PROTO_NUMBERS",
           "Verdict"]
