"""`dataplane proxy rules`: the documented options, clean errors, JSON stats."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dataplane.cli.main import main

from tests.proxy.helpers import DATA, normalise

BASE = ["proxy", "rules", "--node-name", "test-node", "--node-ip", "192.168.0.2", "--cluster-cidr", "10.0.0.0/8"]
OVERALL = str(DATA / "overall.yaml")


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_rules_prints_restore_text_matching_upstream():
    res = run(*BASE, "--mode", "iptables", "--no-random-fully", "--nfacct", OVERALL)
    assert res.exit_code == 0, res.output
    assert normalise(res.output) == normalise((DATA / "overall.expected").read_text())


def test_stats_json():
    res = run(*BASE, "--stats", OVERALL)
    assert res.exit_code == 0
    stats = json.loads(res.output)
    assert stats["filter"] == {"chains": 6, "rules": 10}
    assert stats["nat"]["chains"] == 20 and stats["nat"]["rules"] == 52 and stats["family"] == "IPv4"


def test_classic_layout_and_masquerade_all_and_many_files(tmp_path):
    other = tmp_path / "more.json"
    other.write_text(json.dumps({"kind": "List", "items": [
        {"kind": "Service", "metadata": {"name": "z", "namespace": "zz"},
         "spec": {"clusterIP": "172.30.9.9", "ports": [{"port": 9}]}}]}))
    res = run(*BASE, "--layout", "classic", "--masquerade-all", OVERALL, str(other))
    assert res.exit_code == 0
    assert "zz/z has no endpoints" in res.output
    assert '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 -j KUBE-MARK-MASQ' in res.output


def test_repeated_and_comma_separated_addresses_pick_the_family():
    res = run("proxy", "rules", "--node-name", "n", "--node-ip", "fd00::2", "--node-ip", "192.168.0.2",
              "--cluster-cidr", "10.0.0.0/8,fd00:10::/64", "--stats", OVERALL)
    assert res.exit_code == 0 and json.loads(res.output)["family"] == "IPv6"


def test_random_order_is_seeded():
    a = run(*BASE, "--service-order", "random", "--seed", "3", OVERALL).output
    b = run(*BASE, "--service-order", "random", "--seed", "3", OVERALL).output
    assert a == b and sorted(a.splitlines()) == sorted(run(*BASE, OVERALL).output.splitlines())


def test_other_modes_work_or_say_they_are_not_implemented_yet():
    # The IPVS and nftables modes land in parallel; until one does, it must fail cleanly.
    for mode in ("ipvs", "nftables"):
        res = CliRunner().invoke(main, [*BASE, "--mode", mode, OVERALL])
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        assert res.exit_code == 0 or (res.exit_code == 2 and f"--mode {mode} is not implemented yet" in res.output)


def test_bad_input_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.0.0.1, ports: [{port: x}]}\n")
    res = run(*BASE, str(bad))
    assert res.exit_code == 1
    assert res.output == f"Error: {bad}: Service default/s: field spec.ports[0].port: must be an integer, found a string\n"
    res = run("proxy", "rules", "--node-name", "n", "--node-ip", "999.1.1.1", "--cluster-cidr", "10.0.0.0/8", OVERALL)
    assert res.exit_code == 1 and res.output == "Error: --node-ip: '999.1.1.1' is not a valid IP address\n"
    res = run(*BASE, str(tmp_path / "missing.yaml"))
    assert res.exit_code == 1 and "cannot read" in res.output


def test_required_options():
    res = run("proxy", "rules", OVERALL)
    assert res.exit_code == 2 and "--node-name" in res.output


def test_group_lists_rules():
    res = run("proxy", "--help")
    assert res.exit_code == 0 and "rules" in res.output


def test_previous_gives_the_partial_restore(tmp_path):
    before = (DATA / "overall.yaml").read_text()
    after = tmp_path / "after.yaml"
    # ns1/svc1 gets a second endpoint; ns6/svc6 is deleted
    text = before.replace("endpoints: [{addresses: [10.180.0.1]}]",
                          "endpoints: [{addresses: [10.180.0.1]}, {addresses: [10.180.0.9]}]")
    text = text.split("---\napiVersion: v1\nkind: Service\nmetadata: {namespace: ns6")[0] + "---\n" + \
        text.split("ports: [{name: p80, port: 80, protocol: TCP, targetPort: 80}]\n---\n")[-1]
    after.write_text(text)
    res = run(*BASE, "--previous", OVERALL, str(after))
    assert res.exit_code == 0, res.output
    chains = normalise(res.output)["nat"][0]
    per_service = {c for c in chains if c.startswith(("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-"))}
    assert per_service == {"KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SEP-SXIVWICOYRO3J4NJ",
                           next(c for c in per_service if c.startswith("KUBE-SEP-") and c != "KUBE-SEP-SXIVWICOYRO3J4NJ")}
    assert "ns6/svc6" not in res.output and "-X " not in res.output  # svc6 had no chains to delete
    assert '"ns1/svc1:p80 -> 10.180.0.9:80"' in res.output
    assert res.output.count("-A KUBE-SERVICES") == 10  # KUBE-SERVICES is always rewritten whole
    res = run(*BASE, "--previous", OVERALL, "--layout", "classic", str(after))
    assert res.exit_code == 2 and "--previous" in res.output
