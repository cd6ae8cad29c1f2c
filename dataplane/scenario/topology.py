"""The cluster as a plan: which namespaces, addresses, pods and service IPs a scenario needs.

Pure functions of the scenario and a run id (Mininet's `Topo`): scheduling pods onto nodes,
naming namespaces, allocating ClusterIPs and NodePorts. `build.py` turns the plan into kernel
objects; nothing here touches the machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from dataplane.scenario import spec

UNDERLAY_BRIDGE = "ul0"
UNDERLAY_ROUTER_IP = "192.168.100.1"   # not used by anything; reserved like a real gateway
VXLAN_ID = 1
VXLAN_PORT = 4789
POD_IFNAME = "eth0"
NODE_UPLINK = "eth0"
POD_BRIDGE = "cni0"
_K8S_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"   # the apiserver's name-suffix alphabet


@dataclass(frozen=True)
class NodePlan:
    name: str
    index: int                 # 1-based, stable order of the scenario file
    netns: str
    ip: str
    pod_cidr: str
    uplink_peer: str           # the node uplink's end on the underlay bridge

    @property
    def pod_gateway(self) -> str:
        return str(next(ipaddress.IPv4Network(self.pod_cidr).hosts()))

    @property
    def vxlan_mac(self) -> str:
        """A fixed, locally administered MAC per node, so peers can program FDB and ARP statically."""
        return f"0a:58:00:00:{self.index >> 8 & 0xff:02x}:{self.index & 0xff:02x}"

    @property
    def vxlan_ip(self) -> str:
        """Flannel's habit: the overlay device carries the podCIDR's network address (/32)."""
        return str(ipaddress.IPv4Network(self.pod_cidr).network_address)


@dataclass(frozen=True)
class PodPlan:
    name: str
    namespace: str
    node: str
    netns: str
    template: spec.PodTemplate
    owner: str | None = None
    role: str = "workload"     # workload (echo + HTTP server) | dns (the kube-dns server)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def labels(self) -> dict[str, str]:
        return self.template.labels


@dataclass(frozen=True)
class ServicePlan:
    service: spec.Service
    cluster_ip: str | None                 # None for headless and ExternalName
    node_ports: tuple[int | None, ...]     # one per service port

    @property
    def key(self) -> str:
        return f"{self.service.namespace}/{self.service.name}"


@dataclass(frozen=True)
class Topology:
    run_id: str
    design: str
    underlay_netns: str
    external_netns: str
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]
    services: tuple[ServicePlan, ...]

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)

    def pod(self, namespace: str, name: str) -> PodPlan | None:
        return next((p for p in self.pods if p.namespace == namespace and p.name == name), None)

    def service(self, namespace: str, name: str) -> ServicePlan | None:
        return next((s for s in self.services if s.service.namespace == namespace and s.service.name == name), None)

    def namespaces(self) -> list[str]:
        return [self.underlay_netns, self.external_netns, *(n.netns for n in self.nodes), *(p.netns for p in self.pods)]


def prefix(run_id: str) -> str:
    return f"dp{run_id}"


def replica_name(deployment: spec.Deployment, index: int, revision: int = 0) -> str:
    """`<deployment>-<template hash>-<suffix>`, the ReplicaSet naming scheme, made deterministic.

    `revision` stands for a changed pod template (a rollout): it changes the template hash.
    """
    digest = hashlib.sha256(repr((deployment.namespace, deployment.name, deployment.template,
                                  revision or None)).encode()).digest()
    template_hash = "".join(_K8S_SUFFIX_ALPHABET[b % len(_K8S_SUFFIX_ALPHABET)] for b in digest[:10])
    seed = hashlib.sha256(f"{template_hash}/{index}".encode()).digest()
    suffix = "".join(_K8S_SUFFIX_ALPHABET[b % len(_K8S_SUFFIX_ALPHABET)] for b in seed[:5])
    return f"{deployment.name}-{template_hash}-{suffix}"


def schedule(scenario: spec.Scenario) -> list[tuple[spec.Pod, str]]:
    """Pods (bare ones and each Deployment's replicas) and the node each runs on.

    Pods with a nodeName stay there; the others are spread round-robin over the nodes in
    file order, counting pods already placed, the way the default scheduler's spreading would
    look on identical nodes.
    """
    pods: list[spec.Pod] = list(scenario.pods)
    for d in scenario.deployments:
        for i in range(d.replicas):
            pods.append(spec.Pod(replica_name(d, i), d.namespace, d.template, d.name, d.line))
    load = {n.name: 0 for n in scenario.nodes}
    placed: list[tuple[spec.Pod, str]] = []
    for p in pods:
        if p.template.node_name:
            load[p.template.node_name] += 1
    for p in pods:
        node = p.template.node_name or min(load, key=lambda n: (load[n], list(load).index(n)))
        if not p.template.node_name:
            load[node] += 1
        placed.append((p, node))
    return placed


def allocate_services(scenario: spec.Scenario) -> list[ServicePlan]:
    """ClusterIPs from the service CIDR and NodePorts from 30000-32767, skipping those taken.

    Allocation starts at .100 of the service CIDR (well clear of .1, the `kubernetes` service,
    and .10, kube-dns), in file order, so a scenario always gets the same addresses.
    """
    net = ipaddress.IPv4Network(scenario.cluster.service_cidr)
    taken_ips = {s.cluster_ip for s in scenario.services if s.cluster_ip and s.cluster_ip != "None"}
    taken_ips |= {str(net.network_address + 1), str(net.network_address + 10)}
    taken_ports = {p.node_port for s in scenario.services for p in s.ports if p.node_port}
    next_ip = net.network_address + 100
    next_port = spec.NODE_PORT_RANGE[0]
    plans = []
    for s in scenario.services:
        ip = s.cluster_ip
        if s.type == "ExternalName" or s.headless:
            ip = None
        elif ip is None:
            while str(next_ip) in taken_ips:
                next_ip += 1
            if next_ip not in net:
                raise ValueError(f"service CIDR {net} is exhausted")
            ip = str(next_ip)
            taken_ips.add(ip)
        ports: list[int | None] = []
        for p in s.ports:
            if s.type in ("NodePort", "LoadBalancer") and p.node_port is None:
                while next_port in taken_ports:
                    next_port += 1
                ports.append(next_port)
                taken_ports.add(next_port)
            else:
                ports.append(p.node_port)
        plans.append(ServicePlan(s, ip, tuple(ports)))
    return plans


KUBE_DNS_LABELS = {"k8s-app": "kube-dns"}


def kube_dns(scenario: spec.Scenario) -> tuple[spec.Pod, spec.Service]:
    """The kube-dns pod and Service (ClusterIP .10 of the service CIDR, UDP and TCP 53)."""
    ip = str(ipaddress.IPv4Network(scenario.cluster.service_cidr).network_address + 10)
    template = spec.PodTemplate(dict(KUBE_DNS_LABELS), (spec.ContainerPort(53, "UDP", "dns"),
                                                        spec.ContainerPort(53, "TCP", "dns-tcp")),
                                node_name=scenario.nodes[0].name)
    pod = spec.Pod("kube-dns", "kube-system", template)
    svc = spec.Service("kube-dns", "kube-system", "ClusterIP",
                       (spec.ServicePort(53, "dns", "UDP", "dns"), spec.ServicePort(53, "dns-tcp", "TCP", "dns-tcp")),
                       dict(KUBE_DNS_LABELS), ip)
    return pod, svc


def plan(scenario: spec.Scenario, run_id: str) -> Topology:
    pre = prefix(run_id)
    nodes = tuple(NodePlan(n.name, i, f"{pre}-n{i}", n.internal_ip, n.pod_cidr, f"n{i}up")
                  for i, n in enumerate(scenario.nodes, start=1))
    placed = schedule(scenario)
    services = allocate_services(scenario)
    if spec.uses_dns(scenario):
        dns_pod, dns_svc = kube_dns(scenario)
        placed.append((dns_pod, dns_pod.template.node_name or nodes[0].name))
        services.append(ServicePlan(dns_svc, dns_svc.cluster_ip, (None, None)))
    pods = tuple(PodPlan(p.name, p.namespace, node, f"{pre}-p{i}", p.template, p.owner,
                         "dns" if p.template.labels == KUBE_DNS_LABELS and p.namespace == "kube-system" else "workload")
                 for i, (p, node) in enumerate(placed, start=1))
    return Topology(run_id, scenario.cluster.pod_network, f"{pre}-ul", f"{pre}-ext", nodes, pods,
                    tuple(services))
