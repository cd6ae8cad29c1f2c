"""Malformed requests: the same error code as the Go reference, and nothing left behind."""

from __future__ import annotations

import json
import os

import pytest

from cni_plugin_helpers import GO_DIR, bridge_conf, kernel, requires_go
from dataplane.cni import testing as cni_testing

pytestmark = [kernel, requires_go, pytest.mark.requires("iptables-nft")]


def _conf(node, **changes):
    conf = bridge_conf(node.data_dir, ipMasq=True)
    for key, value in changes.items():
        if key.startswith("ipam_"):
            conf["ipam"][key[5:]] = value
        elif value is None:
            conf.pop(key, None)
        else:
            conf[key] = value
    return conf


def _ranges(subnet, **extra):
    return [[{"subnet": subnet, **extra}]]


# (id, conf changes or raw stdin, env changes, expected code)
CASES = [
    ("truncated-json", b'{"cniVersion":"1.0.0", "name": ', {}, 6),
    ("empty-stdin", b"", {}, 6),
    ("not-json", b"x", {}, 6),
    ("name-not-a-string", {"name": 42}, {}, 6),
    ("missing-name", {"name": None}, {}, 7),
    ("bad-name", {"name": "no/slashes"}, {}, 7),
    ("unknown-version", {"cniVersion": "9.9.9"}, {}, 1),
    ("check-on-0.3.1", {"cniVersion": "0.3.1"}, {"CNI_COMMAND": "CHECK"}, 1),
    ("missing-netns", {}, {"CNI_NETNS": ""}, 4),
    ("missing-container-id", {}, {"CNI_CONTAINERID": ""}, 4),
    ("bad-container-id", {}, {"CNI_CONTAINERID": "../etc"}, 4),
    ("ifname-too-long", {}, {"CNI_IFNAME": "eth0123456789abc"}, 4),
    ("ifname-with-slash", {}, {"CNI_IFNAME": "eth/0"}, 4),
    ("unknown-command", {}, {"CNI_COMMAND": "EXPLODE"}, 4),
    ("netns-does-not-exist", {}, {"CNI_NETNS": "/var/run/netns/dp-no-such-netns"}, 999),
    ("bad-cidr", {"ipam_ranges": _ranges("10.22.0.0/33")}, {}, 999),
    ("subnet-host-bits", {"ipam_ranges": _ranges("10.22.0.7/24")}, {}, 999),
    ("subnet-too-small", {"ipam_ranges": _ranges("10.22.0.0/31")}, {}, 999),
    ("range-start-outside", {"ipam_ranges": _ranges("10.22.0.0/24", rangeStart="10.23.0.5")}, {}, 999),
    ("overlapping-range-sets", {"ipam_ranges": _ranges("10.22.0.0/24") + _ranges("10.22.0.0/25")}, {}, 999),
    ("exhausted-range", {"ipam_ranges": _ranges("10.22.0.0/24", rangeStart="10.22.0.9", rangeEnd="10.22.0.9")},
     {}, 999),
    ("mtu-wrong-type", {"mtu": "1500"}, {}, 999),
    ("hairpin-and-promisc", {"hairpinMode": True, "promiscMode": True}, {}, 999),
    ("ipam-plugin-missing", {"ipam_type": "no-such-ipam"}, {}, 999),
    ("cni-args-bad-pair", {}, {"CNI_ARGS": "IgnoreUnknown"}, 999),
    ("cni-args-unknown-key", {}, {"CNI_ARGS": "K8S_POD_NAME=x"}, 999),
    ("requested-ip-outside", {}, {"CNI_ARGS": "IgnoreUnknown=1;IP=10.99.0.5"}, 999),
]
PREFILL = {"exhausted-range": ("10.22.0.9", "someone\r\neth0")}


def _state(node, ctr):
    host = cni_testing.netns_state(node.host.path, settle=0)
    return {"host_links": [l["name"] for l in host["links"]], "host_addrs": host["addrs"],
            "container_links": [l["name"] for l in cni_testing.netns_state(ctr.path, settle=0)["links"]],
            "nat": [r for r in cni_testing.nat_rules(node.host.path) if "CNI" in r],
            "store": {k: v for k, v in node.store("testnet").items() if k[0].isdigit()}}


@pytest.mark.parametrize("case_id, change, env_change, code", CASES, ids=[c[0] for c in CASES])
def test_bad_input(make_node, our_bin, case_id, change, env_change, code):
    codes = {}
    for impl, plugin_dir in (("go", GO_DIR), ("ours", our_bin)):
        node = make_node(impl)
        ctr = node.container()
        if case_id in PREFILL:
            os.makedirs(os.path.join(node.data_dir, "testnet"))
            name, content = PREFILL[case_id]
            with open(os.path.join(node.data_dir, "testnet", name), "w", newline="") as fh:
                fh.write(content)
        before = _state(node, ctr)
        stdin = change if isinstance(change, bytes) else json.dumps(_conf(node, **change)).encode()
        environ = cni_testing.env("ADD", container_id="ctr1", netns=ctr.path, path=plugin_dir)
        environ.update(env_change)
        out = cni_testing.run_binary(os.path.join(plugin_dir, "bridge"), environ, stdin, host_netns=node.host.path)
        assert out.code == 1, (impl, out)
        err = out.json
        assert isinstance(err["msg"], str) and err["msg"]
        assert b"Traceback" not in out.stderr
        codes[impl] = err["code"]
        if impl == "ours":
            assert set(err) <= {"cniVersion", "code", "msg", "details"}
            assert _state(node, ctr) == before, f"{case_id} left state behind: {err['msg']}"
    assert codes == {"go": code, "ours": code}
