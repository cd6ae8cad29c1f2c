"""Config loading, version negotiation, result conversion and the cache format (no network)."""

from __future__ import annotations

import base64
import json
import os

import pytest

from dataplane.cni.runtime import (CachedAttachment, ConfigError, NotFoundError, ResultCache,
                                   conf_list_from_bytes, load_conf_list)
from dataplane.cni.runtime import results
from dataplane.cni.runtime.client import RuntimeConf, build_one_config
from dataplane.cni.runtime.conf import to_wire


def write(path, obj) -> None:
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


def test_conflist_chosen_by_name_in_file_order_then_legacy_conf(tmp_path):
    write(tmp_path / "20-b.conflist", {"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "bridge"}]})
    write(tmp_path / "10-a.conflist", {"cniVersion": "0.4.0", "name": "a", "plugins": [{"type": "ptp"}]})
    write(tmp_path / "30-a.conflist", {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}]})
    write(tmp_path / "40-c.conf", {"cniVersion": "0.3.1", "name": "c", "type": "loopback"})
    a = load_conf_list(str(tmp_path), "a")
    assert (a.cni_version, [p.type for p in a.plugins]) == ("0.4.0", ["ptp"])  # 10-a sorts first
    c = load_conf_list(str(tmp_path), "c")
    assert c.cni_version == "0.3.1" and c.plugins[0].type == "loopback"
    assert json.loads(c.raw) == {"cniVersion": "0.3.1", "name": "c",
                                 "plugins": [{"cniVersion": "0.3.1", "name": "c", "type": "loopback"}]}
    with pytest.raises(NotFoundError, match='no net configuration with name "zz"'):
        load_conf_list(str(tmp_path), "zz")
    with pytest.raises(NotFoundError, match="no net configurations found"):
        load_conf_list(str(tmp_path / "empty"), "a")


def test_plugins_from_network_subfolder_unless_only_inlined(tmp_path):
    write(tmp_path / "n.conflist", {"cniVersion": "1.1.0", "name": "n", "plugins": [{"type": "bridge"}]})
    os.mkdir(tmp_path / "n")
    write(tmp_path / "n" / "50-portmap.conf", {"type": "portmap", "capabilities": {"portMappings": True}})
    assert [p.type for p in load_conf_list(str(tmp_path), "n").plugins] == ["bridge", "portmap"]
    write(tmp_path / "n.conflist", {"cniVersion": "1.1.0", "name": "n", "loadOnlyInlinedPlugins": "true",
                                    "plugins": [{"type": "bridge"}]})
    assert [p.type for p in load_conf_list(str(tmp_path), "n").plugins] == ["bridge"]


@pytest.mark.parametrize("listed, version, chosen", [
    (["0.4.0", "1.0.0", "9.9.9"], "", "1.0.0"),        # versions above what we speak are ignored
    (["0.3.1"], "1.0.0", "1.0.0"),                     # cniVersion takes part in the choice
    (["1.1.0", "0.4.0"], "0.3.1", "1.1.0"),
    (None, "0.4.0", "0.4.0"),
])
def test_version_negotiation_picks_highest_supported(listed, version, chosen):
    doc = {"name": "n", "plugins": [{"type": "x"}]}
    if version:
        doc["cniVersion"] = version
    if listed is not None:
        doc["cniVersions"] = listed
    assert conf_list_from_bytes(json.dumps(doc).encode()).cni_version == chosen


@pytest.mark.parametrize("doc, message", [
    ("{", "error parsing configuration list"),
    ({"plugins": [{"type": "x"}]}, "no name"),
    ({"name": 5, "plugins": [{"type": "x"}]}, "invalid name type"),
    ({"name": "bad name", "plugins": [{"type": "x"}]}, "invalid characters found in network name"),
    ({"name": "n"}, "no plugins in list"),
    ({"name": "n", "plugins": {}}, "invalid 'plugins' type"),
    ({"name": "n", "plugins": [{"bridge": "x"}]}, "missing 'type'"),
    ({"name": "n", "plugins": [{"type": "../x"}]}, "invalid plugin type"),
    ({"name": "n", "plugins": [{"type": "x", "capabilities": {"mac": "yes"}}]}, "capabilities"),
    ({"name": "n", "disableCheck": "maybe", "plugins": [{"type": "x"}]}, "disableCheck"),
    ({"name": "n", "cniVersions": "1.0.0", "plugins": [{"type": "x"}]}, "cniVersions"),
])
def test_bad_configs_get_specific_errors(doc, message):
    data = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
    with pytest.raises(ConfigError, match=message) as info:
        conf_list_from_bytes(data)
    assert info.value.code == 7


def test_request_config_injects_name_version_prev_result_and_declared_capabilities_only():
    net = conf_list_from_bytes(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [
        {"type": "portmap", "capabilities": {"portMappings": True, "mac": False}, "runtimeConfig": {"old": 1}},
    ]}).encode())
    rt = RuntimeConf("c1", "/run/netns/x", capability_args={"portMappings": [{"hostPort": 80}], "mac": "x",
                                                              "ips": ["10.0.0.5"]})
    out = json.loads(build_one_config(net.name, net.cni_version, net.plugins[0], {"cniVersion": "1.0.0"}, rt))
    assert out == {"type": "portmap", "capabilities": {"portMappings": True, "mac": False},
                   "runtimeConfig": {"portMappings": [{"hostPort": 80}]}, "name": "n", "cniVersion": "1.0.0",
                   "prevResult": {"cniVersion": "1.0.0"}}
    # No matching capability: the plugin's own runtimeConfig is left as it was (libcni InjectConf).
    out = json.loads(build_one_config("n", "1.0.0", net.plugins[0], None, RuntimeConf("c1", "/x")))
    assert out["runtimeConfig"] == {"old": 1} and "prevResult" not in out


def test_wire_format_is_go_json_marshal_of_a_map():
    assert to_wire({"b": 1, "a": "<&>", "c": "é"}) == '{"a":"\\u003c\\u0026\\u003e","b":1,"c":"é"}'.encode()


RESULT_100 = {"cniVersion": "1.0.0",
              "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "mtu": 1400, "sandbox": "/x"}],
              "ips": [{"interface": 0, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                      {"interface": 0, "address": "fd00::5/64"}],
              "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "priority": 5}], "dns": {}}


def test_result_conversion_between_1x_and_04():
    down = results.convert(RESULT_100, "0.4.0")
    assert [ip["version"] for ip in down["ips"]] == ["4", "6"]
    assert "mtu" not in down["interfaces"][0] and "priority" not in down["routes"][0]
    up = results.convert(down, "1.1.0")
    assert up["cniVersion"] == "1.1.0" and all("version" not in ip for ip in up["ips"])
    assert up["ips"] == RESULT_100["ips"]
    with pytest.raises(Exception, match="cannot convert"):
        results.convert({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}, "1.0.0")
    # a result without cniVersion is in the config's version (libcni fixupResultVersion)
    assert results.parse(b'{"ips": []}', "0.4.0")["cniVersion"] == "0.4.0"


def test_cache_file_is_libcni_format(tmp_path):
    cache = ResultCache(str(tmp_path))
    raw = b'{"cniVersion":"1.0.0","name":"net1","plugins":[{"type":"bridge"}]}'
    path = cache.store(CachedAttachment("ctr1", "net1", "eth0", raw, "/run/netns/x",
                                        [("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p")],
                                        {"portMappings": [{"hostPort": 80, "containerPort": 8080}]}, RESULT_100))
    assert path == str(tmp_path / "results" / "net1-ctr1-eth0")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "results").st_mode & 0o777) == "0o700"
    text = open(path, "rb").read()
    doc = json.loads(text)
    assert list(doc) == ["kind", "containerId", "config", "ifName", "networkName", "netns", "cniArgs",
                         "capabilityArgs", "result"]
    assert doc["kind"] == "cniCacheV1" and base64.b64decode(doc["config"]) == raw
    assert doc["cniArgs"] == [["IgnoreUnknown", "1"], ["K8S_POD_NAME", "p"]]
    assert doc["result"] == RESULT_100
    assert text.startswith(b'{"kind":"cniCacheV1","containerId":"ctr1","config":"')
    back = cache.load("net1", "ctr1", "eth0")
    assert back.result == RESULT_100 and back.cni_args == [("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p")]
    assert [a.container_id for a in cache.attachments("ctr1")] == ["ctr1"]
    assert cache.attachments("ctr") == []
    cache.remove("net1", "ctr1", "eth0")
    assert cache.load("net1", "ctr1", "eth0") is None
    cache.remove("net1", "ctr1", "eth0")  # idempotent
