"""The backend-neutral proxy model: service ports, endpoint maps and CategorizeEndpoints."""

from __future__ import annotations

import pytest

from dataplane.k8s import ModelError, load_objects
from dataplane.proxy.iptables import names
from dataplane.proxy.model import (EndpointInfo, NodeContext, ServicePortInfo, ServicePortName,
                                   build_state, categorize_endpoints)


def port(**kw: object) -> ServicePortInfo:
    base: dict[str, object] = {"name": ServicePortName("ns", "svc", "p", "TCP"), "cluster_ip": "10.96.0.1",
                               "port": 80, "protocol": "TCP"}
    base.update(kw)
    return ServicePortInfo(**base)  # type: ignore[arg-type]


def ep(ip: str, *, local: bool = False, ready: bool = True, serving: bool = True, terminating: bool = False,
       zones: tuple[str, ...] = (), nodes: tuple[str, ...] = ()) -> EndpointInfo:
    return EndpointInfo(ip, 80, is_local=local, ready=ready, serving=serving, terminating=terminating,
                        zone_hints=frozenset(zones), node_hints=frozenset(nodes))


def ips(eps: list[EndpointInfo]) -> list[str]:
    return [e.ip for e in eps]


def test_upstream_chain_name_hashes():
    # Values from kube-proxy's proxier_test.go.
    assert names.cluster_chain("ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert names.endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert names.external_chain("ns4/svc4:p80", "tcp") == "KUBE-EXT-4SW47YFZTEDKD3PK"
    assert names.firewall_chain("ns5/svc5:p80", "tcp") == "KUBE-FW-NUKIZ6OKUXPJNT4C"
    assert names.local_chain("ns2/svc2:p80", "tcp") == "KUBE-SVL-GNZBNJ2PO5MGZ6GT"
    assert len(names.endpoint_chain("a" * 300, "sctp", "[ffff::1]:65535")) == 25 <= 28


def test_service_port_name_string():
    assert str(ServicePortName("ns", "svc", "", "TCP")) == "ns/svc"
    assert str(ServicePortName("ns", "svc", "http", "TCP")) == "ns/svc:http"
    assert str(EndpointInfo("fd00::1", 80)) == "[fd00::1]:80"


def test_cluster_policy_ready_then_serving_terminating_fallback():
    svc = port()
    c = categorize_endpoints([ep("1.0.0.1"), ep("1.0.0.2", ready=False, terminating=True)], svc, "n")
    assert ips(c.cluster) == ["1.0.0.1"] and c.has_any and c.local == []
    c = categorize_endpoints([ep("1.0.0.2", ready=False, terminating=True),
                              ep("1.0.0.3", ready=False, serving=False, terminating=True)], svc, "n")
    assert ips(c.cluster) == ["1.0.0.2"] and c.has_any
    c = categorize_endpoints([ep("1.0.0.3", ready=False, serving=False, terminating=True)], svc, "n")
    assert c.cluster == [] and not c.has_any


def test_local_policy_falls_back_independently_of_cluster():
    svc = port(internal_policy_local=True)
    eps = [ep("1.0.0.1"), ep("1.0.0.2", local=True, ready=False, terminating=True)]
    c = categorize_endpoints(eps, svc, "n")
    assert c.cluster == [] and ips(c.local) == ["1.0.0.2"] and c.has_any
    assert ips(c.all_reachable) == ["1.0.0.2"]


def test_external_local_needs_cluster_endpoints_too_and_merges_reachable():
    svc = port(node_port=30000, external_policy_local=True)
    assert svc.uses_cluster_endpoints and svc.uses_local_endpoints
    eps = [ep("1.0.0.1"), ep("1.0.0.2", local=True)]
    c = categorize_endpoints(eps, svc, "n")
    assert ips(c.cluster) == ["1.0.0.1", "1.0.0.2"] and ips(c.local) == ["1.0.0.2"]
    assert ips(c.all_reachable) == ["1.0.0.1", "1.0.0.2"]
    # local endpoint only serving-terminating: reachable is the union of both lists
    eps = [ep("1.0.0.1"), ep("1.0.0.3", local=True, ready=False, terminating=True)]
    c = categorize_endpoints(eps, svc, "n")
    assert ips(c.cluster) == ["1.0.0.1"] and ips(c.local) == ["1.0.0.3"]
    assert ips(c.all_reachable) == ["1.0.0.1", "1.0.0.3"]


def test_topology_hints_prefer_zone_and_node():
    svc = port()
    eps = [ep("1.0.0.1", zones=("a",)), ep("1.0.0.2", zones=("b",))]
    assert ips(categorize_endpoints(eps, svc, "n", "a").cluster) == ["1.0.0.1"]
    assert ips(categorize_endpoints(eps, svc, "n", "c").cluster) == ["1.0.0.1", "1.0.0.2"]  # no hint for zone c
    partial = [ep("1.0.0.1", zones=("a",)), ep("1.0.0.2")]
    assert ips(categorize_endpoints(partial, svc, "n", "a").cluster) == ["1.0.0.1", "1.0.0.2"]
    by_node = [ep("1.0.0.1", nodes=("n",), zones=("b",)), ep("1.0.0.2", nodes=("m",), zones=("a",))]
    assert ips(categorize_endpoints(by_node, svc, "n", "a").cluster) == ["1.0.0.1"]


def test_endpoint_map_dedupes_sorts_filters_family_and_ignores_portless():
    objs = [
        {"kind": "Service", "metadata": {"namespace": "ns", "name": "s"},
         "spec": {"clusterIPs": ["10.96.0.1", "fd00::1"], "ports": [{"name": "p", "port": 80}]}},
        {"kind": "EndpointSlice", "metadata": {"namespace": "ns", "name": "s-1",
                                               "labels": {"kubernetes.io/service-name": "s"}},
         "addressType": "IPv4", "ports": [{"name": "p", "port": 8080}, {"name": "q", "port": None}],
         "endpoints": [{"addresses": ["10.0.0.10"], "conditions": {"terminating": True}},
                       {"addresses": ["10.0.0.9"], "nodeName": "me"}]},
        {"kind": "EndpointSlice", "metadata": {"namespace": "ns", "name": "s-2",
                                               "labels": {"kubernetes.io/service-name": "s"}},
         "addressType": "IPv4", "ports": [{"name": "p", "port": 8080}],
         "endpoints": [{"addresses": ["10.0.0.10"]}]},
        {"kind": "EndpointSlice", "metadata": {"namespace": "ns", "name": "s-3",
                                               "labels": {"kubernetes.io/service-name": "s"}},
         "addressType": "IPv6", "ports": [{"name": "p", "port": 8080}], "endpoints": [{"addresses": ["fd00::9"]}]},
    ]
    state = build_state(load_objects(objs), NodeContext("me", ("192.168.0.1",)))
    (name,) = state.service_ports
    eps = state.endpoints[name]
    assert [str(e) for e in eps] == ["10.0.0.10:8080", "10.0.0.9:8080"]  # string order, as upstream
    assert not eps[0].terminating  # the non-terminating copy wins
    assert eps[1].is_local
    assert list(state.endpoints) == [name]
    v6 = build_state(load_objects(objs), NodeContext("me", ("fd00::2",)))
    assert [str(e) for e in v6.endpoints[name]] == ["[fd00::9]:8080"]
    assert v6.service_ports[name].cluster_ip == "fd00::1"


def test_service_port_info_follows_the_api_helpers():
    objs = [{"kind": "Service", "metadata": {"namespace": "ns", "name": "s"},
             "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "externalTrafficPolicy": "Local",
                      "ports": [{"port": 80}], "healthCheckNodePort": 30000,
                      "loadBalancerSourceRanges": ["fd00::/8", "10.0.0.0/8"]},
             "status": {"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}, {"hostname": "lb.example"}]}}}]
    (info,) = build_state(load_objects(objs), NodeContext("n", ("192.168.0.1",))).service_ports.values()
    # ClusterIP without externalIPs is not externally accessible per the API: eTP Local is ignored
    assert not info.external_policy_local and info.health_check_node_port == 0
    assert info.load_balancer_vips == ("1.1.1.1",) and info.load_balancer_source_ranges == ("10.0.0.0/8",)


@pytest.mark.parametrize("kw,field", [
    ({"node_name": ""}, "node-name"), ({"node_ips": ()}, "node-ip"), ({"node_ips": ("x",)}, "node-ip"),
    ({"cluster_cidrs": ("10.0.0.0/33",)}, "cluster-cidr"), ({"masquerade_bit": 40}, "masquerade-bit"),
    ({"nodeport_addresses": ("nope",)}, "nodeport-addresses")])
def test_node_context_validation(kw, field):
    args = {"node_name": "n", "node_ips": ("192.168.0.1",), **kw}
    with pytest.raises(ModelError, match=f"field {field}"):
        NodeContext(**args)  # type: ignore[arg-type]


def test_node_context_family_and_detector():
    ctx = NodeContext("n", ("fd00::1", "192.168.0.1"), ("10.244.0.0/16", "fd00:244::/56"))
    assert ctx.family == 6 and ctx.local_cidr == "fd00:244::/56" and ctx.node_ip == "fd00::1"
    assert NodeContext("n", ("192.168.0.1",), ("fd00::/8",)).local_cidr is None
    assert NodeContext("n", ("192.168.0.1",), masquerade_bit=14).masquerade_mark == "0x4000"


def test_fast_chain_hash_equals_kube_proxys_base32_encoding():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=500, deadline=None)
    @given(st.text(max_size=80))
    def check(text: str) -> None:
        assert names._hash16(text) == names._hash16_reference(text)

    check()


def test_nodeport_addresses_primary_means_the_node_ips():
    ctx = NodeContext("n", ("192.168.0.5", "fd00::5"), nodeport_addresses=("primary",))
    assert ctx.nodeport_ips() == ["192.168.0.5"]
