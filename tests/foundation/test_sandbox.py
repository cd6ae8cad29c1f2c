"""The shared fixtures create uniquely named objects and remove exactly those."""

import os
import subprocess
import time

import pytest

from dataplane.netns import link, namespace
from dataplane.testing import Sandbox, missing, unique_name


def test_unique_names_fit_an_interface_name():
    names = {unique_name("dpt") for _ in range(200)}
    assert len(names) == 200
    assert all(len(n) <= 15 for n in names)
    assert len(unique_name("a-very-long-prefix")) <= 15


def test_unknown_feature_is_an_error():
    with pytest.raises(ValueError, match="unknown feature"):
        missing("warp-drive")


@pytest.mark.requires("root", "veth", "bridge")
def test_namespaces_veths_and_bridges_are_removed_on_close():
    with Sandbox() as box:
        a, b = box.netns(), box.netns()
        pair = box.veth(a, b)
        br = box.bridge(a)
        root_pair = box.veth(None, a)
        assert namespace.exists(a.name) and namespace.exists(b.name)
        assert pair.name in link.names(a.name) and pair.peer in link.names(b.name)
        assert br in link.names(a.name)
        assert link.exists(root_pair.name)
        # lo is up in a fresh namespace, so ping to 127.0.0.1 answers
        a.run(["ping", "-c1", "-W1", "127.0.0.1"])
    assert not namespace.exists(a.name) and not namespace.exists(b.name)
    assert not link.exists(root_pair.name)


@pytest.mark.requires("root", "veth")
def test_veth_pair_carries_traffic(sandbox):
    a, b = sandbox.netns(), sandbox.netns()
    pair = sandbox.veth(a, b)
    a.run(["ip", "addr", "add", "192.168.100.1/24", "dev", pair.name])
    b.run(["ip", "addr", "add", "192.168.100.2/24", "dev", pair.peer])
    res = a.run(["ping", "-c1", "-W2", "192.168.100.2"], check=False)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.requires("root", "netns")
def test_spawned_process_and_its_children_are_stopped(sandbox):
    box = Sandbox()
    ns = box.netns()
    proc = box.spawn(["sh", "-c", "sleep 300 & sleep 300"], netns=ns, stdout=subprocess.DEVNULL)
    time.sleep(0.2)
    assert proc.poll() is None
    box.close()
    assert proc.poll() is not None
    # the whole process group is gone, grandchild included (allow init a moment to reap it)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"process group {proc.pid} survived the sandbox")
    assert not namespace.exists(ns.name)


@pytest.mark.requires("root", "netns")
def test_cleanup_errors_are_reported_not_swallowed():
    box = Sandbox()
    box.defer("a step that fails", lambda: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(RuntimeError, match="a step that fails: boom"):
        box.close()
