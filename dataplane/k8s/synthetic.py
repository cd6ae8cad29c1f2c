"""Synthetic clusters of N services x M endpoints, shaped like kube-proxy's own scale tests.

The objects follow `generateServiceEndpoints` of kubernetes pkg/proxy/iptables/
number_generated_rules_test.go: ClusterIPs from 10.0.0.1 up, service ports 80+i named "8080",
endpoints 172.16.0.1.. on port 8080 (the same addresses for every service), NodePorts 30000+i and
health-check NodePorts 32000+N+i. Used by the rule-count tests and the benchmarks.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from dataplane.k8s.loader import load_objects
from dataplane.k8s.objects import Cluster


def synthetic_objects(n_services: int, n_endpoints: int, *, svc_type: str = "ClusterIP",
                      lb: bool = False, node_names: bool = False,
                      namespace: str = "namespace") -> list[dict[str, Any]]:
    """Services and EndpointSlices as API objects (dicts), in the order kubectl would list them."""
    base = int(ipaddress.IPv4Address("10.0.0.1"))
    ep_base = int(ipaddress.IPv4Address("172.16.0.1"))
    endpoint_ips = [str(ipaddress.IPv4Address(ep_base + j)) for j in range(n_endpoints)]
    objs: list[dict[str, Any]] = []
    for i in range(n_services):
        port: dict[str, Any] = {"name": "8080", "protocol": "TCP", "port": 80 + i, "targetPort": 8080}
        spec: dict[str, Any] = {"type": svc_type, "clusterIP": str(ipaddress.IPv4Address(base + i)),
                                "ports": [port]}
        status: dict[str, Any] = {}
        if svc_type in ("NodePort", "LoadBalancer"):
            port["nodePort"] = 30000 + i
        if svc_type == "LoadBalancer":
            spec["healthCheckNodePort"] = 32000 + n_services + i
        if lb:
            spec["externalIPs"] = ["1.2.3.4"]
            spec["loadBalancerSourceRanges"] = [" 1.2.3.4/28"]
            status = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
        objs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"namespace": namespace, "name": f"svc{i}"}, "spec": spec, "status": status})
        endpoints = []
        for j, ip in enumerate(endpoint_ips):
            ep: dict[str, Any] = {"addresses": [ip]}
            if node_names:
                ep["nodeName"] = f"node-{j}"
            endpoints.append(ep)
        objs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"namespace": namespace, "name": f"svc{i}",
                                  "labels": {"kubernetes.io/service-name": f"svc{i}"}},
                     "addressType": "IPv4", "endpoints": endpoints,
                     "ports": [{"name": "8080", "port": 8080, "protocol": "TCP"}]})
    return objs


def synthetic_cluster(n_services: int, n_endpoints: int, **kw: Any) -> Cluster:
    return load_objects(synthetic_objects(n_services, n_endpoints, **kw), source="<synthetic>")
