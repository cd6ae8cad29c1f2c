"""Records for the Kubernetes objects the node network acts on, as the API defines them.

Only the fields kube-proxy (and, later, the scenario runner) reads are kept. Values are already
validated and normalised by `dataplane.k8s.loader`: IPs are canonical strings, protocols upper case,
policies spelled as the API spells them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
TRAFFIC_POLICIES = ("Cluster", "Local")
AFFINITIES = ("None", "ClientIP")
DEFAULT_AFFINITY_TIMEOUT = 10800  # API default of sessionAffinityConfig.clientIP.timeoutSeconds
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"


def family_of(ip: str) -> int:
    """4 or 6."""
    return ipaddress.ip_address(ip).version


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    target_port: int | str | None = None
    node_port: int = 0


@dataclass(frozen=True)
class LoadBalancerIngress:
    ip: str | None
    hostname: str | None = None
    ip_mode: str | None = None  # "VIP" (default) or "Proxy"; kube-proxy skips Proxy-mode IPs


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()
    headless: bool = False
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ingress: tuple[LoadBalancerIngress, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    external_name: str | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def proxied(self) -> bool:
        """kube-proxy ignores headless and ExternalName services (ShouldSkipService)."""
        return not self.headless and self.type != "ExternalName" and bool(self.cluster_ips)

    def cluster_ip(self, family: int) -> str | None:
        """The ClusterIP of one family (GetClusterIPByFamily)."""
        return next((ip for ip in self.cluster_ips if family_of(ip) == family), None)


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool | None = None          # nil means ready (kube-proxy: Ready == nil || *Ready)
    serving: bool | None = None        # nil means serving
    terminating: bool | None = None    # nil means not terminating
    node_name: str | None = None
    zone: str | None = None
    hint_zones: tuple[str, ...] = ()
    hint_nodes: tuple[str, ...] = ()

    @property
    def is_ready(self) -> bool:
        return self.ready is None or self.ready

    @property
    def is_serving(self) -> bool:
        return self.serving is None or self.serving

    @property
    def is_terminating(self) -> bool:
        return bool(self.terminating)


@dataclass(frozen=True)
class EndpointPort:
    name: str
    port: int | None
    protocol: str = "TCP"


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    address_type: str
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.service_name}"


@dataclass(frozen=True)
class NodeAddress:
    type: str
    address: str


@dataclass(frozen=True)
class Node:
    """Minimal: what locality and NodePorts need. The scenario runner may extend it."""

    name: str
    addresses: tuple[NodeAddress, ...] = ()
    pod_cidrs: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def ips(self, family: int | None = None) -> list[str]:
        out = []
        for a in self.addresses:
            if a.type not in ("InternalIP", "ExternalIP"):
                continue
            try:
                fam = family_of(a.address)
            except ValueError:
                continue
            if family is None or fam == family:
                out.append(a.address)
        return out


@dataclass(frozen=True)
class Pod:
    """Minimal: where a pod runs and its addresses. The scenario runner may extend it."""

    namespace: str
    name: str
    node_name: str | None = None
    pod_ips: tuple[str, ...] = ()
    host_network: bool = False
    phase: str | None = None
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Cluster:
    """Everything read from the input files, in input order."""

    services: list[Service] = field(default_factory=list)
    endpoint_slices: list[EndpointSlice] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # "Kind ns/name" of objects we do not model

    def extend(self, other: "Cluster") -> None:
        self.services += other.services
        self.endpoint_slices += other.endpoint_slices
        self.nodes += other.nodes
        self.pods += other.pods
        self.ignored += other.ignored

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)
