"""nftables mode: the ruleset's base chains at their hooks (engine.nft_eval) in the same pipeline;
`numgen random` outcomes enumerated with their exact shares of the kernel's u32 draws."""

from __future__ import annotations

import ipaddress
from typing import Any

from dataplane.engine.rng import SplitMixRandom
from dataplane.engine.types import Hook
from dataplane.proxy.trace.common import (Flow, NodeSpec, TraceInputError, TraceResult, _summarise, branch_record,
                                          summary_record)

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
        out.append(branch_record(summary, prob))
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
        records.append(summary_record(summary))
    return records
