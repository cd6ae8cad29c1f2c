"""A harness for running CNI plugins the way a runtime does: env + stdin in, stdout + code out.

Plugins run either as executables (ours through tiny wrapper scripts, the Go reference from
/usr/lib/cni) or in-process through `dispatch`; either way inside a "host" namespace given by
path, since bridge and friends act on whatever namespace they are run from. The snapshot
helpers read a namespace's links, addresses and routes in a form two runs can be compared by.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

REFERENCE_DIR = "/usr/lib/cni"
OUR_PLUGINS = {"bridge": "bridge", "host-local": "host_local", "loopback": "loopback",
               "ptp": "ptp", "portmap": "portmap"}
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Outcome:
    code: int
    stdout: bytes
    stderr: bytes = b""

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout else None

    def __repr__(self) -> str:
        return f"Outcome(code={self.code}, stdout={self.stdout[:400]!r}, stderr={self.stderr[-400:]!r})"


def install_wrappers(directory: str, python: str = sys.executable) -> str:
    """Write one executable per plugin into `directory` that runs ours via `python -m`."""
    os.makedirs(directory, exist_ok=True)
    for name, module in OUR_PLUGINS.items():
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f"#!/bin/sh\nPYTHONPATH={PROJECT_ROOT} exec {python} -m dataplane.cni.plugins.{module} \"$@\"\n")
        os.chmod(path, 0o755)
    return directory


def env(command: str, *, container_id: str = "", netns: str = "", ifname: str = "eth0",
        path: str = "", args: str = "", **extra: str) -> dict[str, str]:
    """A runtime's plugin environment (a bare one, plus PATH for the tools plugins call)."""
    out = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_PATH": path, "CNI_ARGS": args,
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def run_binary(exe: str, environ: dict[str, str], stdin: bytes | dict | str, *,
               host_netns: str | None = None, timeout: float = 60) -> Outcome:
    """Exec a plugin binary (inside `host_netns` when given) and collect its answer."""
    data = _bytes(stdin)
    argv = [exe] if host_netns is None else ["nsenter", f"--net={host_netns}", "--", exe]
    proc = subprocess.run(argv, input=data, env=environ, capture_output=True, timeout=timeout)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def run_inprocess(plugin: Any, environ: dict[str, str], stdin: bytes | dict | str, *,
                  host_netns: str | None = None) -> Outcome:
    """Call `dispatch` in this process, with the calling thread inside `host_netns`."""
    from dataplane.cni.spec.skeleton import dispatch
    from dataplane.netns import namespace

    if host_netns is None:
        code, out = dispatch(plugin, environ, _bytes(stdin))
    else:
        with namespace.entered(host_netns):
            code, out = dispatch(plugin, environ, _bytes(stdin))
    return Outcome(code, out)


def _bytes(stdin: bytes | dict | str) -> bytes:
    if isinstance(stdin, dict):
        return json.dumps(stdin).encode()
    return stdin.encode() if isinstance(stdin, str) else stdin


# -- comparing two runs -------------------------------------------------------------------------
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
VETH_RE = re.compile(r"^veth[0-9a-f]{8}$")


def mask(obj: Any) -> Any:
    """Replace MACs and random veth names so that two runs' JSON can be compared."""
    if isinstance(obj, dict):
        return {k: mask(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask(v) for v in obj]
    if isinstance(obj, str) and MAC_RE.match(obj) and obj != "00:00:00:00:00:00":
        return "<mac>"
    if isinstance(obj, str) and VETH_RE.match(obj):
        return "<veth>"
    return obj


def _ip_json(netns: str, *argv: str) -> Any:
    proc = subprocess.run(["nsenter", f"--net={netns}", "--", "ip", "-j", *argv],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout or "[]")


def netns_state(netns: str, settle: float = 2.0) -> dict[str, Any]:
    """Links (name, kind, mtu, flags, master), addresses and routes of a namespace, masked.

    The kernel reports carrier/operstate changes asynchronously (linkwatch, up to 1 s), so
    the snapshot waits up to `settle` seconds for UP links to show their carrier.
    """
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline and any(
            "UP" in l.get("flags", []) and "NO-CARRIER" in l.get("flags", []) for l in _ip_json(netns, "link", "show")):
        time.sleep(0.05)
    links = []
    for l in _ip_json(netns, "-d", "link", "show"):
        kind = (l.get("linkinfo") or {}).get("info_kind", "")
        slave = (l.get("linkinfo") or {}).get("info_slave_data", {})
        # A bridge's carrier follows its ports, and the kernel updates it asynchronously.
        ignored = {"M-DOWN", "NO-CARRIER", "LOWER_UP"} if kind == "bridge" else {"M-DOWN"}
        links.append({"name": mask(l["ifname"]), "kind": kind, "mtu": l.get("mtu"),
                      "flags": sorted(f for f in l.get("flags", []) if f not in ignored),
                      "master": l.get("master"), "operstate": None if kind == "bridge" else l.get("operstate"),
                      "hairpin": slave.get("hairpin"), "promiscuity": l.get("promiscuity")})
    addrs = []
    for l in _ip_json(netns, "addr", "show"):
        for a in l.get("addr_info", []):
            if a.get("scope") == "link" and a.get("family") == "inet6":
                continue  # link-local addresses derive from random MACs
            addrs.append({"dev": mask(l["ifname"]), "addr": f"{a['local']}/{a['prefixlen']}",
                          "scope": a.get("scope")})
    routes = []
    for family in ("-4", "-6"):
        for r in _ip_json(netns, family, "route", "show", "table", "all"):
            if r.get("table") == "local" or str(r.get("dst", "")).startswith("fe80") or r.get("type") == "multicast":
                continue
            routes.append({k: mask(v) for k, v in r.items() if k in ("dst", "gateway", "dev", "scope", "prefsrc",
                                                                      "protocol", "table")})
    key = lambda d: json.dumps(d, sort_keys=True)  # noqa: E731
    return {"links": sorted(links, key=key), "addrs": sorted(addrs, key=key), "routes": sorted(routes, key=key)}


def store_files(directory: str) -> dict[str, str]:
    """The host-local store: file name -> content (the lock's content is empty anyway)."""
    out = {}
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        with open(os.path.join(directory, name), encoding="utf-8", errors="replace", newline="") as fh:
            out[name] = fh.read()
    return out


def nat_rules(netns: str, version: int = 4) -> list[str]:
    """`iptables -t nat -S` inside a namespace, chains and rules."""
    tool = "iptables" if version == 4 else "ip6tables"
    proc = subprocess.run(["nsenter", f"--net={netns}", "--", tool, "-w", "-t", "nat", "-S"],
                          capture_output=True, text=True, check=True)
    return [l for l in proc.stdout.splitlines() if l and not l.startswith("# Warning")]
