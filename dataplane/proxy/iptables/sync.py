"""kube-proxy's sync loop for the iptables mode: full syncs, then partial ones (KEP-3453,
MinimizeIPTablesRestore): only changed services' chains are rewritten, the rest is kept in the kernel
by `iptables-restore --noflush`, and chains nobody uses any more are deleted."""

from __future__ import annotations

from dataplane.proxy.iptables.generator import GeneratorOptions, generate
from dataplane.proxy.iptables.ruleset import RuleSet
from dataplane.proxy.model import NodeContext, ProxyState


class Syncer:
    """kube-proxy's sync loop state for partial syncs: remembers what the last sync wrote.

    The first sync (and any `full=True`) writes everything; later ones write only the per-service
    chains of services whose ports or endpoints changed, and delete chains no longer used.
    """

    def __init__(self, options: GeneratorOptions | None = None) -> None:
        self.options = options or GeneratorOptions()
        self._fingerprints: dict[str, int] | None = None
        self._chains: set[str] = set()
        self._last: RuleSet | None = None
        self._context: NodeContext | None = None

    def sync(self, state: ProxyState, *, full: bool = False, changed: set[str] | None = None) -> RuleSet:
        """`changed`: the service keys known to have changed since the last sync (what kube-proxy's
        change trackers report); when None they are found by comparing fingerprints."""
        first = self._last is None
        if changed is None:
            prints = state.service_fingerprints()
            if self._fingerprints is not None:
                old = self._fingerprints
                changed = {k for k in old.keys() | prints.keys() if old.get(k) != prints.get(k)}
            self._fingerprints = prints
        else:
            self._fingerprints = None
        if first or full or self.options.layout != "modern" or state.context != self._context:
            changed = None  # kube-proxy also resyncs fully when node settings change
        rs = generate(state, self.options, changed=changed, existing_chains=self._chains, previous=self._last)
        self._chains = set(rs.active_nat_chains)
        self._last = rs
        self._context = state.context
        return rs


def changed_services(before: ProxyState, after: ProxyState) -> set[str]:
    """Service keys whose ports or endpoints differ (kube-proxy's UpdatedServices)."""
    a, b = before.service_fingerprints(), after.service_fingerprints()
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
