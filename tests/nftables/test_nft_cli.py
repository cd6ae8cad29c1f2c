"""`dataplane proxy rules|trace --mode nftables`: the rules load into the real nft, traces give the
iptables trace's JSON fields with nftables' answers, and a kernel listing traces like its source."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import nft_list, nft_load
from dataplane.cli.main import main
from dataplane.proxy.nftables.parser import parse
from dataplane.proxy.trace import numgen_probability

OVERALL = str(Path(__file__).parents[1] / "proxy" / "data" / "overall.yaml")  # TestOverall*Rules services
NODE = ["--node-name", "test-node", "--node-ip", "192.168.0.2", "--cluster-cidr", "10.0.0.0/8"]
SVC1 = "service-ULMVA6XW-ns1/svc1/tcp/p80"
# a NodePort service with three endpoints: numgen random mod 3, whose shares are not exactly 1/3
THREE = textwrap.dedent("""
    apiVersion: v1
    kind: Service
    metadata: {name: myapp, namespace: default}
    spec:
      type: NodePort
      clusterIP: 10.96.0.20
      ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}]
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: myapp-abc, namespace: default, labels: {kubernetes.io/service-name: myapp}}
    addressType: IPv4
    ports: [{name: http, port: 8080, protocol: TCP}]
    endpoints:
    - {addresses: [10.244.1.5], nodeName: node-a}
    - {addresses: [10.244.2.7], nodeName: node-b}
    - {addresses: [10.244.1.9], nodeName: node-a}
""")
THREE_NODE = ["--node-name", "node-a", "--node-ip", "192.168.100.2", "--cluster-cidr", "10.244.0.0/16"]


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args))


def rules(*args: str, node: list[str] = NODE) -> str:
    res = invoke("proxy", "rules", "--mode", "nftables", *node, *args)
    assert res.exit_code == 0, res.output
    return res.output


def trace(*args: str, node: list[str] = NODE, mode: str = "nftables") -> dict:
    res = invoke("proxy", "trace", "--mode", mode, *node, "--json", *args)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def packet(src: str, dst: str, dport: int, *extra: str) -> list[str]:
    return ["--src", src, "--dst", dst, "--dport", str(dport), *extra]


@pytest.fixture
def three(tmp_path) -> str:
    path = tmp_path / "three.yaml"
    path.write_text(THREE)
    return str(path)


# ---------------------------------------------------------------- rules

@pytest.mark.requires("root", "nft")
def test_rules_load_with_real_nft_and_stats_count_what_the_kernel_lists(sandbox):
    ns = sandbox.netns("nftcli")
    nft_load(ns, rules(OVERALL))
    listed = json.loads(nft_list(ns, "-j"))["nftables"]
    stats = json.loads(rules("--stats", OVERALL))
    table = stats["ip kube-proxy"]
    chains = [o["chain"] for o in listed if "chain" in o]
    assert table["chains"] == len(chains) and table["base_chains"] == sum("hook" in c for c in chains)
    assert table["rules"] == sum("rule" in o for o in listed)
    kernel_sets = {o[k]["name"]: len(o[k].get("elem", [])) for o in listed for k in ("set", "map") if k in o}
    assert {**table["sets"], **table["maps"]} == kernel_sets
    assert table["maps"]["service-ips"] > 0 and stats["family"] == "IPv4" and stats["partial"] is False


@pytest.mark.requires("root", "nft")
def test_ipv6_and_service_cidr_and_partial_sync_load_with_real_nft(sandbox, tmp_path):
    v6 = tmp_path / "v6.yaml"
    v6.write_text(THREE.replace("10.96.0.20", "fd00:96::20").replace("IPv4", "IPv6")
                  .replace("10.244.1.5", "fd00:244::5").replace("10.244.2.7", "fd00:244::7")
                  .replace("10.244.1.9", "fd00:244::9"))
    node6 = ["--node-name", "node-a", "--node-ip", "fd00::2", "--cluster-cidr", "fd00:244::/64"]
    text = rules("--service-cidr", "fd00:96::/112", str(v6), node=node6)
    assert text.startswith("add table ip6 kube-proxy") and "ip6 daddr { fd00:96::/112 } drop" in text
    ns = sandbox.netns("nftcli")
    nft_load(ns, text)
    # kube-proxy's partial sync on top: one endpoint gone, the kernel then lists only two endpoint chains
    two = tmp_path / "two.yaml"
    two.write_text(v6.read_text().replace("- {addresses: [fd00:244::9], nodeName: node-a}\n", ""))
    partial = rules("--previous", str(v6), str(two), node=node6)
    assert "delete chain ip6 kube-proxy endpoint-" in partial
    nft_load(ns, partial)
    listing = parse(nft_list(ns))
    assert sorted(c for c in listing.tables[0].chains if c.startswith("endpoint-")) == \
        sorted(c for c in parse(rules(str(two), node=node6)).tables[0].chains if c.startswith("endpoint-"))
    # the partial sync rewrites every chain of the changed service, as the kernel now lists them
    service_chains = [c for name, c in listing.tables[0].chains.items() if "default/myapp/" in name]
    stats = json.loads(rules("--stats", "--previous", str(v6), str(two), node=node6))
    assert stats == {"family": "IPv6", "partial": True, "chains_written": len(service_chains), "chains_deleted": 1,
                     "rules": sum(len(c.rules) for c in service_chains), "elements_added": 0,
                     "elements_deleted": 0, "sets_added": 0, "sets_deleted": 0}


def test_rules_options_that_do_not_apply_are_refused_clearly():
    for extra, message in ((["--layout", "classic"], "--layout applies to --mode iptables only"),
                           (["--no-random-fully"], "always masquerades fully-random"),
                           (["--nfacct"], "--nfacct applies to --mode iptables only"),
                           (["--jumps"], "base chains hook themselves in")):
        res = invoke("proxy", "rules", "--mode", "nftables", *NODE, *extra, OVERALL)
        assert res.exit_code == 2 and message in res.output, res.output
    res = invoke("proxy", "rules", "--mode", "nftables", *NODE, "--service-cidr", "172.30.0.0/33", OVERALL)
    assert res.exit_code == 1 and res.output == "Error: --service-cidr: '172.30.0.0/33' is not a CIDR\n"
    res = invoke("proxy", "rules", *NODE, "--service-cidr", "172.30.0.0/16", OVERALL)
    assert res.exit_code == 2 and "--service-cidr applies to --mode nftables only" in res.output


# ---------------------------------------------------------------- trace: the behaviour list

def test_clusterip_from_a_pod_goes_through_one_vmap_lookup_to_the_endpoint():
    out = trace(*packet("10.0.1.5", "172.30.0.41", 80), OVERALL)
    assert (out["verdict"], out["endpoints"], out["masquerade"]) == ("ACCEPT", ["10.180.0.1:80"], False)
    lookup = next(r for r in out["rules"] if r["chain"] == "services")
    assert lookup["matched"] and lookup["table"] == "ip kube-proxy"
    assert lookup["text"] == "ip daddr . meta l4proto . th dport vmap @service-ips"
    assert lookup["note"] == f"vmap: 172.30.0.41 . tcp . 80 -> goto {SVC1}"
    assert out["nat"] == ["PREROUTING: 172.30.0.41:80 -> 10.180.0.1:80"]
    assert out["conntrack"].startswith("tcp 6 ") and out["rules_evaluated"] == len(out["rules"]) - 3  # 3 policies


def test_hairpin_is_masqueraded():
    out = trace(*packet("10.180.0.1", "172.30.0.41", 80), OVERALL)
    assert (out["verdict"], out["endpoints"], out["masquerade"]) == ("ACCEPT", ["10.180.0.1:80"], True)
    assert [r["matched"] for r in out["rules"] if r["chain"].startswith("endpoint-")] == [True, True]
    assert out["nat"][1].startswith("POSTROUTING: 10.180.0.1:40000 -> 10.0.0.1:")  # the bridge's address


def test_nodeport_from_outside_is_dnatted_and_masqueraded():
    out = trace(*packet("192.168.0.100", "192.168.0.2", 3003), OVERALL)
    assert (out["verdict"], out["endpoints"], out["masquerade"]) == ("ACCEPT", ["10.180.0.3:80"], True)
    assert any(r["chain"] == "services" and "vmap @service-nodeports" in r["text"] and r["matched"]
               for r in out["rules"])
    # Local policy, no endpoint on this node: the no-endpoint map drops it
    local = trace(*packet("192.168.0.100", "192.168.0.2", 3001), OVERALL)
    assert (local["verdict"], local["endpoints"]) == ("DROP", [])


def test_service_without_endpoints_is_rejected():
    out = trace(*packet("10.0.1.5", "172.30.0.46", 80), OVERALL)
    assert (out["verdict"], out["endpoints"], out["masquerade"]) == ("REJECT", [], False)
    assert out["reject_with"] == "icmp-port-unreachable"
    assert any(r["chain"] == "reject-chain" and r["matched"] for r in out["rules"])


def test_all_branches_gives_each_numgen_outcome_with_its_exact_share(three):
    out = trace(*packet("10.244.1.5", "10.96.0.20", 80, "--all-branches"), three, node=THREE_NODE)
    assert out["endpoints"] == ["10.244.1.5:8080", "10.244.1.9:8080", "10.244.2.7:8080"]
    probabilities = [b["probability"] for b in out["branches"]]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-8)
    # reciprocal_scale over u32: 1431655766, 1431655765 and 1431655765 draws out of 2**32
    assert [numgen_probability(i, 3) * 2**32 for i in range(3)] == [1431655766, 1431655765, 1431655765]
    assert sorted(probabilities) == sorted(round(numgen_probability(i, 3), 9) for i in range(3))
    hairpin = {b["endpoints"][0]: b["masquerade"] for b in out["branches"]}
    assert hairpin == {"10.244.1.5:8080": True, "10.244.1.9:8080": False, "10.244.2.7:8080": False}
    text = invoke("proxy", "trace", "--mode", "nftables", *THREE_NODE, *packet("10.244.1.5", "10.96.0.20", 80),
                  "--all-branches", three)
    assert text.exit_code == 0 and "branches:" in text.output and "p=0.333333  ACCEPT  10.244.2.7:8080" in text.output


def test_nftables_and_iptables_modes_agree_on_the_same_objects(three):
    """Two rule layouts, two evaluators, one set of Kubernetes semantics."""
    cases = [packet("10.244.1.5", "10.96.0.20", 80), packet("10.244.3.3", "10.96.0.20", 80),
             packet("192.168.100.50", "192.168.100.2", 30080), packet("192.168.100.50", "192.168.100.2", 30081),
             packet("10.244.3.3", "10.96.0.20", 80, "--from-local")]
    for args in cases:
        nft = trace(*args, "--all-branches", three, node=THREE_NODE)
        ipt = trace(*args, "--all-branches", three, node=THREE_NODE, mode="iptables")
        assert nft["verdict"] == ipt["verdict"] and nft["endpoints"] == ipt["endpoints"], args
        shares = lambda out: {(b["verdict"], tuple(b["endpoints"]), b["masquerade"]): round(b["probability"], 6)
                              for b in out["branches"]}  # noqa: E731
        assert shares(nft) == shares(ipt), args
    # where the modes differ on purpose: nftables rejects unknown ports of a ClusterIP (cluster-ips-check),
    # iptables routes them on
    other_port = packet("10.244.3.3", "10.96.0.20", 81)
    assert trace(*other_port, three, node=THREE_NODE)["verdict"] == "REJECT"
    assert trace(*other_port, three, node=THREE_NODE, mode="iptables")["verdict"] == "ACCEPT"


# ---------------------------------------------------------------- dumps from the kernel

@pytest.mark.requires("root", "nft")
def test_kernel_listing_traces_like_the_generated_rules(sandbox, tmp_path):
    ns = sandbox.netns("nftcli")
    nft_load(ns, rules(OVERALL))
    dumps = {"text": nft_list(ns), "json": nft_list(ns, "-j")}
    flows = [packet("10.0.1.5", "172.30.0.41", 80), packet("10.180.0.1", "172.30.0.41", 80),
             packet("192.168.0.100", "192.168.0.2", 3003), packet("10.0.1.5", "172.30.0.46", 80),
             packet("192.168.0.100", "192.168.0.2", 3001), packet("203.0.113.7", "5.6.7.8", 80),
             packet("192.168.0.100", "5.6.7.8", 80), packet("10.0.1.5", "172.30.0.44", 80, "--all-branches")]

    def comparable(out: dict) -> dict:
        """nft lists a one-element anonymous set as a plain match ("ip saddr != 203.0.113.0/25"), and
        `nft -j` gives rule handles; neither changes what the rule does."""
        out = dict(out)
        out["rules"] = [r | {"text": re.sub(r"\{ ([^,:{}]+) \}", r"\1", r["text"]),
                             "note": _without_handle(r.get("note", ""))} for r in out["rules"]]
        return out

    for kind, dump in dumps.items():
        path = tmp_path / f"dump.{kind}"
        path.write_text(dump)
        for args in flows:
            generated = trace(*args, "--seed", "5", OVERALL)
            listed = trace(*args, "--seed", "5", "--rules", str(path))
            assert comparable(listed) == comparable(generated), (kind, args)


def _without_handle(note: str) -> str:
    return "; ".join(p for p in note.split("; ") if not p.startswith("handle "))


# ---------------------------------------------------------------- --packets and errors

def test_packets_share_one_random_stream_and_match_single_traces(three, tmp_path):
    lines = [{"src": "10.244.3.3", "dst": "10.96.0.20", "dport": 80, "sport": 2000 + i} for i in range(60)]
    lines.append({"src": "10.244.3.3", "dst": "10.96.0.99", "dport": 80})
    path = tmp_path / "flows.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = invoke("proxy", "trace", "--mode", "nftables", *THREE_NODE, "--packets", str(path), "--seed", "7", three)
    assert res.exit_code == 0, res.output
    records = [json.loads(x) for x in res.output.splitlines()]
    assert len(records) == 61 and set(records[0]) >= {"verdict", "endpoints", "masquerade", "rules_evaluated"}
    seen = {r["endpoints"][0] for r in records[:60]}
    assert seen == {"10.244.1.5:8080", "10.244.1.9:8080", "10.244.2.7:8080"}
    assert records[60]["endpoints"] == [] and records[60]["verdict"] == "ACCEPT"  # not a service: routed on
    first = trace("--src", "10.244.3.3", "--dst", "10.96.0.20", "--dport", "80", "--sport", "2000", "--seed", "7",
                  three, node=THREE_NODE)
    assert first["endpoints"] == records[0]["endpoints"]  # the first flow draws first from the stream
    res = invoke("proxy", "trace", "--mode", "nftables", *THREE_NODE, "--packets", str(path), "--seed", "7",
                 "--with-rules", three)
    slow = [json.loads(x) for x in res.output.splitlines()]
    assert [(r["verdict"], r["endpoints"]) for r in slow] == [(r["verdict"], r["endpoints"]) for r in records]
    assert all(r["rules"] for r in slow)


def test_packets_are_independent_flows_even_with_session_affinity(three, tmp_path):
    """Each --packets line is a new flow on a fresh node: one flow's affinity entry (`update
    @affinity-...`) must not pin the next, or all 40 flows below would reach one endpoint."""
    sticky = tmp_path / "sticky.yaml"
    sticky.write_text(Path(three).read_text().replace(
        "  type: NodePort\n",
        "  type: NodePort\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n"))
    assert "update @affinity-" in rules(str(sticky), node=THREE_NODE)
    path = tmp_path / "flows.jsonl"
    path.write_text("".join(json.dumps({"src": "10.244.3.3", "dst": "10.96.0.20", "dport": 80, "sport": 3000 + i})
                            + "\n" for i in range(40)))
    res = invoke("proxy", "trace", "--mode", "nftables", *THREE_NODE, "--packets", str(path), str(sticky))
    assert res.exit_code == 0, res.output
    assert len({json.loads(x)["endpoints"][0] for x in res.output.splitlines()}) == 3


def test_bad_input_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.nft"
    bad.write_text("table ip t {\n  chain c {\n    ip daddr 10.0.0.1 bogus\n  }\n}\n")
    res = invoke("proxy", "trace", "--mode", "nftables", *NODE, "--rules", str(bad), *packet("10.0.0.2", "10.0.0.1", 80))
    assert res.exit_code == 1 and res.output.startswith(f"Error: {bad}: ") and "line 3" in res.output, res.output
    assert "Traceback" not in res.output
    empty = tmp_path / "empty.nft"
    empty.write_text("\n")
    res = invoke("proxy", "trace", "--mode", "nftables", *NODE, "--rules", str(empty), *packet("10.0.0.2", "10.0.0.1", 80))
    assert res.exit_code == 1 and "no tables" in res.output
    res = invoke("proxy", "trace", "--mode", "nftables", *NODE, "--rules", str(bad), *packet("10.0.0.2", "10.0.0.1", 80),
                 OVERALL)
    assert res.exit_code == 2 and "not both" in res.output
    res = invoke("proxy", "trace", "--mode", "nftables", *NODE, "--layout", "classic",
                 *packet("10.0.0.2", "10.0.0.1", 80), OVERALL)
    assert res.exit_code == 2 and "--layout applies to --mode iptables only" in res.output
    res = invoke("proxy", "trace", "--mode", "nftables", *NODE, "--src", "10.0.1.5", "--dport", "80", OVERALL)
    assert res.exit_code == 2 and "missing --dst" in res.output
    res = invoke("proxy", "trace", "--mode", "nftables", *NODE, *packet("fd00::5", "fd00::6", 80), OVERALL)
    assert res.exit_code == 1 and res.output == \
        "Error: no base chain of the ruleset sees IPv6 packets (its tables: ip kube-proxy)\n"
