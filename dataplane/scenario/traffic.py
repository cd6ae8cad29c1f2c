"""Sending the scenario's traffic and recording who answered and which source they saw.

Clients run inside the runner process: a socket belongs to the network namespace it was created
in, so each socket is created with the thread inside the source namespace and used from there.
TCP: a new connection per request (each one a new conntrack entry, so a new load-balancing
decision) or one keepalive connection carrying every request. UDP: a new socket (new source port)
per request, or one socket. HTTP: GET over TCP, keep-alive when asked.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from dataclasses import asdict, dataclass, field

from dataplane.netns import namespace


@dataclass(frozen=True)
class Outcome:
    ok: bool
    pod: str | None = None
    seen_source: str | None = None      # the client address the server saw (ip:port)
    error: str | None = None            # refused | timeout | unreachable | reset | ...
    seconds: float = 0.0
    at: float = 0.0                     # when it started, seconds after the flow began


@dataclass
class FlowResult:
    """One traffic entry towards one concrete address (a NodePort entry yields one per node)."""

    traffic: str
    source: str
    client_ip: str
    target: str                          # ip:port
    protocol: str
    mode: str
    outcomes: list[Outcome] = field(default_factory=list)
    host: str | None = None              # the DNS name asked for, if any
    resolved: list[str] = field(default_factory=list)
    cnames: list[str] = field(default_factory=list)

    @property
    def answered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.answered:
            out[o.pod or "?"] = out.get(o.pod or "?", 0) + 1
        return dict(sorted(out.items()))

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            if not o.ok:
                out[o.error or "?"] = out.get(o.error or "?", 0) + 1
        return out

    def to_json(self) -> dict:
        return {"traffic": self.traffic, "source": self.source, "clientIP": self.client_ip, "target": self.target,
                "protocol": self.protocol, "mode": self.mode, "requests": len(self.outcomes),
                **({"host": self.host, "resolved": self.resolved, "cnames": self.cnames} if self.host else {}),
                "answered": len(self.answered), "byPod": self.counts(), "errors": self.errors(),
                "sourcesSeen": sorted({(o.seen_source or "").rsplit(":", 1)[0] for o in self.answered}),
                "outcomes": [asdict(o) for o in self.outcomes]}


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return type(exc).__name__


def _socket(netns: str, kind: int, timeout: float) -> socket.socket:
    with namespace.entered(netns):
        s = socket.socket(socket.AF_INET, kind)
    s.settimeout(timeout)
    return s


def _parse(data: bytes) -> tuple[str | None, str | None]:
    doc = json.loads(data.decode())
    return doc.get("pod"), doc.get("client")


class _LineReader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "connection closed before an answer")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "connection closed mid-body")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def _tcp_request(reader: _LineReader, sock: socket.socket, i: int, http: bool, keep: bool) -> tuple[str | None, str | None]:
    if not http:
        sock.sendall(f"request {i}\n".encode())
        return _parse(reader.line())
    sock.sendall(f"GET / HTTP/1.1\r\nHost: scenario\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n".encode())
    status = reader.line().decode(errors="replace").split()
    length = 0
    while True:
        header = reader.line().strip()
        if not header:
            break
        name, _, value = header.decode(errors="replace").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    body = reader.exactly(length)
    if len(status) < 2 or not status[1].startswith("2"):
        raise ConnectionError(f"HTTP status {' '.join(status[1:])}")
    return _parse(body)


class _Pacer:
    """Start request i at i/rate seconds (no catch-up bursts beyond that schedule)."""

    def __init__(self, rate: float | None) -> None:
        self.rate, self.t0 = rate, time.monotonic()

    def wait(self, i: int) -> float:
        if self.rate:
            delay = self.t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return time.monotonic() - self.t0


def send(traffic: str, source: str, netns: str, client_ip: str, ip: str, port: int, *, protocol: str,
         mode: str, requests: int, timeout: float, rate: float | None = None) -> FlowResult:
    result = FlowResult(traffic, source, client_ip, f"{ip}:{port}", protocol, mode)
    pacer = _Pacer(rate)
    if protocol == "udp":
        _send_udp(result, netns, ip, port, mode, requests, timeout, pacer)
    else:
        _send_tcp(result, netns, ip, port, mode, requests, timeout, protocol == "http", pacer)
    return result


def _send_tcp(result: FlowResult, netns: str, ip: str, port: int, mode: str, requests: int, timeout: float,
              http: bool, pacer: _Pacer) -> None:
    sock: socket.socket | None = None
    reader: _LineReader | None = None
    for i in range(requests):
        at = pacer.wait(i)
        t0 = time.monotonic()
        try:
            if sock is None:
                sock = _socket(netns, socket.SOCK_STREAM, timeout)
                sock.connect((ip, port))
                reader = _LineReader(sock)
            assert reader is not None
            pod, seen = _tcp_request(reader, sock, i, http, mode == "keepalive")
            result.outcomes.append(Outcome(True, pod, seen, None, time.monotonic() - t0, at))
        except (OSError, ValueError, ConnectionError) as exc:
            result.outcomes.append(Outcome(False, error=_error_name(exc), seconds=time.monotonic() - t0, at=at))
            if sock is not None:
                sock.close()
            sock = None
            continue
        if mode != "keepalive":
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def _send_udp(result: FlowResult, netns: str, ip: str, port: int, mode: str, requests: int, timeout: float,
              pacer: _Pacer) -> None:
    sock: socket.socket | None = None
    for i in range(requests):
        at = pacer.wait(i)
        t0 = time.monotonic()
        try:
            if sock is None:
                sock = _socket(netns, socket.SOCK_DGRAM, timeout)
                sock.connect((ip, port))       # connected: ICMP port-unreachable surfaces as ECONNREFUSED
            sock.send(f"request {i}\n".encode())
            pod, seen = _parse(sock.recv(65535))
            result.outcomes.append(Outcome(True, pod, seen, None, time.monotonic() - t0, at))
        except (OSError, ValueError) as exc:
            result.outcomes.append(Outcome(False, error=_error_name(exc), seconds=time.monotonic() - t0, at=at))
            if sock is not None:
                sock.close()
            sock = None
            continue
        if mode != "keepalive":
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
