"""Batch evaluation of iptables rules: the numba kernel, with the reference evaluator as fallback.

`BatchIptablesEvaluator` has the reference evaluator's semantics and its `evaluate` signature for
one packet, plus `evaluate_many` for a sequence. Packets that reach a rule the kernel cannot
express are evaluated by the reference evaluator, with the random stream and the nth counters
handed over in both directions, so a batch gives exactly the decisions that evaluating its
packets one by one with `IptablesEvaluator` under the same seed would give (traces aside).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import numpy as np

from dataplane.engine import iptables_numba as K
from dataplane.engine.iptables_eval import HostAddresses, IptablesEvaluator, MatchContext
from dataplane.engine.packet import metas_to_batch
from dataplane.engine.rng import SplitMixRandom
from dataplane.engine.types import CtState, Decision, Hook, NatAction, NatKind, PacketMeta, Verdict
from dataplane.proxy.iptables.rules import Ruleset

_VERDICTS = {K.V_ACCEPT: Verdict.ACCEPT, K.V_DROP: Verdict.DROP, K.V_REJECT: Verdict.REJECT}
_NAT_KINDS = {K.NAT_DNAT: NatKind.DNAT, K.NAT_SNAT: NatKind.SNAT, K.NAT_MASQ: NatKind.MASQUERADE}


class BatchIptablesEvaluator:
    """Compiles each table once; evaluates many packets per call through the numba kernel."""

    def __init__(self, ruleset: Ruleset, *, reference: IptablesEvaluator | None = None) -> None:
        self.ruleset = ruleset
        self.reference = reference or IptablesEvaluator(ruleset, trace=False)
        self._compiled: dict[str, K.CompiledTable] = {}
        self.fallback_packets = 0  # how many packets the reference evaluator had to take

    def compiled(self, table: str) -> K.CompiledTable:
        if table not in self._compiled:
            self._compiled[table] = K.compile_table(self.ruleset.table(table), self.ruleset.family)
        return self._compiled[table]

    # -- the pipeline's Evaluator protocol, one packet at a time
    def evaluate(self, table: str, hook: Hook | str, packet: PacketMeta, context: Any = None) -> Decision:
        return self.evaluate_many(table, hook, [packet], context)[0]

    def evaluate_many(self, table: str, hook: Hook | str, packets: Sequence[PacketMeta],
                      context: Any = None) -> list[Decision]:
        """Decisions for `packets` in order, drawing from `context.rng` (a SplitMixRandom)."""
        results, _ = self.evaluate_arrays(table, hook, packets, context)
        family = self.ruleset.family
        return [self._decision(row, family) if isinstance(row, np.void) else row for row in results]

    def evaluate_arrays(self, table: str, hook: Hook | str, packets: Sequence[PacketMeta],
                        context: Any = None) -> tuple[list[np.void | Decision], np.ndarray]:
        """Raw kernel rows (or reference Decisions for fallback packets) and the result array."""
        hook_name = hook.value if isinstance(hook, Hook) else str(hook)
        ctx = context or MatchContext()
        rng = getattr(ctx, "rng", None)
        if rng is not None and not isinstance(rng, SplitMixRandom):
            raise TypeError("batch evaluation needs context.rng to be a SplitMixRandom "
                            "(the stream the numba kernel can reproduce)")
        if table not in self.ruleset.tables or hook_name not in self.ruleset.tables[table].chains:
            return [Decision(Verdict.ACCEPT) for _ in packets], np.zeros(0, K.RESULT_DTYPE)
        compiled = self.compiled(table)
        kernel_packets = K.prepare(compiled, metas_to_batch(packets),
                                   [self._context(p, ctx) for p in packets])
        state = np.array([rng.state if rng is not None else 0], np.uint64)
        out = np.zeros(len(packets), K.RESULT_DTYPE)
        rows: list[np.void | Decision] = []
        start = 0
        while start < len(packets):
            _, stop = K.evaluate(compiled, hook_name, kernel_packets, state, start, out)
            rows.extend(out[start:stop])
            if stop == len(packets):
                break
            rows.append(self._reference(compiled, table, hook_name, packets[stop], ctx, rng, state))
            start = stop + 1
        if rng is not None:
            rng.state = int(state[0])
        return rows, out

    # -- internals
    def _reference(self, compiled: K.CompiledTable, table: str, hook: str, packet: PacketMeta,
                   ctx: Any, rng: SplitMixRandom | None, state: np.ndarray) -> Decision:
        """One packet through the reference evaluator, sharing the stream and nth counters."""
        self.fallback_packets += 1
        nth = self.reference._nth  # noqa: SLF001 - the two evaluators share this state by design
        for slot, key in enumerate(compiled.stat_keys):
            nth[key] = int(compiled.stat_counters[slot])
        if rng is not None:
            rng.state = int(state[0])
        decision = self.reference.evaluate(table, hook, packet, ctx)
        if rng is not None:
            state[0] = rng.state
        for slot, key in enumerate(compiled.stat_keys):
            compiled.stat_counters[slot] = nth[key]
        return decision

    def _context(self, p: PacketMeta, ctx: Any) -> K.PacketContext:
        addresses = self._addresses(ctx)
        state = K.CT_BITS[p.ct_state.value]
        has_ct = p.ct_state not in (CtState.INVALID, CtState.UNTRACKED)
        if has_ct:
            if "SNAT" in p.ct_status:
                state |= K.CT_BITS["SNAT"]
            if "DNAT" in p.ct_status:
                state |= K.CT_BITS["DNAT"]
        status = 0
        for name in p.ct_status:
            status |= K.CTSTATUS_BITS.get(name, 0)
        return K.PacketContext(
            iif=p.iif, oif=p.oif,
            src_type=1 << addresses.addr_type(p.family, int(p.src), None),
            dst_type=1 << addresses.addr_type(p.family, int(p.dst), None),
            ct_state=state, ct_status=status, ct_mark=p.ct_mark,
            ct_origdst=int(p.ct_origdst) if p.ct_origdst is not None else None,
            ct_origdport=p.ct_origdport)

    @staticmethod
    def _addresses(ctx: Any) -> HostAddresses:
        a = getattr(ctx, "addresses", None)
        if a is None and getattr(ctx, "node", None) is not None:
            a = HostAddresses.from_node(ctx.node)
        return a or HostAddresses()

    @staticmethod
    def _decision(row: np.void, family: int) -> Decision:
        d = Decision(verdict=_VERDICTS[int(row["verdict"])], mark=int(row["mark"]),
                     ct_mark=int(row["ct_mark"]), rules_evaluated=int(row["rules"]))
        if d.verdict is Verdict.REJECT:
            d.reject_with = K.REJECT_NAMES[int(row["reject"])]
        nat = int(row["nat"])
        if nat != K.NAT_NONE:
            kind = _NAT_KINDS[nat]
            addr = None
            if kind is not NatKind.MASQUERADE:
                value = (int(row["nat_hi"]) << 64) | int(row["nat_lo"])
                addr = ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)
            port = int(row["nat_port"])
            d.nat = NatAction(kind, addr, None if port < 0 else port,
                              bool(int(row["nat_flags"]) & K.NAT_RANDOM_FULLY))
        return d
