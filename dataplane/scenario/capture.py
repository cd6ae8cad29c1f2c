"""A pcap per node: every packet on every interface of the node's namespace, like `tcpdump -i any`.

An AF_PACKET socket (SOCK_DGRAM, ETH_P_ALL, no interface bound) is opened with the thread inside
the node's namespace, so it sees that namespace's interfaces only; a reader thread writes each
packet as a Linux "cooked" capture record (LINKTYPE_LINUX_SLL, what tcpdump writes for `-i any`).
A packet crossing the node appears once per interface it passes (pod veth, cni0, eth0 ...),
which is what lets you follow it, and its NAT, through the node.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from dataplane.netns import namespace

ETH_P_ALL = 0x0003
LINKTYPE_LINUX_SLL = 113
SNAPLEN = 65535


def _pcap_header() -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_LINUX_SLL)


def _record(data: bytes, addr: tuple) -> bytes:
    """One pcap record: the SLL header rebuilt from recvfrom's sockaddr_ll, then the packet."""
    _ifname, proto, pkttype, hatype, hwaddr = addr[:5]
    sll = struct.pack("!HHH8sH", pkttype, hatype, len(hwaddr), hwaddr[:8].ljust(8, b"\0"), proto)
    now = time.time()
    body = sll + data
    return struct.pack("<IIII", int(now), int((now % 1) * 1e6), len(body), len(body)) + body


@dataclass
class _Tap:
    sock: socket.socket
    file: object
    stop: threading.Event
    thread: threading.Thread | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            try:
                data, addr = self.sock.recvfrom(SNAPLEN)
            except OSError:
                return
            self.file.write(_record(data, addr))  # type: ignore[attr-defined]


@dataclass
class NodeCapture:
    directory: str
    files: list[str] = field(default_factory=list)
    _taps: list[_Tap] = field(default_factory=list)

    def start(self, node_name: str, netns: str) -> str:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"{node_name}.pcap")
        with namespace.entered(netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        f = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in stop()
        f.write(_pcap_header())
        tap = _Tap(sock, f, threading.Event())
        tap.thread = threading.Thread(target=tap.run, name=f"pcap-{node_name}", daemon=True)
        tap.thread.start()
        self._taps.append(tap)
        self.files.append(path)
        return path

    def stop(self) -> None:
        for tap in self._taps:
            tap.stop.set()
            if tap.thread is not None:
                tap.thread.join(2.0)
            tap.sock.close()
            tap.file.close()  # type: ignore[attr-defined]
        self._taps.clear()
