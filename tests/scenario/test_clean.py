"""A run killed with SIGKILL leaves its objects behind; `dataplane scenario clean` removes exactly
what the run recorded. A run interrupted with SIGINT or SIGTERM tears itself down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dataplane.netns import namespace
from dataplane.scenario.state import RunState, process_start_time

DATAPLANE = os.path.join(os.path.dirname(sys.executable), "dataplane")
KERNEL = pytest.mark.requires("root", "netns", "veth", "bridge", "iptables-nft", "reference-plugins")

# Traffic to an address nobody answers keeps the run busy long enough to be killed mid-flight.
SLOW = """\
name: slow
cluster: {podNetwork: host-gw}
traffic:
  - name: nowhere
    from: pod/client
    to: {address: 192.168.100.99, port: 9}
    requests: 400
    timeout: 0.5
expect:
  - {traffic: nowhere, reachable: false}
---
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Node, metadata: {name: a}, spec: {podCIDR: 10.244.1.0/24},
     status: {addresses: [{type: InternalIP, address: 192.168.100.11}]}}
  - {apiVersion: v1, kind: Node, metadata: {name: b}, spec: {podCIDR: 10.244.2.0/24},
     status: {addresses: [{type: InternalIP, address: 192.168.100.12}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: client}, spec: {containers: [{name: c}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: server, labels: {app: s}}, spec: {containers: [{name: s}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: s}, spec: {selector: {app: s}, ports: [{port: 80}]}}
"""


def start_slow_run(tmp_path, cni_plugins: str = "project") -> tuple[subprocess.Popen, str]:
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW.replace("cluster: {podNetwork: host-gw}",
                                 f"cluster: {{podNetwork: host-gw, cniPlugins: {cni_plugins}}}"))
    proc = subprocess.Popen([DATAPLANE, "scenario", "run", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    run_id = None
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if run_id is None and line.strip().startswith(".. run "):
            run_id = line.split()[2].rstrip(":")
        if "traffic nowhere" in line:
            return proc, run_id or ""
    proc.kill()
    proc.wait()
    raise AssertionError(f"the run did not reach its traffic phase: {proc.stderr.read()}")


def recorded(run_id: str) -> tuple[list[str], list[tuple[int, int]]]:
    state = RunState.load(run_id)
    names = [r["name"] for r in state.records if r["kind"] == "netns"]
    procs = [(r["pid"], r["start"]) for r in state.records if r["kind"] == "process" and r.get("pid")]
    return names, procs


def alive(pid: int, start: int) -> bool:
    """Running (a zombie waiting for its reaper is not running)."""
    if process_start_time(pid) != start:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@KERNEL
def test_sigkill_then_clean_leaves_nothing(tmp_path):
    proc, run_id = start_slow_run(tmp_path)
    names, procs = recorded(run_id)
    assert len(names) == 2 + 2 + 2 and len(procs) == 3   # underlay, external, 2 nodes, 2 pods; 2 workloads + CNI daemon
    proc.kill()
    proc.wait()
    proc.stderr.close()
    # The kill left the namespaces and the leases in place (the runner's processes get SIGTERM
    # from the kernel when it dies, PR_SET_PDEATHSIG; `clean` would stop them by PID otherwise) ...
    assert all(namespace.exists(n) for n in names)
    leases = os.path.join(RunState(run_id).directory, "ipam")
    assert os.listdir(leases)
    # ... and clean removes exactly that.
    res = subprocess.run([DATAPLANE, "scenario", "clean", "--run", run_id], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"run {run_id}: removed" in res.stdout
    assert not any(namespace.exists(n) for n in names)
    time.sleep(0.1)
    assert not any(alive(*p) for p in procs)
    assert not os.path.exists(RunState(run_id).directory)


@KERNEL
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_tears_itself_down(tmp_path, sig):
    """(The reference plugins keep this quick; the SIGKILL test above covers ours and their daemon.)"""
    proc, run_id = start_slow_run(tmp_path, "reference")
    names, procs = recorded(run_id)
    # `clean` leaves a run alone while its runner lives
    res = subprocess.run([DATAPLANE, "scenario", "clean", "--run", run_id], capture_output=True, text=True)
    assert "still alive; skipped" in res.stdout
    assert all(namespace.exists(n) for n in names)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 130
    proc.stderr.close()
    assert not any(namespace.exists(n) for n in names)
    assert not any(alive(*p) for p in procs)
    assert not os.path.exists(RunState(run_id).directory)
