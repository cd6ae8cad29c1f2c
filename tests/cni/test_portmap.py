"""portmap: the reference's chains, prevResult passthrough, exact DEL, and a real DNAT."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from cni_plugin_helpers import GO_DIR, VERSIONS, bridge_conf, kernel, requires_go
from dataplane.cni import testing as cni_testing

pytestmark = [kernel, pytest.mark.requires("iptables-nft")]

MAPPINGS = [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"},
            {"hostPort": 15353, "containerPort": 53, "protocol": "udp"},
            {"hostPort": 18443, "containerPort": 8443, "protocol": "tcp", "hostIP": "192.168.100.1"}]


def portmap_conf(version, prev, mappings=MAPPINGS, **fields):
    conf = {"cniVersion": version, "name": "testnet", "type": "portmap", "capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": mappings}, "prevResult": prev}
    conf.update(fields)
    return conf


def attach(node, plugin_dir, container_id="ctr1", version="1.0.0", ranges=None):
    ctr = node.container()
    conf = bridge_conf(node.data_dir, version, ranges=ranges, isDefaultGateway=True)
    add = node.run(plugin_dir, "bridge", "ADD", conf, netns=ctr, container_id=container_id)
    assert add.code == 0, add
    return ctr, add.json


@requires_go
def test_rules_same_as_reference(make_node, our_bin):
    dual = [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]]
    rules = {}
    for impl, plugin_dir in (("go", GO_DIR), ("ours", our_bin)):
        node = make_node(impl)
        ctr, prev = attach(node, GO_DIR, ranges=dual)
        conf = portmap_conf("1.0.0", prev)
        add = node.run(plugin_dir, "portmap", "ADD", conf, netns=ctr)
        assert add.code == 0 and add.json == prev, add
        after_add = (cni_testing.nat_rules(node.host.path, 4), cni_testing.nat_rules(node.host.path, 6))
        check = node.run(plugin_dir, "portmap", "CHECK", conf, netns=ctr)
        if impl == "go":
            # Go's portmap v1.1.1 checks the IPv4 rules against ip6tables on dual-stack pods.
            assert check.code == 1 and "could not check ipv6 dnat" in check.json["msg"]
            check.code = 0
        delete = node.run(plugin_dir, "portmap", "DEL", conf, netns=ctr)
        after_del = (cni_testing.nat_rules(node.host.path, 4), cni_testing.nat_rules(node.host.path, 6))
        route_localnet = node.host.run(["sysctl", "-n", "net.ipv4.conf.cni0.route_localnet"]).stdout.strip()
        rules[impl] = (after_add, check.code, delete.code, after_del, route_localnet)
    assert rules["ours"] == rules["go"]
    v4 = rules["ours"][0][0]
    chain = "CNI-DN-" + hashlib.sha512(b"testnetctr1").hexdigest()[:21]
    assert f"-N {chain}" in v4 and "-N CNI-HOSTPORT-DNAT" in v4
    assert "-A CNI-HOSTPORT-SETMARK -m comment --comment \"CNI portfwd masquerade mark\" " \
           "-j MARK --set-xmark 0x2000/0x2000" in v4
    assert "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE" in v4
    assert f"-N {chain}" not in rules["ours"][3][0] and "-N CNI-HOSTPORT-DNAT" in rules["ours"][3][0]


@pytest.mark.parametrize("version", VERSIONS)
def test_prev_result_passes_through_in_every_version(node, our_bin, version):
    ctr, prev = attach(node, our_bin, version=version)
    out = node.run(our_bin, "portmap", "ADD", portmap_conf(version, prev), netns=ctr)
    assert out.code == 0 and out.json == prev
    empty = node.run(our_bin, "portmap", "ADD", portmap_conf(version, prev, mappings=[]), netns=ctr)
    assert empty.json == prev
    assert node.run(our_bin, "portmap", "DEL", portmap_conf(version, prev), netns=ctr).code == 0


def test_must_be_chained(node, our_bin):
    conf = portmap_conf("1.0.0", None)
    del conf["prevResult"]
    out = node.run(our_bin, "portmap", "ADD", conf, netns=node.container())
    assert out.code == 1 and out.json["msg"] == "must be called as chained plugin"


def test_del_removes_exactly_its_own_rules(node, our_bin):
    ctr_a, prev_a = attach(node, our_bin, "a")
    ctr_b, prev_b = attach(node, our_bin, "b")
    before = cni_testing.nat_rules(node.host.path)
    conf_a = portmap_conf("1.0.0", prev_a, [{"hostPort": 18080, "containerPort": 80}])
    conf_b = portmap_conf("1.0.0", prev_b, [{"hostPort": 18081, "containerPort": 80}])
    assert node.run(our_bin, "portmap", "ADD", conf_a, netns=ctr_a, container_id="a").code == 0
    with_a = cni_testing.nat_rules(node.host.path)
    assert node.run(our_bin, "portmap", "ADD", conf_b, netns=ctr_b, container_id="b").code == 0
    # A DEL without the capability args does nothing (as the reference).
    bare = dict(conf_b, runtimeConfig={})
    assert node.run(our_bin, "portmap", "DEL", bare, netns=ctr_b, container_id="b").code == 0
    assert any("18081" in r for r in cni_testing.nat_rules(node.host.path))
    for _ in range(2):
        assert node.run(our_bin, "portmap", "DEL", conf_b, netns=ctr_b, container_id="b").code == 0
        assert cni_testing.nat_rules(node.host.path) == with_a
    assert node.run(our_bin, "portmap", "DEL", conf_a, netns=ctr_a, container_id="a").code == 0
    left = set(cni_testing.nat_rules(node.host.path)) - set(before)
    assert all("CNI-DN-" not in r and "18080" not in r for r in left)


SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(4); print("ready", flush=True)
while True:
    c, peer = s.accept(); c.sendall(("hello " + peer[0]).encode()); c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(c.recv(100).decode())
"""


def test_dnat_really_reaches_the_container(node, our_bin, sandbox):
    ctr, prev = attach(node, our_bin)
    conf = portmap_conf("1.0.0", prev, [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}])
    assert node.run(our_bin, "portmap", "ADD", conf, netns=ctr).code == 0
    client = sandbox.netns("cl")
    pair = sandbox.veth(client, node.host)
    client.run(["ip", "addr", "add", "192.168.100.2/24", "dev", pair.name])
    node.host.run(["ip", "addr", "add", "192.168.100.1/24", "dev", pair.peer])
    server = sandbox.spawn([sys.executable, "-c", SERVER], netns=ctr, stdout=subprocess.PIPE)
    assert server.stdout.readline().strip() == b"ready"
    reply = client.run([sys.executable, "-c", CLIENT, "192.168.100.1", "18080"], check=False)
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout.strip() == "hello 192.168.100.2"       # DNAT, source kept
    local = node.host.run([sys.executable, "-c", CLIENT, "127.0.0.1", "18080"], check=False)
    assert local.returncode == 0, local.stderr
    assert local.stdout.strip() == "hello 10.22.0.1"           # localhost is marked and masqueraded
    assert node.run(our_bin, "portmap", "DEL", conf, netns=ctr).code == 0
    gone = client.run([sys.executable, "-c", CLIENT, "192.168.100.1", "18080"], check=False)
    assert gone.returncode != 0


def test_check_finds_a_missing_rule(node, our_bin):
    ctr, prev = attach(node, our_bin)
    conf = portmap_conf("1.0.0", prev, [{"hostPort": 18080, "containerPort": 80}])
    assert node.run(our_bin, "portmap", "ADD", conf, netns=ctr).code == 0
    assert node.run(our_bin, "portmap", "CHECK", conf, netns=ctr).code == 0
    chain = "CNI-DN-" + hashlib.sha512(b"testnetctr1").hexdigest()[:21]
    node.host.run(["iptables", "-t", "nat", "-D", chain, "-p", "tcp", "--dport", "18080", "-j", "DNAT",
                   "--to-destination", "10.22.0.2:80"])
    out = node.run(our_bin, "portmap", "CHECK", conf, netns=ctr)
    assert out.code == 1 and "is missing from chain " + chain in out.json["msg"]
    assert node.run(our_bin, "portmap", "DEL", conf, netns=ctr).code == 0
