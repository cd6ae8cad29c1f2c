"""What every `proxy trace` mode shares: the node and flow descriptions, the result record
(whose JSON names other tools script against: `verdict`, `endpoints`, `masquerade`, `rules`), the
summary of a pipeline result, and the text rendering."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from dataplane.engine import packet as pkt
from dataplane.engine.node import Interface, Node, Route

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


def flow_record(verdict: str, endpoints: list[str], masquerade: bool, rules_evaluated: int,
                reject_with: str | None = None, reason: str = "") -> dict[str, Any]:
    """One line of `proxy trace --packets` output (the same fields in every mode)."""
    rec: dict[str, Any] = {"verdict": verdict, "endpoints": endpoints, "masquerade": masquerade,
                           "rules_evaluated": rules_evaluated}
    if reject_with:
        rec["reject_with"] = reject_with
    if reason:
        rec["reason"] = reason
    return rec


def summary_record(summary: TraceResult) -> dict[str, Any]:
    return flow_record(summary.verdict, summary.endpoints, summary.masquerade, summary.rules_evaluated,
                       summary.reject_with, summary.reason)


def branch_record(summary: TraceResult, probability: float) -> dict[str, Any]:
    """One entry of `--all-branches`: an outcome and its probability."""
    return {"probability": round(probability, 9), "verdict": summary.verdict,
            "endpoints": summary.endpoints, "masquerade": summary.masquerade}


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
