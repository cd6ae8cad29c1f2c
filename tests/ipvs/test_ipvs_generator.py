"""kube-proxy's IPVS layout from the model (pkg/proxy/ipvs/proxier.go syncProxyRules/syncEndpoint/
writeIptablesRules), then packets through it, and the kernel accepting the ipsets and iptables rules."""

from __future__ import annotations

import pytest

from dataplane.engine.clock import ManualClock
from dataplane.engine.types import Verdict
from dataplane.k8s.loader import load_text
from dataplane.proxy.ipvs import ipset, ipvsadm
from dataplane.proxy.ipvs.core import Ipvs, Sysctls, packet
from dataplane.proxy.ipvs.generator import IpvsOptions, generate, set_name
from dataplane.proxy.model import NodeContext, build_state
from dataplane.testing.sandbox import Sandbox

CLUSTER = """
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.5], nodeName: node-a}
- {addresses: [10.244.2.7], nodeName: node-b}
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: api}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.60
  ports: [{name: http, port: 80, protocol: TCP, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: api-1, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
endpoints:
- {addresses: [10.244.2.9], nodeName: node-b}
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: kube-system, name: dns}
spec:
  clusterIP: 10.96.0.10
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  externalIPs: [192.0.2.10]
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: kube-system, name: dns-1, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.3], nodeName: node-a}
- {addresses: [10.244.2.3], nodeName: node-b}
ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.70
  loadBalancerSourceRanges: [192.168.100.0/24]
  ports: [{name: https, port: 443, protocol: TCP, nodePort: 30443}]
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.7}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: lb-1, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.8], nodeName: node-a}
ports: [{name: https, port: 8443, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: loc}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.90
  ports: [{name: http, port: 80, protocol: TCP, nodePort: 30090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: loc-1, labels: {kubernetes.io/service-name: loc}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.9], nodeName: node-a}
- {addresses: [10.244.2.9], nodeName: node-b}
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: empty}
spec:
  clusterIP: 10.96.0.80
  ports: [{name: http, port: 80, protocol: TCP}]
"""

NODE = NodeContext(node_name="node-a", node_ips=("192.168.100.2",), cluster_cidrs=("10.244.0.0/16",))


def layout(scheduler: str = "rr"):  # type: ignore[no-untyped-def]
    return generate(build_state(load_text(CLUSTER), NODE), IpvsOptions(scheduler))


def test_virtual_servers_as_kube_proxy_builds_them() -> None:
    """One VS per ClusterIP:port, externalIP, LB ingress and node IP x NodePort; weight 1, Masq,
    rr; affinity -> -p 600; newest real server first (we add in sorted order)."""
    text = layout().ipvsadm_save()
    lines = text.splitlines()
    assert "-A -t 10.96.0.50:80 -s rr" in lines
    web = [ln for ln in lines if ln.startswith("-a -t 10.96.0.50:80")]
    assert web == ["-a -t 10.96.0.50:80 -r 10.244.2.7:8080 -m -w 1", "-a -t 10.96.0.50:80 -r 10.244.1.5:8080 -m -w 1"]
    assert "-A -u 10.96.0.10:53 -s rr -p 600" in lines and "-A -u 192.0.2.10:53 -s rr -p 600" in lines
    assert "-A -t 198.51.100.7:443 -s rr" in lines and "-A -t 192.168.100.2:30443 -s rr" in lines
    assert "-A -t 10.96.0.80:80 -s rr" in lines and not any(ln.startswith("-a -t 10.96.0.80:80") for ln in lines)
    assert ipvsadm.save(ipvsadm.load(text)) == text


def test_local_policy_falls_back_to_cluster_endpoints() -> None:
    """api has eTP=Local and its only endpoint on node-b: IPVS mode falls back to the cluster
    endpoints for the NodePort (kubernetes#97081), where iptables mode would drop."""
    lines = layout().ipvsadm_save().splitlines()
    assert "-a -t 192.168.100.2:30080 -r 10.244.2.9:8080 -m -w 1" in lines
    # with a local endpoint, the NodePort gets only that one; the ClusterIP keeps both
    assert [ln for ln in lines if ln.startswith("-a -t 192.168.100.2:30090")] == [
        "-a -t 192.168.100.2:30090 -r 10.244.1.9:8080 -m -w 1"]
    assert len([ln for ln in lines if ln.startswith("-a -t 10.96.0.90:80")]) == 2


def sets_members(out, key: str) -> list[str]:  # type: ignore[no-untyped-def]
    return list(out.sets[key].members)


def test_ipsets_and_dummy_addresses() -> None:
    out = layout()
    # ClusterIPs, the externalIP and the LB IP (none of them a node address); never the node IP
    assert sorted(out.dummy_addresses) == ["10.96.0.10", "10.96.0.50", "10.96.0.60", "10.96.0.70", "10.96.0.80",
                                           "10.96.0.90", "192.0.2.10", "198.51.100.7"]
    assert set(sets_members(out, "KUBE-IPVS-IPS")) == set(out.dummy_addresses)
    sets = out.sets
    assert set(sets["KUBE-CLUSTER-IP"].members) == {"10.96.0.50,tcp:80", "10.96.0.60,tcp:80", "10.96.0.10,udp:53",
                                                     "10.96.0.70,tcp:443", "10.96.0.80,tcp:80", "10.96.0.90,tcp:80"}
    assert set(sets["KUBE-LOOP-BACK"].members) == {"10.244.1.5,tcp:8080,10.244.1.5", "10.244.1.3,udp:53,10.244.1.3",
                                                    "10.244.1.8,tcp:8443,10.244.1.8", "10.244.1.9,tcp:8080,10.244.1.9"}
    assert set(sets["KUBE-NODE-PORT-TCP"].members) == {"30080", "30443", "30090"}
    assert set(sets["KUBE-NODE-PORT-LOCAL-TCP"].members) == {"30080", "30090"}
    assert set(sets["KUBE-EXTERNAL-IP"].members) == {"192.0.2.10,udp:53"}
    assert set(sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"].members) == {"198.51.100.7,tcp:443,192.168.100.0/24"}
    # the node IP is inside the source range: the LB IP itself is allowed as a source
    assert set(sets["KUBE-LOAD-BALANCER-SOURCE-IP"].members) == {"198.51.100.7,tcp:443,198.51.100.7"}
    assert len(sets) == 17 and set_name("KUBE-LOAD-BALANCER-SOURCE-CIDR", 6) == "KUBE-6-LOAD-BALANCER-SOURCE-CID"
    assert ipset.load(out.ipset_save()).keys() == {s.name for s in sets.values()}


def test_iptables_rules_follow_write_iptables_rules() -> None:
    text = layout().iptables_restore()
    assert ('-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" '
            "-m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ") in text
    assert "-A KUBE-NODE-PORT -p tcp -m comment --comment" in text
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x004000" in text  # fmt.Sprintf("%#08x", 1<<14)
    inputs = [ln.rsplit(" ", 1)[1] for ln in text.split("*nat")[0].splitlines() if ln.startswith("-A INPUT ")]
    # EnsureRule(Prepend) of KUBE-NODE-PORT, KUBE-PROXY-FIREWALL, KUBE-IPVS-FILTER leaves the last first
    assert inputs == ["KUBE-IPVS-FILTER", "KUBE-PROXY-FIREWALL", "KUBE-NODE-PORT"]
    assert "-m ipvs" not in text  # the node may reach the LB: no KUBE-IPVS-OUT-FILTER drop


def test_packets_through_the_generated_layout() -> None:
    """ClusterIP round robin, NodePort, no-endpoint reject, affinity (persistence) on the DNS VS."""
    out = layout()
    ipvs = Ipvs(ManualClock(), Sysctls.kube_proxy())
    ipvs.services = out.services
    first = ipvs.ip_vs_in(packet("10.244.1.20", "10.96.0.50", sport=1001)).decision()
    second = ipvs.ip_vs_in(packet("10.244.1.20", "10.96.0.50", sport=1002)).decision()
    assert [str(d.nat.addr) for d in (first, second)] == ["10.244.2.7", "10.244.1.5"]  # type: ignore[union-attr]
    node_port = ipvs.ip_vs_in(packet("203.0.113.9", "192.168.100.2", dport=30080)).decision()
    assert (str(node_port.nat.addr), node_port.nat.port) == ("10.244.2.9", 8080)  # type: ignore[union-attr]
    reject = ipvs.ip_vs_in(packet("10.244.1.20", "10.96.0.80")).decision()
    assert reject.verdict is Verdict.REJECT and reject.reject_with == "icmp-port-unreachable"
    dns = [ipvs.ip_vs_in(packet("10.244.1.20", "10.96.0.10", "udp", sport=p, dport=53)).decision() for p in (5001, 5002, 5003)]
    assert len({str(d.nat.addr) for d in dns}) == 1  # type: ignore[union-attr]
    ext = ipvs.ip_vs_in(packet("203.0.113.9", "192.0.2.10", "udp", sport=5353, dport=53)).decision()
    assert ext.nat is not None and str(ext.nat.addr) in ("10.244.1.3", "10.244.2.3") and ext.nat.port == 53
    assert ipvs.ip_vs_in(packet("203.0.113.9", "192.168.100.2", dport=30090)).decision().nat.addr.exploded == "10.244.1.9"  # type: ignore[union-attr]


def test_mh_scheduler_sets_the_source_port_flag_and_bad_scheduler_is_refused() -> None:
    lines = layout("mh").ipvsadm_save().splitlines()
    assert "-A -t 10.96.0.50:80 -s mh -b mh-port" in lines
    with pytest.raises(ValueError, match="unknown IPVS scheduler 'fancy'"):
        IpvsOptions("fancy")


@pytest.mark.requires("root", "netns", "ipset", "iptables-legacy")
def test_kernel_accepts_the_generated_ipsets_and_rules(sandbox: Sandbox) -> None:
    """ipset restore, then iptables-restore of the nat and filter tables that match those sets."""
    ns = sandbox.netns("ipvsgen")
    out = layout()
    ns.run(["ipset", "restore"], input=out.ipset_save())
    try:
        res = ns.run(["iptables-legacy-restore", "-w"], input=out.iptables_restore(), check=False)
        assert res.returncode == 0, res.stderr
        saved = ns.run(["iptables-legacy-save", "-t", "nat"]).stdout
        assert "--match-set KUBE-CLUSTER-IP dst,dst" in saved
        parsed = ipset.load(ns.run(["ipset", "save"]).stdout)
        assert {n: s.members for n, s in parsed.items()} == {s.name: s.members for s in out.sets.values()}
    finally:
        for table in ("filter", "nat"):
            ns.run(["iptables-legacy", "-w", "-t", table, "-F"], check=False)
            ns.run(["iptables-legacy", "-w", "-t", table, "-X"], check=False)
        ns.run(["ipset", "destroy"], check=False)


def test_combined_text_sections_parse_back() -> None:
    """The `--mode ipvs` text: each section is its tool's format; our parsers skip the headers."""
    out = layout()
    text = out.text()
    sections = text.split("# ipvsadm-save -n\n")[1]
    ipvs_part, rest = sections.split("# ipset save\n")
    assert ipvsadm.save(ipvsadm.load(ipvs_part)) == out.ipvsadm_save()
    assert ipset.load(rest.split("# iptables-restore\n")[0]).keys() == {s.name for s in out.sets.values()}
    stats = out.stats()
    # web 1 VS x 2, api ClusterIP + NodePort x 1, dns ClusterIP + externalIP x 2, lb ClusterIP +
    # LB IP + NodePort x 1, loc ClusterIP x 2 + NodePort x 1 (local), empty 1 VS x 0:
    # 11 virtual servers, 2 + 2 + 4 + 3 + 3 = 14 real servers
    assert stats["virtual_servers"] == 11 and stats["real_servers"] == 14
