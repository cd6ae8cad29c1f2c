"""Find what a run left on this machine: compare a snapshot taken before with one taken after.

Watched: network namespaces, links in the root namespace, rules and chains in the root
namespace's iptables (legacy and nft backends, IPv4 and IPv6) and nft ruleset, files under the CNI
state folders, and processes descended from the running process. The process check relies on
the process being a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so that daemons which
double-fork are still found among its descendants.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from dataplane.netns import namespace

CNI_STATE_DIRS = ("/var/lib/cni", "/run/cni")
PR_SET_CHILD_SUBREAPER = 36
_COUNTERS = re.compile(r"\[\d+:\d+\]")


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process rather than to init."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        return False


def _root_links() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {link.get("ifname") for link in ipr.get_links()}


def _ruleset_lines(argv: list[str]) -> set[str]:
    if shutil.which(argv[0]) is None:
        return set()
    res = subprocess.run(argv, text=True, capture_output=True, check=False)
    if res.returncode != 0:
        return set()
    lines = set()
    for raw in res.stdout.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        lines.add(_COUNTERS.sub("", line).strip())
    return lines


def _firewall() -> dict[str, set[str]]:
    tools = {
        "iptables-legacy": ["iptables-legacy-save"],
        "ip6tables-legacy": ["ip6tables-legacy-save"],
        "iptables-nft": ["iptables-nft-save"],
        "ip6tables-nft": ["ip6tables-nft-save"],
        "nft": ["nft", "list", "ruleset"],
    }
    return {name: _ruleset_lines(argv) for name, argv in tools.items()}


def _state_files() -> set[str]:
    found = set()
    for top in CNI_STATE_DIRS:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                found.add(os.path.join(dirpath, name))
    return found


def _reap_zombies() -> None:
    """Collect orphans that re-parented to us and already exited (they are not leaks)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def descendants(root: int | None = None) -> dict[int, str]:
    """Live descendants of `root` (default: this process): pid -> command line."""
    root = os.getpid() if root is None else root
    parent: dict[int, int] = {}
    state: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        state[int(entry)] = rest[0]
        parent[int(entry)] = int(rest[1])
    found: dict[int, str] = {}
    for pid in parent:
        p, seen = pid, 0
        while p in parent and p != root and seen < 64:
            p, seen = parent[p], seen + 1
        if p == root and pid != root and state.get(pid) != "Z":
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            found[pid] = cmd or f"[{pid}]"
    return found


@dataclass
class Snapshot:
    netns: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    firewall: dict[str, set[str]] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)
    processes: dict[int, str] = field(default_factory=dict)

    @classmethod
    def take(cls) -> "Snapshot":
        _reap_zombies()
        return cls(
            netns=set(namespace.list_names()),
            links=_root_links(),
            firewall=_firewall(),
            files=_state_files(),
            processes=descendants(),
        )


def leaks(before: Snapshot, after: Snapshot) -> list[str]:
    """One line per thing present after that was not present before."""
    found = [f"network namespace {n}" for n in sorted(after.netns - before.netns)]
    found += [f"link {n} in the root namespace" for n in sorted(after.links - before.links)]
    for tool, lines in sorted(after.firewall.items()):
        for line in sorted(lines - before.firewall.get(tool, set())):
            found.append(f"{tool} rule or chain in the root namespace: {line}")
    found += [f"file {p}" for p in sorted(after.files - before.files)]
    found += [f"process {pid}: {cmd}" for pid, cmd in sorted(after.processes.items())
              if pid not in before.processes]
    return found
