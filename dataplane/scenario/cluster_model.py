"""The running scenario as the project's Kubernetes model (`dataplane.k8s.objects.Cluster`).

The proxy backends (`dataplane.proxy.*`) read Services and EndpointSlices in that model, exactly
as kube-proxy reads them from the API server; this module is the runner's "API server": it
publishes the Services with their allocated ClusterIPs and NodePorts, the EndpointSlices the
runner's controller derived (endpoints.py) and the Nodes.
"""

from __future__ import annotations

from dataplane.k8s import objects as k8s
from dataplane.scenario.endpoints import ServicePortEndpoints
from dataplane.scenario.topology import Topology


def cluster(topology: Topology, endpoints: dict[str, list[ServicePortEndpoints]]) -> k8s.Cluster:
    """Nodes, Services and EndpointSlices (kube-proxy does not read Pods, so none are published)."""
    out = k8s.Cluster()
    for n in topology.nodes:
        out.nodes.append(k8s.Node(n.name, (k8s.NodeAddress("InternalIP", n.ip),), (n.pod_cidr,)))
    for svc in topology.services:
        s = svc.service
        out.services.append(k8s.Service(
            namespace=s.namespace, name=s.name, type=s.type,
            cluster_ips=(svc.cluster_ip,) if svc.cluster_ip else (), headless=s.headless,
            ports=tuple(k8s.ServicePort(p.name or "", p.protocol, p.port, p.target_port, np or 0)
                        for p, np in zip(s.ports, svc.node_ports)),
            external_ips=s.external_ips,
            load_balancer_ingress=tuple(k8s.LoadBalancerIngress(ip) for ip in s.load_balancer_ips),
            session_affinity="ClientIP" if s.session_affinity else "None", affinity_timeout=s.affinity_timeout,
            external_traffic_policy=s.external_traffic_policy, internal_traffic_policy=s.internal_traffic_policy,
            external_name=s.external_name))
        for spe in endpoints.get(svc.key, []):
            port = spe.port
            # One slice per service port: the controller groups endpoints by their resolved port.
            by_port: dict[int, list] = {}
            for e in spe.endpoints:
                by_port.setdefault(e.port, []).append(e)
            for number, eps in sorted(by_port.items()):
                out.endpoint_slices.append(k8s.EndpointSlice(
                    namespace=s.namespace, name=f"{s.name}-{port.name or port.port}-{number}", service_name=s.name,
                    address_type="IPv4",
                    endpoints=tuple(k8s.Endpoint((e.ip,), ready=e.ready, serving=e.ready, terminating=False,
                                                 node_name=e.node) for e in eps),
                    ports=(k8s.EndpointPort(port.name or "", number, port.protocol),)))
    return out
