"""Delegating to an IPAM plugin the way the reference does (cni pkg/invoke).

The delegate is found on CNI_PATH and exec'd with the caller's environment (only CNI_COMMAND
changed) and the complete config on stdin. It is forked from the calling thread, so it runs in
that thread's network namespace.
"""

from __future__ import annotations

import os
import subprocess

from dataplane.cni.spec import errors
from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.skeleton import CmdArgs
from dataplane.cni.spec.types import Result


def find_in_path(plugin: str, dirs: list[str]) -> str:
    if not plugin:
        raise PluginError("no plugin name provided")
    if os.sep in plugin:
        raise PluginError(f"invalid plugin name: {plugin}")
    if not dirs:
        raise PluginError("no paths provided")
    for d in dirs:
        full = os.path.join(d, plugin)
        if os.path.isfile(full):
            return full
    raise PluginError(f'failed to find plugin "{plugin}" in path [{" ".join(dirs)}]')


def ipam_type(config: dict) -> str:
    ipam = config.get("ipam")
    if ipam is None:
        return ""
    if not isinstance(ipam, dict):
        raise PluginError("ipam must be a JSON object")
    kind = ipam.get("type", "")
    if not isinstance(kind, str):
        raise PluginError("ipam.type must be a string")
    return kind


def run(plugin: str, command: str, args: CmdArgs) -> bytes:
    """Exec the delegate for `command`; its stdout on success, its error re-raised otherwise.

    When the delegate found on CNI_PATH is one of our own installed plugins, it runs in this
    thread instead (same env, stdin, netns and cwd, so the same answer) and saves an exec."""
    exe = find_in_path(plugin, args.path_dirs)
    env = dict(args.env)
    env["CNI_COMMAND"] = command
    from dataplane.cni.runtime.pluginhost import inline_delegate

    inline = inline_delegate(exe, env, args.stdin)
    if inline is not None:
        code, out = inline
        if code != 0:
            raise errors.from_output(out, b"")
        return out
    try:
        proc = subprocess.run([exe], input=args.stdin, env=env, capture_output=True, timeout=120)
    except OSError as exc:
        raise PluginError(f"failed to exec plugin {exe}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise errors.CNIError(errors.TRY_AGAIN_LATER, f"plugin {plugin} timed out") from None
    if proc.stderr:
        os.write(2, proc.stderr)
    if proc.returncode != 0:
        raise errors.from_output(proc.stdout, proc.stderr)
    return proc.stdout


def add(plugin: str, args: CmdArgs) -> Result:
    out = run(plugin, "ADD", args)
    return Result.from_json(out, args.cni_version)


def delete(plugin: str, args: CmdArgs) -> None:
    run(plugin, "DEL", args)


def check(plugin: str, args: CmdArgs) -> None:
    run(plugin, "CHECK", args)


def status(plugin: str, args: CmdArgs) -> None:
    run(plugin, "STATUS", args)


def gc(plugin: str, args: CmdArgs) -> None:
    run(plugin, "GC", args)
