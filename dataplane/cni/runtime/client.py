"""libcni's CNIConfig in Python: run a network list's plugins as a container runtime does.

    cni = CNIConfig(["/opt/cni/bin"], cache_dir="/var/lib/cni")
    net = load_conf_list("/etc/cni/net.d", "mynet")
    rt = RuntimeConf(container_id="c1", netns="/run/netns/c1", ifname="eth0")
    result = cni.add_network_list(net, rt)   # ADD in order, each plugin gets prevResult
    cni.check_network_list(net, rt)          # CHECK with the cached result
    cni.del_network_list(net, rt)            # DEL in reverse, cached result as prevResult

Behaviour, messages and the cache follow cni libcni/api.go, so a runtime built on this class is
interchangeable with one built on libcni (podman, containerd, cri-o, cnitool).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dataplane.cni.runtime import results, versions
from dataplane.cni.runtime.cache import DEFAULT_CACHE_DIR, CachedAttachment, ResultCache
from dataplane.cni.runtime.conf import NetworkConfig, NetworkConfigList, check_network_name, to_wire
from dataplane.cni.runtime.errors import (INTERNAL, INVALID_ENVIRONMENT, UNKNOWN_CONTAINER, ChainError,
                                          CNIRuntimeError, RuntimeClientError)
from dataplane.cni.runtime.invoke import Args, Exec, PluginInfo, SubprocessExec, find_in_path, get_version_info

_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
MAX_IFNAME = 15


@dataclass
class RuntimeConf:
    """One attachment: which container, which netns, which interface, and the runtime's arguments."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: Sequence[tuple[str, str]] = ()             # CNI_ARGS pairs, e.g. [("IgnoreUnknown", "1")]
    capability_args: Mapping[str, Any] = field(default_factory=dict)  # -> runtimeConfig by capability


@dataclass(frozen=True)
class GCAttachment:
    container_id: str
    ifname: str

    def to_json(self) -> dict[str, str]:
        return {"containerID": self.container_id, "ifname": self.ifname}


def validate_container_id(container_id: str) -> None:
    if not container_id:
        raise RuntimeClientError("missing containerID", UNKNOWN_CONTAINER)
    if not _ID_RE.match(container_id):
        raise RuntimeClientError("invalid characters in containerID", INVALID_ENVIRONMENT, container_id)


def validate_ifname(ifname: str) -> None:
    if not ifname:
        raise RuntimeClientError("interface name is empty", INVALID_ENVIRONMENT)
    if len(ifname) > MAX_IFNAME:
        raise RuntimeClientError("interface name is too long", INVALID_ENVIRONMENT,
                                 f"interface name should be less than {MAX_IFNAME + 1} characters")
    if ifname in (".", ".."):
        raise RuntimeClientError("interface name is . or ..", INVALID_ENVIRONMENT)
    if any(c in "/:" or c.isspace() for c in ifname):
        raise RuntimeClientError("interface name contains / or : or whitespace characters", INVALID_ENVIRONMENT)


def build_one_config(name: str, cni_version: str, plugin: NetworkConfig, prev_result: dict[str, Any] | None,
                     rt: RuntimeConf | None) -> bytes:
    """The stdin for one plugin: its object plus name, cniVersion, prevResult, runtimeConfig."""
    conf = dict(plugin.conf)
    conf["name"] = name
    conf["cniVersion"] = cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    if rt is not None:
        runtime_config = {cap: rt.capability_args[cap] for cap, on in plugin.capabilities.items()
                          if on and cap in rt.capability_args}
        if runtime_config:
            conf["runtimeConfig"] = runtime_config
    return to_wire(conf)


class CNIConfig:
    """Runs plugins found on `plugin_dirs`; keeps results under `<cache_dir>/results`."""

    def __init__(self, plugin_dirs: Sequence[str], cache_dir: str | None = None, *,
                 executor: Exec | None = None, env: Mapping[str, str] | None = None) -> None:
        self.path = list(plugin_dirs)
        self.cache = ResultCache(cache_dir or DEFAULT_CACHE_DIR)
        self.executor: Exec = executor or SubprocessExec()
        self.env = env  # base environment for plugins; None = this process's (as libcni)

    # -- helpers -------------------------------------------------------------------------------
    def _args(self, command: str, rt: RuntimeConf | None) -> Mapping[str, str]:
        if rt is None:
            return Args(command, path=self.path).as_env(self.env)
        return Args(command, rt.container_id, rt.netns, rt.ifname, tuple(rt.args), self.path).as_env(self.env)

    def _run(self, plugin_type: str, stdin: bytes, env: Mapping[str, str]) -> bytes:
        return self.executor.exec_plugin(find_in_path(plugin_type, self.path), stdin, env)

    def _cached_result(self, net: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any] | None:
        entry = self.cache.load(net.name, rt.container_id, rt.ifname)
        if entry is None or entry.result is None:
            return None
        try:
            return results.convert(entry.result, net.cni_version)
        except CNIRuntimeError as exc:
            raise RuntimeClientError(f"failed to convert cached result to config version "
                                     f"{net.cni_version!r}: {exc}") from None

    # -- ADD / CHECK / DEL ---------------------------------------------------------------------
    def add_network_list(self, net: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any]:
        """ADD every plugin in order, each given the previous result; cache and return the last."""
        result: dict[str, Any] | None = None
        for plugin in net.plugins:
            try:
                path = find_in_path(plugin.type, self.path)
                validate_container_id(rt.container_id)
                check_network_name(net.name)
                validate_ifname(rt.ifname)
                stdin = build_one_config(net.name, net.cni_version, plugin, result, rt)
                out = self.executor.exec_plugin(path, stdin, self._args("ADD", rt))
                result = results.parse(out, net.cni_version)
            except CNIRuntimeError as exc:
                raise ChainError(plugin.type, net.name, "add", exc) from None
        assert result is not None  # a list has at least one plugin
        self.cache.store(CachedAttachment(rt.container_id, net.name, rt.ifname, net.raw, rt.netns,
                                          list(rt.args), dict(rt.capability_args), result))
        return result

    def check_network_list(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        """CHECK every plugin with the cached result as prevResult (needs 0.4.0 or later)."""
        if not versions.at_least(net.cni_version, "0.4.0"):
            raise RuntimeClientError(f'configuration version "{net.cni_version}" does not support the CHECK command',
                                     1)
        if net.disable_check:
            return
        try:
            cached = self._cached_result(net, rt)
        except CNIRuntimeError as exc:
            raise RuntimeClientError(f'failed to get network "{net.name}" cached result: {exc}') from None
        for plugin in net.plugins:
            stdin = build_one_config(net.name, net.cni_version, plugin, cached, rt)
            self._run(plugin.type, stdin, self._args("CHECK", rt))

    def del_network_list(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        """DEL every plugin in reverse order; the cached result goes along as prevResult (>= 0.4.0)."""
        cached = None
        if versions.at_least(net.cni_version, "0.4.0"):
            try:
                cached = self._cached_result(net, rt)
            except CNIRuntimeError:
                self.cache.remove(net.name, rt.container_id, rt.ifname)  # unreadable: DEL without it
        for plugin in reversed(net.plugins):
            try:
                stdin = build_one_config(net.name, net.cni_version, plugin, cached, rt)
                self._run(plugin.type, stdin, self._args("DEL", rt))
            except CNIRuntimeError as exc:
                raise ChainError(plugin.type, net.name, "delete", exc) from None
        self.cache.remove(net.name, rt.container_id, rt.ifname)

    # -- cache queries -------------------------------------------------------------------------
    def get_network_list_cached_result(self, net: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any] | None:
        return self._cached_result(net, rt)

    def get_network_list_cached_config(self, net: NetworkConfigList,
                                       rt: RuntimeConf) -> tuple[bytes, RuntimeConf] | None:
        """The cached list bytes and `rt` with the cached CNI_ARGS/capability args (for DEL replay)."""
        entry = self.cache.load(net.name, rt.container_id, rt.ifname)
        if entry is None or not entry.config:
            return None
        return entry.config, RuntimeConf(rt.container_id, rt.netns, rt.ifname,
                                         entry.cni_args or tuple(rt.args), entry.capability_args)

    def get_cached_attachments(self, container_id: str = "") -> list[CachedAttachment]:
        return self.cache.attachments(container_id)

    # -- GC / STATUS / VERSION -----------------------------------------------------------------
    def gc_network_list(self, net: NetworkConfigList,
                        valid_attachments: Sequence[GCAttachment] | None = None) -> None:
        """DEL every cached attachment of this network not in `valid_attachments`, then GC (>= 1.1.0).

        `None` means "no list given" (cnitool gc): every cached attachment is deleted and the GC
        request carries no `cni.dev/valid-attachments` key, exactly as libcni does.
        """
        errors: list[str] = []
        valid = {(a.container_id, a.ifname) for a in valid_attachments or ()}
        for entry in self.cache.attachments():
            if entry.network != net.name or (entry.container_id, entry.ifname) in valid:
                continue
            rt = RuntimeConf(entry.container_id, entry.netns, entry.ifname, entry.cni_args, entry.capability_args)
            try:
                self.del_network_list(net, rt)
            except CNIRuntimeError as exc:
                errors.append(f"failed to delete stale attachment {rt.container_id} {rt.ifname}: {exc}")
        if versions.at_least(net.cni_version, "1.1.0") and not net.disable_gc:
            for plugin in net.plugins:
                conf = dict(plugin.conf, name=net.name, cniVersion=net.cni_version)
                if valid_attachments is not None:
                    listed = [a.to_json() for a in valid_attachments]
                    conf["cni.dev/valid-attachments"] = listed
                    conf["cni.dev/attachments"] = listed
                try:
                    self._run(plugin.type, to_wire(conf), self._args("GC", None))
                except CNIRuntimeError as exc:
                    errors.append(f"failed to GC plugin {plugin.type}: {exc}")
        if errors:
            raise RuntimeClientError("\n".join(errors), INTERNAL)

    def get_status_network_list(self, net: NetworkConfigList) -> None:
        """STATUS every plugin (>= 1.1.0; silently nothing before); stops at the first failure."""
        if not versions.at_least(net.cni_version, "1.1.0"):
            return
        for plugin in net.plugins:
            conf = dict(plugin.conf, name=net.name, cniVersion=net.cni_version)
            self._run(plugin.type, to_wire(conf), self._args("STATUS", None))

    def get_version_info(self, plugin_type: str) -> PluginInfo:
        return get_version_info(find_in_path(plugin_type, self.path), self.executor)

    def validate_network_list(self, net: NetworkConfigList) -> list[str]:
        """Every plugin exists and supports the list's version; returns the capabilities in use."""
        errors = []
        caps: set[str] = set()
        expected = net.cni_version or "0.1.0"
        for plugin in net.plugins:
            try:
                info = self.get_version_info(plugin.type)
                if expected not in info.supported_versions:
                    errors.append(f'plugin {plugin.type} does not support config version "{expected}"')
            except CNIRuntimeError as exc:
                errors.append(str(exc))
            caps.update(c for c, on in plugin.capabilities.items() if on)
        if errors:
            raise RuntimeClientError("[" + " ".join(errors) + "]", INTERNAL)
        return sorted(caps)
