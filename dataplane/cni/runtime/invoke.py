"""Finding and executing plugin binaries (cni pkg/invoke): env, stdin, stdout, errors, VERSION.

`Exec` is the seam: `SubprocessExec` runs binaries for real; tests or embedders may pass another
object with the same `exec_plugin`. A child process inherits the network namespace of the calling
*thread*, so run calls inside `dataplane.netns.namespace.entered(...)` to act on a scratch host.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dataplane.cni.runtime import versions
from dataplane.cni.runtime.errors import INTERNAL, PluginError, RuntimeClientError


@dataclass
class Args:
    """What libcni puts in the plugin's environment (invoke.Args.AsEnv)."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    plugin_args: Sequence[tuple[str, str]] = ()
    path: Sequence[str] = ()

    def as_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update({
            "CNI_COMMAND": self.command,
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": self.netns,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in self.plugin_args),
            "CNI_IFNAME": self.ifname,
            "CNI_PATH": ":".join(self.path),
        })
        return env


class Exec(Protocol):
    def exec_plugin(self, plugin_path: str, stdin: bytes, env: Mapping[str, str]) -> bytes:
        """Run the plugin; return stdout on exit 0, raise PluginError otherwise."""


@dataclass
class SubprocessExec:
    """Exec a plugin binary; retry on ETXTBSY like libcni (a plugin being written right now)."""

    timeout: float | None = None
    stderr_sink: list[bytes] | None = field(default=None, repr=False)
    retries: int = 5

    def exec_plugin(self, plugin_path: str, stdin: bytes, env: Mapping[str, str]) -> bytes:
        for attempt in range(self.retries + 1):
            try:
                proc = subprocess.run([plugin_path], input=stdin, env=dict(env), capture_output=True,
                                      timeout=self.timeout, check=False)
            except OSError as exc:
                if exc.errno == 26 and attempt < self.retries:  # ETXTBSY
                    time.sleep(1)
                    continue
                raise PluginError(INTERNAL, f"failed to exec plugin {plugin_path}: {exc.strerror}") from None
            except subprocess.TimeoutExpired:
                raise PluginError(INTERNAL, f"plugin {plugin_path} did not finish within {self.timeout} s") from None
            if self.stderr_sink is not None and proc.stderr:
                self.stderr_sink.append(proc.stderr)
            if proc.returncode != 0:
                raise PluginError.from_output(proc.returncode, proc.stdout, proc.stderr)
            return proc.stdout
        raise AssertionError("unreachable")


def find_in_path(plugin: str, paths: Sequence[str]) -> str:
    """First regular file `<dir>/<plugin>` over `paths` (invoke.FindInPath, same messages)."""
    if not plugin:
        raise RuntimeClientError("no plugin name provided")
    if "/" in plugin:
        raise RuntimeClientError(f"invalid plugin name: {plugin}")
    if not paths:
        raise RuntimeClientError("no paths provided")
    for directory in paths:
        full = os.path.join(directory, plugin)
        if os.path.isfile(full):
            return full
    raise RuntimeClientError(f'failed to find plugin "{plugin}" in path [{" ".join(paths)}]')


@dataclass(frozen=True)
class PluginInfo:
    cni_version: str
    supported_versions: tuple[str, ...]


def get_version_info(plugin_path: str, executor: Exec) -> PluginInfo:
    """Ask a plugin which spec versions it speaks (invoke.GetVersionInfo + version.PluginDecoder)."""
    args = Args("VERSION", netns="dummy", ifname="dummy", path=("dummy",))
    stdin = json.dumps({"cniVersion": versions.CURRENT}, separators=(",", ":")).encode()
    try:
        out = executor.exec_plugin(plugin_path, stdin, args.as_env())
    except PluginError as exc:
        if str(exc) == "unknown CNI_COMMAND: VERSION":
            return PluginInfo("0.1.0", ("0.1.0",))
        raise
    try:
        obj = json.loads(out)
    except ValueError as exc:
        raise RuntimeClientError(f"decoding version info: {exc}", 6) from None
    if not isinstance(obj, dict):
        raise RuntimeClientError("decoding version info: not a JSON object", 6)
    version = obj.get("cniVersion", "")
    supported = obj.get("supportedVersions")
    if not supported:
        if version == "0.2.0":
            return PluginInfo(version, ("0.1.0", "0.2.0"))
        raise RuntimeClientError("decoding version info: missing field cniVersion or supportedVersions", 6)
    return PluginInfo(version, tuple(supported))
