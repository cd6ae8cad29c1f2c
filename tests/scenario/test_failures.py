"""A run that cannot be built fails with a clear message and leaves nothing behind; the CLI
lists shipped scenarios and refuses what this machine cannot do without a traceback."""

from __future__ import annotations

import os
import textwrap

import pytest
from click.testing import CliRunner

from dataplane.cli.main import main
from dataplane.netns import namespace
from dataplane.scenario import spec
from dataplane.scenario.runtime import RunError, ScenarioRun
from dataplane.scenario.state import RunState

KERNEL = pytest.mark.requires("root", "netns", "veth", "bridge", "iptables-nft")

BROKEN_CNI = textwrap.dedent("""\
    cluster:
      cni:
        cniVersion: 1.0.0
        name: broken
        plugins:
          - {type: bridge, bridge: cni0, isGateway: true, ipam: {type: no-such-ipam}}
    traffic: [{name: t, from: pod/a, to: {address: 10.244.1.1, port: 80}}]
    ---
    {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {containers: [{name: a}]}}
    """)


@KERNEL
def test_cni_failure_is_a_clear_error_and_nothing_is_left():
    run = ScenarioRun(spec.parse(BROKEN_CNI, "broken.yaml"))
    with pytest.raises(RunError) as info:
        run.execute()
    assert "pod default/a on node-1" in str(info.value) and "no-such-ipam" in str(info.value)
    assert not [n for n in namespace.list_names() if n.startswith(f"dp{run.run_id}-")]
    assert not os.path.exists(RunState(run.run_id).directory)


def test_list_shows_shipped_scenarios():
    res = CliRunner().invoke(main, ["scenario", "list"])
    assert res.exit_code == 0, res.output
    for name in ("clusterip", "nodeport", "headless", "kube-dns", "multi-node", "rolling-update"):
        assert f"  {name} " in res.output
    assert "INVALID" not in res.output


@pytest.mark.requires("root")
def test_modes_this_kernel_cannot_run_are_refused_cleanly():
    res = CliRunner().invoke(main, ["scenario", "run", "clusterip", "--proxy-mode", "ipvs", "--quiet"])
    assert res.exit_code == 1 and "this kernel has no IPVS" in res.output and "Traceback" not in res.output
