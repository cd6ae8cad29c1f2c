"""ptp and loopback beyond the reference comparison; STATUS and GC through a delegating plugin."""

from __future__ import annotations


import pytest

from cni_plugin_helpers import VERSIONS, kernel
from dataplane.cni import testing as cni_testing
from dataplane.cni.plugins.loopback import PLUGIN as LOOPBACK
from dataplane.cni.spec import versions

pytestmark = [kernel]


def ptp_conf(data_dir, version="1.0.0", **fields):
    conf = {"cniVersion": version, "name": "ptpnet", "type": "ptp",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.50.0.0/24"}]], "dataDir": data_dir}}
    conf.update(fields)
    return conf


def test_ptp_routes_and_traffic(node, our_bin):
    a, b = node.container(), node.container()
    conf = ptp_conf(node.data_dir)
    ra = node.run(our_bin, "ptp", "ADD", conf, netns=a, container_id="a")
    rb = node.run(our_bin, "ptp", "ADD", conf, netns=b, container_id="b")
    assert ra.code == rb.code == 0, (ra, rb)
    assert [i.get("sandbox") for i in ra.json["interfaces"]] == [None, a.path]
    assert {ip["interface"] for ip in ra.json["ips"]} == {1}
    routes = a.run(["ip", "-4", "route"]).stdout
    assert "10.50.0.0/24 via 10.50.0.1 dev eth0 src 10.50.0.2" in routes
    assert "10.50.0.1 dev eth0 scope link src 10.50.0.2" in routes
    assert "10.50.0.3 dev veth" in node.host.run(["ip", "-4", "route"]).stdout
    ping = a.run(["ping", "-c", "1", "-W", "2", "10.50.0.3"], check=False)
    assert ping.returncode == 0, ping.stdout
    assert node.run(our_bin, "ptp", "CHECK", dict(conf, prevResult=ra.json), netns=a, container_id="a").code == 0
    a.run(["ip", "addr", "del", "10.50.0.2/24", "dev", "eth0"])
    bad = node.run(our_bin, "ptp", "CHECK", dict(conf, prevResult=ra.json), netns=a, container_id="a")
    assert bad.code == 1 and bad.json["msg"] == "Failed to match addr 10.50.0.2/24 on interface eth0"


@pytest.mark.parametrize("version", VERSIONS)
def test_ptp_versions_and_del_without_netns(node, our_bin, version):
    ctr = node.container()
    conf = ptp_conf(node.data_dir, version)
    add = node.run(our_bin, "ptp", "ADD", conf, netns=ctr)
    assert add.code == 0
    assert ("version" in add.json["ips"][0]) == (not versions.is_1x(version))
    from dataplane.netns import namespace
    namespace.remove(ctr.name)
    for _ in range(2):
        assert node.run(our_bin, "ptp", "DEL", dict(conf, prevResult=add.json), netns=ctr.path).code == 0
    assert "10.50.0.2" not in node.store("ptpnet")


def test_ptp_requires_ipam(node, our_bin):
    out = node.run(our_bin, "ptp", "ADD", {"cniVersion": "1.0.0", "name": "x", "type": "ptp"}, netns=node.container())
    assert out.code == 1 and out.json["msg"] == "no plugin name provided"


@pytest.mark.parametrize("version", VERSIONS)
def test_loopback_add_check_del(node, version):
    """In-process (the warm-daemon path), from a thread inside the scratch host namespace."""
    ctr = node.container()
    ctr.run(["ip", "link", "set", "lo", "down"])
    conf = {"cniVersion": version, "name": "lo", "type": "loopback"}

    def run(command, netns=ctr.path):
        environ = cni_testing.env(command, container_id="ctr1", netns=netns, ifname="ignored0", path="/x")
        return cni_testing.run_inprocess(LOOPBACK, environ, conf, host_netns=node.host.path)

    add = run("ADD")
    assert add.code == 0
    assert add.json["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": ctr.path}]
    expected = [{"interface": 0, "address": "127.0.0.1/8"}, {"interface": 0, "address": "::1/128"}]
    if not versions.is_1x(version):
        expected = [{"version": "4", **expected[0]}, {"version": "6", **expected[1]}]
    assert add.json["ips"] == expected
    assert "UP" in ctr.run(["ip", "-br", "link", "show", "lo"]).stdout
    if versions.at_least(version, "0.4.0"):
        assert run("CHECK").code == 0
    assert run("DEL").code == 0
    assert "DOWN" in ctr.run(["ip", "-br", "link", "show", "lo"]).stdout
    if versions.at_least(version, "0.4.0"):
        down = run("CHECK")
        assert down.code == 1 and down.json["msg"] == "loopback interface is down"
    assert run("DEL", "").code == 0
    assert run("DEL", "/var/run/netns/dp-gone-away").code == 0


def test_loopback_passes_prev_result_through(node, our_bin):
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.2/24"}], "dns": {}}
    out = node.run(our_bin, "loopback", "ADD", {"cniVersion": "1.0.0", "name": "lo", "type": "loopback",
                                                "prevResult": prev}, netns=node.container())
    assert out.json == prev


@pytest.mark.requires("iptables-nft")
def test_status_and_gc_are_forwarded_to_ipam(node, our_bin, tmp_path):
    conf = {"cniVersion": "1.1.0", "name": "gcnet", "type": "bridge", "bridge": "cni0", "isGateway": True,
            "ipMasq": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.60.0.0/24"}]], "dataDir": node.data_dir}}
    a, b = node.container(), node.container()
    assert node.run(our_bin, "bridge", "ADD", conf, netns=a, container_id="a").code == 0
    assert node.run(our_bin, "bridge", "ADD", conf, netns=b, container_id="b").code == 0
    status = node.run(our_bin, "bridge", "STATUS", conf, container_id="", ifname="")
    assert (status.code, status.stdout) == (0, b"")
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]})
    assert node.run(our_bin, "bridge", "GC", gc, container_id="", ifname="").code == 0
    assert sorted(k for k in node.store("gcnet") if k[0].isdigit()) == ["10.60.0.2"]
    # and the masquerade rules of the container that is gone (kept for "a")
    nat = [r for r in cni_testing.nat_rules(node.host.path) if "CNI-" in r]
    assert nat and all('id: \\"a\\"' in r for r in nat if r.startswith("-A")), nat
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    conf["ipam"]["dataDir"] = str(blocked)
    status = node.run(our_bin, "bridge", "STATUS", conf, container_id="", ifname="")
    assert status.code == 1 and status.json["code"] == 50
    old = dict(conf, cniVersion="1.0.0")
    assert node.run(our_bin, "bridge", "STATUS", old, container_id="", ifname="").json["code"] == 1
