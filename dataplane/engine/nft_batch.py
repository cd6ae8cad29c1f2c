"""Batch evaluation of an nftables ruleset: the numba kernel, with NftEvaluator as fallback.

`BatchNftEvaluator.evaluate_many(packets, hook)` gives exactly the decisions that calling
`NftEvaluator.evaluate` on each packet in turn would give under the same SplitMixRandom seed
(traces aside: the batch path does not record them). A packet that reaches something the kernel
does not compile, or any IPv6 packet, is evaluated whole by the reference evaluator, with the
random stream and the rule counters handed over in both directions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address

import numpy as np

from dataplane.engine import nft_numba as K
from dataplane.engine.nft_eval import NftEvaluator
from dataplane.engine.rng import SplitMixRandom
from dataplane.engine.types import CtState, Decision, Hook, NatAction, NatKind, PacketMeta, Verdict
from dataplane.proxy.nftables import datatypes as dt
from dataplane.proxy.nftables.ast import Ruleset

_VERDICTS = {K.V_ACCEPT: Verdict.ACCEPT, K.V_DROP: Verdict.DROP, K.V_REJECT: Verdict.REJECT}
_NAT_KINDS = {K.NAT_DNAT: NatKind.DNAT, K.NAT_SNAT: NatKind.SNAT, K.NAT_MASQ: NatKind.MASQUERADE}
_HOOKS = tuple(K.HOOK_IDS)


class BatchNftEvaluator:
    """Compiles the ruleset once; evaluates many packets per call through the numba kernel.

    `rng` is the shared stream (`numgen random` draws one u32 per evaluation from it in both paths).
    """

    def __init__(self, ruleset: Ruleset, *, rng: SplitMixRandom | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 local_addresses: Iterable[str | IPv4Address | IPv6Address] = (),
                 fib_type: Callable[[IPv4Address | IPv6Address], str] | None = None) -> None:
        self.rng = rng if rng is not None else SplitMixRandom(0)
        self.reference = NftEvaluator(ruleset, rng=lambda: self.rng.getrandbits(32), clock=clock,
                                      local_addresses=local_addresses, fib_type=fib_type, trace=False)
        bases = {h: [(bc.table, bc.chain) for bc in self.reference.base_chains(4, h)] for h in _HOOKS}
        self.compiled = K.compile_ruleset(ruleset, bases)
        self.fallback_packets = 0  # how many packets the reference evaluator had to take
        self._fib_cache: dict[IPv4Address | IPv6Address, int] = {}
        self._fallback_results: dict[int, Decision] = {}  # the last run's reference decisions, by index

    # ------------------------------------------------------------ public API

    def evaluate(self, packet: PacketMeta, hook: Hook | str) -> Decision:
        return self.evaluate_many([packet], hook)[0]

    def evaluate_many(self, packets: Sequence[PacketMeta], hook: Hook | str) -> list[Decision]:
        """Decisions for `packets` in order, as NftEvaluator.evaluate would give them one by one."""
        hook_name = _hook_name(hook)
        rows = self.prepare(packets)
        out = self.run(rows, hook_name, packets)
        decisions: list[Decision] = []
        for k, p in enumerate(packets):
            d = self._fallback_results.get(k)
            decisions.append(d if d is not None else self._decision(out[k], p))
        return decisions

    def prepare(self, packets: Sequence[PacketMeta]) -> np.ndarray:
        """PacketMetas -> the kernel's uint32 rows (interfaces interned, `fib ... type` resolved)."""
        rows = np.zeros((len(packets), K.PACKET_COLUMNS), np.uint32)
        names = self.compiled.ifnames
        for k, p in enumerate(packets):
            r = rows[k]
            if p.family != 4:
                r[K.P_UNSUPPORTED] = 1
                continue
            r[K.P_SRC], r[K.P_DST], r[K.P_PROTO] = int(p.src), int(p.dst), p.proto
            r[K.P_SPORT], r[K.P_DPORT], r[K.P_TCP_FLAGS] = p.sport, p.dport, p.tcp_flags
            r[K.P_ICMP_TYPE] = K.NO_VALUE if p.icmp_type is None else p.icmp_type
            r[K.P_ICMP_CODE] = K.NO_VALUE if p.icmp_code is None else p.icmp_code
            r[K.P_IIF] = names.get(p.iif or "", K.NO_VALUE)
            r[K.P_OIF] = names.get(p.oif or "", K.NO_VALUE)
            r[K.P_MARK], r[K.P_CT_MARK], r[K.P_LENGTH] = p.mark, p.ct_mark, p.length
            r[K.P_CT_STATE] = K.CT_STATE_BITS[p.ct_state.value]
            r[K.P_HAS_CT] = p.ct_state not in (CtState.UNTRACKED, CtState.INVALID)
            status = 0
            for name in p.ct_status:
                status |= dt.CT_STATUSES.get(name.lower(), 0)
            r[K.P_CT_STATUS] = status
            r[K.P_CT_DIR] = 0 if p.ct_direction == "ORIGINAL" else 1
            r[K.P_FIB_SRC], r[K.P_FIB_DST] = self._fib(p.src), self._fib(p.dst)
            r[K.P_NAT_ELIGIBLE] = p.ct_state == CtState.NEW and p.ct_direction == "ORIGINAL"
        return rows

    def run(self, rows: np.ndarray, hook: str, packets: Sequence[PacketMeta]) -> np.ndarray:
        """Kernel result rows for prepared `rows`; packets the kernel hands back are evaluated by the
        reference (their Decisions are kept in `_fallback_results`, by index)."""
        out = np.zeros((len(rows), K.RESULT_COLUMNS), np.uint32)
        self._fallback_results = {}
        state = np.array([self.rng.state], np.uint64)
        start = 0
        while start < len(rows):
            stop = K.evaluate(self.compiled, hook, rows, state, start, out)
            if stop == len(rows):
                break
            self.rng.state = int(state[0])
            self._fallback_results[stop] = self._reference(packets[stop], hook)
            state[0] = self.rng.state
            start = stop + 1
        self.rng.state = int(state[0])
        return out

    @property
    def counters(self) -> dict[tuple[str, str, str, int, int], list[int]]:
        """The rule counters reached so far, keyed as NftEvaluator.counters."""
        c = self.compiled
        out = {key: [int(c.counter_packets[i]), int(c.counter_bytes[i])]
               for i, key in enumerate(c.counter_keys) if c.counter_hit[i]}
        for key, value in self.reference.counters.items():
            out.setdefault(key, list(value))
        return out

    # ------------------------------------------------------------ internals

    def _reference(self, packet: PacketMeta, hook: str) -> Decision:
        """One whole packet through NftEvaluator, sharing the counters (the stream is shared already)."""
        self.fallback_packets += 1
        c = self.compiled
        ref = self.reference.counters
        for i, key in enumerate(c.counter_keys):
            if c.counter_hit[i]:
                ref[key] = [int(c.counter_packets[i]), int(c.counter_bytes[i])]
        try:
            return self.reference.evaluate(packet, hook)
        finally:
            for i, key in enumerate(c.counter_keys):
                if key in ref:
                    c.counter_packets[i], c.counter_bytes[i] = ref[key]
                    c.counter_hit[i] = 1

    def _fib(self, addr: IPv4Address | IPv6Address) -> int:
        found = self._fib_cache.get(addr)
        if found is None:
            found = self._fib_cache[addr] = dt.FIB_ADDRTYPES[self.reference.fib_type(addr)]
        return found

    def _decision(self, row: np.ndarray, p: PacketMeta) -> Decision:
        d = Decision(verdict=_VERDICTS[int(row[K.R_VERDICT])], rules_evaluated=int(row[K.R_RULES]))
        mark, ct_mark = int(row[K.R_MARK]), int(row[K.R_CT_MARK])
        if mark != p.mark:
            d.mark = mark
        if ct_mark != p.ct_mark:
            d.ct_mark = ct_mark
        if d.verdict is Verdict.REJECT:
            d.reject_with = self.compiled.reject_names[int(row[K.R_REJECT])]
        nat = int(row[K.R_NAT])
        if nat != K.NAT_NONE:
            flags = int(row[K.R_NAT_FLAGS])
            port = int(row[K.R_NAT_PORT])
            addr = None if flags & K.NATF_NO_ADDR else IPv4Address(int(row[K.R_NAT_ADDR]))
            d.nat = NatAction(_NAT_KINDS[nat], addr, None if port == K.NO_VALUE else port,
                              random_fully=bool(flags & K.NATF_FULLY), random=bool(flags & K.NATF_RANDOM),
                              persistent=bool(flags & K.NATF_PERSISTENT))
        return d


def _hook_name(hook: Hook | str) -> str:
    name = (hook.value if isinstance(hook, Hook) else str(hook)).lower()
    if name not in K.HOOK_IDS:
        raise ValueError(f"unknown hook {hook!r}: expected one of {', '.join(K.HOOK_IDS)}")
    return name
