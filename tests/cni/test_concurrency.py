"""Many plugin processes on one network at once, and plugins killed in the middle of an ADD."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time


from cni_plugin_helpers import GO_DIR, go_plugins_missing
from dataplane.cni import testing as cni_testing
from dataplane.cni.plugins.host_local import PLUGIN as HOST_LOCAL

NET = "busy"


def conf(data_dir: str, subnet: str = "10.40.0.0/24", version: str = "1.0.0") -> bytes:
    return json.dumps({"cniVersion": version, "name": NET, "type": "host-local",
                       "ipam": {"type": "host-local", "dataDir": data_dir,
                                "ranges": [[{"subnet": subnet}]]}}).encode()


def start(exe: str, data_dir: str, cid: str) -> subprocess.Popen:
    environ = cni_testing.env("ADD", container_id=cid, netns="/var/run/netns/x", path=os.path.dirname(exe))
    stdin_file = os.path.join(data_dir, f".stdin-{cid}")
    with open(stdin_file, "wb") as fh:
        fh.write(conf(data_dir))
    with open(stdin_file, "rb") as stdin:
        return subprocess.Popen([exe], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ)


def leases(data_dir: str) -> dict[str, str]:
    return {k: v for k, v in cni_testing.store_files(os.path.join(data_dir, NET)).items()
            if k[0].isdigit() or ":" in k}


def test_parallel_adds_get_distinct_ips_and_a_consistent_store(our_bin, tmp_path):
    """50 of ours (plus 10 Go plugins when present, sharing the flock) on one network at once."""
    data_dir = str(tmp_path)
    exes = [(f"ours{i}", os.path.join(our_bin, "host-local")) for i in range(50)]
    if go_plugins_missing() is None:
        exes += [(f"go{i}", os.path.join(GO_DIR, "host-local")) for i in range(10)]
    random.Random(7).shuffle(exes)
    procs = [(cid, start(exe, data_dir, cid)) for cid, exe in exes]
    got = {}
    for cid, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (cid, out, err)
        got[cid] = json.loads(out)["ips"][0]["address"].split("/")[0]
    assert len(set(got.values())) == len(exes)
    store = leases(data_dir)
    assert store == {ip: f"{cid}\r\neth0" for cid, ip in got.items()}
    hosts = sorted(int(ip.rsplit(".", 1)[1]) for ip in got.values())
    assert hosts == list(range(2, 2 + len(exes)))          # no gaps: each took the next free IP
    last = cni_testing.store_files(os.path.join(data_dir, NET))["last_reserved_ip.0"]
    assert last == f"10.40.0.{1 + len(exes)}"


def _lock_holders(lock_path: str) -> set[int]:
    st = os.stat(lock_path)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    with open("/proc/locks", encoding="ascii") as fh:
        for line in fh:
            fields = line.split()
            if "->" in fields:
                continue                                    # a waiter, not a holder
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                holders.add(int(fields[4]))
    return holders


def test_sigkill_while_holding_the_lock(our_bin, tmp_path):
    data_dir = str(tmp_path)
    net_dir = os.path.join(data_dir, NET)
    os.makedirs(net_dir)
    # A FIFO as last_reserved_ip.0 makes the plugin block reading it, *inside* the lock.
    fifo = os.path.join(net_dir, "last_reserved_ip.0")
    os.mkfifo(fifo)
    proc = start(os.path.join(our_bin, "host-local"), data_dir, "victim")
    lock = os.path.join(net_dir, "lock")
    deadline = time.monotonic() + 20
    while not (os.path.exists(lock) and proc.pid in _lock_holders(lock)):
        assert proc.poll() is None and time.monotonic() < deadline, "the plugin never took the lock"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    os.unlink(fifo)
    environ = cni_testing.env("ADD", container_id="next", netns="/var/run/netns/x", path=our_bin)
    nxt = cni_testing.run_binary(os.path.join(our_bin, "host-local"), environ, conf(data_dir), timeout=20)
    assert nxt.code == 0 and nxt.json["ips"][0]["address"] == "10.40.0.2/24"
    gc = json.loads(conf(data_dir, version="1.1.0"))
    gc["cni.dev/valid-attachments"] = [{"containerID": "next", "ifname": "eth0"}]
    assert cni_testing.run_inprocess(HOST_LOCAL, {"CNI_COMMAND": "GC", "CNI_PATH": our_bin}, gc).code == 0
    assert leases(data_dir) == {"10.40.0.2": "next\r\neth0"}


def test_random_kills_then_gc_restores_a_clean_store(our_bin, tmp_path):
    data_dir = str(tmp_path)
    rng = random.Random(11)
    survivors = []
    for i in range(8):
        proc = start(os.path.join(our_bin, "host-local"), data_dir, f"c{i}")
        time.sleep(rng.uniform(0.0, 0.35))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if proc.returncode == 0:
            survivors.append(f"c{i}")
    gc = json.loads(conf(data_dir, version="1.1.0"))
    gc["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": "eth0"} for c in survivors]
    assert cni_testing.run_inprocess(HOST_LOCAL, {"CNI_COMMAND": "GC", "CNI_PATH": our_bin}, gc).code == 0
    assert sorted(v.split("\r\n")[0] for v in leases(data_dir).values()) == sorted(survivors)
    environ = cni_testing.env("ADD", container_id="after", netns="/var/run/netns/x", path=our_bin)
    assert cni_testing.run_binary(os.path.join(our_bin, "host-local"), environ, conf(data_dir)).code == 0
    assert all(v.count("\r\n") == 1 for v in leases(data_dir).values())
