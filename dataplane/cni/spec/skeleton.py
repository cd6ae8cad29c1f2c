"""The plugin skeleton: environment, stdin and version checks around a plugin's callbacks.

`dispatch` mirrors the Go reference skeleton (cni pkg/skel) step by step, and is pure: it
returns (exit code, stdout bytes) and never exits or writes to stdout, so the exec path, the
warm daemon and the tests can all call it. `main` wraps it for a real process.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from dataplane.cni.spec import errors, versions
from dataplane.cni.spec.errors import CNIError
from dataplane.cni.spec.types import Result

ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
MAX_IFNAME = 15
THREAD_NETNS = "/proc/thread-self/ns/net"

# Which variables each command needs, as the reference skeleton lists them.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}
_ENV_ORDER = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


@dataclass
class CmdArgs:
    """One invocation: the CNI_* variables, the raw and parsed config, the whole environment."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: str
    path: str
    stdin: bytes
    config: dict[str, Any]
    cni_version: str
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def path_dirs(self) -> list[str]:
        return [d for d in self.path.split(":") if d]

    def prev_result(self) -> Result | None:
        """`prevResult` parsed in any version (missing cniVersion = the config's)."""
        raw = self.config.get("prevResult")
        if raw is None:
            return None
        return Result.from_dict(raw, self.cni_version)

    def runtime_config(self) -> dict[str, Any]:
        value = self.config.get("runtimeConfig")
        return value if isinstance(value, dict) else {}


Callback = Callable[[CmdArgs], "Result | None"]


@dataclass
class PluginSpec:
    """What a plugin is: its name, versions, about text and one callable per command."""

    name: str
    add: Callback
    check: Callback | None = None
    delete: Callback | None = None
    status: Callback | None = None
    gc: Callback | None = None
    versions: tuple[str, ...] = versions.SUPPORTED
    about: str = ""

    @property
    def about_text(self) -> str:
        return self.about or f"CNI {self.name} plugin (dataplane)"


def dispatch(plugin: PluginSpec, env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Run one CNI command; returns (exit code, stdout). Errors are JSON on stdout, exit 1."""
    conf_version: str | None = None
    try:
        command = env.get("CNI_COMMAND", "")
        if not command:
            print(plugin.about_text, file=sys.stderr)
            print("CNI protocol versions supported: " + ", ".join(plugin.versions), file=sys.stderr)
            return 0, b""
        _check_env(command, env)
        if command == "VERSION":
            body = {"cniVersion": versions.CURRENT, "supportedVersions": list(plugin.versions)}
            return 0, json.dumps(body, separators=(",", ":")).encode()
        config = _load_config(stdin)
        conf_version = _safe_version(config)
        if command in ("ADD", "CHECK", "DEL"):
            _check_container_id(env.get("CNI_CONTAINERID", ""))
            _check_ifname(env.get("CNI_IFNAME", ""))
        version = versions.of_config(config)
        minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
        if minimum and not versions.at_least(version, minimum):
            raise CNIError(errors.INCOMPATIBLE_VERSION, f"config version does not allow {command}")
        versions.check_supported(version, plugin.versions)
        args = CmdArgs(command, env.get("CNI_CONTAINERID", ""), env.get("CNI_NETNS", ""),
                       env.get("CNI_IFNAME", ""), env.get("CNI_ARGS", ""), env.get("CNI_PATH", ""),
                       stdin, config, version, env)
        if command in ("ADD", "DEL"):
            _check_not_own_netns(args.netns, env)
        callback = {"ADD": plugin.add, "CHECK": plugin.check, "DEL": plugin.delete,
                    "STATUS": plugin.status, "GC": plugin.gc}[command]
        if callback is None:
            return 0, b""
        result = callback(args)
        if command == "ADD":
            if result is None:
                raise errors.PluginError("plugin returned no result")
            return 0, result.to_json(version)
        return 0, b""
    except CNIError as exc:
        return 1, exc.to_json(conf_version or versions.CURRENT)
    except Exception as exc:  # noqa: BLE001 - the runtime must get JSON, never a traceback
        print(f"{plugin.name}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1, errors.PluginError(str(exc) or type(exc).__name__).to_json(conf_version or versions.CURRENT)


def main(plugin: PluginSpec) -> NoReturn:
    """Entry point of a plugin executable."""
    env = dict(os.environ)
    stdin = b""
    if env.get("CNI_COMMAND") and env.get("CNI_COMMAND") != "VERSION":
        try:
            stdin = sys.stdin.buffer.read()
        except OSError as exc:
            sys.stdout.buffer.write(CNIError(errors.IO_FAILURE, f"error reading from stdin: {exc}").to_json())
            sys.stdout.flush()
            os._exit(1)
    code, out = dispatch(plugin, env, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.exit(code)


def _check_env(command: str, env: Mapping[str, str]) -> None:
    required = _REQUIRED.get(command, ())
    missing = [name for name in _ENV_ORDER if name in required and not env.get(name)]
    if missing:
        raise CNIError(errors.INVALID_ENVIRONMENT, f"required env variables [{','.join(missing)}] missing")
    if command not in _REQUIRED and command != "VERSION":
        raise CNIError(errors.INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}")


def _load_config(stdin: bytes) -> dict[str, Any]:
    try:
        if not stdin.strip():
            raise ValueError("unexpected end of JSON input")
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CNIError(errors.DECODING_FAILURE, f"error unmarshall network config: {exc}") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise CNIError(errors.DECODING_FAILURE,
                       f"error unmarshall network config: expected a JSON object, got {type(config).__name__}")
    name = config.get("name")
    if name is not None and not isinstance(name, str):
        raise CNIError(errors.DECODING_FAILURE, "error unmarshall network config: name must be a string")
    if not name:
        raise CNIError(errors.INVALID_NETWORK_CONFIG, "missing network name")
    if not ID_PATTERN.match(name):
        raise CNIError(errors.INVALID_NETWORK_CONFIG, "invalid characters found in network name", name)
    return config


def _safe_version(config: dict[str, Any]) -> str | None:
    version = config.get("cniVersion")
    return version if isinstance(version, str) and version in versions.SUPPORTED else None


def _check_container_id(container_id: str) -> None:
    if not container_id:
        raise CNIError(errors.UNKNOWN_CONTAINER, "missing containerID")
    if not ID_PATTERN.match(container_id):
        raise CNIError(errors.INVALID_ENVIRONMENT, "invalid characters in containerID", container_id)


def _check_ifname(ifname: str) -> None:
    if not ifname:
        raise CNIError(errors.INVALID_ENVIRONMENT, "interface name is empty")
    if len(ifname) > MAX_IFNAME:
        raise CNIError(errors.INVALID_ENVIRONMENT, "interface name is too long",
                       f"interface name should be less than {MAX_IFNAME + 1} characters")
    if ifname in (".", ".."):
        raise CNIError(errors.INVALID_ENVIRONMENT, "interface name is . or ..")
    if any(c in "/:" or c.isspace() for c in ifname):
        raise CNIError(errors.INVALID_ENVIRONMENT, "interface name contains / or : or whitespace characters")


def _check_not_own_netns(path: str, env: Mapping[str, str]) -> None:
    """Refuse to act on our own namespace (a recycled /proc/<pid>/ns/net, plugins#714).

    Checked before the callback runs, so nothing is changed when it fails.
    """
    if not path or env.get("CNI_NETNS_OVERRIDE", "").lower() in ("1", "true"):
        return
    try:
        target, own = os.stat(path), os.stat(THREAD_NETNS)
    except OSError:
        return
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise CNIError(errors.INVALID_NETNS, "plugin's netns and netns from CNI_NETNS should not be the same")
