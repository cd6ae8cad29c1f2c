"""The spec layer: skeleton env/stdin validation, versions, results per version, CNI_ARGS."""

from __future__ import annotations

import json

import pytest

from cni_plugin_helpers import VERSIONS
from dataplane.cni.spec import args as cni_args
from dataplane.cni.spec import versions
from dataplane.cni.spec.errors import CNIError, PluginError
from dataplane.cni.spec.skeleton import PluginSpec, dispatch
from dataplane.cni.spec.types import Result

CALLS: list[str] = []


def _record(name):
    def callback(args):
        CALLS.append(f"{name}:{args.command}:{args.cni_version}")
        if name == "add":
            return Result.from_dict({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                                                                      {"address": "fd00::5/64"}]})
        return None
    return callback


def _boom(args):
    raise KeyError("oops")


PLUGIN = PluginSpec("fake", add=_record("add"), check=_record("check"), delete=_record("del"),
                    status=_record("status"), gc=_record("gc"))


def env(command: str, **overrides: str) -> dict[str, str]:
    base = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/nonexistent",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/nowhere"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def conf(version: str = "1.0.0", **extra) -> bytes:
    return json.dumps({"cniVersion": version, "name": "net1", "type": "fake", **extra}).encode()


def error(out: bytes) -> dict:
    obj = json.loads(out)
    assert set(obj) <= {"cniVersion", "code", "msg", "details"}
    return obj


@pytest.fixture(autouse=True)
def _clear():
    CALLS.clear()


def test_version_needs_no_stdin_and_prints_compact_json():
    code, out = dispatch(PLUGIN, {"CNI_COMMAND": "VERSION"}, b"")
    assert code == 0
    assert json.loads(out) == {"cniVersion": "1.1.0", "supportedVersions": list(VERSIONS)}
    assert b" " not in out and not out.endswith(b"\n")


def test_no_command_prints_about_text_on_stderr(capsys):
    code, out = dispatch(PLUGIN, {}, b"")
    assert (code, out) == (0, b"")
    err = capsys.readouterr().err
    assert "fake" in err and "CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in err


def test_unknown_command_is_code_4():
    code, out = dispatch(PLUGIN, env("FOO"), conf())
    assert code == 1 and error(out)["code"] == 4 and error(out)["msg"] == "unknown CNI_COMMAND: FOO"


@pytest.mark.parametrize("command, unset, listed", [
    ("ADD", ["CNI_NETNS"], "CNI_NETNS"),
    ("ADD", ["CNI_CONTAINERID", "CNI_IFNAME"], "CNI_CONTAINERID,CNI_IFNAME"),
    ("CHECK", ["CNI_PATH"], "CNI_PATH"),
    ("DEL", ["CNI_IFNAME"], "CNI_IFNAME"),
    ("GC", ["CNI_PATH"], "CNI_PATH"),
    ("STATUS", ["CNI_PATH"], "CNI_PATH"),
])
def test_missing_variable_is_code_4_and_named(command, unset, listed):
    e = env(command, **{k: None for k in unset})
    code, out = dispatch(PLUGIN, e, conf("1.1.0"))
    assert code == 1
    assert error(out) == {"cniVersion": "1.1.0", "code": 4, "msg": f"required env variables [{listed}] missing"}
    assert CALLS == []


def test_del_without_netns_and_gc_without_attachment_vars_are_fine():
    assert dispatch(PLUGIN, env("DEL", CNI_NETNS=None), conf())[0] == 0
    assert dispatch(PLUGIN, {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, conf("1.1.0"))[0] == 0
    assert CALLS == ["del:DEL:1.0.0", "gc:GC:1.1.0"]


@pytest.mark.parametrize("var, value, code", [
    ("CNI_CONTAINERID", "-starts-with-dash", 4),
    ("CNI_CONTAINERID", "has space", 4),
    ("CNI_IFNAME", "a" * 16, 4),
    ("CNI_IFNAME", ".", 4),
    ("CNI_IFNAME", "eth/0", 4),
    ("CNI_IFNAME", "eth:0", 4),
    ("CNI_IFNAME", "eth 0", 4),
])
def test_bad_container_id_or_ifname_is_code_4(var, value, code):
    out = dispatch(PLUGIN, env("ADD", **{var: value}), conf())
    assert out[0] == 1 and error(out[1])["code"] == code
    assert CALLS == []


def test_ifname_of_15_chars_is_fine():
    assert dispatch(PLUGIN, env("ADD", CNI_IFNAME="a" * 15), conf())[0] == 0


@pytest.mark.parametrize("stdin, code", [
    (b"", 6), (b"x", 6), (b'{"cniVersion":"1.0.0", "name": ', 6), (b"[1, 2]", 6),
    (b'{"cniVersion": "1.0.0", "name": 5}', 6),
    (b'{"cniVersion": "1.0.0"}', 7), (b'{"cniVersion": "1.0.0", "name": "bad name!"}', 7),
    (b'{"cniVersion": "9.9.9", "name": "n"}', 1), (b'{"cniVersion": "0.2.0", "name": "n"}', 1),
    (b'{"name": "n"}', 1),
])
def test_bad_stdin_codes(stdin, code):
    rc, out = dispatch(PLUGIN, env("ADD"), stdin)
    assert rc == 1 and error(out)["code"] == code
    assert CALLS == []


def test_incompatible_version_details_list_supported():
    _, out = dispatch(PLUGIN, env("ADD"), conf("9.9.9"))
    err = error(out)
    assert err["msg"] == "incompatible CNI versions"
    assert err["details"] == 'config is "9.9.9", plugin supports ["0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]'


@pytest.mark.parametrize("version", VERSIONS)
def test_add_result_is_printed_in_the_config_version(version):
    code, out = dispatch(PLUGIN, env("ADD"), conf(version))
    assert code == 0 and not out.endswith(b"\n") and out.startswith(b'{\n    "cniVersion"')
    result = json.loads(out)
    assert result["cniVersion"] == version
    if versions.is_1x(version):
        assert all("version" not in ip for ip in result["ips"])
    else:
        assert [ip["version"] for ip in result["ips"]] == ["4", "6"]
    assert result["dns"] == {}


@pytest.mark.parametrize("version", VERSIONS)
def test_check_needs_0_4_0(version):
    code, out = dispatch(PLUGIN, env("CHECK"), conf(version))
    if versions.at_least(version, "0.4.0"):
        assert (code, out) == (0, b"") and CALLS == [f"check:CHECK:{version}"]
    else:
        assert error(out)["code"] == 1 and error(out)["msg"] == "config version does not allow CHECK"


@pytest.mark.parametrize("command", ["STATUS", "GC"])
@pytest.mark.parametrize("version", VERSIONS)
def test_status_and_gc_need_1_1_0(command, version):
    code, out = dispatch(PLUGIN, env(command), conf(version))
    if version == "1.1.0":
        assert (code, out) == (0, b"")
    else:
        assert error(out)["code"] == 1 and error(out)["msg"] == f"config version does not allow {command}"


def test_missing_callbacks_succeed_like_the_go_skeleton():
    bare = PluginSpec("bare", add=_record("add"))
    for command in ("CHECK", "DEL", "STATUS", "GC"):
        assert dispatch(bare, env(command), conf("1.1.0")) == (0, b"")


def test_unexpected_exception_is_error_999_not_a_traceback(capsys):
    code, out = dispatch(PluginSpec("boom", add=_boom), env("ADD"), conf())
    assert code == 1 and error(out)["code"] == 999
    assert "Traceback" not in capsys.readouterr().err


def test_own_namespace_is_refused_before_the_plugin_runs():
    code, out = dispatch(PLUGIN, env("DEL", CNI_NETNS="/proc/thread-self/ns/net"), conf())
    assert code == 1 and error(out)["code"] == 8 and CALLS == []
    code, _ = dispatch(PLUGIN, env("DEL", CNI_NETNS="/proc/thread-self/ns/net", CNI_NETNS_OVERRIDE="1"), conf())
    assert code == 0


def test_error_json_shape():
    out = CNIError(7, "bad config", "more").to_json("1.0.0")
    assert json.loads(out) == {"cniVersion": "1.0.0", "code": 7, "msg": "bad config", "details": "more"}
    assert out.startswith(b'{\n    "cniVersion": "1.0.0",\n    "code": 7') and not out.endswith(b"\n")
    assert "details" not in json.loads(PluginError("x").to_json())


# -- result conversion -------------------------------------------------------------------------
RICH = {"cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1400, "sandbox": "/x",
                        "socketPath": "/s", "pciID": "0000:00:01.0"}],
        "ips": [{"interface": 0, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                {"interface": 0, "address": "2001:db8::5/64"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1300, "advmss": 1200, "priority": 5,
                    "table": 100, "scope": 0}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}}


@pytest.mark.parametrize("version", VERSIONS)
def test_result_conversion_per_version(version):
    out = Result.from_dict(RICH).to_dict(version)
    assert out["cniVersion"] == version
    if version == "1.1.0":
        assert out == RICH
        return
    assert out["interfaces"] == [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/x"}]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    assert out["dns"] == RICH["dns"]
    if version == "1.0.0":
        assert out["ips"] == RICH["ips"]
    else:
        assert out["ips"] == [{"version": "4", "interface": 0, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                              {"version": "6", "interface": 0, "address": "2001:db8::5/64"}]
        # and back up: 0.x -> 1.x drops `version`
        assert Result.from_dict(out).to_dict("1.0.0")["ips"] == RICH["ips"]


def test_prev_result_without_version_takes_the_config_version():
    r = Result.from_dict({"ips": [{"version": "4", "address": "10.0.0.2/24"}]}, "0.4.0")
    assert r.cni_version == "0.4.0"


def test_result_with_mismatched_ip_version_is_rejected():
    with pytest.raises(CNIError) as exc:
        Result.from_dict({"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.0.0.2/24"}]})
    assert exc.value.code == 6


# -- CNI_ARGS ----------------------------------------------------------------------------------
def test_cni_args_known_and_ignored_keys():
    assert cni_args.parse("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.0.0.5", {"IP": str}) == {"IP": "10.0.0.5"}
    assert cni_args.parse("IgnoreUnknown=TRUE;x=y", {}) == {}
    assert cni_args.parse("", {"IP": str}) == {}


@pytest.mark.parametrize("text, fragment", [
    ("K8S_POD_NAME=x", 'ARGS: unknown args ["K8S_POD_NAME=x"]'),
    ("ip=10.0.0.5", 'ARGS: unknown args ["ip=10.0.0.5"]'),  # keys are case-sensitive
    ("IgnoreUnknown=1;", 'ARGS: invalid pair ""'),
    ("IP=a=b", 'ARGS: invalid pair "IP=a=b"'),
    ("IgnoreUnknown=yes", "boolean unmarshal error"),
])
def test_cni_args_errors(text, fragment):
    with pytest.raises(PluginError) as exc:
        cni_args.parse(text, {"IP": str})
    assert fragment in exc.value.msg and exc.value.code == 999
