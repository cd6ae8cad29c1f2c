"""podman 4 (CNI backend, runc, busybox rootfs) on a network served only by our plugins.

podman runs inside a scratch "node" namespace, so the bridge, the veths and portmap's iptables
rules live there; a private containers.conf, --root and --runroot keep the machine's podman and
CNI configuration untouched. The plugins are reached through the warm daemon (the fast path).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from dataplane.cni.runtime import daemon, pluginhost
from dataplane.cni.runtime.install import install

pytestmark = pytest.mark.requires("root", "veth", "bridge", "iptables-nft", "podman")

CGROUP_ROOT = "/sys/fs/cgroup"
SUBNET = "10.231.81"


def _require_tools_and_plugins() -> None:
    for tool in ("/bin/busybox", shutil.which("curl") or "/nonexistent-curl"):
        if not os.path.exists(tool):
            pytest.skip(f"missing {tool}")
    for name in ("bridge", "host-local", "portmap"):
        reason = pluginhost.available(name)
        if reason:
            pytest.skip(f"our {name} plugin is not importable: {reason}")


def _libpod_cgroups() -> set[str]:
    return {os.path.join(CGROUP_ROOT, c, "libpod_parent") for c in os.listdir(CGROUP_ROOT)
            if os.path.isdir(os.path.join(CGROUP_ROOT, c, "libpod_parent"))}


def _remove_new_empty_dirs(paths: list[str]) -> None:
    """rmdir (never rm -r) what podman created; deepest first; non-empty ones stay and show up."""
    for top in paths:
        for dirpath, _dirs, _files in sorted(os.walk(top, topdown=False), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def _rootfs(path) -> str:
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp", "www"):
        (path / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", path / "bin" / "busybox")
    for applet in ("sh", "ip", "ping", "httpd", "sleep", "cat"):
        os.symlink("busybox", path / "bin" / applet)
    (path / "www" / "index.html").write_text("hello from the pod\n")
    return str(path)


def test_podman_containers_on_our_plugins(sandbox):
    _require_tools_and_plugins()
    from pathlib import Path

    tmp_path = Path(sandbox.tempdir("/tmp"))  # short: podman wants a runroot under 50 characters
    cni_state_existed = os.path.exists("/var/lib/cni/results"), os.path.exists("/var/lib/cni")
    cgroups_before = _libpod_cgroups()
    sandbox.defer("podman cgroups", lambda: _remove_new_empty_dirs(sorted(_libpod_cgroups() - cgroups_before)))
    sandbox.defer("podman's CNI cache folder", lambda: _remove_new_empty_dirs(
        [p for p, existed in zip(("/var/lib/cni/results", "/var/lib/cni"), cni_state_existed) if not existed]))

    node, client = sandbox.netns("n"), sandbox.netns("c")
    sandbox.veth(node, client, name="dpn0", peer="dpc0")
    node.run(["ip", "addr", "add", "192.168.100.1/24", "dev", "dpn0"])
    client.run(["ip", "addr", "add", "192.168.100.2/24", "dev", "dpc0"])

    sock = os.path.join(sandbox.tempdir("/run/dataplane"), "cni.sock")
    bin_dir = str(tmp_path / "bin")
    install(bin_dir, socket=sock, autostart=False)
    sandbox.spawn([sys.executable, "-m", "dataplane.cni.runtime.daemon", "serve", "--socket", sock])
    sandbox.defer("plugin daemon", lambda: daemon.stop(sock))
    deadline = time.monotonic() + 20
    while not daemon.running(sock):
        assert time.monotonic() < deadline, "plugin daemon did not start"
        time.sleep(0.05)

    net_d, ipam = tmp_path / "net.d", tmp_path / "ipam"
    net_d.mkdir()
    (net_d / "dpnet.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "dpnet", "plugins": [
        {"type": "bridge", "bridge": "dpbr", "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "host-local", "dataDir": str(ipam), "ranges": [[{"subnet": f"{SUBNET}.0/24"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}))
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "containers.conf"
    conf.write_text(f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
tmp_dir = "{tmp_path / 'tmp'}"
lock_type = "file"
events_logger = "none"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}"]
network_config_dir = "{net_d}"
default_network = "dpnet"
""")
    rootfs = _rootfs(tmp_path / "rootfs")
    base = ["nsenter", f"--net={node.path}", "--", "env", f"CONTAINERS_CONF={conf}",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "podman", "--root", str(tmp_path / "storage"),
            "--runroot", str(tmp_path / "runroot")]

    def podman(*args: str, check: bool = True) -> str:
        res = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res.stdout.strip()

    sandbox.defer("podman containers", lambda: podman("rm", "-f", "-t", "0", "--all", check=False))
    assert "dpnet" in podman("network", "ls", "--format", "{{.Name}}")
    # --rootfs is a flag; the folder is the first positional argument, options must come before it.
    podman("run", "-d", "--name", "dp-a", "--network", "dpnet", "-p", "8080:80", "--rootfs", rootfs,
           "/bin/httpd", "-f", "-p", "80", "-h", "/www")
    podman("run", "-d", "--name", "dp-b", "--network", "dpnet", "--rootfs", rootfs, "/bin/sleep", "600")
    ip_a = podman("inspect", "-f", '{{(index .NetworkSettings.Networks "dpnet").IPAddress}}', "dp-a")
    ip_b = podman("inspect", "-f", '{{(index .NetworkSettings.Networks "dpnet").IPAddress}}', "dp-b")
    assert ip_a.startswith(f"{SUBNET}.") and ip_b.startswith(f"{SUBNET}.") and ip_a != ip_b
    leases = sorted(f for f in os.listdir(ipam / "dpnet") if f[0].isdigit())
    assert leases == sorted([ip_a, ip_b])
    # podman's libcni wrote its result cache; our cache reader understands it, and our writer
    # reproduces it byte for byte (Go's json.Marshal layout).
    from dataplane.cni.runtime import ResultCache

    id_a = podman("inspect", "-f", "{{.Id}}", "dp-a")
    theirs = ResultCache("/var/lib/cni")
    entry = theirs.load("dpnet", id_a, "eth0")
    assert entry is not None and entry.result["ips"][0]["address"] == f"{ip_a}/24"
    assert ("K8S_POD_NAME", "dp-a") in entry.cni_args
    assert entry.capability_args["portMappings"][0]["hostPort"] == 8080
    ours = ResultCache(str(tmp_path / "cache-copy"))
    with open(theirs.path("dpnet", id_a, "eth0"), "rb") as f:
        assert open(ours.store(entry), "rb").read() == f.read()

    assert " 0% packet loss" in podman("exec", "dp-b", "ping", "-c", "2", "-W", "2", ip_a)
    assert " 0% packet loss" in podman("exec", "dp-a", "ping", "-c", "2", "-W", "2", ip_b)
    # -p 8080:80 from another namespace: client -> node 192.168.100.1:8080 -> DNAT -> dp-a:80.
    res = client.run(["curl", "-s", "-m", "10", "http://192.168.100.1:8080/"], check=False)
    assert res.returncode == 0 and res.stdout == "hello from the pod\n", res

    podman("rm", "-f", "-t", "0", "dp-a", "dp-b")
    assert sorted(f for f in os.listdir(ipam / "dpnet") if f[0].isdigit()) == []   # both IPs released
    rules = node.run(["iptables", "-t", "nat", "-S"]).stdout
    assert "CNI-DN-" not in rules                                                   # portmap DEL ran
    assert not any(n.startswith("dpnet-") for n in os.listdir("/var/lib/cni/results"))
