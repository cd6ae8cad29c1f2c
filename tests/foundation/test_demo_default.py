"""The README's main command: `dataplane demo` runs the embedded default scenario and passes."""

import os
import subprocess
import sys

import pytest

BIN = os.path.join(os.path.dirname(sys.executable), "dataplane")


@pytest.mark.requires("root", "veth", "bridge", "iptables-nft")
def test_demo_runs_the_default_scenario_and_passes():
    res = subprocess.run([BIN, "demo"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "expectations passed" in res.stdout and "PASSED" in res.stdout
    for traffic in ("pod-to-service-by-name", "pod-to-clusterip", "external-to-nodeport", "pod-to-empty-service"):
        assert traffic in res.stdout
