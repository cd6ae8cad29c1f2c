"""The small server each pod runs: TCP echo, UDP echo and HTTP, answering with who it is.

Every answer is one JSON object: the pod's name, the source address the server saw and the
local address it was reached on. TCP is line-oriented (one answer per line, so a keepalive
connection can carry many requests); a first line that looks like an HTTP request switches the
connection to HTTP/1.1 with keep-alive. With `--fail-readiness PATH`, HTTP requests for PATH
get 503, so a kubelet-style readiness probe fails while traffic is still answered; the runner
flips that at run time with `GET /_scenario/fail-readiness<PATH>` (or without PATH: pass again).

Run as `python -m dataplane.scenario.workload --pod NAME --tcp 80 --udp 80` inside the pod's
namespace; it prints `ready` once every socket is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys

CONTROL_PREFIX = "/_scenario/fail-readiness"   # GET <prefix><path>: fail probes of <path>; <prefix>: pass again
_HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def answer(pod: str, proto: str, peer: tuple, local: tuple, echo: str = "") -> bytes:
    return json.dumps({"pod": pod, "proto": proto, "client": f"{peer[0]}:{peer[1]}",
                       "server": f"{local[0]}:{local[1]}", "echo": echo}).encode()


class Server:
    def __init__(self, pod: str, fail_path: str | None) -> None:
        self.pod = pod
        self.fail_path = fail_path

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line.startswith(_HTTP_METHODS):
                    if not await self._http(line, reader, writer, peer, local):
                        break
                    continue
                writer.write(answer(self.pod, "tcp", peer, local, line.decode(errors="replace").strip()) + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _http(self, request_line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    peer: tuple, local: tuple) -> bool:
        """Answer one HTTP request; False when the connection should close."""
        parts = request_line.decode(errors="replace").split()
        path = parts[1] if len(parts) > 1 else "/"
        keep_alive = len(parts) > 2 and parts[2] == "HTTP/1.1"
        while True:
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode(errors="replace").partition(":")
            if name.strip().lower() == "connection":
                keep_alive = value.strip().lower() != "close"
        if path.startswith(CONTROL_PREFIX):
            self.fail_path = path[len(CONTROL_PREFIX):] if path != CONTROL_PREFIX else None
        status = "503 Service Unavailable" if self.fail_path and path == self.fail_path else "200 OK"
        body = answer(self.pod, "http", peer, local, path) + b"\n"
        head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode()
        writer.write(head + body)
        await writer.drain()
        return keep_alive


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, pod: str) -> None:
        self.pod = pod
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        assert self.transport is not None
        local = self.transport.get_extra_info("sockname")
        self.transport.sendto(answer(self.pod, "udp", addr, local, data.decode(errors="replace").strip()), addr)


async def serve(pod: str, tcp_ports: list[int], udp_ports: list[int], fail_path: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = Server(pod, fail_path)
    for port in tcp_ports:
        await asyncio.start_server(server.tcp, "0.0.0.0", port, reuse_address=True)
    for port in udp_ports:
        await loop.create_datagram_endpoint(lambda: UdpEcho(pod), local_addr=("0.0.0.0", port),
                                            family=socket.AF_INET)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dataplane-workload", description=__doc__.splitlines()[0])
    ap.add_argument("--pod", required=True)
    ap.add_argument("--tcp", type=int, action="append", default=[])
    ap.add_argument("--udp", type=int, action="append", default=[])
    ap.add_argument("--fail-readiness", metavar="PATH")
    args = ap.parse_args(argv)
    try:
        asyncio.run(serve(args.pod, sorted(set(args.tcp)), sorted(set(args.udp)), args.fail_readiness))
    except OSError as exc:
        print(f"workload {args.pod}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
