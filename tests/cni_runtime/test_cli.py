"""`dataplane cni add|check|del|gc|status` with cnitool's environment variables, on the Go plugins."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from click.testing import CliRunner

from dataplane.cni.cli import command
from tests.cni_runtime.conftest import bridge_plugin

pytestmark = pytest.mark.requires("root", "veth", "bridge", "reference-plugins")


def test_cnitool_style_round_trip(bench, sandbox):
    ctr = sandbox.netns("c")
    trace = {"type": "dataplane-trace", "logDir": bench.trace_dir, "capabilities": {"portMappings": True}}
    bench.write_list("clinet", [bridge_plugin(bench, "dpbr9", "10.231.69.0/24"), trace])
    env = {"NETCONFPATH": bench.conf_dir, "CNI_PATH": bench.plugin_dir, "CNI_IFNAME": "net1",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=x",
           "CAP_ARGS": json.dumps({"portMappings": [{"hostPort": 9090, "containerPort": 90, "protocol": "tcp"}]})}
    runner = CliRunner()
    base = ["--cache-dir", bench.cache_dir]
    with bench.in_host():
        res = runner.invoke(command, [*base, "add", "clinet", ctr.name], env=env)
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["interfaces"][2] == {"name": "net1", "mac": result["interfaces"][2]["mac"], "sandbox": ctr.path}
    cid = "cnitool-" + hashlib.sha512(ctr.path.encode()).hexdigest()[:20]
    assert os.path.exists(os.path.join(bench.cache_dir, "results", f"clinet-{cid}-net1"))
    add = bench.traces()[-1]
    assert add["env"]["CNI_CONTAINERID"] == cid and add["env"]["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=x"
    assert add["config"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 9090
    # CHECK and DEL without CAP_ARGS/CNI_ARGS replay the cached ones (as podman does).
    bare = {k: v for k, v in env.items() if k not in ("CNI_ARGS", "CAP_ARGS")}
    with bench.in_host():
        assert runner.invoke(command, [*base, "check", "clinet", ctr.path], env=bare).exit_code == 0
        res = runner.invoke(command, [*base, "del", "clinet", ctr.path], env=bare)
    assert res.exit_code == 0, res.output
    delete = bench.traces()[-1]
    assert delete["command"] == "DEL" and delete["config"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 9090
    assert delete["env"]["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=x"
    assert not os.listdir(os.path.join(bench.cache_dir, "results"))
    with bench.in_host():
        assert runner.invoke(command, [*base, "gc", "clinet"], env=bare).exit_code == 0
        assert runner.invoke(command, [*base, "status", "clinet"], env=bare).exit_code == 0


def test_host_netns_option_runs_plugins_from_a_scratch_node(bench, sandbox):
    ctr = sandbox.netns("c")
    bench.write_list("hostopt", [bridge_plugin(bench, "dpbr8", "10.231.68.0/24")])
    env = {"NETCONFPATH": bench.conf_dir, "CNI_PATH": bench.plugin_dir}
    base = ["--cache-dir", bench.cache_dir, "--host-netns", bench.host.name]
    res = CliRunner().invoke(command, [*base, "add", "hostopt", ctr.name], env=env)
    assert res.exit_code == 0, res.output
    assert "dpbr8" in bench.host.run(["ip", "-br", "link"]).stdout          # the bridge is in the node ns
    assert CliRunner().invoke(command, [*base, "del", "hostopt", ctr.name], env=env).exit_code == 0
    res = CliRunner().invoke(command, ["--host-netns", "dp-no-such-ns", "add", "hostopt", ctr.name], env=env)
    assert res.exit_code != 0 and "no network namespace 'dp-no-such-ns'" in res.output


@pytest.mark.parametrize("argv, env, message", [
    (["add", "nope", "/run/netns/x"], {}, 'no net configuration with name "nope"'),
    (["add", "n", "/run/netns/x"], {"CNI_ARGS": "a=b;c"}, 'invalid CNI_ARGS pair "c"'),
    (["add", "n", "/run/netns/x"], {"CAP_ARGS": "[1]"}, "CAP_ARGS must be a JSON object"),
    (["add", "n", "/run/netns/x"], {"CAP_ARGS": "{"}, "CAP_ARGS is not valid JSON"),
    (["gc", "n", "--keep", "abc"], {}, "--keep wants CONTAINERID/IFNAME"),
    (["add", "n", "/run/netns/x", "-i", "a/b"], {}, "interface name contains"),
    (["add", "n", "/run/netns/x"], {"CNI_PATH": "/nonexistent"}, 'failed to find plugin "bridge"'),
])
def test_bad_input_gets_one_clear_line(tmp_path, argv, env, message):
    (tmp_path / "n.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "n",
                                                      "plugins": [{"type": "bridge"}]}))
    env = {"NETCONFPATH": str(tmp_path), "CNI_PATH": "/usr/lib/cni", **env}
    res = CliRunner().invoke(command, ["--cache-dir", str(tmp_path / "cache"), *argv], env=env)
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "cache").exists()
