"""Named network namespaces (the `ip netns` convention: bind mounts under /run/netns)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence

NETNS_RUN_DIR = "/run/netns"


def path_of(name_or_path: str) -> str:
    """The bind-mount path of a namespace given by name, or the path itself."""
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)


def exists(name: str) -> bool:
    return os.path.exists(path_of(name))


def list_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def create(name: str) -> str:
    """Create a named namespace with lo up; fail if the name is taken. Returns its path."""
    from pyroute2 import netns

    if exists(name):
        raise FileExistsError(f"network namespace {name!r} already exists")
    netns.create(name)
    with entered(name):
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return path_of(name)


def remove(name: str) -> None:
    """Remove a named namespace (its links go with it). Missing namespaces are not an error."""
    from pyroute2 import netns

    if exists(name):
        netns.remove(name)


@contextlib.contextmanager
def entered(name_or_path: str) -> Iterator[None]:
    """Move the calling thread into a namespace for the duration of the block."""
    from pyroute2.netns import setns

    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(path_of(name_or_path))
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)


def command(name_or_path: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside the namespace (nsenter works for any ns path)."""
    return ["nsenter", f"--net={path_of(name_or_path)}", "--", *argv]


def run(name_or_path: str, argv: Sequence[str], *, check: bool = True,
        input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command inside the namespace and capture its output as text."""
    return subprocess.run(command(name_or_path, argv), check=check, input=input, text=True,
                          capture_output=True, timeout=timeout)
