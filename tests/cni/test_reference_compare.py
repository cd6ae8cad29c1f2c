"""Ours against the Go reference plugins, config by config, on fresh namespaces.

For each config both implementations run ADD (then CHECK where the version allows it, then
DEL) from their own scratch host namespace into their own container namespace; the result
JSON (MACs, veth names and netns paths masked), both namespaces' links/addresses/routes, the
nat table and the host-local store must be equal after each step.
"""

from __future__ import annotations

import pytest

from cni_plugin_helpers import GO_DIR, dumps, kernel, requires_go
from dataplane.cni import testing as cni_testing
from dataplane.cni.spec import versions

pytestmark = [kernel, requires_go, pytest.mark.requires("iptables-nft")]

V4 = [[{"subnet": "10.22.0.0/24"}]]
V6 = [[{"subnet": "fd00:22::/64"}]]
DUAL = V4 + V6

# (id, plugin, cniVersion, plugin fields, ipam ranges, CNI_ARGS)
CASES = [
    ("ipv4", "bridge", "1.0.0", {}, V4, ""),
    ("ipv6", "bridge", "0.4.0", {}, V6, ""),
    ("dual-stack", "bridge", "0.3.1", {}, DUAL, ""),
    ("default-gateway", "bridge", "1.0.0", {"isDefaultGateway": True}, DUAL, ""),
    ("ipmasq", "bridge", "0.4.0", {"ipMasq": True}, DUAL, ""),
    ("hairpin", "bridge", "0.3.0", {"hairpinMode": True}, V4, ""),
    ("mtu", "bridge", "1.0.0", {"mtu": 1400, "promiscMode": True}, V4, ""),
    ("requested-ip", "bridge", "1.0.0", {}, V4, "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.22.0.42"),
    ("multiple-ranges", "bridge", "0.4.0", {"isDefaultGateway": True},
     [[{"subnet": "10.22.0.0/30", "rangeStart": "10.22.0.2"}, {"subnet": "10.22.1.0/24"}]], ""),
    ("l2-only", "bridge", "1.0.0", {"isGateway": False}, None, ""),
    ("ptp-ipv4-masq", "ptp", "1.0.0", {"ipMasq": True, "mtu": 1450}, V4, ""),
    ("ptp-dual", "ptp", "0.4.0", {}, DUAL, ""),
    ("loopback", "loopback", "1.0.0", {}, None, ""),
]


def _conf(node, plugin, version, fields, ranges):
    conf = {"cniVersion": version, "name": "cmpnet", "type": plugin}
    if plugin == "bridge":
        conf.update({"bridge": "cni0", "isGateway": True})
    conf.update(fields)
    if ranges is not None:
        conf["ipam"] = {"type": "host-local", "ranges": ranges, "dataDir": node.data_dir}
    elif plugin == "bridge":
        conf["ipam"] = {}
    return conf


def _snapshot(node, ctr, outcome=None):
    result = None
    if outcome is not None:
        result = cni_testing.mask(outcome.json)
        for iface in (result or {}).get("interfaces", []):
            if iface.get("sandbox"):
                iface["sandbox"] = "<netns>"
    return {"code": outcome.code if outcome else None, "result": result,
            "container": cni_testing.netns_state(ctr.path), "host": cni_testing.netns_state(node.host.path),
            "nat4": cni_testing.nat_rules(node.host.path, 4), "nat6": cni_testing.nat_rules(node.host.path, 6),
            "store": node.store("cmpnet")}


@pytest.mark.parametrize("case_id, plugin, version, fields, ranges, args", CASES, ids=[c[0] for c in CASES])
def test_same_as_reference(make_node, our_bin, case_id, plugin, version, fields, ranges, args):
    snaps = {}
    for impl, plugin_dir in (("go", GO_DIR), ("ours", our_bin)):
        node = make_node(impl)
        ctr = node.container()
        conf = _conf(node, plugin, version, fields, ranges)
        add = node.run(plugin_dir, plugin, "ADD", conf, netns=ctr, args=args)
        assert add.code == 0, (impl, add)
        steps = [_snapshot(node, ctr, add)]
        if versions.at_least(version, "0.4.0"):
            check = node.run(plugin_dir, plugin, "CHECK", dict(conf, prevResult=add.json), netns=ctr, args=args)
            if case_id == "l2-only" and impl == "go":
                # Go's bridge (v1.1.1) runs IPAM CHECK even without IPAM: "no plugin name provided".
                assert check.code == 1 and check.json["msg"] == "no plugin name provided"
                steps.append(0)
            else:
                steps.append(check.code)
        delete = node.run(plugin_dir, plugin, "DEL", dict(conf, prevResult=add.json), netns=ctr, args=args)
        steps.append(_snapshot(node, ctr, delete))
        snaps[impl] = steps
    if plugin == "loopback" and not versions.is_1x(version):
        pytest.fail("see test_loopback_0x_result_follows_the_spec")
    assert dumps(snaps["ours"]) == dumps(snaps["go"])


def test_loopback_0x_result_follows_the_spec(make_node, our_bin):
    """The one deliberate difference: Go's loopback (v1.1.1) prints a 0.4.0 result without
    `ips[].version` (it skips the conversion when versions match); the 0.4.0 spec requires it."""
    results = {}
    for impl, plugin_dir in (("go", GO_DIR), ("ours", our_bin)):
        node = make_node(impl)
        ctr = node.container()
        conf = {"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}
        results[impl] = node.run(plugin_dir, "loopback", "ADD", conf, netns=ctr).json
        assert node.run(plugin_dir, "loopback", "DEL", conf, netns=ctr).code == 0
    assert [ip.get("version") for ip in results["go"]["ips"]] == [None, None]
    assert [ip["version"] for ip in results["ours"]["ips"]] == ["4", "6"]
    for r in results.values():
        for ip in r["ips"]:
            ip.pop("version", None)
        r["interfaces"][0].pop("sandbox")
    assert results["ours"] == results["go"]
