"""iptables mode: rules from an iptables-save dump or the generator, through the engine's pipeline
with the reference evaluator (traces); `statistic` branches enumerated by scripting the draws; many
flows at once through the numba batch path (`engine.flows`)."""

from __future__ import annotations

import ipaddress
from typing import Any

from dataplane.engine.node import Node
from dataplane.engine.rng import SplitMixRandom
from dataplane.proxy.trace.common import (Flow, NodeSpec, TraceInputError, TraceResult, _summarise, branch_record,
                                          flow_record)

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
        out.append(branch_record(summary, prob))
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
        records.append(flow_record(o.verdict.value, endpoint_text(o), o.masquerade, o.rules_evaluated,
                                   o.reject_with, o.reason))
    return records
