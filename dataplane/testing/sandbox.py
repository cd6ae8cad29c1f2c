"""A record of everything a test (or scenario, or benchmark) creates, removed in reverse order.

Names are unique (a prefix plus random hex), and removal goes by the recorded name or PID only:
nothing is ever deleted or killed by pattern.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dataplane.netns import link, namespace

DEFAULT_PREFIX = "dpt"


def unique_name(prefix: str = DEFAULT_PREFIX, maxlen: int = 15) -> str:
    """`prefix-xxxxxxxx`, short enough for an interface name (IFNAMSIZ - 1 = 15)."""
    suffix = secrets.token_hex(4)
    name = f"{prefix}-{suffix}"
    if len(name) > maxlen:
        name = f"{prefix[: maxlen - len(suffix) - 1]}-{suffix}"
    return name


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> str:
        return namespace.path_of(self.name)

    def run(self, argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return namespace.run(self.name, argv, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class VethPair:
    name: str
    netns: Netns | None
    peer: str
    peer_netns: Netns | None


@dataclass
class Sandbox:
    """Creates resources and undoes them, last first, even when the test failed.

    Usable as a context manager; `close()` tries every undo step and raises one error listing
    those that failed, so a failing cleanup is never silent.
    """

    prefix: str = DEFAULT_PREFIX
    _undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def name(self, hint: str = "") -> str:
        return unique_name(f"{self.prefix}{hint}"[:6])

    def defer(self, what: str, undo: Callable[[], None]) -> None:
        """Record an arbitrary undo step (a file, a rule, a lease) to run at close."""
        self._undo.append((what, undo))

    def netns(self, hint: str = "") -> Netns:
        name = self.name(hint)
        namespace.create(name)
        self.defer(f"network namespace {name}", lambda: namespace.remove(name))
        return Netns(name)

    def veth(self, netns: Netns | None, peer_netns: Netns | None, *, name: str | None = None,
             peer: str | None = None, up: bool = True) -> VethPair:
        name = name or self.name("v")
        peer = peer or self.name("p")
        link.add_veth(name, peer, netns=netns.name if netns else None,
                      peer_netns=peer_netns.name if peer_netns else None, up=up)
        if netns is None or peer_netns is None:
            # A root-namespace end outlives nothing but itself: remove it explicitly.
            root_end = name if netns is None else peer
            self.defer(f"link {root_end}", lambda: link.delete(root_end))
        return VethPair(name, netns, peer, peer_netns)

    def bridge(self, netns: Netns | None, *, name: str | None = None) -> str:
        name = name or self.name("br")
        link.add_bridge(name, netns=netns.name if netns else None)
        if netns is None:
            self.defer(f"link {name}", lambda: link.delete(name))
        return name

    def spawn(self, argv: Sequence[str], *, netns: Netns | None = None,
              **popen: object) -> subprocess.Popen[bytes]:
        """Start a process (inside `netns` if given); it is terminated and reaped at close."""
        full = namespace.command(netns.name, argv) if netns else list(argv)
        proc = subprocess.Popen(full, start_new_session=True, **popen)  # type: ignore[call-overload]
        self.defer(f"process {proc.pid} ({argv[0]})", lambda: _stop(proc))
        return proc

    def tempdir(self, base: str) -> str:
        """A fresh directory under `base` (e.g. a CNI dataDir), removed at close."""
        path = os.path.join(base, unique_name(self.prefix))
        os.makedirs(path)
        self.defer(f"directory {path}", lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def close(self) -> None:
        errors = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - collect and report all of them
                errors.append(f"{what}: {exc}")
        if errors:
            raise RuntimeError("sandbox cleanup failed for: " + "; ".join(errors))


def _stop(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """Stop the process group the process leads (start_new_session) and reap what we can.

    The group is signalled by the recorded PGID even if the leader already exited, so that
    children it left behind go too; the kernel does not reuse a PID that still names a group.
    Members orphaned by the leader re-parent to us when we are a child subreaper (as under the
    test suite's leak check), so they are reaped here; otherwise init reaps them.
    """
    if not _signal_group(proc.pid, signal.SIGTERM):
        proc.wait()
        return
    if not _wait_group_gone(proc, grace):
        _signal_group(proc.pid, signal.SIGKILL)
        _wait_group_gone(proc, grace)
    proc.wait()


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_group_gone(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        proc.poll()
        try:
            while os.waitpid(-proc.pid, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        if not _signal_group(proc.pid, 0):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
