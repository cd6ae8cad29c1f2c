"""The runtime client driving the Go reference plugins (and the trace plugin to see what they get)."""

from __future__ import annotations

import json
import os

import pytest

from dataplane.cni.runtime import ChainError, CNIRuntimeError, GCAttachment, RuntimeClientError, RuntimeConf
from tests.cni_runtime.conftest import bridge_plugin

pytestmark = pytest.mark.requires("root", "veth", "bridge", "reference-plugins")


def addresses(netns, ifname="eth0") -> list[str]:
    out = netns.run(["ip", "-j", "addr", "show", "dev", ifname], check=False)
    if out.returncode != 0:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for a in json.loads(out.stdout)[0]["addr_info"] if a["family"] == "inet"]


def test_chain_add_check_del_with_prev_result_capabilities_args_and_cache(bench, sandbox):
    ctr = sandbox.netns("c")
    trace = {"type": "dataplane-trace", "logDir": bench.trace_dir, "capabilities": {"portMappings": True}}
    net = bench.write_list("chain", [bridge_plugin(bench, "dpbr0", "10.231.60.0/24"), trace])
    cni = bench.client()
    rt = RuntimeConf("ctr-1", ctr.path, "eth0", [("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p1")],
                     {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "mac": "x"})
    with bench.in_host():
        result = cni.add_network_list(net, rt)
    # The final result is the bridge's, passed through the trace plugin; the IP is really there.
    assert result["ips"][0]["address"] == "10.231.60.2/24" and result["interfaces"][2]["sandbox"] == ctr.path
    assert addresses(ctr) == ["10.231.60.2/24"]
    add = bench.traces()[-1]
    assert add["command"] == "ADD"
    assert add["config"]["prevResult"] == result                          # chaining
    assert add["config"]["runtimeConfig"] == {"portMappings": rt.capability_args["portMappings"]}  # declared only
    assert add["config"]["name"] == "chain" and add["config"]["cniVersion"] == "1.0.0"
    assert add["env"] == {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p1", "CNI_COMMAND": "ADD",
                          "CNI_CONTAINERID": "ctr-1", "CNI_IFNAME": "eth0", "CNI_NETNS": ctr.path,
                          "CNI_PATH": bench.plugin_dir}
    assert add["netns_inode"] == os.stat(bench.host.path).st_ino          # plugins ran in the host netns
    cached = json.load(open(os.path.join(bench.cache_dir, "results", "chain-ctr-1-eth0")))
    assert cached["result"] == result and cached["netns"] == ctr.path

    with bench.in_host():
        cni.check_network_list(net, rt)                                      # Go bridge CHECK passes
        cni.del_network_list(net, rt)
    check, delete = bench.traces()[-2:]
    assert check["command"] == "CHECK" and check["config"]["prevResult"] == result
    assert delete["command"] == "DEL" and delete["config"]["prevResult"] == result
    assert addresses(ctr) == []                                               # bridge's DEL ran after trace's
    assert not os.path.exists(os.path.join(bench.cache_dir, "results", "chain-ctr-1-eth0"))
    assert sorted(os.listdir(os.path.join(bench.data_dir, "chain"))) == ["last_reserved_ip.0", "lock"]
    with bench.in_host():
        cni.del_network_list(net, rt)                                        # DEL again: still fine
        with pytest.raises(CNIRuntimeError, match="host-local: Failed to find address added by container ctr-1"):
            cni.check_network_list(net, rt)                                  # CHECK after DEL fails


def test_del_runs_in_reverse_order_and_cached_result_is_converted_to_list_version(bench, sandbox):
    ctr = sandbox.netns("c")
    first = {"type": "dataplane-trace", "logDir": bench.trace_dir, "tag": "first"}
    second = {"type": "dataplane-trace", "logDir": bench.trace_dir, "tag": "second"}
    net = bench.write_list("order", [bridge_plugin(bench, "dpbr1", "10.231.61.0/24"), first, second])
    rt = RuntimeConf("ctr-2", ctr.path)
    cni = bench.client()
    with bench.in_host():
        cni.add_network_list(net, rt)
        older = bench.write_list("order", net.plugins and [p.conf for p in net.plugins], version="0.4.0")
        cni.del_network_list(older, rt)
    tags = [(t["command"], t["config"]["tag"]) for t in bench.traces()]
    assert tags == [("ADD", "first"), ("ADD", "second"), ("DEL", "second"), ("DEL", "first")]
    prev = bench.traces()[-1]["config"]["prevResult"]
    assert prev["cniVersion"] == "0.4.0" and prev["ips"][0]["version"] == "4"


def test_version_rules_check_needs_04_and_status_gc_need_11(bench, sandbox):
    ctr = sandbox.netns("c")
    old = bench.write_list("old", [bridge_plugin(bench, "dpbr2", "10.231.62.0/24"),
                                   {"type": "dataplane-trace", "logDir": bench.trace_dir}], version="0.3.1")
    rt = RuntimeConf("ctr-3", ctr.path)
    cni = bench.client()
    with bench.in_host():
        result = cni.add_network_list(old, rt)
        assert result["cniVersion"] == "0.3.1" and result["ips"][0]["version"] == "4"
        with pytest.raises(RuntimeClientError, match="does not support the CHECK command"):
            cni.check_network_list(old, rt)
        cni.get_status_network_list(old)          # < 1.1.0: nothing is sent
        cni.del_network_list(old, rt)
    assert [t["command"] for t in bench.traces()] == ["ADD", "DEL"]
    assert "prevResult" not in bench.traces()[-1]["config"]   # 0.3.1: no cached prevResult on DEL
    # A 1.1.0 list does send STATUS; the Go plugins (v1.1.1, pre-STATUS skel) reject it.
    new = bench.write_list("new", [bridge_plugin(bench, "dpbr2", "10.231.62.0/24")], version="1.1.0")
    with bench.in_host(), pytest.raises(CNIRuntimeError) as info:
        cni.get_status_network_list(new)
    assert info.value.code == 3 and "missing containerID" in str(info.value)
    assert cni.validate_network_list(old) == []
    with pytest.raises(RuntimeClientError, match='does not support config version "1.1.0"'):
        cni.validate_network_list(new)


def test_gc_deletes_stale_cached_attachments_and_keeps_valid_ones(bench, sandbox):
    a, b = sandbox.netns("a"), sandbox.netns("b")
    net = bench.write_list("gcnet", [bridge_plugin(bench, "dpbr3", "10.231.63.0/24")])
    cni = bench.client()
    with bench.in_host():
        ra = cni.add_network_list(net, RuntimeConf("ctr-a", a.path))
        cni.add_network_list(net, RuntimeConf("ctr-b", b.path))
        cni.gc_network_list(net, [GCAttachment("ctr-a", "eth0")])
    store = os.path.join(bench.data_dir, "gcnet")
    assert sorted(f for f in os.listdir(store) if f[0].isdigit()) == [ra["ips"][0]["address"].split("/")[0]]
    assert addresses(b) == [] and addresses(a) == [ra["ips"][0]["address"]]
    assert [x.container_id for x in cni.get_cached_attachments()] == ["ctr-a"]
    with bench.in_host():
        cni.gc_network_list(net)  # no list: everything cached goes (cnitool gc)
    assert cni.get_cached_attachments() == [] and addresses(a) == []


def test_plugin_errors_surface_with_code_and_message(bench, sandbox):
    ctr = sandbox.netns("c")
    cni = bench.client()
    missing = bench.write_list("miss", [{"type": "no-such-plugin"}])
    with bench.in_host(), pytest.raises(ChainError, match='failed to find plugin "no-such-plugin"'):
        cni.add_network_list(missing, RuntimeConf("ctr-4", ctr.path))
    bad = bench.write_list("bad", [bridge_plugin(bench, "dpbr4", "10.231.64.0/32")])
    with bench.in_host(), pytest.raises(ChainError) as info:
        cni.add_network_list(bad, RuntimeConf("ctr-4", ctr.path))
    assert info.value.code == 999 and "too small to allocate from" in str(info.value)
    assert str(info.value).startswith('plugin type="bridge" name="bad" failed (add): ')
    with bench.in_host(), pytest.raises(ChainError, match=r"failed \(delete\): invalid range set 0"):
        cni.del_network_list(bad, RuntimeConf("ctr-4", ctr.path))  # a config error fails DEL too
    with pytest.raises(ChainError) as info:
        cni.add_network_list(bad, RuntimeConf("bad id!", ctr.path))
    assert info.value.code == 4 and "invalid characters in containerID" in str(info.value)
    with pytest.raises(ChainError, match="interface name is too long"):
        cni.add_network_list(bad, RuntimeConf("ctr-4", ctr.path, "x" * 16))
    assert not os.path.exists(os.path.join(bench.cache_dir, "results"))
