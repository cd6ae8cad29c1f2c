"""`dataplane cni install`: put thin plugin executables into a folder where runtimes find them.

Each executable is the template `cni-plugins/thin-plugin.py` with this installation baked in:
the venv's absolute interpreter path (shebang, `-I -S`), the daemon socket, and the folders that
hold the `dataplane` package, so it runs the same under `env -i` and from any working directory.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dataplane.cni.runtime import pluginhost
from dataplane.cni.runtime.daemon import DEFAULT_IDLE_TIMEOUT, DEFAULT_SOCKET
from dataplane.cni.runtime.errors import RuntimeClientError

TEMPLATE = Path(__file__).resolve().parents[3] / "cni-plugins" / "thin-plugin.py"


@dataclass(frozen=True)
class Installed:
    directory: str
    plugins: tuple[str, ...]
    python: str
    socket: str


def project_paths() -> list[str]:
    """Where `import dataplane` and its dependencies resolve from in this interpreter."""
    root = str(Path(__file__).resolve().parents[3])
    purelib = sysconfig.get_paths()["purelib"]
    return [root, purelib]


def venv_python() -> str:
    """The absolute path of this environment's interpreter (the venv's, not the base one it links to)."""
    exe = sys.executable
    if not exe or not os.path.isabs(exe):
        raise RuntimeClientError("cannot tell which Python interpreter to bake into the plugins")
    return exe


def render(plugin: str, *, python: str, socket: str, autostart: bool, idle_timeout: float) -> str:
    try:
        text = TEMPLATE.read_text()
    except OSError as exc:
        raise RuntimeClientError(f"plugin template not found: {TEMPLATE}", details=str(exc)) from None
    values = {
        "@PYTHON@": python,
        "@PLUGIN@": plugin,
        "@SOCKET@": socket,
        "@PROJECT_PATHS@": repr(project_paths()),
        "@AUTOSTART@": repr(bool(autostart)),
        "@IDLE_TIMEOUT@": repr(float(idle_timeout)),
    }
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def install(directory: str, plugins: Sequence[str] = pluginhost.STANDARD, *, socket: str = DEFAULT_SOCKET,
            autostart: bool = True, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
            python: str | None = None) -> Installed:
    """Write one executable per plugin into `directory` (created if missing); atomic per file.

    `socket=""` disables the daemon entirely: every call runs the plugin in-process.
    """
    unknown = [p for p in plugins if p not in pluginhost.REGISTRY]
    if unknown:
        raise RuntimeClientError(f"unknown plugin(s): {', '.join(unknown)}",
                                 details=f"known: {', '.join(sorted(pluginhost.REGISTRY))}")
    if socket and not os.path.isabs(socket):
        raise RuntimeClientError(f"the daemon socket must be an absolute path, not {socket!r}")
    python = python or venv_python()
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise RuntimeClientError(f"{directory} exists and is not a directory")
    texts = {p: render(p, python=python, socket=socket, autostart=autostart, idle_timeout=idle_timeout)
             for p in plugins}
    os.makedirs(directory, mode=0o755, exist_ok=True)
    for name, text in texts.items():
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o755)
            os.replace(tmp, os.path.join(directory, name))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return Installed(os.path.abspath(directory), tuple(plugins), python, socket)
