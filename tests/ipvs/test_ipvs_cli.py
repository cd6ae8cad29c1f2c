"""`dataplane proxy rules --mode ipvs` and `dataplane proxy trace --mode ipvs`: the IPVS layout as text,
and packets traced through the engine with the iptables trace's JSON fields."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from dataplane.cli.main import main
from dataplane.proxy.ipvs import ipset, ipvsadm

OBJECTS = textwrap.dedent("""
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
    - {addresses: [10.244.1.5], conditions: {ready: true}, nodeName: node-a}
    - {addresses: [10.244.2.7], conditions: {ready: true}, nodeName: node-b}
    - {addresses: [10.244.1.9], conditions: {ready: true}, nodeName: node-a}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: empty, namespace: default}
    spec:
      clusterIP: 10.96.0.30
      ports: [{name: http, port: 80, protocol: TCP}]
""")
NODE = ["--node-name", "node-a", "--node-ip", "192.168.100.2", "--cluster-cidr", "10.244.0.0/16"]


@pytest.fixture
def objects(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "objects.yaml"
    path.write_text(OBJECTS)
    return str(path)


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args))


def trace(objects: str, *args: str) -> dict:  # type: ignore[type-arg]
    res = invoke("proxy", "trace", "--mode", "ipvs", *NODE, *args, "--json", objects)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_rules_mode_ipvs_prints_the_four_sections(objects):  # type: ignore[no-untyped-def]
    res = invoke("proxy", "rules", "--mode", "ipvs", *NODE, objects)
    assert res.exit_code == 0, res.output
    out = res.output
    headers = [ln for ln in out.splitlines() if ln.startswith("# ")]
    assert headers == ["# kube-ipvs0 addresses", "# ipvsadm-save -n", "# ipset save", "# iptables-restore"]
    addresses, rest = out.split("# kube-ipvs0 addresses\n")[1].split("# ipvsadm-save -n\n")
    assert addresses.split() == ["10.96.0.30", "10.96.0.20"]  # service ports by name: empty, myapp
    ipvs_text, rest = rest.split("# ipset save\n")
    # real servers added in sorted order, listed newest first as the kernel keeps them
    assert ipvs_text == textwrap.dedent("""\
        -A -t 10.96.0.30:80 -s rr
        -A -t 10.96.0.20:80 -s rr
        -a -t 10.96.0.20:80 -r 10.244.2.7:8080 -m -w 1
        -a -t 10.96.0.20:80 -r 10.244.1.9:8080 -m -w 1
        -a -t 10.96.0.20:80 -r 10.244.1.5:8080 -m -w 1
        -A -t 192.168.100.2:30080 -s rr
        -a -t 192.168.100.2:30080 -r 10.244.2.7:8080 -m -w 1
        -a -t 192.168.100.2:30080 -r 10.244.1.9:8080 -m -w 1
        -a -t 192.168.100.2:30080 -r 10.244.1.5:8080 -m -w 1
        """)
    assert ipvsadm.save(ipvsadm.load(ipvs_text)) == ipvs_text
    sets_text, iptables_text = rest.split("# iptables-restore\n")
    sets = ipset.load(sets_text)
    assert set(sets["KUBE-NODE-PORT-TCP"].members) == {"30080"}
    assert set(sets["KUBE-CLUSTER-IP"].members) == {"10.96.0.20,tcp:80", "10.96.0.30,tcp:80"}
    assert "-A INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER" in iptables_text
    assert iptables_text.rstrip().endswith("COMMIT")


def test_rules_mode_ipvs_options(objects):  # type: ignore[no-untyped-def]
    res = invoke("proxy", "rules", "--mode", "ipvs", *NODE, "--stats", objects)
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert (stats["virtual_servers"], stats["real_servers"], stats["kube_ipvs0_addresses"]) == (3, 6, 2)
    assert stats["family"] == "IPv4" and stats["ipset_members"]["KUBE-NODE-PORT-TCP"] == 1
    res = invoke("proxy", "rules", "--mode", "ipvs", *NODE, "--ipvs-scheduler", "mh", "--masquerade-bit", "3",
                 "--no-random-fully", objects)
    assert res.exit_code == 0, res.output
    assert "-A -t 10.96.0.20:80 -s mh -b mh-port" in res.output
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x000008" in res.output and "--random-fully" not in res.output
    for extra, word in ((["--previous", objects], "--previous"), (["--layout", "classic"], "--layout"),
                        (["--nfacct"], "--nfacct")):
        res = invoke("proxy", "rules", "--mode", "ipvs", *NODE, *extra, objects)
        assert res.exit_code == 2 and f"{word} applies to --mode iptables only" in res.output
    res = invoke("proxy", "rules", *NODE, "--ipvs-scheduler", "lc", objects)
    assert res.exit_code == 2 and "--ipvs-scheduler applies to --mode ipvs only" in res.output


def test_trace_clusterip_json_has_the_iptables_fields_and_the_ipvs_step(objects):  # type: ignore[no-untyped-def]
    out = trace(objects, "--src", "10.244.1.7", "--dst", "10.96.0.20", "--dport", "80")
    assert {"verdict", "endpoints", "masquerade", "rules"} <= out.keys()
    assert out["verdict"] == "ACCEPT" and out["endpoints"] == ["10.244.2.7:8080"]  # rr's first pick
    assert out["masquerade"] is False
    (step,) = [r for r in out["rules"] if r["table"] == "ipvs"]
    assert step["virtual_server"] == "TCP 10.96.0.20:80" and step["scheduler"] == "rr"
    assert step["real_server"] == "10.244.2.7:8080" and step["matched"] is True and step["rule"] == 1
    assert step["text"] == "-a -t 10.96.0.20:80 -r 10.244.2.7:8080 -m -w 1"
    assert step["scheduler_state"] == {"last": "10.244.2.7:8080"} and step["new_connection"] is True
    iptables_steps = [r for r in out["rules"] if r["table"] in ("nat", "filter")]
    assert any(r["chain"] == "KUBE-IPVS-FILTER" and r["matched"] for r in iptables_steps)
    order = [r["table"] for r in out["rules"]]
    assert order.index("ipvs") > max(i for i, t in enumerate(order) if t == "filter" and
                                     out["rules"][i]["chain"] in ("INPUT", "KUBE-IPVS-FILTER"))
    assert "IPVS INPUT: 10.96.0.20:80 -> 10.244.2.7:8080" in out["nat"]


def test_trace_nodeport_no_endpoints_and_text(objects):  # type: ignore[no-untyped-def]
    out = trace(objects, "--src", "198.51.100.50", "--dst", "192.168.100.2", "--dport", "30080")
    assert out["verdict"] == "ACCEPT" and out["masquerade"] is True and out["endpoints"][0].endswith(":8080")
    out = trace(objects, "--src", "10.244.1.7", "--dst", "10.96.0.30", "--dport", "80")
    assert (out["verdict"], out["endpoints"], out["reject_with"]) == ("REJECT", [], "icmp-port-unreachable")
    (step,) = [r for r in out["rules"] if r["table"] == "ipvs"]
    assert step["real_server"] is None and step["matched"] is False
    res = invoke("proxy", "trace", "--mode", "ipvs", *NODE, "--src", "10.244.1.7", "--dst", "10.96.0.20",
                 "--dport", "80", "--from-local", objects)
    assert res.exit_code == 0, res.output
    assert "ipvs:TCP 10.96.0.20:80:1" in res.output and "endpoints: 10.244.2.7:8080" in res.output


def test_trace_packets_rotate_through_the_scheduler(objects, tmp_path):  # type: ignore[no-untyped-def]
    flows = tmp_path / "flows.jsonl"
    flow = {"src": "10.244.1.7", "dst": "10.96.0.20", "dport": 80}
    flows.write_text("".join(json.dumps({**flow, "sport": 3000 + i}) + "\n" for i in range(4)))
    res = invoke("proxy", "trace", "--mode", "ipvs", *NODE, "--packets", str(flows), objects)
    assert res.exit_code == 0, res.output
    records = [json.loads(ln) for ln in res.output.splitlines()]
    assert [r["endpoints"] for r in records] == [["10.244.2.7:8080"], ["10.244.1.9:8080"], ["10.244.1.5:8080"],
                                                 ["10.244.2.7:8080"]]
    assert all("rules" not in r for r in records)
    res = invoke("proxy", "trace", "--mode", "ipvs", *NODE, "--packets", str(flows), "--with-rules", objects)
    assert all(any(x["table"] == "ipvs" for x in json.loads(ln)["rules"]) for ln in res.output.splitlines())


def test_trace_mode_ipvs_bad_input_is_a_clean_error(objects, tmp_path):  # type: ignore[no-untyped-def]
    dump = tmp_path / "dump.txt"
    dump.write_text("*nat\nCOMMIT\n")
    cases = [
        (["--rules", str(dump), "--src", "10.0.0.1", "--dst", "10.96.0.20", "--dport", "80"], 2, "--rules takes"),
        (["--src", "10.0.0.1", "--dst", "10.96.0.20", "--dport", "80", "--all-branches", objects], 2,
         "deterministic"),
        (["--src", "10.0.0.1", "--dst", "fe80::1", "--dport", "80", objects], 1, "different IP families"),
        (["--src", "10.0.0.1", "--dport", "80", objects], 2, "missing --dst"),
        (["--src", "10.0.0.1", "--dst", "10.96.0.20", "--dport", "80", "--proto", "sctp", objects], 1, "SCTP"),
    ]
    for args, code, message in cases:
        res = invoke("proxy", "trace", "--mode", "ipvs", *NODE, *args)
        assert res.exit_code == code and message in res.output and "Traceback" not in res.output, (args, res.output)


def test_cli_scheduler_choices_follow_the_scheduler_table() -> None:
    """The CLIs list the schedulers without importing them (fast --help): keep the lists in step."""
    from dataplane.proxy import cli, trace_cli
    from dataplane.proxy.ipvs.sched import SCHEDULERS

    assert cli.IPVS_SCHEDULERS == trace_cli.IPVS_SCHEDULERS == tuple(SCHEDULERS)
