"""Shared fixtures: a scratch host namespace, a plugin folder, a config folder, a private cache."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from dataplane.cni.runtime import CNIConfig, load_conf_list
from dataplane.cni.runtime.install import install
from dataplane.netns import namespace

GO_PLUGINS = "/usr/lib/cni"


@dataclass
class Bench:
    """A runtime's world in tmp: host netns, plugin dir, config dir, cache, IPAM store, trace log."""

    root: Path
    host: object  # testing.sandbox.Netns
    plugin_dir: str
    conf_dir: str
    cache_dir: str
    data_dir: str
    trace_dir: str

    def client(self) -> CNIConfig:
        return CNIConfig([self.plugin_dir], self.cache_dir)

    def write_list(self, name: str, plugins: list[dict], version: str = "1.0.0", **extra: object):
        doc = {"cniVersion": version, "name": name, **extra, "plugins": plugins}
        with open(os.path.join(self.conf_dir, f"{name}.conflist"), "w") as f:
            json.dump(doc, f)
        return load_conf_list(self.conf_dir, name)

    def traces(self) -> list[dict]:
        out = []
        for path in sorted(glob.glob(os.path.join(self.trace_dir, "*.json")),
                           key=lambda p: int(os.path.basename(p).split("-")[0])):
            with open(path) as f:
                out.append(json.load(f))
        return out

    def in_host(self):
        return namespace.entered(self.host.name)


@pytest.fixture
def bench(sandbox, tmp_path) -> Bench:
    host = sandbox.netns("h")
    plugin_dir = tmp_path / "bin"
    install(str(plugin_dir), ["dataplane-trace"], socket="")
    for name in ("bridge", "host-local", "portmap", "loopback", "ptp"):
        os.symlink(os.path.join(GO_PLUGINS, name), plugin_dir / name)
    for sub in ("net.d", "cache", "ipam", "trace"):
        (tmp_path / sub).mkdir()
    return Bench(tmp_path, host, str(plugin_dir), str(tmp_path / "net.d"), str(tmp_path / "cache"),
                 str(tmp_path / "ipam"), str(tmp_path / "trace"))


def bridge_plugin(bench: Bench, bridge: str, subnet: str, **extra: object) -> dict:
    return {"type": "bridge", "bridge": bridge, "isGateway": True, **extra,
            "ipam": {"type": "host-local", "dataDir": bench.data_dir, "ranges": [[{"subnet": subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}}
