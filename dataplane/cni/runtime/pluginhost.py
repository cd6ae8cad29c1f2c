"""Run one of our plugins inside this process, given the env and stdin an exec would have had.

Both exec paths end here: the warm daemon (per request, in a worker thread) and the thin
executable's in-process fallback. Sharing this one function is what makes their outputs
identical. Only plugins in `REGISTRY` can run: the daemon never imports what a caller names.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import threading
from collections.abc import Callable, Mapping

Entry = Callable[[Mapping[str, str], bytes], tuple[int, bytes]]

#: executable name -> module; the module has `PLUGIN` (run by the spec skeleton) or `run(env, stdin)`.
REGISTRY: dict[str, str] = {
    "bridge": "dataplane.cni.plugins.bridge",
    "host-local": "dataplane.cni.plugins.host_local",
    "loopback": "dataplane.cni.plugins.loopback",
    "ptp": "dataplane.cni.plugins.ptp",
    "portmap": "dataplane.cni.plugins.portmap",
    "dataplane-trace": "dataplane.cni.runtime.trace_plugin",
}
STANDARD = ("bridge", "host-local", "loopback", "ptp", "portmap")

_entries: dict[str, Entry] = {}
_lock = threading.Lock()


def _error(msg: str, details: str = "") -> bytes:
    doc: dict[str, object] = {"code": 999, "msg": msg}
    if details:
        doc["details"] = details
    return json.dumps(doc, indent=4).encode()


def entry(name: str) -> Entry:
    """The callable behind an executable name (imported once, then cached)."""
    with _lock:
        if name in _entries:
            return _entries[name]
        if name not in REGISTRY:
            raise LookupError(f"unknown plugin {name!r}; known: {', '.join(sorted(REGISTRY))}")
        module = importlib.import_module(REGISTRY[name])
        run = getattr(module, "run", None)
        if run is None:
            from dataplane.cni.spec.skeleton import dispatch

            plugin = module.PLUGIN
            run = lambda env, stdin: dispatch(plugin, env, stdin)  # noqa: E731
        _entries[name] = run
        return run


def available(name: str) -> str | None:
    """None if the plugin can run here, else why not."""
    try:
        entry(name)
        return None
    except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
        return f"{type(exc).__name__}: {exc}"


def run_in_process(name: str, env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """(exit code, stdout) of the plugin; never raises, as an exec'd process would not."""
    try:
        run = entry(name)
    except Exception as exc:  # noqa: BLE001
        return 1, _error(f"dataplane plugin {name!r} is not available in this installation",
                         f"{type(exc).__name__}: {exc}")
    try:
        code, out = run(env, stdin)
    except SystemExit as exc:
        return (exc.code if isinstance(exc.code, int) else 1), b""
    except Exception as exc:  # noqa: BLE001 - a bug must still produce a CNI error, not a traceback
        return 1, _error(f"internal error in plugin {name}", f"{type(exc).__name__}: {exc}")
    return int(code), bytes(out)


THIN_MARKER = b"# dataplane CNI plugin \""


def thin_plugin_name(exe: str) -> str | None:
    """The plugin name if `exe` is one of our installed thin executables, else None."""
    try:
        with open(exe, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    at = head.find(THIN_MARKER)
    if at < 0:
        return None
    name = head[at + len(THIN_MARKER):].split(b'"', 1)[0].decode(errors="replace")
    return name if name in REGISTRY else None


def inline_delegate(exe: str, env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes] | None:
    """Run a delegate in this thread instead of exec'ing it, when `exe` is our own thin plugin.

    For plugins that delegate (bridge and ptp to host-local): the delegate would only forward
    the same env, stdin, netns and cwd back to this process, so running it here gives the same
    answer without the ~30 ms exec. Returns None for any other executable (exec it as usual).
    """
    name = thin_plugin_name(exe)
    if name is None:
        return None
    return run_in_process(name, env, stdin)


class ThreadRouter(io.TextIOBase):
    """A stand-in for sys.stdout/sys.stderr that sends a thread's writes to its own buffer.

    The daemon runs many requests at once; a plugin that writes to sys.stderr (logs) or
    sys.stdout must have it land in its own caller's reply, not in the daemon's streams.
    """

    def __init__(self, fallback: io.TextIOBase | None) -> None:
        self._fallback = fallback
        self._local = threading.local()

    def capture(self) -> io.BytesIO:
        buf = io.BytesIO()
        self._local.buf = buf
        return buf

    def release(self) -> None:
        self._local.buf = None

    def write(self, text: str) -> int:  # type: ignore[override]
        buf = getattr(self._local, "buf", None)
        if buf is not None:
            buf.write(text.encode(errors="replace"))
        elif self._fallback is not None:
            self._fallback.write(text)
        return len(text)

    def flush(self) -> None:
        if getattr(self._local, "buf", None) is None and self._fallback is not None:
            self._fallback.flush()

    @property
    def buffer(self) -> "ThreadRouter":  # sys.stdout.buffer.write(bytes) also works
        return _BinaryView(self)  # type: ignore[return-value]


class _BinaryView:
    def __init__(self, router: ThreadRouter) -> None:
        self._router = router

    def write(self, data: bytes) -> int:
        buf = getattr(self._router._local, "buf", None)
        if buf is not None:
            buf.write(data)
        elif self._router._fallback is not None:
            self._router._fallback.write(data.decode(errors="replace"))
        return len(data)

    def flush(self) -> None:
        self._router.flush()


def install_routers() -> tuple[ThreadRouter, ThreadRouter]:
    out, err = ThreadRouter(sys.stdout), ThreadRouter(sys.stderr)
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    return out, err
