"""The installed executables: bare environment, any cwd, warm daemon vs in-process fallback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

from dataplane.cni.runtime import daemon, pluginhost
from dataplane.cni.runtime.install import install

pytestmark = pytest.mark.requires("root", "netns")


def run_plugin(exe: str, env: dict[str, str], stdin: bytes = b"", netns: str | None = None,
               cwd: str = "/") -> subprocess.CompletedProcess[bytes]:
    """Exec like a runtime with a bare environment (env -i), optionally from inside `netns`."""
    argv = ["env", "-i", *[f"{k}={v}" for k, v in env.items()], exe]
    if netns:
        argv = ["nsenter", f"--net={netns}", "--", *argv]
    return subprocess.run(argv, input=stdin, capture_output=True, cwd=cwd, timeout=60)


def start_daemon(sandbox, sock: str, idle: float = 120) -> subprocess.Popen:
    proc = sandbox.spawn([sys.executable, "-m", "dataplane.cni.runtime.daemon", "serve", "--socket", sock,
                          "--idle-timeout", str(idle)])
    sandbox.defer(f"daemon on {sock}", lambda: daemon.stop(sock))
    wait_for(lambda: daemon.running(sock), f"daemon on {sock}")
    return proc


def wait_for(cond, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def sockdir(sandbox) -> str:
    return sandbox.tempdir("/run/dataplane")


def trace_env(command: str, cid: str = "c1", netns: str = "/run/netns/none") -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
            "CNI_PATH": "/nowhere"}


def test_install_bakes_the_venv_interpreter_and_writes_the_five_plugins(tmp_path):
    res = CliRunner().invoke(__import__("dataplane.cni.cli", fromlist=["command"]).command,
                             ["install", "--dir", str(tmp_path / "bin")])
    assert res.exit_code == 0, res.output
    names = sorted(os.listdir(tmp_path / "bin"))
    assert names == ["bridge", "host-local", "loopback", "portmap", "ptp"]
    for name in names:
        path = tmp_path / "bin" / name
        first = path.read_text().splitlines()[0]
        assert first == f"#!{sys.executable} -IS" and os.path.isabs(sys.executable)
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        assert f'PLUGIN = "{name}"' in path.read_text()
    bad = CliRunner().invoke(__import__("dataplane.cni.cli", fromlist=["command"]).command,
                             ["install", "--dir", str(tmp_path / "x"), "--plugin", "macvlan"])
    assert bad.exit_code == 1 and "unknown plugin(s): macvlan" in bad.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("plugin", pluginhost.STANDARD)
def test_each_plugin_answers_version_with_a_bare_environment_from_any_cwd(tmp_path, plugin):
    reason = pluginhost.available(plugin)
    if reason:
        pytest.skip(f"our {plugin} plugin is not importable yet: {reason}")
    install(str(tmp_path / "bin"), [plugin], socket="")
    res = run_plugin(str(tmp_path / "bin" / plugin), {"CNI_COMMAND": "VERSION"}, cwd=str(tmp_path))
    assert res.returncode == 0, res
    assert "1.0.0" in json.loads(res.stdout)["supportedVersions"]


CASES = [
    ("version", trace_env("VERSION"), b""),
    ("unknown command", trace_env("FROB"), b"{}"),
    ("bad json", trace_env("ADD"), b"{not json"),
    ("bad version", trace_env("ADD"), b'{"cniVersion":"9.9.9","name":"n","type":"dataplane-trace"}'),
    ("add", trace_env("ADD"), b'{"cniVersion":"1.0.0","name":"n","type":"dataplane-trace","prevResult":'
                              b'{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.2/24"}]}}'),
    ("del", trace_env("DEL"), b'{"cniVersion":"0.4.0","name":"n","type":"dataplane-trace"}'),
]


def test_fast_path_and_fallback_give_byte_identical_output_and_the_same_context(sandbox, sockdir, tmp_path):
    host = sandbox.netns("h")
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    sock = os.path.join(sockdir, "cni.sock")
    wanted = ["dataplane-trace", *[p for p in pluginhost.STANDARD if not pluginhost.available(p)]]
    install(str(fast), wanted, socket=sock, autostart=False)
    install(str(slow), wanted, socket="")
    proc = start_daemon(sandbox, sock)
    logdir = tmp_path / "log"
    workdir = tmp_path / "work"
    workdir.mkdir()
    cases = list(CASES)
    cases.append(("logged add", trace_env("ADD"), json.dumps(
        {"cniVersion": "1.1.0", "name": "n", "type": "dataplane-trace", "logDir": str(logdir)}).encode()))
    for plugin in wanted[1:]:  # our real plugins, where they exist: version, about text, errors
        cases += [(f"{plugin} version", {"CNI_COMMAND": "VERSION"}, b""),
                  (f"{plugin} about", {}, b""),
                  (f"{plugin} missing env", {"CNI_COMMAND": "ADD"}, b"{}"),
                  (f"{plugin} bad range", trace_env("ADD", netns=host.path),
                   json.dumps({"cniVersion": "1.0.0", "name": "n", "type": plugin,
                               "ipam": {"type": "host-local", "subnet": "10.9.9.0/32",
                                        "dataDir": str(tmp_path / "ipam")}}).encode())]
    for label, env, stdin in cases:
        plugin = label.split()[0] if label.split()[0] in wanted else "dataplane-trace"
        a = run_plugin(str(fast / plugin), env, stdin, host.path, str(workdir))
        b = run_plugin(str(slow / plugin), env, stdin, host.path, str(workdir))
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), label
    # The logged ADD ran once per path: same netns (the caller's), same cwd, different processes.
    records = [json.load(open(logdir / f)) for f in sorted(os.listdir(logdir))]
    assert len(records) == 2
    assert {r["pid"] for r in records} & {proc.pid} == {proc.pid}       # one was served by the daemon
    for r in records:
        assert r["netns_inode"] == os.stat(host.path).st_ino and r["cwd"] == str(workdir)
        r.pop("pid")
    assert records[0] == records[1]


def test_daemon_serves_50_parallel_callers_each_in_its_own_namespace(sandbox, sockdir, tmp_path):
    hosts = [sandbox.netns(f"p{i}") for i in range(5)]
    sock = os.path.join(sockdir, "cni.sock")
    install(str(tmp_path / "bin"), ["dataplane-trace"], socket=sock, autostart=False)
    proc = start_daemon(sandbox, sock)
    logdir = tmp_path / "log"
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "dataplane-trace", "logDir": str(logdir)})

    def call(i: int) -> subprocess.CompletedProcess[bytes]:
        return run_plugin(str(tmp_path / "bin" / "dataplane-trace"), trace_env("ADD", f"ctr-{i}"),
                          conf.encode(), hosts[i % 5].path)

    with ThreadPoolExecutor(50) as pool:
        done = list(pool.map(call, range(50)))
    assert [r.returncode for r in done] == [0] * 50
    records = [json.load(open(logdir / f)) for f in os.listdir(logdir)]
    assert len(records) == 50 and {r["pid"] for r in records} == {proc.pid}
    for r in records:
        i = int(r["env"]["CNI_CONTAINERID"].split("-")[1])
        assert r["netns_inode"] == os.stat(hosts[i % 5].path).st_ino
    # Requests over: no daemon thread is left inside a caller's namespace (nor the starter's).
    tasks = os.listdir(f"/proc/{proc.pid}/task")
    held = {os.stat(f"/proc/{proc.pid}/task/{t}/ns/net").st_ino for t in tasks}
    assert len(held) == 1 and not held & {os.stat(h.path).st_ino for h in hosts}
    assert held != {os.stat("/proc/self/ns/net").st_ino}


def test_daemon_starts_on_demand_and_leaves_nothing_when_stopped_or_idle(sandbox, sockdir, tmp_path):
    sock = os.path.join(sockdir, "cni.sock")
    install(str(tmp_path / "bin"), ["dataplane-trace"], socket=sock, autostart=True, idle_timeout=1.0)
    exe = str(tmp_path / "bin" / "dataplane-trace")
    sandbox.defer("auto-started daemon", lambda: daemon.stop(sock))
    first = run_plugin(exe, {"CNI_COMMAND": "VERSION"})
    assert first.returncode == 0                                  # served in-process, daemon spawned
    wait_for(lambda: daemon.running(sock), "the auto-started daemon")
    pid = daemon.read_pid(sock)
    assert pid and stat.S_IMODE(os.stat(sock).st_mode) == 0o600 and os.stat(sock).st_uid == 0
    assert run_plugin(exe, {"CNI_COMMAND": "VERSION"}).stdout == first.stdout
    # Idle for longer than its timeout: it exits by itself and removes its socket and PID file.
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or daemon.read_pid(sock) is None, "idle exit", 15)
    wait_for(lambda: not os.path.exists(sock) and not os.path.exists(daemon.pid_file(sock)), "cleanup", 5)
    # Explicit stop of a running one.
    proc = start_daemon(sandbox, sock)
    assert daemon.stop(sock) == proc.pid
    assert proc.wait(5) == 0
    assert not os.path.exists(sock) and not os.path.exists(daemon.pid_file(sock))
    assert daemon.stop(sock) is None


@pytest.mark.parametrize("started", [True, False], ids=["dies-after-starting", "dies-before-starting"])
def test_a_daemon_dying_mid_request(sandbox, sockdir, tmp_path, started):
    """After the daemon said it started: code 11 (try again), never a second run here. Before that:
    nothing ran, so the thin executable runs the plugin itself and answers normally."""
    import socket as so

    sock = os.path.join(sockdir, "cni.sock")
    install(str(tmp_path / "bin"), ["dataplane-trace"], socket=sock, autostart=False)
    server = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    server.bind(sock)
    server.listen(1)
    sandbox.defer("fake daemon socket", lambda: (server.close(), os.unlink(sock)))
    proc = subprocess.Popen(["env", "-i", "CNI_COMMAND=VERSION", str(tmp_path / "bin" / "dataplane-trace")],
                            stdout=subprocess.PIPE)
    conn, _ = server.accept()
    conn.recv(100)
    if started:
        conn.sendall(daemon.RAN)
    conn.close()
    out, _ = proc.communicate(timeout=30)
    if started:
        assert proc.returncode == 1 and json.loads(out)["code"] == 11
    else:
        assert proc.returncode == 0 and "supportedVersions" in json.loads(out)


def test_caller_in_another_mount_namespace_runs_in_process(sandbox, sockdir, tmp_path):
    """Paths would resolve differently in the daemon: it declines and the thin executable runs it."""
    sock = os.path.join(sockdir, "cni.sock")
    install(str(tmp_path / "bin"), ["dataplane-trace"], socket=sock, autostart=False)
    proc = start_daemon(sandbox, sock)
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "dataplane-trace",
                       "logDir": str(tmp_path / "log")}).encode()
    exe = str(tmp_path / "bin" / "dataplane-trace")
    same = subprocess.run(["env", "-i", *[f"{k}={v}" for k, v in trace_env("ADD").items()], exe],
                          input=conf, capture_output=True)
    other = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "env", "-i",
                            *[f"{k}={v}" for k, v in trace_env("ADD", "c2").items()], exe],
                           input=conf, capture_output=True)
    assert same.returncode == other.returncode == 0 and same.stdout == other.stdout
    pids = {json.load(open(tmp_path / "log" / f))["env"]["CNI_CONTAINERID"]: json.load(open(tmp_path / "log" / f))["pid"]
            for f in os.listdir(tmp_path / "log")}
    assert pids["c1"] == proc.pid and pids["c2"] != proc.pid


def test_inline_delegate_recognises_only_our_thin_executables(tmp_path):
    install(str(tmp_path / "bin"), ["dataplane-trace", "host-local"], socket="")
    assert pluginhost.thin_plugin_name(str(tmp_path / "bin" / "host-local")) == "host-local"
    assert pluginhost.thin_plugin_name("/usr/lib/cni/host-local") is None
    assert pluginhost.thin_plugin_name(str(tmp_path / "missing")) is None
    assert pluginhost.inline_delegate("/bin/sh", {}, b"") is None
    env = {"CNI_COMMAND": "VERSION"}
    inline = pluginhost.inline_delegate(str(tmp_path / "bin" / "dataplane-trace"), env, b"")
    exec_ = run_plugin(str(tmp_path / "bin" / "dataplane-trace"), env)
    assert inline == (exec_.returncode, exec_.stdout)


@pytest.mark.requires("veth", "bridge")
def test_50_parallel_adds_through_the_daemon_get_50_distinct_ips(sandbox, sockdir, tmp_path):
    for name in ("bridge", "host-local"):
        if pluginhost.available(name):
            pytest.skip(f"our {name} plugin is not importable")
    from dataplane.cni.runtime import CNIConfig, RuntimeConf, conf_list_from_bytes
    from dataplane.netns import namespace

    sock = os.path.join(sockdir, "cni.sock")
    install(str(tmp_path / "bin"), ["bridge", "host-local"], socket=sock, autostart=False)
    start_daemon(sandbox, sock)
    host = sandbox.netns("h")
    pods = [sandbox.netns("p") for _ in range(50)]
    net = conf_list_from_bytes(json.dumps({"cniVersion": "1.0.0", "name": "par", "plugins": [
        {"type": "bridge", "bridge": "parbr", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                  "ranges": [[{"subnet": "10.231.90.0/24"}]]}}]}).encode())
    cni = CNIConfig([str(tmp_path / "bin")], str(tmp_path / "cache"))

    def op(i: int, verb: str):
        with namespace.entered(host.name):
            rt = RuntimeConf(f"par-{i}", pods[i].path)
            return cni.add_network_list(net, rt) if verb == "add" else cni.del_network_list(net, rt)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: op(i, "add"), range(50)))
    ips = [r["ips"][0]["address"].split("/")[0] for r in results]
    assert len(set(ips)) == 50
    store = tmp_path / "ipam" / "par"
    assert sorted(f for f in os.listdir(store) if f[0].isdigit()) == sorted(ips)
    for i in (0, 17, 49):
        assert f"{ips[i]}/24" in pods[i].run(["ip", "-br", "addr", "show", "eth0"]).stdout
        assert (store / ips[i]).read_bytes() == f"par-{i}\r\neth0".encode()
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(lambda i: op(i, "del"), range(50)))
    assert sorted(os.listdir(store)) == ["last_reserved_ip.0", "lock"]


def test_daemon_retires_when_the_plugin_code_changes_on_disk(sandbox, sockdir, tmp_path):
    """A warm daemon must never keep serving old plugin code after an update."""
    sock = os.path.join(sockdir, "cni.sock")
    install(str(tmp_path / "bin"), ["dataplane-trace"], socket=sock, autostart=False)
    proc = start_daemon(sandbox, sock)
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "dataplane-trace",
                       "logDir": str(tmp_path / "log")}).encode()
    exe = str(tmp_path / "bin" / "dataplane-trace")
    assert run_plugin(exe, trace_env("ADD", "c1"), conf).returncode == 0
    source = os.path.join(os.path.dirname(pluginhost.__file__), "trace_plugin.py")
    stat_before = os.stat(source)
    os.utime(source, (stat_before.st_atime, stat_before.st_mtime + 5))  # "edited"
    sandbox.defer("restore mtime", lambda: os.utime(source, (stat_before.st_atime, stat_before.st_mtime)))
    time.sleep(1.1)
    assert run_plugin(exe, trace_env("ADD", "c2"), conf).returncode == 0
    assert proc.wait(10) == 0 and not os.path.exists(sock)
    pids = {}
    for f in os.listdir(tmp_path / "log"):
        rec = json.load(open(tmp_path / "log" / f))
        pids[rec["env"]["CNI_CONTAINERID"]] = rec["pid"]
    assert pids["c1"] == proc.pid and pids["c2"] != proc.pid


def test_executables_of_another_checkout_are_not_served_by_this_daemon(sandbox, sockdir, tmp_path, monkeypatch):
    from dataplane.cni.runtime import install as install_mod

    sock = os.path.join(sockdir, "cni.sock")
    real = install_mod.project_paths()
    monkeypatch.setattr(install_mod, "project_paths", lambda: [str(tmp_path / "other-checkout"), *real])
    install(str(tmp_path / "bin"), ["dataplane-trace"], socket=sock, autostart=False)
    proc = start_daemon(sandbox, sock)
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "dataplane-trace",
                       "logDir": str(tmp_path / "log")}).encode()
    assert run_plugin(str(tmp_path / "bin" / "dataplane-trace"), trace_env("ADD"), conf).returncode == 0
    (record,) = [json.load(open(tmp_path / "log" / f)) for f in os.listdir(tmp_path / "log")]
    assert record["pid"] != proc.pid


def test_daemon_cli_status_and_stop(sandbox, sockdir):
    from dataplane.cni.cli import command

    sock = os.path.join(sockdir, "cni.sock")
    res = CliRunner().invoke(command, ["daemon", "status", "--socket", sock])
    assert res.exit_code == 3 and "not running" in res.output
    proc = start_daemon(sandbox, sock)
    res = CliRunner().invoke(command, ["daemon", "status", "--socket", sock])
    assert res.exit_code == 0 and f"running, pid {proc.pid}" in res.output
    res = CliRunner().invoke(command, ["daemon", "stop", "--socket", sock])
    assert res.exit_code == 0 and f"stopped pid {proc.pid}" in res.output
    assert proc.wait(5) == 0 and sorted(os.listdir(sockdir)) == ["cni.sock.lock"]


@pytest.mark.requires("veth", "bridge")
def test_daemon_exec_gives_the_same_results_as_exec_without_starting_processes(sandbox, sockdir, tmp_path):
    for name in ("bridge", "host-local"):
        if pluginhost.available(name):
            pytest.skip(f"our {name} plugin is not importable")
    from dataplane.cni.runtime import CNIConfig, PluginError, RuntimeConf, conf_list_from_bytes
    from dataplane.cni.runtime.direct import DaemonExec, thin_info
    from dataplane.cni.runtime.invoke import SubprocessExec
    from dataplane.netns import namespace

    sock = os.path.join(sockdir, "cni.sock")
    install(str(tmp_path / "bin"), ["bridge", "host-local", "dataplane-trace"], socket=sock, autostart=False)
    assert thin_info(str(tmp_path / "bin" / "bridge")).socket == sock
    assert thin_info("/usr/lib/cni/bridge") is None
    proc = start_daemon(sandbox, sock)
    host, pod = sandbox.netns("h"), sandbox.netns("p")

    class Counting(SubprocessExec):
        calls = 0

        def exec_plugin(self, *a, **kw):
            Counting.calls += 1
            return super().exec_plugin(*a, **kw)

    direct = DaemonExec(Counting())
    env = {"CNI_COMMAND": "VERSION"}
    exe = str(tmp_path / "bin" / "dataplane-trace")
    assert direct.exec_plugin(exe, b"", env) == SubprocessExec().exec_plugin(exe, b"", env)
    bad = b'{"cniVersion":"9.9.9","name":"n","type":"dataplane-trace"}'
    errors = []
    for executor in (direct, SubprocessExec()):
        with pytest.raises(PluginError) as info:
            executor.exec_plugin(exe, bad, {"CNI_COMMAND": "ADD"})
        errors.append(info.value)
    assert errors[0] == errors[1] and errors[0].code == 1
    net = conf_list_from_bytes(json.dumps({"cniVersion": "1.0.0", "name": "direct", "plugins": [
        {"type": "bridge", "bridge": "dirbr", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                  "ranges": [[{"subnet": "10.231.91.0/24"}]]}}]}).encode())
    cni = CNIConfig([str(tmp_path / "bin")], str(tmp_path / "cache"), executor=direct)
    with namespace.entered(host.name):
        result = cni.add_network_list(net, RuntimeConf("d1", pod.path))
        assert "10.231.91.2/24" in pod.run(["ip", "-br", "addr", "show", "eth0"]).stdout
        assert result["interfaces"][0]["name"] == "dirbr"
        cni.check_network_list(net, RuntimeConf("d1", pod.path))
        cni.del_network_list(net, RuntimeConf("d1", pod.path))
    assert Counting.calls == 0  # the runtime never exec'd a plugin: all went to the daemon
    assert proc.poll() is None
