"""bridge: results per spec version, CHECK, DEL robustness, IPAM delegation both ways,
in-process use from a thread inside the host namespace, and real traffic."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from cni_plugin_helpers import GO_DIR, VERSIONS, bridge_conf, kernel, requires_go
from dataplane.cni import testing as cni_testing
from dataplane.cni.plugins.bridge import PLUGIN as BRIDGE
from dataplane.cni.spec import versions

pytestmark = [kernel]


def _inprocess(node, our_bin, command, conf, ctr):
    environ = cni_testing.env(command, container_id="ctr1", netns=ctr.path, path=our_bin)
    return cni_testing.run_inprocess(BRIDGE, environ, conf, host_netns=node.host.path)


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_in_every_version(node, our_bin, version):
    """In-process through dispatch (the warm-daemon path); IPAM is still exec'd from CNI_PATH."""
    ctr = node.container()
    conf = bridge_conf(node.data_dir, version, isDefaultGateway=True)
    add = _inprocess(node, our_bin, "ADD", conf, ctr)
    assert add.code == 0, add
    r = add.json
    assert r["cniVersion"] == version
    assert [i["name"] for i in r["interfaces"]][::2] == ["cni0", "eth0"]
    assert r["interfaces"][2]["sandbox"] == ctr.path and "sandbox" not in r["interfaces"][0]
    ip = {"interface": 2, "address": "10.22.0.2/24", "gateway": "10.22.0.1"}
    assert r["ips"] == [ip if versions.is_1x(version) else {"version": "4", **ip}]
    assert r["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}]
    check = _inprocess(node, our_bin, "CHECK", dict(conf, prevResult=r), ctr)
    if versions.at_least(version, "0.4.0"):
        assert (check.code, check.stdout) == (0, b"")
    else:
        assert check.code == 1 and check.json["code"] == 1
    assert _inprocess(node, our_bin, "DEL", dict(conf, prevResult=r), ctr).code == 0
    assert "eth0" not in ctr.run(["ip", "-br", "link"]).stdout
    assert "10.22.0.2" not in node.store("testnet")


def test_existing_interface_is_an_error_and_nothing_is_left(node, our_bin):
    ctr = node.container()
    ctr.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other"])
    out = node.run(our_bin, "bridge", "ADD", bridge_conf(node.data_dir), netns=ctr)
    assert out.code == 1 and out.json["msg"] == "container veth name provided (eth0) already exists"
    assert [n for n in node.store("testnet") if n[0].isdigit()] == []
    assert "veth" not in node.host.run(["ip", "-br", "link", "show", "type", "veth"]).stdout


def test_second_add_same_container_is_rejected(node, our_bin):
    ctr = node.container()
    conf = bridge_conf(node.data_dir)
    assert node.run(our_bin, "bridge", "ADD", conf, netns=ctr).code == 0
    again = node.run(our_bin, "bridge", "ADD", conf, netns=ctr)
    assert again.code == 1 and "already exists" in again.json["msg"]


@pytest.mark.requires("iptables-nft")
@pytest.mark.parametrize("netns_state", ["gone", "empty"])
def test_del_tolerates_missing_netns_and_still_cleans_up(node, our_bin, sandbox, netns_state):
    ctr = node.container()
    conf = bridge_conf(node.data_dir, ipMasq=True)
    add = node.run(our_bin, "bridge", "ADD", conf, netns=ctr)
    assert add.code == 0
    assert any("MASQUERADE" in r for r in cni_testing.nat_rules(node.host.path))
    path = ctr.path
    from dataplane.netns import namespace
    namespace.remove(ctr.name)
    netns_arg = path if netns_state == "gone" else ""
    for _ in range(2):
        out = node.run(our_bin, "bridge", "DEL", dict(conf, prevResult=add.json), netns=netns_arg)
        assert (out.code, out.stdout) == (0, b"")
    assert node.store("testnet") == {"last_reserved_ip.0": "10.22.0.2", "lock": ""}
    # Better than the reference (plugins#810): the masquerade rules go too, found via prevResult.
    assert not any("CNI-" in r for r in cni_testing.nat_rules(node.host.path))


@pytest.mark.parametrize("damage, message", [
    (["ip", "addr", "del", "10.22.0.2/24", "dev", "eth0"], "Failed to match addr 10.22.0.2/24"),
    (["ip", "route", "del", "default"], "Failed to match route 0.0.0.0/0"),
    (["ip", "link", "del", "eth0"], "not found"),
])
def test_check_finds_damage(node, our_bin, damage, message):
    ctr = node.container()
    conf = bridge_conf(node.data_dir, isDefaultGateway=True)
    add = node.run(our_bin, "bridge", "ADD", conf, netns=ctr)
    ctr.run(damage)
    check = node.run(our_bin, "bridge", "CHECK", dict(conf, prevResult=add.json), netns=ctr)
    assert check.code == 1 and message in check.json["msg"], check


def test_check_without_prev_result_and_after_ipam_release(node, our_bin):
    ctr = node.container()
    conf = bridge_conf(node.data_dir)
    add = node.run(our_bin, "bridge", "ADD", conf, netns=ctr)
    out = node.run(our_bin, "bridge", "CHECK", conf, netns=ctr)
    assert out.code == 1 and out.json["msg"] == "Required prevResult missing"
    os.unlink(os.path.join(node.data_dir, "testnet", "10.22.0.2"))
    out = node.run(our_bin, "bridge", "CHECK", dict(conf, prevResult=add.json), netns=ctr)
    assert out.json["msg"] == "host-local: Failed to find address added by container ctr1"


def test_force_address(node, our_bin):
    node.host.run(["ip", "link", "add", "cni0", "type", "bridge"])
    node.host.run(["ip", "addr", "add", "10.99.0.1/24", "dev", "cni0"])
    ctr = node.container()
    out = node.run(our_bin, "bridge", "ADD", bridge_conf(node.data_dir), netns=ctr)
    assert out.code == 1 and out.json["msg"] == '"cni0" already has an IP address different from 10.22.0.1/24'
    assert "eth0" not in ctr.run(["ip", "-br", "link"]).stdout      # rolled back
    assert [n for n in node.store("testnet") if n[0].isdigit()] == []
    out = node.run(our_bin, "bridge", "ADD", bridge_conf(node.data_dir, forceAddress=True), netns=ctr)
    assert out.code == 0
    addrs = node.host.run(["ip", "-4", "-br", "addr", "show", "cni0"]).stdout
    assert "10.22.0.1/24" in addrs and "10.99.0.1" not in addrs


def test_not_a_bridge(node, our_bin):
    node.host.run(["ip", "link", "add", "cni0", "type", "veth", "peer", "name", "x0"])
    out = node.run(our_bin, "bridge", "ADD", bridge_conf(node.data_dir), netns=node.container())
    assert out.code == 1 and out.json["msg"] == '"cni0" already exists but is not a bridge'


@requires_go
@pytest.mark.parametrize("bridge_from, ipam_from", [("ours", "go"), ("go", "ours")])
def test_ipam_delegation_across_implementations(node, our_bin, tmp_path, bridge_from, ipam_from):
    """Runtimes chain plugins by CNI_PATH: our bridge must drive Go's host-local and vice versa."""
    mixed = tmp_path / "mixed-bin"
    mixed.mkdir()
    dirs = {"ours": our_bin, "go": GO_DIR}
    os.symlink(os.path.join(dirs[bridge_from], "bridge"), mixed / "bridge")
    os.symlink(os.path.join(dirs[ipam_from], "host-local"), mixed / "host-local")
    ctr = node.container()
    conf = bridge_conf(node.data_dir, isDefaultGateway=True)
    add = node.run(str(mixed), "bridge", "ADD", conf, netns=ctr)
    assert add.code == 0, add
    assert add.json["ips"] == [{"interface": 2, "address": "10.22.0.2/24", "gateway": "10.22.0.1"}]
    assert node.store("testnet")["10.22.0.2"] == "ctr1\r\neth0"
    assert node.run(str(mixed), "bridge", "CHECK", dict(conf, prevResult=add.json), netns=ctr).code == 0
    assert node.run(str(mixed), "bridge", "DEL", dict(conf, prevResult=add.json), netns=ctr).code == 0
    assert "10.22.0.2" not in node.store("testnet")


def test_in_process_from_a_thread_inside_the_host_namespace(node, our_bin):
    """The warm-daemon shape: a worker thread enters the caller's namespace and dispatches."""
    ctr = node.container()
    conf = bridge_conf(node.data_dir)
    environ = cni_testing.env("ADD", container_id="ctr1", netns=ctr.path, path=our_bin)
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(
        out=cni_testing.run_inprocess(BRIDGE, environ, conf, host_netns=node.host.path)))
    worker.start()
    worker.join()
    assert box["out"].code == 0, box["out"]
    assert "cni0" in node.host.run(["ip", "-br", "link"]).stdout
    root_links = subprocess.run(["ip", "-br", "link", "show", "cni0"], capture_output=True, text=True)
    assert root_links.returncode != 0          # nothing happened in the process's own namespace
    environ["CNI_COMMAND"] = "DEL"
    assert cni_testing.run_inprocess(BRIDGE, environ, conf, host_netns=node.host.path).code == 0


def test_two_containers_reach_each_other_and_the_gateway(node, our_bin):
    conf = bridge_conf(node.data_dir, isDefaultGateway=True, ranges=[[{"subnet": "10.22.0.0/24"}],
                                                                      [{"subnet": "fd00:22::/64"}]])
    a, b = node.container(), node.container()
    assert node.run(our_bin, "bridge", "ADD", conf, netns=a, container_id="a").code == 0
    assert node.run(our_bin, "bridge", "ADD", conf, netns=b, container_id="b").code == 0
    for target in ("10.22.0.3", "10.22.0.1", "fd00:22::3"):
        ping = a.run(["ping", "-c", "1", "-W", "2", target], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr


@pytest.mark.requires("iptables-nft")
def test_works_with_a_bare_environment(node, our_bin):
    """Runtimes may exec plugins with nothing but the CNI_* variables (no PATH)."""
    ctr = node.container()
    conf = bridge_conf(node.data_dir, ipMasq=True)
    bare = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": ctr.path, "CNI_IFNAME": "eth0",
            "CNI_PATH": our_bin}
    add = cni_testing.run_binary(os.path.join(our_bin, "bridge"), bare, conf, host_netns=node.host.path)
    assert add.code == 0, add
    assert any("MASQUERADE" in r for r in cni_testing.nat_rules(node.host.path))
    bare["CNI_COMMAND"] = "DEL"
    assert cni_testing.run_binary(os.path.join(our_bin, "bridge"), bare, conf, host_netns=node.host.path).code == 0
    assert not any("CNI-" in r for r in cni_testing.nat_rules(node.host.path))


@pytest.mark.parametrize("how, expected", [
    ("cni_args", "02:00:00:00:00:01"),
    ("args", "02:00:00:00:00:02"),
    ("runtime", "02:00:00:00:00:03"),     # the runtimeConfig capability wins over the others
])
def test_requested_mac(node, our_bin, how, expected):
    ctr = node.container()
    conf = bridge_conf(node.data_dir)
    cni_args = "IgnoreUnknown=1;MAC=02:00:00:00:00:01"
    if how in ("args", "runtime"):
        conf["args"] = {"cni": {"mac": "02:00:00:00:00:02"}}
    if how == "runtime":
        conf["runtimeConfig"] = {"mac": "02:00:00:00:00:03"}
    add = node.run(our_bin, "bridge", "ADD", conf, netns=ctr, args=cni_args)
    assert add.code == 0, add
    assert add.json["interfaces"][2]["mac"] == expected
    assert expected in ctr.run(["ip", "-br", "link", "show", "eth0"]).stdout


@pytest.mark.parametrize("fields", [{"vlan": 100}, {"macspoofchk": True}, {"ipMasqBackend": "nftables"}])
def test_unsupported_reference_features_are_refused_cleanly(node, our_bin, fields):
    ctr = node.container()
    out = node.run(our_bin, "bridge", "ADD", bridge_conf(node.data_dir, **fields), netns=ctr)
    assert out.code == 1 and "supported by this bridge plugin" in out.json["msg"]
    assert node.host.run(["ip", "-br", "link"]).stdout.split()[0] == "lo"
    assert "cni0" not in node.host.run(["ip", "-br", "link"]).stdout


@pytest.mark.requires("iptables-nft")
def test_ipmasq_del_removes_only_its_own_rules(node, our_bin):
    conf = bridge_conf(node.data_dir, ipMasq=True)
    a, b = node.container(), node.container()
    assert node.run(our_bin, "bridge", "ADD", conf, netns=a, container_id="a").code == 0
    only_a = cni_testing.nat_rules(node.host.path)
    assert node.run(our_bin, "bridge", "ADD", conf, netns=b, container_id="b").code == 0
    assert len(cni_testing.nat_rules(node.host.path)) == len(only_a) + 4     # -N, jump, ACCEPT, MASQUERADE
    assert node.run(our_bin, "bridge", "DEL", conf, netns=b, container_id="b").code == 0
    assert cni_testing.nat_rules(node.host.path) == only_a
