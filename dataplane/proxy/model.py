"""The proxy's view of Services and endpoints, shared by the iptables, IPVS and nftables backends.

This is kube-proxy's `pkg/proxy` layer (ServicePortInfo, EndpointsMap, CategorizeEndpoints), written
backend-neutral: a backend gets one `ServicePortInfo` per service port of its IP family, the
endpoints of each (sorted by "ip:port", as EndpointSliceCache returns them), and
`categorize_endpoints` to pick which endpoints serve Cluster and Local traffic.

Facts (kubernetes/kubernetes pkg/proxy): serviceport.go `newBaseServiceInfo`, endpointslicecache.go
`addEndpoints`/`endpointsMapFromEndpointInfo`, topology.go `CategorizeEndpoints`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from dataplane.k8s.errors import ModelError
from dataplane.k8s.loader import gc_paused
from dataplane.k8s.objects import Cluster, Service, ZONE_LABEL, family_of

DEFAULT_MASQUERADE_BIT = 14


@dataclass(frozen=True, order=True)
class ServicePortName:
    """namespace/name:port plus protocol; `str()` is kube-proxy's ServicePortName.String()."""

    namespace: str
    name: str
    port: str
    protocol: str  # upper case, as in the API

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" + (f":{self.port}" if self.port else "")

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class EndpointInfo:
    ip: str
    port: int
    is_local: bool = False
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    zone_hints: frozenset[str] = frozenset()
    node_hints: frozenset[str] = frozenset()
    node_name: str | None = None
    hostport: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # net.JoinHostPort(ip, port), computed once: rule generation prints it several times.
        object.__setattr__(self, "hostport",
                           f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}")

    def __str__(self) -> str:
        return self.hostport


@dataclass(frozen=True)
class ServicePortInfo:
    """One service port as a proxy sees it, in one IP family."""

    name: ServicePortName
    cluster_ip: str
    port: int
    protocol: str
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_vips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity_client_ip: bool = False
    sticky_max_age_seconds: int = 0
    external_policy_local: bool = False
    internal_policy_local: bool = False
    health_check_node_port: int = 0

    @property
    def externally_accessible(self) -> bool:
        return self.node_port != 0 or bool(self.load_balancer_vips) or bool(self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        # Even with externalTrafficPolicy Local, cluster endpoints implement short-circuiting.
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (self.external_policy_local and self.externally_accessible)


@dataclass(frozen=True)
class NodeContext:
    """The node a rule set is generated for, and kube-proxy's own flags.

    `cluster_cidrs` feed the local-traffic detector (`--cluster-cidr`, detect-local-mode ClusterCIDR);
    with none of this family the detector is "not implemented" and the rules that use it are omitted,
    as kube-proxy does. `nodeport_addresses` empty means every local address (`--nodeport-addresses`
    unset).
    """

    node_name: str
    node_ips: tuple[str, ...]
    cluster_cidrs: tuple[str, ...] = ()
    masquerade_bit: int = DEFAULT_MASQUERADE_BIT
    masquerade_all: bool = False
    nodeport_addresses: tuple[str, ...] = ()
    localhost_nodeports: bool = True
    zone: str | None = None
    family: int = 0  # 0: the family of the first node IP

    def __post_init__(self) -> None:
        if not self.node_name:
            raise ModelError("the node name must not be empty", field="node-name")
        if not self.node_ips:
            raise ModelError("at least one node IP is required", field="node-ip")
        ips = []
        for ip in self.node_ips:
            try:
                ips.append(str(ipaddress.ip_address(ip)))
            except ValueError:
                raise ModelError(f"{ip!r} is not a valid IP address", field="node-ip") from None
        object.__setattr__(self, "node_ips", tuple(ips))
        cidrs = []
        for c in self.cluster_cidrs:
            try:
                cidrs.append(str(ipaddress.ip_network(c.strip(), strict=False)))
            except ValueError:
                raise ModelError(f"{c!r} is not a valid CIDR", field="cluster-cidr") from None
        object.__setattr__(self, "cluster_cidrs", tuple(cidrs))
        npa = []
        for c in self.nodeport_addresses:
            if c.strip() == "primary":  # kube-proxy 1.29+: the node's primary IPs
                npa += [f"{ip}/{32 if family_of(ip) == 4 else 128}" for ip in ips]
                continue
            try:
                npa.append(str(ipaddress.ip_network(c.strip(), strict=False)))
            except ValueError:
                raise ModelError(f"{c!r} is not a valid CIDR", field="nodeport-addresses") from None
        object.__setattr__(self, "nodeport_addresses", tuple(npa))
        if not 0 <= self.masquerade_bit <= 31:
            raise ModelError(f"{self.masquerade_bit} is out of range 0..31", field="masquerade-bit")
        if self.family == 0:
            object.__setattr__(self, "family", family_of(ips[0]))
        if self.family not in (4, 6):
            raise ModelError(f"IP family must be 4 or 6, not {self.family}", field="family")

    @property
    def ipv6(self) -> bool:
        return self.family == 6

    @property
    def node_ip(self) -> str | None:
        """The primary node IP of this family (kube-proxy's nodeIPs[family])."""
        return next((ip for ip in self.node_ips if family_of(ip) == self.family), None)

    @property
    def local_cidr(self) -> str | None:
        """The cluster CIDR of this family used by the local-traffic detector (the first one)."""
        return next((c for c in self.cluster_cidrs
                     if ipaddress.ip_network(c).version == self.family), None)

    @property
    def masquerade_mark(self) -> str:
        return hex(1 << self.masquerade_bit)

    def nodeport_ips(self) -> list[str] | None:
        """None when NodePorts are open on every local address; else the node IPs selected by
        `--nodeport-addresses` (only the ones we know of: the node IPs and loopback)."""
        nets = [ipaddress.ip_network(c) for c in self.nodeport_addresses
                if ipaddress.ip_network(c).version == self.family]
        if not nets:
            return None
        candidates = [ip for ip in self.node_ips if family_of(ip) == self.family]
        candidates.append("::1" if self.ipv6 else "127.0.0.1")
        return [ip for ip in candidates if any(ipaddress.ip_address(ip) in n for n in nets)]


@dataclass
class ProxyState:
    """Everything a backend needs for one sync: service ports and their endpoints, in one family."""

    context: NodeContext
    service_ports: dict[ServicePortName, ServicePortInfo] = field(default_factory=dict)
    endpoints: dict[ServicePortName, list[EndpointInfo]] = field(default_factory=dict)

    @property
    def total_endpoints(self) -> int:
        """kube-proxy's count for large-cluster mode: endpoints of every known service port."""
        return sum(len(self.endpoints.get(name, ())) for name in self.service_ports)

    def service_fingerprints(self) -> dict[str, int]:
        """A hash per Service (namespace/name) of its ports and endpoints: what partial sync diffs."""
        out: dict[str, int] = {}
        for name, info in self.service_ports.items():
            part = hash((info, tuple(self.endpoints.get(name, ()))))
            out[name.service_key] = out.get(name.service_key, 0) ^ part  # order-independent
        for name, eps in self.endpoints.items():
            if name not in self.service_ports:
                out[name.service_key] = out.get(name.service_key, 0) ^ hash((name, tuple(eps)))
        return out


def build_state(cluster: Cluster, context: NodeContext) -> ProxyState:
    """Services and EndpointSlices -> the proxy's maps, as kube-proxy's change trackers build them."""
    state = ProxyState(context)
    with gc_paused():
        for svc in cluster.services:
            for info in service_port_infos(svc, context.family):
                state.service_ports[info.name] = info
        state.endpoints = endpoints_map(cluster, context)
    return state


def service_port_infos(svc: Service, family: int) -> list[ServicePortInfo]:
    """newBaseServiceInfo for each port; [] for services kube-proxy skips."""
    if not svc.proxied:
        return []
    cluster_ip = svc.cluster_ip(family)
    if cluster_ip is None:
        return []
    api_externally_accessible = (svc.type in ("LoadBalancer", "NodePort")
                                 or (svc.type == "ClusterIP" and bool(svc.external_ips)))
    external_local = api_externally_accessible and svc.external_traffic_policy == "Local"
    internal_local = svc.internal_traffic_policy == "Local"
    external_ips = tuple(ip for ip in svc.external_ips if family_of(ip) == family)
    ranges = tuple(c for c in svc.load_balancer_source_ranges
                   if ipaddress.ip_network(c).version == family)
    vips = tuple(ing.ip for ing in svc.load_balancer_ingress
                 if ing.ip and ing.ip_mode != "Proxy" and family_of(ing.ip) == family)
    needs_health_check = svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local"
    client_ip = svc.session_affinity == "ClientIP"
    out = []
    for port in svc.ports:
        out.append(ServicePortInfo(
            name=ServicePortName(svc.namespace, svc.name, port.name, port.protocol),
            cluster_ip=cluster_ip, port=port.port, protocol=port.protocol, node_port=port.node_port,
            external_ips=external_ips, load_balancer_vips=vips, load_balancer_source_ranges=ranges,
            session_affinity_client_ip=client_ip,
            sticky_max_age_seconds=svc.affinity_timeout if client_ip else 0,
            external_policy_local=external_local, internal_policy_local=internal_local,
            health_check_node_port=svc.health_check_node_port if needs_health_check else 0))
    return out


def endpoints_map(cluster: Cluster, context: NodeContext) -> dict[ServicePortName, list[EndpointInfo]]:
    """EndpointSliceCache: slices of this family, merged per service port name, deduplicated by
    "ip:port" (a non-terminating endpoint wins), sorted by "ip:port"."""
    want = f"IPv{context.family}"
    merged: dict[ServicePortName, dict[str, EndpointInfo]] = {}
    for es in cluster.endpoint_slices:
        if es.address_type != want:
            continue
        for port in es.ports:
            if not port.port:
                continue  # kube-proxy ignores ports without a number
            spn = ServicePortName(es.namespace, es.service_name, port.name, port.protocol)
            bucket = merged.setdefault(spn, {})
            for ep in es.endpoints:
                if not ep.addresses:
                    continue
                info = EndpointInfo(
                    ip=ep.addresses[0], port=port.port,
                    is_local=bool(ep.node_name) and ep.node_name == context.node_name,
                    ready=ep.is_ready, serving=ep.is_serving, terminating=ep.is_terminating,
                    zone_hints=frozenset(ep.hint_zones), node_hints=frozenset(ep.hint_nodes),
                    node_name=ep.node_name)
                key = str(info)
                if key not in bucket or not info.terminating:
                    bucket[key] = info
    return {spn: [bucket[k] for k in sorted(bucket)] for spn, bucket in merged.items() if bucket}


@dataclass(frozen=True)
class Categorized:
    cluster: list[EndpointInfo]
    local: list[EndpointInfo]
    all_reachable: list[EndpointInfo]
    has_any: bool


def categorize_endpoints(endpoints: Iterable[EndpointInfo], svc: ServicePortInfo,
                         node_name: str, zone: str | None = None) -> Categorized:
    """kube-proxy's CategorizeEndpoints: ready endpoints (topology-filtered) for Cluster policy, ready
    local ones for Local policy, each falling back independently to serving-terminating ones."""
    eps = list(endpoints)
    cluster: list[EndpointInfo] = []
    local: list[EndpointInfo] = []
    has_any = False
    topology = ""
    serving_terminating = False
    if svc.uses_cluster_endpoints:
        topology = _topology_mode(eps, node_name, zone or "")
        cluster = [ep for ep in eps if ep.ready and _available(ep, topology, node_name, zone or "")]
        if not cluster:
            cluster = [ep for ep in eps if ep.serving and ep.terminating]
        has_any = bool(cluster)
    if not svc.uses_local_endpoints:
        return Categorized(cluster, [], cluster, has_any)
    local_ready = local_st = False
    for ep in eps:
        if ep.ready:
            has_any = True
            local_ready = local_ready or ep.is_local
        elif ep.serving and ep.terminating:
            has_any = True
            local_st = local_st or ep.is_local
    if local_ready:
        local = [ep for ep in eps if ep.is_local and ep.ready]
    elif local_st:
        serving_terminating = True
        local = [ep for ep in eps if ep.is_local and ep.serving and ep.terminating]
    if not svc.uses_cluster_endpoints:
        return Categorized([], local, local, has_any)
    if topology == "" and not serving_terminating:
        return Categorized(cluster, local, cluster, has_any)
    # Upstream merges through a Go map (random order); we sort by "ip:port" to stay deterministic.
    union = {str(ep): ep for ep in cluster}
    union.update({str(ep): ep for ep in local})
    return Categorized(cluster, local, [union[k] for k in sorted(union)], has_any)


def _topology_mode(eps: list[EndpointInfo], node_name: str, zone: str) -> str:
    """topologyModeFromHints (PreferSameTrafficDistribution on): PreferSameNode if every ready
    endpoint has node hints and one names this node; else PreferSameZone likewise; else ""."""
    ready = [ep for ep in eps if ep.ready]
    if not ready:
        return ""
    if all(ep.node_hints for ep in ready) and any(node_name in ep.node_hints for ep in ready):
        return "PreferSameNode"
    if all(ep.zone_hints for ep in ready) and any(zone in ep.zone_hints for ep in ready):
        return "PreferSameZone"
    return ""


def _available(ep: EndpointInfo, mode: str, node_name: str, zone: str) -> bool:
    if mode == "PreferSameNode":
        return node_name in ep.node_hints
    if mode == "PreferSameZone":
        return zone in ep.zone_hints
    return True


def context_zone(cluster: Cluster, node_name: str) -> str | None:
    """The node's topology.kubernetes.io/zone label, when the input holds the Node object."""
    node = cluster.node(node_name)
    return node.labels.get(ZONE_LABEL) if node else None
