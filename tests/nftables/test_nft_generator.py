"""kube-proxy's nftables layout generated from the proxy model: upstream's own expected rules, the real
nft accepting it (IPv4 and IPv6), the evaluator on it, and partial syncs that reach the same state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import DATA, normalized, nft_list, nft_load
from dataplane.engine.nft_eval import NftEvaluator
from dataplane.engine.types import Hook, PacketMeta, Verdict
from dataplane.k8s import load_objects
from dataplane.proxy.model import NodeContext, build_state
from dataplane.proxy.nftables.generator import NftOptions, changes, generate, generate_ruleset, hash_and_truncate
from dataplane.proxy.nftables.parser import parse_text

OVERALL = Path(__file__).parents[1] / "proxy" / "data" / "overall.yaml"  # TestOverall*Rules services
CONTEXT = NodeContext("test-node", ("192.168.0.2",), ("10.0.0.0/8",))
OPTIONS = NftOptions(service_cidrs=("172.30.0.0/16",))


def overall_objects() -> list[dict]:
    return [o for o in yaml.safe_load_all(OVERALL.read_text()) if o]


def state(objects: list[dict] | None = None, context: NodeContext = CONTEXT):
    return build_state(load_objects(objects if objects is not None else overall_objects()), context)


def service(name: str, ip: str, endpoints: list[str], node_port: int | None = None) -> list[dict]:
    port: dict = {"name": "p80", "port": 80, "protocol": "TCP"}
    if node_port:
        port["nodePort"] = node_port
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "ns9", "name": name},
             "spec": {"type": "NodePort" if node_port else "ClusterIP", "clusterIP": ip, "ports": [port]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"namespace": "ns9", "name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
             "addressType": "IPv6" if ":" in ip else "IPv4", "endpoints": [{"addresses": [e]} for e in endpoints],
             "ports": [{"name": "p80", "port": 8080, "protocol": "TCP"}]}]


def per_service_lines(text: str) -> set[str]:
    """Rules of per-service chains (their names hold a '/'), elements and affinity sets."""
    out = set()
    for line in text.splitlines():
        words = line.split()
        if line.startswith("add rule") and "/" in words[4]:
            out.add(line)
        elif line.startswith("add element") and "nodeport-ips" not in line:
            out.add(line)
        elif line.startswith("add set") and "affinity-" in line:
            out.add(line)
    return out


def test_chain_names_hash_like_kube_proxy():
    assert hash_and_truncate("ns1/svc1/tcp/p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert hash_and_truncate("ns1/svc1/tcp/p80__10.180.0.1/80") == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    long = hash_and_truncate("x" * 300)
    assert len(long) == 240 and long.endswith("...")


def test_per_service_rules_equal_upstreams_TestOverallNFTablesRules():
    """The fixture holds upstream's expected per-service rules; current kube-proxy also matches the
    service port in the masquerade rule (`tcp dport 80`), which that older expectation lacks."""
    ours = per_service_lines(generate(state(), OPTIONS))
    upstream = {re.sub(r"(ip daddr \S+) (ip saddr !=)", r"\1 tcp dport 80 \2", line)
                for line in per_service_lines((DATA / "kube_proxy.nft").read_text())}
    assert ours == upstream


def test_base_chains_and_dispatch():
    rs = generate_ruleset(state(), OPTIONS)
    (table,) = rs.tables
    assert (table.family, table.name, table.comment) == ("ip", "kube-proxy", "rules for kube-proxy")
    base = {c.name: (c.type, c.hook, c.priority.value) for c in table.chains.values() if c.is_base}
    assert base == {"filter-prerouting": ("filter", "prerouting", -110), "filter-input": ("filter", "input", -110),
                    "filter-forward": ("filter", "forward", -110), "filter-output": ("filter", "output", -110),
                    "filter-output-post-dnat": ("filter", "output", -90),
                    "nat-prerouting": ("nat", "prerouting", -100), "nat-output": ("nat", "output", -100),
                    "nat-postrouting": ("nat", "postrouting", 100)}
    assert len(table.chains["services"].rules) == 2  # one vmap for service IPs, one for NodePorts
    assert table.sets["service-ips"].key_type == ("ipv4_addr", "inet_proto", "inet_service")


def test_evaluator_on_generated_rules():
    ev = NftEvaluator(generate_ruleset(state(), OPTIONS), rng=lambda: 0, local_addresses=["192.168.0.2"])
    pkt = PacketMeta.make("192.168.0.100", "172.30.0.44", "tcp", 40000, 80)
    d = ev.evaluate(pkt, Hook.PREROUTING)
    assert str(d.nat.addr) == "10.180.0.4" and d.mark == 0x4000
    nodeport = ev.evaluate(PacketMeta.make("192.168.0.100", "192.168.0.2", "tcp", 40000, 3003), Hook.PREROUTING)
    assert str(nodeport.nat.addr) == "10.180.0.3"
    unallocated = ev.evaluate(PacketMeta.make("10.0.0.5", "172.30.9.9", "tcp", 40000, 80), Hook.FORWARD)
    assert unallocated.verdict == Verdict.DROP


@pytest.mark.requires("root", "nft")
@pytest.mark.parametrize("family", [4, 6])
def test_real_nft_loads_the_generated_rules(sandbox, family):
    if family == 4:
        st, context = state(), CONTEXT
        options = OPTIONS
    else:
        context = NodeContext("test-node", ("fd00::2",), ("fd00:10::/64",), nodeport_addresses=("fd00::/64",))
        st = state(service("v6a", "fd00:30::10", ["fd00:10::5", "fd00:10::6"], 30080), context)
        options = NftOptions(service_cidrs=("fd00:30::/108",))
    text = generate(st, options)
    ns = sandbox.netns("nft")
    nft_load(ns, text)
    listed = parse_text(nft_list(ns))
    assert normalized(listed) == normalized(parse_text(nft_list(_reload(sandbox, text))))
    ours = parse_text(text)
    (t_ours,), (t_listed,) = ours.tables, listed.tables
    assert t_listed.family == ("ip" if family == 4 else "ip6")
    assert list(t_ours.chains) == list(t_listed.chains)
    assert [len(c.rules) for c in t_ours.chains.values()] == [len(c.rules) for c in t_listed.chains.values()]
    assert {n: len(s.elements) for n, s in t_ours.sets.items()} == {n: len(s.elements) for n, s in t_listed.sets.items()}
    if family == 6:
        ev = NftEvaluator(listed, rng=lambda: 0xFFFFFFFF)
        d = ev.evaluate(PacketMeta.make("fd00:99::1", "fd00:30::10", "tcp", 1234, 80), Hook.PREROUTING)
        assert str(d.nat.addr) == "fd00:10::6" and d.nat.port == 8080


def _reload(sandbox, text: str):
    ns = sandbox.netns("nft")
    nft_load(ns, text)
    return ns


def test_partial_sync_touches_only_the_changed_service():
    before = state()
    after = state(overall_objects() + service("new", "172.30.0.99", ["10.180.9.1", "10.180.9.2"]))
    text = changes(before, after, OPTIONS)
    assert all("ns9/new" in line or "172.30.0.99" in line for line in text.splitlines()), text
    assert sum(1 for line in text.splitlines() if line.startswith("add chain")) == 3  # service + 2 endpoints
    assert changes(after, after, OPTIONS) == ""


@pytest.mark.requires("root", "nft")
def test_partial_syncs_reach_the_same_kernel_state_as_a_full_sync(sandbox):
    base = overall_objects()
    v1 = state(base)
    v2 = state(base + service("new", "172.30.0.99", ["10.180.9.1", "10.180.9.2"], 30099))
    v3 = state(base + service("new", "172.30.0.99", ["10.180.9.2"], 30099))  # one endpoint gone
    v4 = state([o for o in base if o["metadata"]["name"] != "svc4"])  # svc4 and the new one removed
    ns = sandbox.netns("nft")
    nft_load(ns, generate(v1, OPTIONS))
    for before, after in ((v1, v2), (v2, v3), (v3, v4)):
        nft_load(ns, changes(before, after, OPTIONS))
        fresh = _reload(sandbox, generate(after, OPTIONS))
        assert normalized(parse_text(nft_list(ns))) == normalized(parse_text(nft_list(fresh)))
