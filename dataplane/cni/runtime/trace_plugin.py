"""`dataplane-trace`: a chained plugin that records every call it gets and changes nothing.

For runtime and plugin authors: put it in a list (`{"type": "dataplane-trace", "logDir": "/tmp/t"}`)
and each call leaves one JSON file with the command, the CNI_* variables, the config received on
stdin, and what the plugin process saw: its network namespace and working directory. ADD passes
`prevResult` through (or returns an empty result when first); other commands print nothing.
Stdlib only, so it also shows the bare cost of the exec path.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def _error(code: int, msg: str, version: str = "1.1.0") -> tuple[int, bytes]:
    return 1, json.dumps({"cniVersion": version, "code": code, "msg": msg}, indent=4).encode()


def record(env: Mapping[str, str], conf: dict) -> dict:
    return {
        "command": env.get("CNI_COMMAND", ""),
        "env": {k: v for k, v in sorted(env.items()) if k.startswith("CNI_")},
        "config": conf,
        "netns_inode": os.stat("/proc/thread-self/ns/net").st_ino,
        "cwd": os.getcwd(),
        "pid": os.getpid(),  # the daemon's or the exec'd process's: shows which path served the call
    }


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return 0, json.dumps({"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED)},
                             separators=(",", ":")).encode()
    if command not in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        return _error(4, f"unknown CNI_COMMAND: {command}")
    try:
        conf = json.loads(stdin)
        assert isinstance(conf, dict)
    except (ValueError, AssertionError):
        return _error(6, "error unmarshall network config: not a JSON object")
    version = conf.get("cniVersion") or "0.1.0"
    if version not in SUPPORTED:
        return _error(1, "incompatible CNI versions", version)
    log_dir = conf.get("logDir")
    if isinstance(log_dir, str) and log_dir:
        os.makedirs(log_dir, exist_ok=True)
        name = f"{time.time_ns()}-{command}-{env.get('CNI_CONTAINERID', '')}-{os.getpid()}.json"
        with open(os.path.join(log_dir, name), "w") as f:
            json.dump(record(env, conf), f, indent=2, sort_keys=True)
    if command != "ADD":
        return 0, b""
    prev = conf.get("prevResult") or {}
    return 0, json.dumps({**prev, "cniVersion": version}, indent=4).encode()
