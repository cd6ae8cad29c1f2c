"""An IPVS-mode node for the packet engine: the layout's iptables rules and ipsets in the
netfilter tables, its virtual servers in IPVS at LOCAL_IN, its VIPs on kube-ipvs0.

Two matches of kube-proxy's IPVS rules are outside the iptables model:
- `-m physdev ! --physdev-is-in` (KUBE-EXTERNAL-IP): the emulated node has no bridge netfilter, so
  no packet reaches iptables "in" through a bridge port and the negated match always holds; it is
  dropped before evaluation (the trace still shows the rule as kube-proxy wrote it).
- `-m ipvs --vaddr ...` (KUBE-IPVS-OUT-FILTER, node -> LB IP outside its source ranges): kept as an
  unknown rule, which the evaluator reports and treats as not matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dataplane.engine.clock import Clock
from dataplane.engine.conntrack import Timeouts
from dataplane.engine.iptables_eval import HostAddresses
from dataplane.engine.ipvs_hook import IpvsStage, attach
from dataplane.engine.node import Node
from dataplane.engine.pipeline import EvalContext, IptablesRuleset, Pipeline, TableHook
from dataplane.engine.types import Decision, Hook, PacketMeta
from dataplane.proxy.ipvs.core import Ipvs, Sysctls
from dataplane.proxy.ipvs.generator import IpvsLayout
from dataplane.proxy.ipvs.setmatch import LayoutSets

PHYSDEV_NOT_IN = " -m physdev ! --physdev-is-in"


class IpvsRulesError(ValueError):
    """The layout's iptables rules hold something the engine cannot evaluate."""


@dataclass
class IpvsNode:
    pipeline: Pipeline
    ipvs: Ipvs
    stage: IpvsStage


@dataclass
class _WithAddresses:
    """The pipeline's EvalContext plus a prepared `-m addrtype` view of the node."""

    base: EvalContext
    addresses: HostAddresses

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


@dataclass
class AddressCachingRuleset:
    """An iptables ruleset whose node address view (`-m addrtype`) is built once, not per packet:
    kube-ipvs0 holds one address per virtual IP, so rebuilding it would make every packet cost
    O(services). Rebuilt when the node's interfaces or the number of extra local addresses change."""

    inner: IptablesRuleset
    _key: tuple[int, int, tuple[object, ...]] | None = None
    _addresses: HostAddresses | None = None

    def hooks(self, family: int) -> Sequence[TableHook]:
        return self.inner.hooks(family)

    def evaluate(self, table: str, hook: Hook, packet: PacketMeta, context: EvalContext) -> Decision:
        node = context.node
        key = (id(node), len(node.extra_local), tuple(node.interfaces))
        if key != self._key or self._addresses is None:
            self._key, self._addresses = key, HostAddresses.from_node(node)
        return self.inner.evaluate(table, hook, packet, _WithAddresses(context, self._addresses))  # type: ignore[arg-type]


def iptables_ruleset(layout: IpvsLayout) -> AddressCachingRuleset:
    """The layout's iptables rules, evaluated against its ipsets."""
    from dataplane.engine.iptables_eval import IptablesEvaluator
    from dataplane.proxy.iptables.parser import parse

    original = layout.iptables_restore().splitlines()
    evaluable = [ln.replace(PHYSDEV_NOT_IN, "") if ln.startswith("-A ") else ln for ln in original]
    parsed = parse("\n".join(evaluable) + "\n", strict=False, family=layout.family)
    for bad in parsed.unknown:
        if " -m ipvs " not in bad.text:
            raise IpvsRulesError(f"line {bad.line}: {bad.reason}: {bad.text}")
    for table in parsed.tables.values():
        for rule in table.rules:
            if rule.line and original[rule.line - 1] != evaluable[rule.line - 1]:
                rule.text = original[rule.line - 1]
    sets = LayoutSets(list(layout.sets.values()))
    return AddressCachingRuleset(IptablesRuleset(IptablesEvaluator(parsed, ipsets=sets),  # type: ignore[arg-type]
                                                 tuple(parsed.tables)))


def ipvs_node(layout: IpvsLayout, node: Node, *, sysctls: Sysctls | None = None, clock: Clock | None = None,
              seed: int | None = 0) -> IpvsNode:
    """A pipeline for `node` running `layout`: VIPs become local addresses (kube-ipvs0), kube-proxy's
    sysctls (vs/conntrack=1 ...) and conntrack timeouts by default. The layout's services are used
    as they are (IPVS state lives in them: scheduler position, counters)."""
    import ipaddress

    node.extra_local |= {ipaddress.ip_address(a) for a in layout.dummy_addresses}
    pipe = Pipeline(node, iptables_ruleset(layout), clock=clock, timeouts=Timeouts.kube_proxy(), seed=seed)
    ipvs = Ipvs(pipe.clock, sysctls or Sysctls.kube_proxy())
    ipvs.services = layout.services
    return IpvsNode(pipe, ipvs, attach(pipe, ipvs))
