"""Golden tests of the iptables generator against the text kube-proxy's own tests expect."""

from __future__ import annotations

from dataplane.k8s import load_objects, load_paths
from dataplane.proxy.iptables.generator import GeneratorOptions, generate, probability
from dataplane.proxy.model import NodeContext, build_state

from tests.proxy.helpers import DATA, jump_targets_declared, normalise, rules_for, synthetic, upstream_context


def svc(ns: str, name: str, **spec: object) -> dict[str, object]:
    status = spec.pop("status", {})
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
            "spec": spec, "status": status}


def eps(ns: str, name: str, endpoints: list[dict[str, object]], port: int = 80, pname: str = "p80",
        family: str = "IPv4") -> dict[str, object]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
            "addressType": family, "endpoints": endpoints,
            "ports": [{"name": pname, "port": port, "protocol": "TCP"}]}


P80 = [{"name": "p80", "port": 80, "protocol": "TCP"}]


def test_overall_rules_equal_kube_proxys_TestOverallIPTablesRules():
    cluster = load_paths([DATA / "overall.yaml"])
    ours = rules_for(cluster, random_fully=False, nfacct=True).text()
    expected = (DATA / "overall.expected").read_text()
    assert normalise(ours) == normalise(expected)


def test_sorted_order_reproduces_upstreams_line_order_inside_each_chain():
    cluster = load_paths([DATA / "overall.yaml"])
    ours = rules_for(cluster, random_fully=False, nfacct=True).text()
    services = [l for l in ours.splitlines() if l.startswith("-A KUBE-SERVICES")]
    upstream = [l for l in (DATA / "overall.expected").read_text().splitlines() if l.startswith("-A KUBE-SERVICES")]
    assert services == upstream


def test_no_endpoints_rejects_every_address_of_the_service():
    # kube-proxy's TestNoEndpointsReject objects.
    cluster = load_objects([svc("ns1", "svc1", type="LoadBalancer", clusterIP="172.30.0.41",
                                externalIPs=["192.168.99.11"],
                                ports=[{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
                                status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})])
    rs = rules_for(cluster)
    assert rs.filter_rules[1:5] == [
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT',
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j REJECT',
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j REJECT',
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j REJECT',
    ]
    assert not any(c.startswith("KUBE-S") and c not in ("KUBE-SERVICES",) for c in rs.nat_chains)
    assert [r for r in rs.nat_rules if "ns1/svc1" in r] == []


def test_internal_traffic_policy_local_without_local_endpoints_drops_clusterip():
    cluster = load_objects([
        svc("ns1", "svc1", clusterIP="172.30.0.41", internalTrafficPolicy="Local", ports=P80),
        eps("ns1", "svc1", [{"addresses": ["10.180.0.1"], "nodeName": "host1"}]),
    ])
    rs = rules_for(cluster)
    assert ('-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" -m tcp -p tcp '
            '-d 172.30.0.41 --dport 80 -j DROP') in rs.filter_rules
    assert not [c for c in rs.nat_chains if c.startswith(("KUBE-SVC", "KUBE-SVL", "KUBE-SEP"))]


def test_internal_traffic_policy_local_uses_only_local_endpoints_in_svl():
    cluster = load_objects([
        svc("ns1", "svc1", clusterIP="172.30.0.41", internalTrafficPolicy="Local", ports=P80),
        eps("ns1", "svc1", [{"addresses": ["10.180.0.1"], "nodeName": "host1"},
                            {"addresses": ["10.180.0.2"], "nodeName": "test-node"}]),
    ])
    text = rules_for(cluster).text()
    n = normalise(text)["nat"][1]
    svl = [c for c in n if c.startswith("KUBE-SVL-")]
    assert len(svl) == 1 and not [c for c in n if c.startswith("KUBE-SVC-")]
    assert n[svl[0]][0].endswith("! -s 10.0.0.0/8 -j KUBE-MARK-MASQ")  # masq rule lives in the SVL chain
    assert [r for r in n[svl[0]] if "-> " in r] == [
        f'-A {svl[0]} -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -j '
        + [c for c in n if c.startswith("KUBE-SEP-")][0]]
    assert "10.180.0.1" not in text


def test_external_traffic_policy_local_with_local_endpoint_jumps_to_svl():
    cluster = load_objects([
        svc("ns2", "svc2", type="NodePort", clusterIP="172.30.0.42", externalTrafficPolicy="Local",
            ports=[{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]),
        eps("ns2", "svc2", [{"addresses": ["10.180.0.2"], "nodeName": "test-node"},
                            {"addresses": ["10.180.0.3"], "nodeName": "other"}]),
    ])
    n = normalise(rules_for(cluster).text())["nat"][1]
    assert n["KUBE-EXT-GNZBNJ2PO5MGZ6GT"][-1] == "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVL-GNZBNJ2PO5MGZ6GT"
    # SVC has both endpoints (for short-circuited traffic), SVL only the local one.
    assert sum("->" in r for r in n["KUBE-SVC-GNZBNJ2PO5MGZ6GT"]) == 2
    assert sum("->" in r for r in n["KUBE-SVL-GNZBNJ2PO5MGZ6GT"]) == 1


def test_terminating_endpoints_are_used_only_when_no_endpoint_is_ready():
    serving_term = {"ready": False, "serving": True, "terminating": True}
    cluster = load_objects([
        svc("ns1", "svc1", clusterIP="172.30.0.41", ports=P80),
        eps("ns1", "svc1", [{"addresses": ["10.0.1.1"], "conditions": serving_term},
                            {"addresses": ["10.0.1.2"], "conditions": {"ready": False, "serving": False,
                                                                     "terminating": True}}]),
        svc("ns2", "svc2", clusterIP="172.30.0.42", ports=P80),
        eps("ns2", "svc2", [{"addresses": ["10.0.2.1"], "conditions": serving_term},
                            {"addresses": ["10.0.2.2"]}]),
    ])
    text = rules_for(cluster).text()
    assert "--to-destination 10.0.1.1:80" in text       # fallback to serving-terminating
    assert "10.0.1.2" not in text                       # not serving: never used
    assert "--to-destination 10.0.2.2:80" in text and "10.0.2.1" not in text  # ready wins


def test_all_endpoints_not_ready_means_no_endpoints():
    cluster = load_objects([svc("ns1", "svc1", clusterIP="172.30.0.41", ports=P80),
                            eps("ns1", "svc1", [{"addresses": ["10.0.1.1"], "conditions": {"ready": False}}])])
    assert any("has no endpoints" in r and "REJECT" in r for r in rules_for(cluster).filter_rules)


def test_ipv6_rule_set():
    cluster = load_objects([
        svc("ns1", "svc1", clusterIPs=["172.30.0.41", "fd00:10:96::41"], type="NodePort",
            ports=[{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]),
        eps("ns1", "svc1", [{"addresses": ["10.180.0.1"]}]),
        eps("ns1", "svc1", [{"addresses": ["fd00:10:180::1"]}], family="IPv6") | {
            "metadata": {"namespace": "ns1", "name": "svc1-v6", "labels": {"kubernetes.io/service-name": "svc1"}}},
    ])
    ctx = NodeContext("test-node", ("fd00::2", "192.168.0.2"), ("10.0.0.0/8", "fd00:10::/64"))
    rs = rules_for(cluster, ctx)
    text = rs.text()
    assert rs.family == 6 and "KUBE-FIREWALL" not in text  # the localnet rule is IPv4-only
    assert "-d fd00:10:96::41 --dport 80 -j KUBE-SVC-" in text and "172.30.0.41" not in text
    assert "! -s fd00:10::/64 -j KUBE-MARK-MASQ" in text
    assert "-j DNAT --to-destination [fd00:10:180::1]:80" in text and "10.180.0.1" not in text
    assert "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS" in text
    from dataplane.proxy.iptables import names
    assert names.endpoint_chain("ns1/svc1:p80", "tcp", "[fd00:10:180::1]:80") in rs.nat_chains


def test_probabilities_use_kube_proxys_ten_decimals():
    assert [probability(n) for n in (2, 3, 7, 10)] == ["0.5000000000", "0.3333333333", "0.1428571429", "0.1000000000"]
    rs = rules_for(synthetic(1, 3))
    stats = [r.split("--probability ")[1].split()[0] for r in rs.nat_rules if "--probability" in r]
    assert stats == ["0.3333333333", "0.5000000000"]


def test_large_cluster_mode_drops_endpoint_comments_above_1000_endpoints():
    small, large = rules_for(synthetic(100, 10)), rules_for(synthetic(101, 10))
    assert any(r.startswith("-A KUBE-SEP-") and "--comment" in r for r in small.nat_rules)
    assert not any(r.startswith("-A KUBE-SEP-") and "--comment" in r for r in large.nat_rules)
    assert not any("->" in r for r in large.nat_rules)
    assert any("cluster IP" in r for r in large.nat_rules)  # service-level comments stay


def test_source_range_containing_the_node_ip_allows_the_lb_ip_itself():
    cluster = load_objects([
        svc("ns1", "svc1", type="LoadBalancer", clusterIP="172.30.0.41", loadBalancerSourceRanges=["192.168.0.0/24"],
            ports=[{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
            status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"ip": "1.2.3.5", "ipMode": "Proxy"}]}}),
        eps("ns1", "svc1", [{"addresses": ["10.180.0.1"]}]),
    ])
    fw = normalise(rules_for(cluster).text())["nat"][1]
    chain = next(c for c in fw if c.startswith("KUBE-FW-"))
    assert [r.split("loadbalancer IP\" ")[-1] for r in fw[chain][:2]] == [
        "-s 192.168.0.0/24 -j " + chain.replace("FW", "EXT"), "-s 1.2.3.4 -j " + chain.replace("FW", "EXT")]
    assert "1.2.3.5" not in rules_for(cluster).text()  # Proxy-mode LB IPs are not programmed


def test_nodeport_addresses_write_one_tail_rule_per_matching_node_ip():
    ctx = upstream_context(node_ips=("192.168.0.2", "10.1.0.2"), nodeport_addresses=("192.168.0.0/16",))
    rs = rules_for(synthetic(1, 1, svc_type="NodePort"), ctx)
    tail = [r for r in rs.nat_rules if "KUBE-NODEPORTS" in r and r.startswith("-A KUBE-SERVICES")]
    assert tail == ['-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
                    'the last rule in this chain" -d 192.168.0.2 -j KUBE-NODEPORTS']
    assert "KUBE-FIREWALL" not in rs.filter_chains  # 127/8 not selected: localhost NodePorts are off


def test_masquerade_all_marks_every_clusterip_packet():
    rs = rules_for(synthetic(1, 1), upstream_context(masquerade_all=True))
    masq = [r for r in rs.nat_rules if r.startswith("-A KUBE-SVC-") and r.endswith("KUBE-MARK-MASQ")]
    assert len(masq) == 1 and "! -s" not in masq[0]


def test_masquerade_bit_changes_the_mark():
    text = rules_for(synthetic(1, 1), upstream_context(masquerade_bit=5)).text()
    assert "--or-mark 0x20" in text and "--mark 0x20/0x20" in text and "0x4000" not in text


def test_headless_and_externalname_services_are_ignored():
    cluster = load_objects([
        svc("ns1", "headless", clusterIP="None", ports=P80),
        svc("ns1", "ext", type="ExternalName", externalName="example.com"),
        eps("ns1", "headless", [{"addresses": ["10.180.0.1"]}]),
    ])
    rs = rules_for(cluster)
    assert not any("ns1/" in r for r in rs.nat_rules + rs.filter_rules)


def test_named_target_ports_resolve_through_the_endpoint_port_name():
    cluster = load_objects([
        svc("ns1", "svc1", clusterIP="172.30.0.41",
            ports=[{"name": "http", "port": 80, "targetPort": "web"}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"namespace": "ns1", "name": "s", "labels": {"kubernetes.io/service-name": "svc1"}},
         "addressType": "IPv4", "endpoints": [{"addresses": ["10.180.0.1"]}],
         "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]},
    ])
    text = rules_for(cluster).text()
    assert "-m tcp -p tcp -j DNAT --to-destination 10.180.0.1:8080" in text
    assert "-m udp -p udp -j DNAT --to-destination 10.180.0.1:5353" in text
    assert '"ns1/svc1:dns cluster IP" -m udp -p udp -d 172.30.0.41 --dport 53' in text


def test_output_is_deterministic_and_random_order_only_permutes_services():
    cluster = synthetic(30, 2)
    a, b = rules_for(cluster).text(), rules_for(cluster).text()
    assert a == b
    r1 = rules_for(cluster, service_order="random", seed=1).text()
    r2 = rules_for(cluster, service_order="random", seed=2).text()
    assert r1 != r2 and r1 != a
    assert normalise(r1)["nat"][0] == normalise(a)["nat"][0]
    assert sorted(r1.splitlines()) == sorted(a.splitlines())
    assert r1.splitlines()[-2].startswith('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports')


def test_every_jump_target_is_declared():
    cluster = load_paths([DATA / "overall.yaml"])
    for layout in ("modern", "classic"):
        assert jump_targets_declared(rules_for(cluster, layout=layout, jump_rules=True).text()) == []


def test_classic_layout_puts_two_rules_per_clusterip_in_kube_services():
    cluster = synthetic(10, 2)
    classic = normalise(rules_for(cluster, layout="classic").text())["nat"][1]
    modern = normalise(rules_for(cluster).text())["nat"][1]
    assert len(classic["KUBE-SERVICES"]) == 2 * 10 + 1
    assert len(modern["KUBE-SERVICES"]) == 10 + 1
    first = classic["KUBE-SERVICES"][:2]
    assert first[0].endswith("-d 10.0.0.1/32 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ")
    assert first[1].endswith("-d 10.0.0.1/32 --dport 80 -j " + first[1].split()[-1])
    svc_chain = first[1].split()[-1]
    assert not any("KUBE-MARK-MASQ" in r for r in classic[svc_chain])  # no masq rule in KUBE-SVC-*


def test_classic_nodeport_masquerades_in_kube_nodeports():
    nodeports = normalise(rules_for(synthetic(2, 1, svc_type="NodePort"), layout="classic").text())["nat"][1]["KUBE-NODEPORTS"]
    assert [r.split()[-1] for r in nodeports][::2] == ["KUBE-MARK-MASQ", "KUBE-MARK-MASQ"]
    assert len(nodeports) == 4


def test_jump_rules_mirror_kube_proxys_prepends():
    rs = rules_for(synthetic(1, 1), jump_rules=True)
    assert rs.jump_rules["nat"] == [
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']
    inputs = [r for r in rs.jump_rules["filter"] if r.startswith("-A INPUT")]
    assert [r.split()[-1] for r in inputs] == ["KUBE-FIREWALL", "KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS",
                                               "KUBE-EXTERNAL-SERVICES"]


def test_generate_needs_no_endpoint_objects_for_a_fresh_service():
    state = build_state(load_objects([svc("a", "b", clusterIP="10.96.0.9", ports=P80)]), upstream_context())
    assert "a/b:p80 has no endpoints" in generate(state, GeneratorOptions()).text()


def test_reference_example_chain_names_and_rules():
    # /work/shared/reference/kube-proxy.md section 1.11 (named ports, NodePort with eTP Cluster).
    cluster = load_objects([
        svc("default", "web", clusterIP="10.96.0.50", ports=[{"name": "http", "port": 80, "targetPort": 8080}]),
        eps("default", "web", [{"addresses": ["10.244.1.5"]}, {"addresses": ["10.244.2.7"]}], port=8080, pname="http"),
        svc("default", "api", type="NodePort", clusterIP="10.96.0.60",
            ports=[{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]),
        eps("default", "api", [{"addresses": ["10.244.3.9"]}], port=8080, pname="http"),
    ])
    rs = rules_for(cluster, NodeContext("node-1", ("192.168.100.11",), ("10.244.0.0/16",)))
    assert set(rs.nat_chains) >= {"KUBE-SVC-CDGGSHYLG3RE2FKL", "KUBE-SEP-AFGSLHOD2HFNCBX4", "KUBE-SEP-2RIJ5GIYXEFH6G4D",
                                  "KUBE-EXT-KKDGWRPDK6Z5NCHS", "KUBE-SVC-KKDGWRPDK6Z5NCHS", "KUBE-SEP-B27BRRCL4AGNOB2X"}
    assert ('-A KUBE-NODEPORTS -m comment --comment default/api:http -m tcp -p tcp --dport 30080 '
            '-j KUBE-EXT-KKDGWRPDK6Z5NCHS') in rs.nat_rules
    assert ('-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.1.5:8080" '
            '-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-AFGSLHOD2HFNCBX4') in rs.nat_rules
