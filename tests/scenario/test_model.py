"""The runner's pure parts: scheduling and allocation, endpoint derivation, DNS records and the
resolv.conf search logic, and the k8s model handed to the proxy generators."""

from __future__ import annotations

import textwrap

from dataplane.scenario import cluster_model, dns, endpoints, spec, topology

SCENARIO = textwrap.dedent("""\
    cluster: {dns: true}
    traffic: [{name: t, from: pod/solo, to: {service: web, port: http}}]
    ---
    apiVersion: v1
    kind: List
    items:
      - {apiVersion: v1, kind: Node, metadata: {name: a}, spec: {podCIDR: 10.244.1.0/24},
         status: {addresses: [{type: InternalIP, address: 192.168.100.11}]}}
      - {apiVersion: v1, kind: Node, metadata: {name: b}, spec: {podCIDR: 10.244.2.0/24},
         status: {addresses: [{type: InternalIP, address: 192.168.100.12}]}}
      - apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          replicas: 3
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec: {containers: [{name: w, ports: [{containerPort: 8080, name: http}]}]}
      - {apiVersion: v1, kind: Pod, metadata: {name: solo, labels: {app: web}},
         spec: {nodeName: a, containers: [{name: s, ports: [{containerPort: 9090, name: other}]}]}}
      - apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {type: NodePort, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
      - {apiVersion: v1, kind: Service, metadata: {name: fixed},
         spec: {clusterIP: 10.96.0.100, selector: {app: web}, ports: [{port: 81, targetPort: 8080}]}}
      - {apiVersion: v1, kind: Service, metadata: {name: hl}, spec: {clusterIP: None, selector: {app: web}, ports: [{port: 1}]}}
    """)


def plan():
    return topology.plan(spec.parse(SCENARIO, "m.yaml"), "feed01")


def test_scheduling_spreads_replicas_after_pinned_pods():
    t = plan()
    nodes = {p.name: p.node for p in t.pods}
    assert nodes["solo"] == "a"
    replicas = [n for name, n in nodes.items() if name.startswith("web-")]
    assert sorted(replicas) == ["a", "b", "b"]          # b was emptier after solo went to a
    assert len({p.netns for p in t.pods}) == len(t.pods) and all(p.netns.startswith("dpfeed01-p") for p in t.pods)


def test_allocation_skips_taken_ips_and_adds_kube_dns():
    t = plan()
    ips = {s.service.name: s.cluster_ip for s in t.services}
    assert ips["fixed"] == "10.96.0.100" and ips["web"] == "10.96.0.101" and ips["hl"] is None
    assert ips["kube-dns"] == "10.96.0.10"
    assert t.service("default", "web").node_ports == (30000,)
    dns_pod = t.pod("kube-system", "kube-dns")
    assert dns_pod is not None and dns_pod.role == "dns"


def test_named_target_port_resolves_per_pod_and_readiness_is_kept():
    t = plan()
    rows = []
    for i, p in enumerate(t.pods):
        rows.append((p, f"10.244.1.{10 + i}", p.name != "solo" and i != 1))
    web = endpoints.derive(t.service("default", "web"), rows)[0]
    # solo has no port named http: left out of that port's endpoints
    assert {e.pod for e in web.endpoints} == {p.key for p in t.pods if p.name.startswith("web-")}
    assert all(e.port == 8080 for e in web.endpoints)
    assert [e.ip for e in web.endpoints] == sorted((e.ip for e in web.endpoints), key=lambda s: int(s.split(".")[-1]))
    assert len(web.ready) == len(web.endpoints) - 1
    fixed = endpoints.derive(t.service("default", "fixed"), rows)[0]
    assert len(fixed.endpoints) == 4                    # numeric targetPort: every selected pod


def test_model_for_the_proxy_has_slices_per_port():
    t = plan()
    rows = [(p, f"10.244.1.{10 + i}", True) for i, p in enumerate(t.pods)]
    eps = {s.key: endpoints.derive(s, rows) for s in t.services}
    model = cluster_model.cluster(t, eps)
    web = next(s for s in model.services if s.name == "web")
    assert web.cluster_ips == ("10.96.0.101",) and web.ports[0].node_port == 30000
    slices = [sl for sl in model.endpoint_slices if sl.service_name == "web"]
    assert len(slices) == 1 and slices[0].ports[0].port == 8080 and len(slices[0].endpoints) == 3
    assert next(s for s in model.services if s.name == "hl").headless


def test_dns_records_follow_the_kubernetes_dns_spec():
    t = plan()
    rows = [(p, f"10.244.1.{10 + i}", True) for i, p in enumerate(t.pods)]
    eps = {s.key: endpoints.derive(s, rows) for s in t.services}
    zone = dns.records([(s.service, s.cluster_ip) for s in t.services], eps)
    assert zone["web.default.svc.cluster.local"] == [["A", "10.96.0.101"]]
    assert zone["_http._tcp.web.default.svc.cluster.local"] == [["SRV", "0 100 80 web.default.svc.cluster.local."]]
    headless = zone["hl.default.svc.cluster.local"]
    assert len(headless) == 4 and all(r[0] == "A" for r in headless)
    ip = headless[0][1]
    assert zone[f"{ip.replace('.', '-')}.hl.default.svc.cluster.local"] == [["A", ip]]


def test_resolv_conf_search_order_and_ndots():
    conf = dns.ResolvConf.cluster_first("shop", "10.96.0.10")
    assert conf.text() == ("search shop.svc.cluster.local svc.cluster.local cluster.local\n"
                           "nameserver 10.96.0.10\noptions ndots:5\n")
    assert conf.candidates("web")[0] == "web.shop.svc.cluster.local"
    assert conf.candidates("a.b.c.d.e.f")[0] == "a.b.c.d.e.f"          # >= ndots dots: absolute first
    assert conf.candidates("web.default.svc.cluster.local.") == ["web.default.svc.cluster.local"]


def test_dns_server_answers_from_the_zone(tmp_path):
    from dnslib import QTYPE, RCODE, DNSRecord

    zone = tmp_path / "zone.json"
    dns.write_zone(str(zone), {"web.default.svc.cluster.local": [["A", "10.96.0.101"]],
                               "alias.default.svc.cluster.local": [["CNAME", "web.default.svc.cluster.local"]]})
    r = dns.ZoneResolver(str(zone))
    ask = lambda name: r.resolve(DNSRecord.question(name, "A"), None)  # noqa: E731
    a = ask("web.default.svc.cluster.local")
    assert [str(rr.rdata) for rr in a.rr] == ["10.96.0.101"]
    c = ask("alias.default.svc.cluster.local")
    assert [QTYPE[rr.rtype] for rr in c.rr] == ["CNAME", "A"]
    assert RCODE[ask("nope.default.svc.cluster.local").header.rcode] == "NXDOMAIN"
    assert RCODE[ask("example.com").header.rcode] == "REFUSED"


def test_topology_picture_is_valid_svg_with_nodes_pods_and_paths():
    import xml.dom.minidom

    from dataplane.scenario.picture import svg

    report = {"scenario": "s", "settings": {"dataplane": "kernel", "proxyMode": "iptables", "podNetwork": "vxlan"},
              "nodes": [{"name": "node-1", "ip": "192.168.100.11", "podCIDR": "10.244.1.0/24"}],
              "pods": [{"name": "web-1", "node": "node-1", "ip": "10.244.1.2", "ready": True},
                       {"name": "web-2", "node": "node-1", "ip": "10.244.1.3", "ready": False}],
              "services": [{"name": "web", "namespace": "default", "type": "NodePort", "clusterIP": "10.96.0.100",
                            "nodePorts": [30080]}],
              "endpointSlices": [{"metadata": {"namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                                  "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": True}},
                                                {"addresses": ["10.244.1.3"], "conditions": {"ready": False}}]}]}
    doc = xml.dom.minidom.parseString(svg(report))
    texts = " ".join(t.firstChild.data for t in doc.getElementsByTagName("text"))
    assert "node-1  192.168.100.11" in texts and "10.244.1.3  (not ready)" in texts
    assert "10.96.0.100 | NodePort 30080 -> 10.244.1.2" in texts and "vxlan0 overlay" in texts
