"""Pod networking through CNI, the way a runtime on the node does it.

The conflist comes from the scenario (or the built-in bridge + host-local [+ portmap] one). Like
containerd's `{{.PodCIDR}}` template, the runner fills in each node's podCIDR, and it points
host-local's `dataDir` and the runtime's result cache into the run directory, so leases and
cached results go with the run and nothing lands in /var/lib/cni.

Plugins are run by the project's runtime client (`dataplane.cni.runtime.CNIConfig`, libcni's
behaviour) inside the node's namespace, which is the "host" side for them; the pod namespace is
`CNI_NETNS`. CNI_PATH lists the project's plugins first (thin executables installed into the run
directory by `dataplane.cni.runtime.install`), then the reference plugins, so a plugin type the
project does not have yet still resolves. The thin executables talk to a warm plugin daemon the
runner starts itself (PID recorded in the run state, socket in the run directory, no autostart),
so no process outlives the run unrecorded; without the daemon they would run in-process, slower.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from dataplane.netns import namespace
from dataplane.scenario.state import RunState, die_with_parent, process_start_time, stop_process_group

REFERENCE_CNI_DIR = os.environ.get("DATAPLANE_REFERENCE_CNI_PATH", "/usr/lib/cni")
PODCIDR_PLACEHOLDER = "{{.PodCIDR}}"


class CniError(RuntimeError):
    """A plugin failed: the message carries the runtime client's error (plugin, code, msg)."""


def _project_has(plugin: str) -> bool:
    from dataplane.cni.runtime import pluginhost

    return plugin in pluginhost.REGISTRY and pluginhost.available(plugin) is None


def default_conflist(mtu: int | None = None) -> dict:
    bridge: dict = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": PODCIDR_PLACEHOLDER}]],
                             "routes": [{"dst": "0.0.0.0/0"}]}}
    if mtu:
        bridge["mtu"] = mtu
    return {"cniVersion": "1.0.0", "name": "dataplane",
            "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}


def node_conflist(template: dict | None, pod_cidr: str, lease_dir: str) -> dict:
    """The conflist one node uses: its podCIDR substituted, host-local leases under `lease_dir`."""
    conf = json.loads(json.dumps(template or default_conflist()).replace(PODCIDR_PLACEHOLDER, pod_cidr))
    for plugin in conf["plugins"]:
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            ipam["dataDir"] = lease_dir
    return conf


@dataclass
class Attachment:
    container_id: str
    netns_path: str
    ifname: str
    result: dict

    @property
    def ip(self) -> str:
        for ip in self.result.get("ips", []):
            addr = ip.get("address", "")
            if "." in addr:
                return addr.split("/")[0]
        raise CniError(f"CNI result for {self.container_id} has no IPv4 address: {self.result}")


@dataclass
class Runtime:
    """The runner's CNI runtime: one client, plugins on CNI_PATH, cache in the run directory."""

    state: RunState
    use_project_plugins: bool = True
    plugin_dirs: list[str] = field(default_factory=list)
    daemon: subprocess.Popen[bytes] | None = None

    @property
    def run_dir(self) -> str:
        return self.state.directory

    def __post_init__(self) -> None:
        from dataplane.cni.runtime import CNIConfig
        from dataplane.cni.runtime.install import install
        from dataplane.cni.runtime.pluginhost import STANDARD

        dirs = []
        if self.use_project_plugins:
            bin_dir = os.path.join(self.run_dir, "cni-bin")
            sock = os.path.join(self.run_dir, "cni-daemon", "cni.sock")
            self._start_daemon(sock)
            install(bin_dir, [p for p in STANDARD if _project_has(p)], socket=sock, autostart=False)
            dirs.append(bin_dir)
        dirs.append(REFERENCE_CNI_DIR)
        self.plugin_dirs = dirs
        self.client = CNIConfig(dirs, cache_dir=os.path.join(self.run_dir, "cni-cache"))

    def _start_daemon(self, sock: str, timeout: float = 15.0) -> None:
        record = self.state.intend("process", what="cni plugin daemon", pid=None, start=None)
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "dataplane.cni.runtime.daemon", "serve", "--socket", sock, "--idle-timeout", "3600"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent)
        self.state.complete(record, pid=self.daemon.pid, start=process_start_time(self.daemon.pid))
        deadline = time.monotonic() + timeout
        while not os.path.exists(sock):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                break  # the thin plugins fall back to running in-process: slower, same result
            time.sleep(0.02)

    def close(self) -> None:
        """Stop the daemon (teardown; `scenario clean` does the same from the record)."""
        if self.daemon is not None:
            stop_process_group(self.daemon.pid, process_start_time(self.daemon.pid))
            self.daemon.wait()
            self.state.records[:] = [r for r in self.state.records
                                     if not (r["kind"] == "process" and r.get("pid") == self.daemon.pid)]
            self.state.save()
            self.daemon = None

    def resolved(self, conflist: dict) -> dict[str, str]:
        """Which executable each plugin type of the list runs (for the report)."""
        out = {}
        for plugin in conflist["plugins"]:
            ptype = plugin.get("type", "")
            out[ptype] = next((os.path.join(d, ptype) for d in self.plugin_dirs
                               if os.path.isfile(os.path.join(d, ptype))), "missing")
        return out

    def _net(self, conflist: dict):  # type: ignore[no-untyped-def]
        from dataplane.cni.runtime import CNIRuntimeError, conf_list_from_bytes

        try:
            return conf_list_from_bytes(json.dumps(conflist).encode(), source="scenario")
        except CNIRuntimeError as exc:
            raise CniError(f"invalid CNI conflist: {exc}") from None

    def _rt(self, container_id: str, netns_path: str, ifname: str, pod: tuple[str, str]):  # type: ignore[no-untyped-def]
        from dataplane.cni.runtime import RuntimeConf

        args = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", pod[0]), ("K8S_POD_NAME", pod[1]),
                ("K8S_POD_INFRA_CONTAINER_ID", container_id)]
        return RuntimeConf(container_id, netns_path, ifname, args, {"portMappings": []})

    def add(self, conflist: dict, node_netns: str, container_id: str, netns_path: str, *, ifname: str = "eth0",
            pod: tuple[str, str] = ("default", "")) -> Attachment:
        """ADD over the list; on failure DEL what was added, as kubelet/containerd do."""
        from dataplane.cni.runtime import CNIRuntimeError

        net, rt = self._net(conflist), self._rt(container_id, netns_path, ifname, pod)
        try:
            with namespace.entered(node_netns):
                result = self.client.add_network_list(net, rt)
        except CNIRuntimeError as exc:
            try:
                with namespace.entered(node_netns):
                    self.client.del_network_list(net, rt)
            except CNIRuntimeError:
                pass
            raise CniError(str(exc)) from None
        return Attachment(container_id, netns_path, ifname, result)

    def delete(self, conflist: dict, node_netns: str, att: Attachment, *,
               pod: tuple[str, str] = ("default", "")) -> None:
        from dataplane.cni.runtime import CNIRuntimeError

        net, rt = self._net(conflist), self._rt(att.container_id, att.netns_path, att.ifname, pod)
        try:
            with namespace.entered(node_netns):
                self.client.del_network_list(net, rt)
        except CNIRuntimeError as exc:
            raise CniError(str(exc)) from None
