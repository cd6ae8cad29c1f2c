"""`dataplane demo`: the round trip runs, says what it did, and leaves nothing, even when interrupted."""

from __future__ import annotations

import glob
import re
import tempfile

import pytest
from click.testing import CliRunner

from dataplane import demo
from dataplane.cni.runtime import pluginhost
from dataplane.netns import namespace

pytestmark = pytest.mark.requires("root", "veth", "bridge", "iptables-nft")


def _ours_or_skip() -> None:
    for name in ("bridge", "host-local", "portmap"):
        reason = pluginhost.available(name)
        if reason:
            pytest.skip(f"our {name} plugin is not importable: {reason}")


def _leftovers() -> tuple[list[str], list[str]]:
    spaces = [n for n in namespace.list_names() if n.startswith(("dpnode-", "dppod-"))]
    return spaces, glob.glob(f"{tempfile.gettempdir()}/dataplane-demo-*")


def test_demo_round_trip_and_cleanup():
    _ours_or_skip()
    before = _leftovers()
    res = CliRunner().invoke(demo.command, ["--cni"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert re.search(r"eth0@if\d+\s+UP\s+10\.244\.1\.\d+/24", out)
    assert "default via 10.244.1.1 dev eth0" in out
    assert "1 packets transmitted, 1 received" in out
    assert re.search(r"10\.244\.1\.\d+: 'demo-pod-1\\r\\neth0'", out)
    assert "results/dataplane-demo-demo-pod-1-eth0" in out
    assert "CHECK passed" in out
    assert "leases left: none; cache entries left: none; per-pod DNAT chains left: none" in out
    assert "removed the namespaces" in out
    assert _leftovers() == before


def test_demo_interrupted_after_add_removes_everything(monkeypatch):
    _ours_or_skip()
    before = _leftovers()
    real_show = demo._show

    def interrupt_in_pod_listing(ns, argv):
        if argv[:2] == ["ip", "route"]:
            raise KeyboardInterrupt
        return real_show(ns, argv)

    monkeypatch.setattr(demo, "_show", interrupt_in_pod_listing)
    res = CliRunner().invoke(demo.command, ["--cni"])
    assert res.exit_code == 130
    assert "interrupted; everything created was removed" in res.output
    assert "removed the namespaces" in res.output
    assert _leftovers() == before


@pytest.mark.requires("reference-plugins")
def test_demo_on_go_plugins_hits_portmap_check_bug_and_still_cleans_up():
    """The Go portmap v1.1.1 CHECK looks for IPv6 rules it never made (fixed upstream later):
    the demo reports the plugin's error in one line and still removes everything, DEL included."""
    before = _leftovers()
    res = CliRunner().invoke(demo.command, ["--cni", "--plugin-dir", "/usr/lib/cni"])
    assert res.exit_code == 1
    assert "1 packets transmitted, 1 received" in res.output
    assert "Error: could not check ipv6 dnat: chain CNI-DN-" in res.output
    assert "Traceback" not in res.output and "removed the namespaces" in res.output
    assert _leftovers() == before
