"""The real iptables-restore (legacy and nft backends) accepts every rule set we generate.

Each test loads into a fresh scratch namespace from the `netns` fixture, then reads the tables back
with the matching iptables-save and checks the kernel holds exactly the chains and rules we wrote.
Where the iptables-save parser is available, our text parsed and re-rendered must equal what the
kernel prints, chain by chain.
"""

from __future__ import annotations

import dataclasses

import pytest

from dataplane.k8s import load_objects, load_paths
from dataplane.proxy.iptables import names
from dataplane.proxy.iptables.generator import GeneratorOptions
from dataplane.proxy.iptables.sync import Syncer
from dataplane.proxy.model import NodeContext, build_state

from tests.proxy.helpers import DATA, load_into, normalise, rules_for, saved, synthetic, upstream_context

BUILTIN = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}
BACKENDS = [pytest.param("legacy", marks=pytest.mark.requires("root", "netns", "iptables-legacy"), id="legacy"),
            pytest.param("nft", marks=pytest.mark.requires("root", "netns", "iptables-nft"), id="nft")]


def tool(backend: str, family: int, what: str) -> str:
    return f"{'ip6tables' if family == 6 else 'iptables'}-{backend}-{what}"


def kernel_view(netns, backend: str, family: int) -> dict[str, tuple[frozenset[str], dict[str, list[str]]]]:  # type: ignore[no-untyped-def]
    out = {}
    for table in ("filter", "nat"):
        (chains, rules), = normalise(saved(netns, tool(backend, family, "save"), table)).values()
        out[table] = (chains - BUILTIN, rules)
    return out


def assert_loaded_as_generated(netns, backend: str, text: str, family: int = 4) -> None:  # type: ignore[no-untyped-def]
    err = load_into(netns, text, tool(backend, family, "restore"))
    assert err == "", err
    kernel = kernel_view(netns, backend, family)
    ours = normalise(text)
    for table in ("filter", "nat"):
        chains, rules = ours[table]
        assert kernel[table][0] == chains - BUILTIN
        assert {c: len(r) for c, r in kernel[table][1].items()} == {c: len(r) for c, r in rules.items()}


CASES = {
    "overall-modern": lambda: rules_for(load_paths([DATA / "overall.yaml"]), jump_rules=True),
    "overall-classic": lambda: rules_for(load_paths([DATA / "overall.yaml"]), layout="classic", jump_rules=True),
    "loadbalancer-sourceranges": lambda: rules_for(synthetic(5, 3, svc_type="LoadBalancer", lb=True)),
    "nodeport-local-nodes": lambda: rules_for(synthetic(5, 3, svc_type="NodePort", node_names=True),
                                              upstream_context(node_name="node-1")),
    "masquerade-all-nodeport-addresses": lambda: rules_for(
        synthetic(3, 2, svc_type="NodePort"),
        upstream_context(masquerade_all=True, nodeport_addresses=("192.168.0.0/24", "127.0.0.0/8"))),
    "no-endpoints": lambda: rules_for(synthetic(5, 0, svc_type="LoadBalancer", lb=True)),
    "classic-local-policy": lambda: rules_for(load_objects([
        {"kind": "Service", "metadata": {"namespace": "a", "name": "b"},
         "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.5", "externalTrafficPolicy": "Local",
                  "sessionAffinity": "ClientIP", "loadBalancerSourceRanges": ["192.168.0.0/16"],
                  "ports": [{"port": 53, "protocol": "UDP", "nodePort": 30053}]},
         "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}},
        {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
         "metadata": {"namespace": "a", "name": "b-1", "labels": {"kubernetes.io/service-name": "b"}},
         "addressType": "IPv4", "ports": [{"port": 5353, "protocol": "UDP"}],
         "endpoints": [{"addresses": ["10.244.1.2"], "nodeName": "test-node"}, {"addresses": ["10.244.2.2"]}]},
    ]), layout="classic"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_restore_accepts_generated_rules(netns, backend, case):
    assert_loaded_as_generated(netns, backend, CASES[case]().text())


@pytest.mark.parametrize("backend", BACKENDS)
def test_restore_accepts_ipv6_rules(netns, backend):
    cluster = load_objects([
        {"kind": "Service", "metadata": {"namespace": "ns", "name": "v6"},
         "spec": {"type": "LoadBalancer", "clusterIP": "fd00:96::10", "externalTrafficPolicy": "Local",
                  "externalIPs": ["2001:db8::7"], "loadBalancerSourceRanges": ["2001:db8:1::/48"],
                  "ports": [{"name": "h", "port": 80, "nodePort": 30080}], "healthCheckNodePort": 31000},
         "status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::8"}]}}},
        {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
         "metadata": {"namespace": "ns", "name": "v6-1", "labels": {"kubernetes.io/service-name": "v6"}},
         "addressType": "IPv6", "ports": [{"name": "h", "port": 8080}],
         "endpoints": [{"addresses": ["fd00:244::2"], "nodeName": "n1"}, {"addresses": ["fd00:244::3"]}]},
    ])
    ctx = NodeContext("n1", ("fd00::1",), ("fd00:244::/56",))
    for layout in ("modern", "classic"):
        rs = rules_for(cluster, ctx, layout=layout, jump_rules=True)
        assert rs.family == 6
        assert_loaded_as_generated(netns, backend, rs.text(), family=6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_restore_accepts_1000_services_x_10_endpoints(netns, backend):
    rs = rules_for(synthetic(1000, 10), jump_rules=True)
    assert len(rs.nat_rules) == 4 + 1000 * 32 + 1
    assert_loaded_as_generated(netns, backend, rs.text())


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_sync_applied_with_noflush_equals_a_full_sync(sandbox, backend):
    """kube-proxy's partial restore (`--noflush`) on top of the previous state leaves the kernel
    exactly as a full restore of the new state does."""
    before = synthetic(20, 3)
    after_objs = synthetic(20, 3)
    # change one service's endpoints, delete another service, add a new one
    changed = after_objs.endpoint_slices[4]
    after_objs.endpoint_slices[4] = dataclasses.replace(changed, endpoints=changed.endpoints[:1])
    del after_objs.services[7]
    extra = synthetic(1, 2, namespace="extra")
    after_objs.extend(extra)
    ctx = upstream_context()
    syncer = Syncer(GeneratorOptions())
    first = syncer.sync(build_state(before, ctx))
    second = syncer.sync(build_state(after_objs, ctx))
    assert second.partial and not first.partial
    assert second.deleted_chains > 0 and second.skipped_nat_rules > 0
    written = [c for c in second.nat_chains if names.is_service_chain(c)]
    # only the chains of svc4 (changed) and extra/svc0 (new) are written, plus svc7's deleted ones
    assert sorted({c.split("-")[1] for c in written}) == ["SEP", "SVC"]
    assert len(written) == (1 + 1) + (1 + 2) + second.deleted_chains

    incremental, fresh = sandbox.netns("inc"), sandbox.netns("full")
    restore = tool(backend, 4, "restore")
    assert load_into(incremental, first.text(), restore) == ""
    res = incremental.run([restore, "--noflush"], input=second.text(), check=False)
    assert res.returncode == 0, res.stderr
    full = Syncer().sync(build_state(after_objs, ctx))
    assert load_into(fresh, full.text(), restore) == ""
    assert kernel_view(incremental, backend, 4) == kernel_view(fresh, backend, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_our_parser_renders_what_the_kernel_saves(netns, backend):
    parser = pytest.importorskip("dataplane.proxy.iptables.parser")
    text = rules_for(load_paths([DATA / "overall.yaml"])).text()
    assert load_into(netns, text, tool(backend, 4, "restore")) == ""
    rendered = normalise(parser.parse(text).render())
    kernel = kernel_view(netns, backend, 4)
    for table in ("filter", "nat"):
        assert rendered[table][1] == kernel[table][1]
