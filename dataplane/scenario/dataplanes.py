"""Service dataplanes: what turns Services and endpoints into packet handling on each node.

`kernel`: the generated kube-proxy rules loaded into the node namespace's real netfilter:
iptables mode with `iptables-restore --noflush` (the jump rules once, the KUBE-* chains on every
sync), nftables mode with `nft -f` (the `ip kube-proxy` table, then partial transactions).

`emulated` (built in `dataplane.scenario.emulated`, whose docstring says how it differs from
this first design: symmetry by routing every pod-sourced packet through the engine instead of
masquerade-all). The seam as designed, per node namespace:
- a TUN device `dpsvc0` (IFF_TUN|IFF_NO_PI) owned by the runner, one reader thread per node;
- steering into it with policy routing, no netfilter: `ip rule add to <serviceCIDR> lookup 100`,
  `ip rule add to <LB/external IPs> lookup 100`, and for NodePorts (destination = the node's own
  IP) an `ip rule add iif eth0 ipproto tcp dport 30000-32767 lookup 100`; table 100 holds
  `default dev dpsvc0`;
- the engine: `dataplane.engine.pipeline.Pipeline(node, iptables_ruleset(text))`, where `node`
  is the namespace's interfaces and routes (`dataplane.engine.node.Node`) and `text` the same
  generated rules the kernel mode loads; `receive(bytes, iif="dpsvc0")` gives a `PacketResult`
  (verdict, translated bytes, oif) and the runner writes the bytes back into the TUN, from where
  the kernel routes them to the endpoint (rp_filter off, forwarding on);
- symmetry: the engine's conntrack must see the replies, so the runner masquerades everything it
  DNATs to an address of the TUN's own /30 (kube-proxy's masquerade-all, one legitimate answer) and
  `ip rule add to <that /30> lookup 100` brings the endpoint's replies back into the TUN, where the
  engine reverses both translations. Policy routing on the endpoint's source (fwmark set by one
  nft rule on the endpoint-facing interface) is the alternative that preserves client addresses.
It needs from the engine: the `Pipeline` above with conntrack expiry driven by a real clock,
REJECT answers as bytes (`PacketResult.response`), and ~20k packets/s per node from one thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from dataplane.netns import namespace
from dataplane.k8s.errors import ModelError
from dataplane.scenario import cluster_model
from dataplane.scenario.endpoints import ServicePortEndpoints
from dataplane.scenario.topology import NodePlan, Topology


class DataplaneError(RuntimeError):
    """The service dataplane could not be programmed (message says which node and why)."""


class ServiceDataplane(Protocol):
    def setup(self, topology: Topology) -> None: ...
    def sync(self, topology: Topology, endpoints: dict[str, list[ServicePortEndpoints]]) -> None: ...
    def describe(self) -> dict: ...


@dataclass
class KernelIptables:
    """kube-proxy iptables mode on the node namespaces' real netfilter.

    Rules come from the project's generator (`dataplane.proxy.iptables.generator`) fed with the
    runner's Services and EndpointSlices; one `Syncer` per node keeps kube-proxy's partial-sync
    state. The first restore also carries the jumps from the built-in chains (kube-proxy's
    `EnsureRule`), which is safe because the node namespace starts empty.
    """

    cluster_cidr: str
    layout: str = "modern"
    backend: str = "nft"
    masquerade_all: bool = False
    syncs: int = 0
    last_stats: dict = field(default_factory=dict)
    _syncers: dict = field(default_factory=dict)

    @property
    def restore(self) -> str:
        return "iptables-restore" if self.backend == "nft" else "iptables-legacy-restore"

    def setup(self, topology: Topology) -> None:
        from dataplane.proxy.iptables.generator import GeneratorOptions, Syncer

        for node in topology.nodes:
            self._syncers[node.name] = Syncer(GeneratorOptions(layout=self.layout))
            # kube-proxy sets route_localnet when localhost NodePorts are on (its default).
            res = namespace.run(node.netns, ["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"], check=False)
            if res.returncode != 0:
                raise DataplaneError(f"node {node.name}: cannot set route_localnet: {res.stderr.strip()}")

    def render(self, topology: Topology, node: NodePlan, endpoints: dict[str, list[ServicePortEndpoints]]) -> str:
        from dataplane.proxy.iptables.generator import jump_rules
        from dataplane.proxy.model import NodeContext, build_state

        ctx = NodeContext(node.name, (node.ip,), (self.cluster_cidr,), masquerade_all=self.masquerade_all)
        rs = self._syncers[node.name].sync(build_state(cluster_model.cluster(topology, endpoints), ctx))
        if self.syncs == 0:
            rs.jump_rules = jump_rules()
        self.last_stats[node.name] = rs.stats()
        return rs.text()

    def sync(self, topology: Topology, endpoints: dict[str, list[ServicePortEndpoints]]) -> None:
        for node in topology.nodes:
            try:
                text = self.render(topology, node, endpoints)
            except ModelError as exc:
                raise DataplaneError(f"rules for node {node.name}: {exc}") from None
            res = namespace.run(node.netns, [self.restore, "--noflush"], input=text, check=False)
            if res.returncode != 0:
                raise DataplaneError(f"{self.restore} failed on node {node.name}: {res.stderr.strip()[:500]}")
        self.syncs += 1

    def describe(self) -> dict:
        return {"dataplane": "kernel", "proxyMode": "iptables", "layout": self.layout,
                "iptables": self.restore, "syncs": self.syncs, "ruleStats": self.last_stats}


@dataclass
class KernelNftables:
    """kube-proxy nftables mode on the node namespaces' real nf_tables (`nft -f`).

    The first sync loads the whole `ip kube-proxy` table; later ones send kube-proxy's partial
    transaction (changed services' chains, element diffs), from `dataplane.proxy.nftables`.
    """

    cluster_cidr: str
    service_cidr: str
    masquerade_all: bool = False
    syncs: int = 0
    _last: dict = field(default_factory=dict)

    def setup(self, topology: Topology) -> None:
        pass

    def state(self, topology: Topology, node: NodePlan, endpoints: dict[str, list[ServicePortEndpoints]]):  # type: ignore[no-untyped-def]
        from dataplane.proxy.model import NodeContext, build_state

        ctx = NodeContext(node.name, (node.ip,), (self.cluster_cidr,), masquerade_all=self.masquerade_all)
        return build_state(cluster_model.cluster(topology, endpoints), ctx)

    def sync(self, topology: Topology, endpoints: dict[str, list[ServicePortEndpoints]]) -> None:
        from dataplane.proxy.nftables.generator import NftOptions, changes, generate

        options = NftOptions(service_cidrs=(self.service_cidr,))
        for node in topology.nodes:
            try:
                st = self.state(topology, node, endpoints)
                before = self._last.get(node.name)
                text = generate(st, options) if before is None else changes(before, st, options)
            except ModelError as exc:
                raise DataplaneError(f"rules for node {node.name}: {exc}") from None
            res = namespace.run(node.netns, ["nft", "-f", "-"], input=text, check=False)
            if res.returncode != 0:
                raise DataplaneError(f"nft -f failed on node {node.name}: {res.stderr.strip()[:500]}")
            self._last[node.name] = st
        self.syncs += 1

    def describe(self) -> dict:
        return {"dataplane": "kernel", "proxyMode": "nftables", "syncs": self.syncs}


def make(dataplane: str, proxy_mode: str, *, cluster_cidr: str, service_cidr: str, layout: str, backend: str,
         masquerade_all: bool, ipvs_scheduler: str = "rr", pod_network: str = "host-gw") -> ServiceDataplane:
    """The dataplane a scenario asks for, or a DataplaneError saying what is not available."""
    if dataplane == "emulated":
        from dataplane.scenario.emulated import Emulated, check_design

        check_design(pod_network)
        return Emulated(cluster_cidr, service_cidr, layout, masquerade_all, proxy_mode, ipvs_scheduler)
    if proxy_mode == "ipvs":
        raise DataplaneError("proxy mode ipvs cannot run on the kernel dataplane: this kernel has no IPVS; "
                             "it needs the emulated dataplane")
    if proxy_mode == "nftables":
        return KernelNftables(cluster_cidr, service_cidr, masquerade_all)
    return KernelIptables(cluster_cidr, layout, backend, masquerade_all)
