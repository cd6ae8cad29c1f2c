"""Helpers shared by the CNI plugin tests (imported by name; tests/cni is on sys.path)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest

from dataplane.cni import testing as cni_testing

GO_DIR = cni_testing.REFERENCE_DIR
VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def go_plugins_missing() -> str | None:
    needed = ("bridge", "host-local", "loopback", "ptp", "portmap")
    absent = [p for p in needed if not os.access(os.path.join(GO_DIR, p), os.X_OK)]
    return f"reference plugins {absent} not in {GO_DIR}" if absent else None


requires_go = pytest.mark.skipif(go_plugins_missing() is not None, reason=go_plugins_missing() or "")
kernel = pytest.mark.requires("root", "netns", "veth", "bridge")


@dataclass
class Node:
    """A scratch "host" namespace with a per-test dataDir: where a plugin is run from."""

    host: Any          # dataplane.testing.sandbox.Netns
    data_dir: str
    sandbox: Any

    def container(self) -> Any:
        return self.sandbox.netns("c")

    def run(self, plugin_dir: str, plugin: str, command: str, conf: dict | bytes | str, *,
            container_id: str = "ctr1", netns: Any = None, ifname: str = "eth0", args: str = "",
            path: str | None = None, **extra: str) -> cni_testing.Outcome:
        netns_path = netns if isinstance(netns, str) else (netns.path if netns is not None else "")
        environ = cni_testing.env(command, container_id=container_id, netns=netns_path, ifname=ifname,
                                  path=path if path is not None else plugin_dir, args=args, **extra)
        return cni_testing.run_binary(os.path.join(plugin_dir, plugin), environ, conf, host_netns=self.host.path)

    def store(self, network: str) -> dict[str, str]:
        return cni_testing.store_files(os.path.join(self.data_dir, network))


def bridge_conf(data_dir: str, version: str = "1.0.0", name: str = "testnet", *,
                ranges: list | None = None, **fields: Any) -> dict:
    conf = {"cniVersion": version, "name": name, "type": "bridge", "bridge": "cni0", "isGateway": True,
            "ipam": {"type": "host-local", "ranges": ranges or [[{"subnet": "10.22.0.0/24"}]], "dataDir": data_dir}}
    conf.update(fields)
    return conf


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
