"""Loading Kubernetes objects: formats, conversion of legacy Endpoints, and located errors."""

from __future__ import annotations

import json

import pytest

from dataplane.k8s import ModelError, load_path, load_paths, load_text

SERVICE_YAML = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  clusterIPs: [10.96.0.50, "fd00::50"]
  ports:
  - {name: http, port: 80, targetPort: web, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
  externalIPs: [192.0.2.9]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_multi_document_yaml(tmp_path):
    text = SERVICE_YAML + """---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: n1
  zone: z1
  hints: {forZones: [{name: z1}]}
ports: [{name: http, port: 8080}]
---
---
kind: ConfigMap
metadata: {name: other}
"""
    c = load_path(write(tmp_path, "a.yaml", text))
    (svc,) = c.services
    assert svc.key == "shop/web" and svc.type == "NodePort"
    assert svc.cluster_ips == ("10.96.0.50", "fd00::50") and svc.cluster_ip(6) == "fd00::50"
    assert [(p.name, p.protocol, p.port, p.target_port, p.node_port) for p in svc.ports] == [
        ("http", "TCP", 80, "web", 30080), ("dns", "UDP", 53, None, 0)]
    assert svc.session_affinity == "ClientIP" and svc.affinity_timeout == 60
    assert (svc.external_traffic_policy, svc.internal_traffic_policy) == ("Local", "Local")
    (es,) = c.endpoint_slices
    (ep,) = es.endpoints
    assert (ep.is_ready, ep.is_serving, ep.is_terminating, ep.node_name, ep.hint_zones) == (
        False, True, True, "n1", ("z1",))
    assert c.ignored == ["ConfigMap other"]


def test_kubectl_list_json_and_typed_lists(tmp_path):
    listing = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "x"},
         "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 443}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "a-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "a"}},
         "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.9"]}], "ports": [{"port": 6443, "name": ""}]},
    ]}
    typed = {"apiVersion": "v1", "kind": "ServiceList", "items": [
        {"metadata": {"name": "b"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}]}
    c = load_paths([write(tmp_path, "l.json", json.dumps(listing)), write(tmp_path, "t.json", json.dumps(typed))])
    assert [s.key for s in c.services] == ["x/a", "default/b"]
    assert c.services[1].headless and not c.services[1].proxied
    assert c.endpoint_slices[0].ports[0].port == 6443


def test_legacy_endpoints_are_converted_to_slices():
    c = load_text(json.dumps({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "s", "namespace": "n"},
                              "subsets": [{"addresses": [{"ip": "10.1.0.1", "nodeName": "n1"}, {"ip": "fd00::1"}],
                                           "notReadyAddresses": [{"ip": "10.1.0.2"}],
                                           "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]}]}))
    v4, v6 = c.endpoint_slices
    assert (v4.service_key, v4.address_type, v6.address_type) == ("n/s", "IPv4", "IPv6")
    assert [(e.addresses, e.is_ready, e.node_name) for e in v4.endpoints] == [
        (("10.1.0.1",), True, "n1"), (("10.1.0.2",), False, None)]
    assert v4.ports[0].port == 8080


def test_node_and_pod_records():
    c = load_text("""
kind: Node
metadata: {name: n1, labels: {topology.kubernetes.io/zone: z}}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.100.11}, {type: Hostname, address: n1}]}
---
kind: Pod
metadata: {name: p, namespace: ns}
spec: {nodeName: n1}
status: {podIP: 10.244.1.7, phase: Running}
""")
    assert c.nodes[0].ips() == ["192.168.100.11"] and c.nodes[0].pod_cidrs == ("10.244.1.0/24",)
    assert (c.pods[0].node_name, c.pods[0].pod_ips) == ("n1", ("10.244.1.7",))


@pytest.mark.parametrize("text,where", [
    ("kind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 0}]}",
     "Service default/s: field spec.ports[0].port: 0 is out of range 1..65535"),
    ("kind: Service\nmetadata: {name: s, namespace: n}\nspec: {clusterIP: 10.0.0.999, ports: [{port: 1}]}",
     "Service n/s: field spec.clusterIP: '10.0.0.999' is not a valid IP address"),
    ("kind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 1, protocol: ICMP}]}",
     "field spec.ports[0].protocol: 'ICMP' is not one of TCP, UDP, SCTP"),
    ("kind: Service\nmetadata: {name: s}\nspec: {type: Cluster, ports: [{port: 1}]}",
     "field spec.type: 'Cluster' is not one of"),
    ("kind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 1}, {port: 2}]}",
     "field spec.ports[0].name: is required when a Service has more than one port"),
    ("kind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 1}], loadBalancerSourceRanges: [nope]}",
     "field spec.loadBalancerSourceRanges[0]: 'nope' is not a valid CIDR"),
    ("kind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\nendpoints: []",
     "EndpointSlice default/e: field metadata.labels[kubernetes.io/service-name]: is required"),
    ("kind: EndpointSlice\nmetadata: {name: e, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\n"
     "endpoints: [{addresses: ['fd00::1']}]",
     "field endpoints[0].addresses[0]: fd00::1 is not an IPv4 address"),
    ("kind: Service\nspec: {}", "field metadata: is required"),
    ("metadata: {name: x}", "field kind: is required"),
    ("- 1\n- 2", "expected a Kubernetes object (a mapping), found a number"),
    ("kind: Service\nmetadata: {name: s}\nspec: {ports: {port: 1}}", "field spec.ports: must be a list, found"),
])
def test_errors_name_file_object_and_field(tmp_path, text, where):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ModelError) as err:
        load_path(path)
    assert str(err.value).startswith(str(path) + ": ")
    assert where in str(err.value)


def test_syntax_errors_give_the_line(tmp_path):
    with pytest.raises(ModelError, match=r"bad.yaml: invalid YAML at line 2 column"):
        load_path(write(tmp_path, "bad.yaml", "kind: Service\n  metadata: [\n"))
    with pytest.raises(ModelError, match=r"bad.json: invalid JSON at line 1"):
        load_path(write(tmp_path, "bad.json", "[{]"))


def test_unreadable_and_binary_files(tmp_path):
    with pytest.raises(ModelError, match="cannot read"):
        load_path(tmp_path / "missing.yaml")
    with pytest.raises(ModelError, match="not UTF-8"):
        binary = tmp_path / "bin.yaml"
        binary.write_bytes(b"kind: \xff\xfe")
        load_path(binary)
