"""Property tests: any valid cluster gives rules that hold together; garbage never escapes as a traceback."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.k8s import ModelError, load_objects, load_text
from dataplane.proxy.iptables.generator import GeneratorOptions, generate
from dataplane.proxy.model import build_state

from tests.proxy.helpers import jump_targets_declared, load_into, normalise, upstream_context

names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
v4 = st.integers(min_value=0x0A000001, max_value=0x0AFFFFFE).map(lambda n: str(ipaddress.IPv4Address(n)))


@st.composite
def clusters(draw):  # type: ignore[no-untyped-def]
    objs = []
    for i in range(draw(st.integers(1, 6))):
        name = f"s{i}{draw(names)}"
        svc_type = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
        ports = [{"name": f"p{j}", "port": draw(st.integers(1, 65535)),
                  "protocol": draw(st.sampled_from(["TCP", "UDP", "SCTP"]))}
                 for j in range(draw(st.integers(1, 3)))]
        if svc_type != "ClusterIP":
            for p in ports:
                p["nodePort"] = draw(st.integers(30000, 32767))
        spec = {"type": svc_type, "clusterIP": draw(v4), "ports": ports,
                "externalIPs": draw(st.lists(v4, max_size=2)),
                "sessionAffinity": draw(st.sampled_from(["None", "ClientIP"])),
                "externalTrafficPolicy": draw(st.sampled_from(["Cluster", "Local"])),
                "internalTrafficPolicy": draw(st.sampled_from(["Cluster", "Local"])),
                "loadBalancerSourceRanges": draw(st.lists(st.sampled_from(["192.168.0.0/16", "203.0.113.0/24"]),
                                                          max_size=2, unique=True))}
        status = {"loadBalancer": {"ingress": [{"ip": ip} for ip in draw(st.lists(v4, max_size=2))]}}
        objs.append({"kind": "Service", "metadata": {"namespace": "ns", "name": name}, "spec": spec, "status": status})
        endpoints = [{"addresses": [draw(v4)],
                      "nodeName": draw(st.sampled_from([None, "test-node", "other"])),
                      "conditions": {"ready": draw(st.booleans()), "serving": draw(st.booleans()),
                                     "terminating": draw(st.booleans())}}
                     for _ in range(draw(st.integers(0, 4)))]
        for ep in endpoints:
            if ep["nodeName"] is None:
                del ep["nodeName"]
        objs.append({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                     "metadata": {"namespace": "ns", "name": f"{name}-x",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": "IPv4", "endpoints": endpoints,
                     "ports": [{"name": p["name"], "port": draw(st.integers(1, 65535)), "protocol": p["protocol"]}
                               for p in ports]})
    return load_objects(objs)


@settings(max_examples=150, deadline=None)
@given(cluster=clusters(), layout=st.sampled_from(["modern", "classic"]))
def test_generated_rules_are_self_consistent(cluster, layout):
    state = build_state(cluster, upstream_context())
    rs = generate(state, GeneratorOptions(layout=layout, jump_rules=True))
    text = rs.text()
    assert jump_targets_declared(text) == []
    nat = normalise(text)["nat"][1]
    assert nat["KUBE-SERVICES"][-1].endswith("-j KUBE-NODEPORTS")
    if layout == "modern":
        # every endpoint chain is a DNAT pair, every service chain ends in an unconditional jump
        for chain, rules in nat.items():
            if chain.startswith("KUBE-SEP-"):
                assert len(rules) == 2 and "-j DNAT --to-destination" in rules[1]
            if chain.startswith(("KUBE-SVC-", "KUBE-SVL-")):
                assert "--probability" not in rules[-1] and "-j KUBE-SEP-" in rules[-1]
    assert generate(state, GeneratorOptions(layout=layout, jump_rules=True)).text() == text


@pytest.mark.requires("root", "netns", "iptables-nft")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cluster=clusters(), layout=st.sampled_from(["modern", "classic"]))
def test_generated_rules_load_into_the_kernel(netns, cluster, layout):
    text = generate(build_state(cluster, upstream_context()), GeneratorOptions(layout=layout)).text()
    assert load_into(netns, text, "iptables-nft-restore") == ""


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_garbage_text_is_a_model_error_or_nothing(text):
    try:
        load_text(text, source="fuzz.yaml")
    except ModelError as exc:
        assert str(exc).startswith("fuzz.yaml")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=25)
fields = st.sampled_from(["spec", "metadata", "status", "ports", "clusterIP", "endpoints", "addressType", "items",
                          "subsets", "type", "name", "labels", "conditions", "addresses", "port", "nodePort"])


@st.composite
def mangled_objects(draw):  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["Service", "EndpointSlice", "Endpoints", "Node", "Pod", "List"]))
    obj = {"kind": kind, "metadata": {"name": "x", "labels": {"kubernetes.io/service-name": "x"}},
           "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}, "addressType": "IPv4",
           "endpoints": [{"addresses": ["10.0.0.2"]}], "items": []}
    for _ in range(draw(st.integers(1, 4))):
        target = obj
        for key in draw(st.lists(fields, min_size=0, max_size=2)):
            nxt = target.get(key) if isinstance(target, dict) else None
            if isinstance(nxt, dict):
                target = nxt
        if isinstance(target, dict):
            target[draw(fields)] = draw(json_values)
    return obj


@settings(max_examples=400, deadline=None)
@given(mangled_objects())
def test_mangled_objects_never_escape_as_tracebacks(obj):
    try:
        cluster = load_text(json.dumps(obj), source="m.json")
    except ModelError as exc:
        assert str(exc).startswith("m.json")
        return
    state = build_state(cluster, upstream_context())
    generate(state, GeneratorOptions())


@settings(max_examples=150, deadline=None)
@given(cluster=clusters(), data=st.data())
def test_partial_sync_counts_and_writes_like_a_full_sync(cluster, data):
    """Whatever subset of services changed, a partial sync's written + skipped nat rules equal a
    full sync's, and the chains it writes are exactly the full sync's chains of those services."""
    from dataplane.proxy.iptables.sync import Syncer

    state = build_state(cluster, upstream_context())
    keys = sorted({n.service_key for n in state.service_ports})
    changed = set(data.draw(st.lists(st.sampled_from(keys), unique=True))) if keys else set()
    full = generate(state, GeneratorOptions())
    syncer = Syncer()
    syncer.sync(state)
    partial = syncer.sync(state, changed=changed)  # unchanged services reuse the last sync's counts
    counted = generate(state, GeneratorOptions(), changed=changed)  # ... or count from scratch
    assert counted.text() == partial.text() and counted.skipped_nat_rules == partial.skipped_nat_rules
    assert counted.per_service == partial.per_service == full.per_service
    assert partial.partial and partial.deleted_chains == 0
    assert partial.stats()["nat"]["rules_total"] == len(full.nat_rules)
    assert partial.active_nat_chains == full.active_nat_chains
    assert partial.filter_rules == full.filter_rules
    full_chains = normalise(full.text())["nat"][1]
    partial_chains = normalise(partial.text())["nat"][1]
    svc_of = {r.split("--comment ")[1].split()[0].strip('"').split(":")[0]
              for c, rules in partial_chains.items() if c.startswith("KUBE-SEP-") for r in rules}
    assert svc_of <= changed
    for chain, rules in partial_chains.items():
        assert rules == full_chains[chain]
