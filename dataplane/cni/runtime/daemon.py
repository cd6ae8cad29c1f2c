"""The warm plugin daemon: runs our plugins for thin executables, each request in its own thread.

A request carries the caller's environment, stdin, and two file descriptors (SCM_RIGHTS): its
network namespace and its working directory. The worker thread unshares its filesystem context
(CLONE_FS) and fchdir()s to the caller's cwd, setns()es into the caller's netns, runs the plugin
through `pluginhost.run_in_process` (the same function the fallback uses), and replies with
(exit code, stdout, stderr). A thread per request, unbounded: bridge delegating to host-local is a
nested request, so a fixed pool could deadlock under 50 parallel ADDs.

Lifetime: one daemon per socket, guarded by a flock held for its whole life; it records its PID
next to the socket, exits after `idle_timeout` seconds without requests, and on SIGTERM/SIGINT
(`dataplane cni daemon stop`). It removes its socket and PID file on the way out. Security: the
socket is 0600 in a 0700 folder, and peers other than uid 0 are refused (SO_PEERCRED).
"""

from __future__ import annotations

import argparse
import array
import ctypes
import fcntl
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from dataplane.cni.runtime import pluginhost

DEFAULT_SOCKET = "/run/dataplane/cni.sock"
DEFAULT_IDLE_TIMEOUT = 600.0
MAGIC = b"DPC2"
# A reply starts with one byte: RAN (a result header and payloads follow) or RUN_IT_YOURSELF
# (nothing ran; the caller should run the plugin in-process). A connection that ends before that
# byte also means nothing ran, so the caller can safely fall back.
RAN = b"R"
RUN_IT_YOURSELF = b"Y"
CLONE_FS = 0x00000200
CLONE_NEWNET = 0x40000000
MAX_REQUEST = 16 << 20
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def pid_file(sock: str) -> str:
    return sock + ".pid"


def lock_file(sock: str) -> str:
    return sock + ".lock"


def _recv_exact(conn: socket.socket, n: int, first: bytearray) -> bytes:
    while len(first) < n:
        chunk = conn.recv(min(n - len(first), 1 << 20))
        if not chunk:
            raise EOFError("caller closed the connection")
        first += chunk
    return bytes(first[:n])


@dataclass
class Request:
    plugin: str
    env: dict[str, str]
    stdin: bytes
    netns_fd: int
    cwd_fd: int
    mount_ns: int = 0
    project: str = ""  # the project root the caller's executable was installed from


def read_request(conn: socket.socket) -> Request:
    fds = array.array("i")
    data, ancdata, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(2 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    try:
        if len(fds) != 2:
            raise ValueError(f"expected 2 file descriptors (netns, cwd), got {len(fds)}")
        buf = bytearray(data)
        head = _recv_exact(conn, 24, buf)
        if head[:4] != MAGIC:
            raise ValueError("not a dataplane plugin request (or from another version of the plugins)")
        n_name, n_env, n_stdin, mount_ns = struct.unpack(">IIIQ", head[4:24])
        total = 24 + n_name + n_env + n_stdin
        if total > MAX_REQUEST:
            raise ValueError(f"request too large ({total} bytes)")
        body = _recv_exact(conn, total, buf)[24:]
        name, _, project = body[:n_name].decode().partition("\0")
        env: dict[str, str] = {}
        for item in body[n_name:n_name + n_env].split(b"\0"):
            if item:
                key, _, value = item.decode(errors="surrogateescape").partition("=")
                env[key] = value
        return Request(name, env, body[n_name + n_env:], fds[0], fds[1], mount_ns, project)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def write_reply(conn: socket.socket, code: int, out: bytes, err: bytes) -> None:
    """The result, after RAN was sent: exit code, stdout, stderr."""
    conn.sendall(struct.pack(">iII", code, len(out), len(err)) + out + err)


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


@dataclass
class Daemon:
    socket_path: str = DEFAULT_SOCKET
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    stop_event: threading.Event = field(default_factory=threading.Event)
    _active: int = 0
    _last: float = field(default_factory=time.monotonic)
    _mutex: threading.Lock = field(default_factory=threading.Lock)
    _code_stamp: dict[str, float] = field(default_factory=dict)
    _checked: float = 0.0
    _mount_ns: int = 0
    _out: pluginhost.ThreadRouter | None = None
    _err: pluginhost.ThreadRouter | None = None

    # -- one request ---------------------------------------------------------------------------
    def handle(self, conn: socket.socket) -> None:
        with self._mutex:
            self._active += 1
        try:
            with conn:
                if peer_uid(conn) != 0:
                    conn.sendall(RUN_IT_YOURSELF)  # root only: others run their own
                    return
                try:
                    req = read_request(conn)
                except (ValueError, EOFError, OSError, UnicodeDecodeError) as exc:
                    conn.sendall(RAN)
                    write_reply(conn, 1, pluginhost._error("bad request to the plugin daemon", str(exc)), b"")
                    return
                if self._code_changed():
                    # The plugin code on disk is newer than what this process loaded: let the
                    # caller run the new code in-process, and retire (a fresh daemon gets started).
                    os.close(req.netns_fd)
                    os.close(req.cwd_fd)
                    self.stop_event.set()
                    conn.sendall(RUN_IT_YOURSELF)
                    return
                if req.mount_ns != self._mount_ns or req.project != PROJECT_ROOT:
                    # Paths (CNI_NETNS, dataDir, CNI_PATH) would resolve differently here, and a
                    # threaded process cannot setns() a mount namespace; or the executable belongs
                    # to another checkout of the project: let the caller run it.
                    os.close(req.netns_fd)
                    os.close(req.cwd_fd)
                    conn.sendall(RUN_IT_YOURSELF)
                    return
                conn.sendall(RAN)  # from here on, the caller must not run it again itself
                code, out, err = self.run(req)
                write_reply(conn, code, out, err)
        except OSError:
            pass  # the caller went away; nothing to tell
        finally:
            with self._mutex:
                self._active -= 1
                self._last = time.monotonic()

    def run(self, req: Request) -> tuple[int, bytes, bytes]:
        """Run the plugin as the caller: its cwd, its netns; capture what it writes."""
        try:
            _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
            os.fchdir(req.cwd_fd)
            _check(_libc.setns(req.netns_fd, CLONE_NEWNET), "setns")
        except OSError as exc:
            return 1, pluginhost._error("plugin daemon could not enter the caller's context", str(exc)), b""
        finally:
            os.close(req.cwd_fd)
            os.close(req.netns_fd)
        assert self._out is not None and self._err is not None
        out_buf, err_buf = self._out.capture(), self._err.capture()
        try:
            code, out = pluginhost.run_in_process(req.plugin, req.env, req.stdin)
        finally:
            self._out.release()
            self._err.release()
        return code, out_buf.getvalue() + out, err_buf.getvalue()

    def _code_changed(self, every: float = 1.0) -> bool:
        """True once any plugin source file changed since start (checked at most every second)."""
        now = time.monotonic()
        with self._mutex:
            if now - self._checked < every:
                return False
            self._checked = now
        return _code_stamp() != self._code_stamp

    # -- the server ----------------------------------------------------------------------------
    def serve(self) -> int:
        directory = os.path.dirname(self.socket_path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        lock = os.open(lock_file(self.socket_path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            return 0  # another daemon serves this socket
        self._leave_caller_context()
        self._mount_ns = os.stat("/proc/thread-self/ns/mnt").st_ino
        self._out, self._err = pluginhost.install_routers()
        self._code_stamp = _code_stamp()
        for name in pluginhost.REGISTRY:  # warm: import the plugins (and pyroute2) now
            pluginhost.available(name)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ident: int | None = None
        try:
            if os.path.exists(self.socket_path):
                os.unlink(self.socket_path)  # stale: we hold the lock, so nobody serves it
            old = os.umask(0o177)
            try:
                server.bind(self.socket_path)
            finally:
                os.umask(old)
            os.chmod(self.socket_path, 0o600)
            server.listen(256)
            server.settimeout(0.2)
            ident = os.stat(self.socket_path).st_ino
            with open(pid_file(self.socket_path), "w") as f:
                f.write(f"{os.getpid()}\n")
            self._loop(server)
        finally:
            server.close()
            self._wait_idle(5.0)
            self._remove_own(ident)
            os.close(lock)
        return 0

    def _loop(self, server: socket.socket) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                with self._mutex:
                    idle = self._active == 0 and time.monotonic() - self._last > self.idle_timeout
                if idle:
                    return
                continue
            conn.settimeout(None)
            with self._mutex:
                self._last = time.monotonic()
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def _wait_idle(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self._mutex:
                if self._active == 0:
                    return
            time.sleep(0.01)

    def _remove_own(self, ident: int | None) -> None:
        try:
            if ident is not None and os.stat(self.socket_path).st_ino == ident:
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        try:
            with open(pid_file(self.socket_path)) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(pid_file(self.socket_path))
        except FileNotFoundError:
            pass

    @staticmethod
    def _leave_caller_context() -> None:
        """Hold no reference to the starter's netns (it may be a test's scratch namespace, which
        would then outlive its removal) nor to its cwd: move into a private, empty netns that
        dies with the daemon. Worker threads setns() from there into each caller's namespace."""
        os.chdir("/")
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def _code_stamp() -> dict[str, float]:
    """mtime of every source file of the CNI code (dataplane/cni), to notice an update on disk."""
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stamp = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                try:
                    stamp[path] = os.stat(path).st_mtime
                except OSError:
                    pass
    return stamp


# -- control --------------------------------------------------------------------------------------
def read_pid(sock: str) -> int | None:
    """The PID recorded for the daemon of `sock`, if that process is alive and is our daemon."""
    try:
        with open(pid_file(sock)) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return None
    return pid if b"daemon" in cmdline and sock.encode() in cmdline else None


def running(sock: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(sock)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def stop(sock: str, timeout: float = 5.0) -> int | None:
    """Stop the daemon serving `sock` (by its recorded PID); returns the PID stopped, if any."""
    pid = read_pid(sock)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.02)
        for path in (sock, pid_file(sock)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return pid


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child (e.g. spawned in a test): reap it
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataplane.cni.runtime.daemon")
    parser.add_argument("action", choices=("serve", "stop", "status"))
    parser.add_argument("--socket", default=DEFAULT_SOCKET)
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT)
    opts = parser.parse_args(argv)
    if opts.action == "stop":
        pid = stop(opts.socket)
        print(f"stopped daemon {pid}" if pid else "no daemon running")
        return 0
    if opts.action == "status":
        pid = read_pid(opts.socket)
        print(f"running, pid {pid}" if pid and running(opts.socket) else "not running")
        return 0 if pid else 3
    daemon = Daemon(opts.socket, opts.idle_timeout)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: daemon.stop_event.set())
    return daemon.serve()


if __name__ == "__main__":
    sys.exit(main())
