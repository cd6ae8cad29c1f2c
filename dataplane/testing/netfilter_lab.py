"""A real-kernel netfilter lab: client -> node -> backends, to check engine decisions packet by packet.

Three scratch namespaces, made through a Sandbox (so nothing outlives the test):

    client eth0 192.168.100.2/24  <->  eth0 192.168.100.1/24  NODE  eth1 10.244.1.1/24  <->  eth0 backends
           fd00:100::2/64                  fd00:100::1/64             fd00:244:1::1/64
                                  (ip_forward on, rp_filter off, default route back to the client)

Rules go into the node with iptables-restore (legacy or nft backend) or `nft -f`. The client
injects crafted packets with an AF_PACKET socket (no per-packet process, thousands per second),
each carrying a probe id. The node forwards what its rules let through; the backend namespace holds
no IP address, so it answers nothing: an AF_PACKET socket there records what arrived (destination
after DNAT, source after SNAT). A socket on the client records what came back: ICMP errors and TCP
resets (a REJECT), or probes the node routed back out. A probe seen nowhere was dropped.

The node has permanent neighbour entries for the client and every backend address, so no packet
waits for ARP/ND, and ICMP rate limits are lifted so that every REJECT is answered. Rules must
translate only to listed backend addresses: another address in the backend subnet would wait for
ARP in the kernel (and fail), which the engine does not model. Packets the node delivers locally
(INPUT) are not observed directly; the node's own stack answers them (port unreachable, reset).
"""

from __future__ import annotations

import secrets
import select
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from dataplane.engine import packet as pkt
from dataplane.netns import namespace
from dataplane.testing.sandbox import Netns, Sandbox

ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
PACKET_OUTGOING = 4
NUD_PERMANENT = 0x80
_MARK = b"DPLB"

CLIENT_IF, NODE_CLIENT_IF, NODE_BACKEND_IF, BACKEND_IF = "eth0", "eth0", "eth1", "eth0"


class LabError(RuntimeError):
    """A lab step failed (the message says which command and what it printed)."""


@dataclass(frozen=True)
class Flow:
    """One probe to send: a new connection's first packet (TCP SYN, UDP datagram or ICMP echo)."""

    src: str
    dst: str
    proto: str  # tcp, udp or icmp
    sport: int = 0
    dport: int = 0
    tcp_flags: str = "S"


@dataclass(frozen=True)
class Observation:
    """What the kernel did with one probe.

    outcome: "delivered" (reached the backend link), "returned" (the node routed it back out to the
    client), "rejected" (an ICMP error or TCP reset about it reached the client) or "dropped".
    """

    flow: Flow
    outcome: str
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    reject: str | None = None  # "tcp-reset" or "icmp type T code C"
    reject_src: str | None = None
    packet: bytes | None = None

    @property
    def endpoint(self) -> str | None:
        """`ip:port` (or `[ip]:port`) the probe arrived at, for delivered and returned probes."""
        if self.dst is None:
            return None
        host = f"[{self.dst}]" if ":" in self.dst else self.dst
        return f"{host}:{self.dport}" if self.dport else self.dst


@dataclass
class LabAddresses:
    """The lab's address plan. The node's backend-side address is the backend subnet's first host
    unless that is a backend, then its last."""

    client4: str = "192.168.100.2"
    node_client4: str = "192.168.100.1"
    client6: str = "fd00:100::2"
    node_client6: str = "fd00:100::1"
    backend_net4: str = "10.244.1.0/24"
    backend_net6: str = "fd00:244:1::/64"
    node_backend4: str = ""
    node_backend6: str = ""

    def place_node(self, backends: Sequence[str]) -> None:
        taken = {ip_address(b) for b in backends}
        for attr, net in (("node_backend4", self.backend_net4), ("node_backend6", self.backend_net6)):
            if getattr(self, attr):
                continue
            n = ip_network(net)
            first, last = n.network_address + 1, n.broadcast_address - 1
            setattr(self, attr, str(first if first not in taken else last))
            if ip_address(getattr(self, attr)) in taken:
                raise LabError(f"no free address for the node in {net}")

    @property
    def prefix4(self) -> int:
        return ip_network(self.backend_net4).prefixlen

    @property
    def prefix6(self) -> int:
        return ip_network(self.backend_net6).prefixlen


@dataclass
class NetfilterLab:
    """Build with `NetfilterLab.create(sandbox, backends=[...])`; everything goes with the sandbox."""

    sandbox: Sandbox
    client: Netns
    node: Netns
    backend: Netns
    backends: list[str]
    addresses: LabAddresses
    _macs: dict[str, bytes] = field(default_factory=dict)
    _send: socket.socket | None = None
    _client_cap: socket.socket | None = None
    _backend_cap: socket.socket | None = None
    _token: int = 0
    _flows: list[Flow] = field(default_factory=list)
    _raw4: socket.socket | None = None
    _raw6: socket.socket | None = None
    _lo_cap: socket.socket | None = None
    _local: dict[int, bytes] | None = None

    @property
    def _ack_token(self) -> int:
        return (self._token + (1 << 31)) & 0xFFFFFFFF

    # ------------------------------------------------------------------ setup
    @classmethod
    def create(cls, sandbox: Sandbox, backends: Sequence[str] = (), *, prefix: str = "lab",
               backend_net4: str = "10.244.1.0/24", backend_net6: str = "fd00:244:1::/64") -> "NetfilterLab":
        """Make the namespaces and links. `backends`: addresses (IPv4/IPv6) the node reaches on eth1,
        inside the backend subnets; default 10.244.1.10-25 and fd00:244:1::10-25."""
        try:
            addrs = LabAddresses(backend_net4=str(ip_network(backend_net4)),
                                 backend_net6=str(ip_network(backend_net6)))
        except ValueError as exc:
            raise LabError(f"bad backend subnet: {exc}") from None
        wanted = list(backends) or ([f"10.244.1.{i}" for i in range(10, 26)]
                                    + [f"fd00:244:1::{i:x}" for i in range(0x10, 0x26)])
        for b in wanted:
            a = ip_address(b)
            net = addrs.backend_net4 if a.version == 4 else addrs.backend_net6
            if a not in ip_network(net):
                raise LabError(f"backend address {b} is outside the backend subnet {net}")
        addrs.place_node(wanted)
        client, node, backend = (sandbox.netns(f"{prefix}c"), sandbox.netns(f"{prefix}n"),
                                 sandbox.netns(f"{prefix}b"))
        lab = cls(sandbox, client, node, backend, wanted, addrs, _token=secrets.randbits(32))
        lab._wire()
        return lab

    def _wire(self) -> None:
        a = self.addresses
        self.sandbox.veth(self.client, self.node, name=CLIENT_IF, peer=NODE_CLIENT_IF)
        self.sandbox.veth(self.node, self.backend, name=NODE_BACKEND_IF, peer=BACKEND_IF)
        for ns, conf in ((self.client, {"net.ipv4.ip_forward": 0, "net.ipv6.conf.all.forwarding": 0}),
                         (self.backend, {"net.ipv4.ip_forward": 0, "net.ipv6.conf.all.forwarding": 0}),
                         (self.node, {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1,
                                      "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
                                      f"net.ipv4.conf.{NODE_CLIENT_IF}.rp_filter": 0,
                                      f"net.ipv4.conf.{NODE_BACKEND_IF}.rp_filter": 0,
                                      "net.ipv4.icmp_ratelimit": 0, "net.ipv4.icmp_msgs_per_sec": 1000000,
                                      "net.ipv4.icmp_msgs_burst": 1000000, "net.ipv6.icmp.ratelimit": 0,
                                      # probes routed back out eth0 would draw ICMP redirects
                                      "net.ipv4.conf.all.send_redirects": 0,
                                      "net.ipv4.conf.default.send_redirects": 0,
                                      f"net.ipv4.conf.{NODE_CLIENT_IF}.send_redirects": 0})):
            _sysctl(ns, conf)
        from pyroute2 import IPRoute

        with namespace.entered(self.client.name), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=CLIENT_IF)[0]
            ipr.addr("add", index=idx, address=a.client4, prefixlen=24)
            ipr.addr("add", index=idx, address=a.client6, prefixlen=64, flags=0x02)  # IFA_F_NODAD
            self._macs["client"] = _mac(ipr, idx)
        with namespace.entered(self.backend.name), IPRoute() as ipr:
            self._macs["backend"] = _mac(ipr, ipr.link_lookup(ifname=BACKEND_IF)[0])
        with namespace.entered(self.node.name), IPRoute() as ipr:
            n0, n1 = ipr.link_lookup(ifname=NODE_CLIENT_IF)[0], ipr.link_lookup(ifname=NODE_BACKEND_IF)[0]
            ipr.addr("add", index=n0, address=a.node_client4, prefixlen=24)
            ipr.addr("add", index=n0, address=a.node_client6, prefixlen=64, flags=0x02)
            ipr.addr("add", index=n1, address=a.node_backend4, prefixlen=a.prefix4)
            ipr.addr("add", index=n1, address=a.node_backend6, prefixlen=a.prefix6, flags=0x02)
            self._macs["node0"], self._macs["node1"] = _mac(ipr, n0), _mac(ipr, n1)
            ipr.route("add", dst="0.0.0.0/0", gateway=a.client4, oif=n0)
            ipr.route("add", dst="::/0", gateway=a.client6, oif=n0, family=socket.AF_INET6)
            for dst, ifx, mac in ([(a.client4, n0, self._macs["client"]), (a.client6, n0, self._macs["client"])]
                                  + [(b, n1, self._macs["backend"]) for b in self.backends]):
                fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
                ipr.neigh("replace", dst=dst, lladdr=_mac_str(mac), ifindex=ifx, state=NUD_PERMANENT,
                          family=fam)
        self._send = self._packet_socket(self.client, CLIENT_IF)
        self._client_cap = self._send
        self._backend_cap = self._packet_socket(self.backend, BACKEND_IF)

    def _packet_socket(self, ns: Netns, ifname: str) -> socket.socket:
        with namespace.entered(ns.name):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((ifname, 0))
        self.sandbox.defer(f"packet socket in {ns.name}", s.close)
        for opt, size in ((33, 32 << 20), (32, 8 << 20)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                pass
        s.setblocking(False)
        return s

    # ------------------------------------------------------------------ rules
    def load_iptables(self, text: str, *, family: int = 4, backend: str = "legacy") -> None:
        """Load an iptables-save text into the node with (ip6)tables-<backend>-restore."""
        if backend not in ("legacy", "nft"):
            raise LabError(f"iptables backend must be legacy or nft, not {backend!r}")
        tool = f"{'ip6' if family == 6 else 'ip'}tables-{backend}-restore"
        self._run(self.node, [tool], text)

    def load_nft(self, text: str) -> None:
        """Load an nft script into the node (`nft -f -`)."""
        self._run(self.node, ["nft", "-f", "-"], text)

    def flush_rules(self) -> None:
        """Remove every rule from the node (iptables-legacy tables and the whole nft ruleset)."""
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            for table in ("raw", "mangle", "nat", "filter"):
                namespace.run(self.node.name, [tool, "-t", table, "-F"], check=False)
                namespace.run(self.node.name, [tool, "-t", table, "-X"], check=False)
        namespace.run(self.node.name, ["nft", "flush", "ruleset"], check=False)

    def flush_conntrack(self) -> None:
        """Forget every connection the node tracks, so the next probes are all NEW."""
        for fam in ("ipv4", "ipv6"):
            res = namespace.run(self.node.name, ["conntrack", "-F", "-f", fam], check=False)
            if res.returncode != 0 and "0 flow entries" not in res.stderr:
                raise LabError(f"conntrack -F failed: {res.stderr.strip()}")

    def conntrack_entries(self) -> list[str]:
        res = namespace.run(self.node.name, ["conntrack", "-L"], check=False)
        return [line for line in res.stdout.splitlines() if line.strip()]

    def _run(self, ns: Netns, argv: list[str], text: str) -> None:
        res = namespace.run(ns.name, argv, input=text, check=False)
        if res.returncode != 0:
            raise LabError(f"`{' '.join(argv)}` failed in the node: {(res.stderr or res.stdout).strip()[:2000]}")

    # ------------------------------------------------------------------ traffic
    def probe_packet(self, flow: Flow, probe_id: int) -> bytes:
        """The IP packet that carries `flow` with `probe_id` (in the payload, or the TCP sequence)."""
        if not 0 <= probe_id < 1 << 24:
            raise LabError(f"probe id {probe_id} out of range")
        marker = _MARK + struct.pack("!II", self._token, probe_id)
        if flow.proto == "tcp":
            # the id rides in the sequence number, and in the ACK number (another token space) so
            # that a reset answering an ACK segment, whose sequence is that ACK number, names it too
            return pkt.build(flow.src, flow.dst, "tcp", sport=flow.sport, dport=flow.dport,
                             flags=flow.tcp_flags, seq=(self._token + probe_id) & 0xFFFFFFFF,
                             ack=(self._ack_token + probe_id) & 0xFFFFFFFF if "A" in flow.tcp_flags.upper() else 0)
        if flow.proto == "udp":
            return pkt.build(flow.src, flow.dst, "udp", sport=flow.sport, dport=flow.dport, payload=marker)
        if flow.proto in ("icmp", "icmpv6"):
            return pkt.build(flow.src, flow.dst, "icmp", icmp_id=flow.sport, payload=marker)
        raise LabError(f"unsupported probe protocol {flow.proto!r} (tcp, udp or icmp)")

    def send(self, flows: Iterable[Flow], *, settle: float = 0.15, timeout: float = 5.0,
             batch: int = 256, origin: str = "client") -> list[Observation]:
        """Send one packet per flow, in order; return what happened to each.

        origin "client": injected on the client's link (the node sees it arrive on eth0:
        PREROUTING first). origin "node": sent by a raw socket inside the node, a locally
        generated packet (OUTPUT first), as host-network pods and the kubelet send; answers to
        it and packets for the node itself are then seen on the node's loopback ("local").
        """
        if origin not in ("client", "node"):
            raise LabError(f"origin must be client or node, not {origin!r}")
        flows = list(flows)
        self._token = secrets.randbits(32)  # a fresh run: late answers to earlier runs never match
        self._flows = flows
        packets = [self.probe_packet(f, i) for i, f in enumerate(flows)]
        assert self._send is not None
        self._drain_all()  # leftovers from earlier runs
        seen_backend: dict[int, bytes] = {}
        seen_client: dict[int, tuple[str, bytes]] = {}
        local: dict[int, bytes] = {}
        self._local = local if origin == "node" else None
        if origin == "node":
            self._ensure_node_sockets()
        send = self._send_frame if origin == "client" else self._send_local
        for start in range(0, len(packets), batch):
            for data in packets[start:start + batch]:
                send(data)
            self._collect(seen_backend, seen_client, len(flows), wait=0)
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        count = len(seen_backend) + len(seen_client) + len(local)
        while time.monotonic() < deadline and count < len(flows):
            self._collect(seen_backend, seen_client, len(flows), wait=0.02)
            now_count = len(seen_backend) + len(seen_client) + len(local)
            if now_count != count:
                count, quiet_since = now_count, time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                break
        self._local = None
        out = [self._observe(i, f, seen_backend, seen_client) for i, f in enumerate(flows)]
        return [Observation(o.flow, "local", packet=local[i]) if o.outcome == "dropped" and i in local
                else o for i, o in enumerate(out)]

    def _ensure_node_sockets(self) -> None:
        if self._raw4 is not None:
            return
        with namespace.entered(self.node.name):
            raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            raw6.setsockopt(socket.IPPROTO_IPV6, 36, 1)  # IPV6_HDRINCL
        for s in (raw4, raw6):
            self.sandbox.defer(f"raw socket in {self.node.name}", s.close)
        self._raw4, self._raw6 = raw4, raw6
        self._lo_cap = self._packet_socket(self.node, "lo")

    def _send_local(self, data: bytes) -> None:
        h = pkt.parse(data)
        sock = self._raw4 if h.family == 4 else self._raw6
        try:
            sock.sendto(data, (str(h.dst), 0))  # type: ignore[union-attr]
        except OSError:
            pass  # EPERM/ENETUNREACH: the OUTPUT path refused it at once (DROP, no route)

    def _send_frame(self, data: bytes) -> None:
        ethertype = ETH_P_IP if data[0] >> 4 == 4 else ETH_P_IPV6
        frame = self._macs["node0"] + self._macs["client"] + struct.pack("!H", ethertype) + data
        while True:
            try:
                self._send.send(frame)  # type: ignore[union-attr]
                return
            except BlockingIOError:
                select.select([], [self._send], [], 0.05)

    def _drain_all(self) -> None:
        for s in (self._client_cap, self._backend_cap, self._lo_cap):
            if s is None:
                continue
            while True:
                try:
                    s.recvfrom(65535)  # type: ignore[union-attr]
                except BlockingIOError:
                    break

    def _collect(self, backend: dict[int, bytes], client: dict[int, tuple[str, bytes]], n: int,
                 wait: float) -> None:
        socks = [self._backend_cap, self._client_cap]
        if self._local is not None and self._lo_cap is not None:
            socks.append(self._lo_cap)
        if wait:
            select.select(socks, [], [], wait)
        for s in socks:
            while True:
                try:
                    frame, addr = s.recvfrom(65535)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING or len(frame) < 15:
                    continue
                ethertype = struct.unpack_from("!H", frame, 12)[0]
                if ethertype not in (ETH_P_IP, ETH_P_IPV6):
                    continue
                data = frame[14:]
                try:
                    found = self._probe_of(data)
                except pkt.PacketError:
                    continue
                if found is None or not 0 <= found[0] < n:
                    continue
                pid, kind = found
                if s is self._lo_cap and kind == "probe":
                    self._local.setdefault(pid, data)  # type: ignore[union-attr]
                elif s is self._backend_cap and kind == "probe":
                    backend.setdefault(pid, data)
                else:  # probes routed back, and REJECT answers wherever they went (a spoofed
                    client.setdefault(pid, (kind, data))  # source may live on the backend side)

    def _probe_of(self, data: bytes) -> tuple[int, str] | None:
        """(probe id, "probe"|"reply") for a captured packet carrying one of this run's probes."""
        h = pkt.parse(data)
        if h.inner is not None:
            if (h.proto, h.icmp_type) in ((pkt.ICMP, 5), (pkt.ICMPV6, 137)):
                return None  # a redirect is advice, not a verdict (and they are switched off)
            quote = data[h.l4_offset + 8:]
            pid = self._id_in(h.inner, quote)
            return (pid, "icmp-error") if pid is not None else None
        if h.proto == pkt.TCP and h.tcp_flags & pkt.TCP_RST:
            pid = self._reset_answer(h)
            if pid is not None:
                return pid, "tcp-reset"
        pid = self._id_in(h, data)
        return (pid, "probe") if pid is not None else None

    def _reset_answer(self, h: pkt.Headers) -> int | None:
        """The probe a RST answers (nf_send_reset: seq = the probe's ACK number if it had ACK set,
        else seq 0 and ack = probe seq + SYN + FIN), or None when the RST is a probe itself."""
        if not h.tcp_flags & pkt.TCP_ACK:
            pid = (h.tcp_seq - self._ack_token) & 0xFFFFFFFF
            ok = (pid < len(self._flows) and self._flows[pid].proto == "tcp"
                  and "A" in self._flows[pid].tcp_flags.upper())
            return pid if ok else None
        for extra in (0, 1, 2):
            pid = (h.tcp_ack - extra - self._token) & 0xFFFFFFFF
            if pid < len(self._flows) and h.tcp_seq == 0 and self._flows[pid].proto == "tcp":
                f = self._flows[pid].tcp_flags.upper()
                if "A" not in f and extra == ("S" in f) + ("F" in f):
                    return pid
        return None

    def _id_in(self, h: pkt.Headers, data: bytes) -> int | None:
        if h.proto == pkt.TCP:
            pid = (h.tcp_seq - self._token) & 0xFFFFFFFF
            return pid if pid < 1 << 24 else None
        at = data.find(_MARK + struct.pack("!I", self._token))
        if at < 0 or len(data) < at + 12:
            return None
        return struct.unpack_from("!I", data, at + 8)[0]

    def _observe(self, i: int, flow: Flow, backend: dict[int, bytes],
                 client: dict[int, tuple[str, bytes]]) -> Observation:
        if i in backend:
            return _arrived(flow, "delivered", backend[i])
        if i in client:
            kind, data = client[i]
            h = pkt.parse(data)
            if kind == "probe":
                return _arrived(flow, "returned", data)
            if kind == "tcp-reset":
                return Observation(flow, "rejected", reject="tcp-reset", reject_src=str(h.src), packet=data)
            return Observation(flow, "rejected", reject=f"icmp type {h.icmp_type} code {h.icmp_code}",
                               reject_src=str(h.src), packet=data)
        return Observation(flow, "dropped")

    # ------------------------------------------------------------------ the same node for the engine
    def node_model(self):  # type: ignore[no-untyped-def]
        """The node's interfaces and routes as a dataplane.engine.node.Node, for the pipeline."""
        from dataplane.engine.node import Interface, Node, Route

        a = self.addresses
        return Node.simple(
            [Interface.of(NODE_CLIENT_IF, f"{a.node_client4}/24", f"{a.node_client6}/64"),
             Interface.of(NODE_BACKEND_IF, f"{a.node_backend4}/{a.prefix4}", f"{a.node_backend6}/{a.prefix6}")],
            [Route.of("default", NODE_CLIENT_IF, a.client4), Route.of("::/0", NODE_CLIENT_IF, a.client6)])


def _arrived(flow: Flow, outcome: str, data: bytes) -> Observation:
    h = pkt.parse(data)
    ported = h.proto in (pkt.TCP, pkt.UDP)
    return Observation(flow, outcome, src=str(h.src), dst=str(h.dst),
                       sport=h.sport if ported else h.icmp_id, dport=h.dport if ported else None,
                       packet=data)


def _sysctl(ns: Netns, values: dict[str, int]) -> None:
    """Write sysctls inside a namespace; keys the kernel lacks are skipped, other failures raise."""
    argv = ["sysctl", "-q", "-e"] + [f"{k}={v}" for k, v in values.items()]
    res = namespace.run(ns.name, argv, check=False)
    if res.returncode != 0:
        raise LabError(f"sysctl in {ns.name} failed: {res.stderr.strip()}")


def _mac(ipr, index: int) -> bytes:  # type: ignore[no-untyped-def]
    link = ipr.get_links(index)[0]
    return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))


def _mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


# ---------------------------------------------------------------------- comparing with the engine

def engine_observation(flow: Flow, result) -> Observation:  # type: ignore[no-untyped-def]
    """What the lab would record for a pipeline result (dataplane.engine.pipeline.PacketResult) on
    this topology: forwarded out eth1 = delivered, out eth0 = returned, REJECT = the response."""
    from dataplane.engine.types import Verdict

    if result.verdict is not Verdict.ACCEPT:
        if result.response is None:  # DROP, or a REJECT whose answer was itself dropped
            return Observation(flow, "dropped")
        h = pkt.parse(result.response)
        reject = "tcp-reset" if h.proto == pkt.TCP else f"icmp type {h.icmp_type} code {h.icmp_code}"
        return Observation(flow, "rejected", reject=reject, reject_src=str(h.src), packet=result.response)
    if result.local:
        return Observation(flow, "local", packet=result.packet)
    outcome = "delivered" if result.oif == NODE_BACKEND_IF else "returned"
    return _arrived(flow, outcome, result.packet)


COMPARED_FIELDS = ("outcome", "src", "dst", "sport", "dport", "reject", "reject_src")


def differences(kernel: Sequence[Observation], engine: Sequence[Observation], *,
                ignore: Iterable[str] = ()) -> list[str]:
    """One line per probe where the kernel and the engine disagree (outcome, addresses, ports, reject).

    `ignore` leaves fields out, e.g. "sport" where --random-fully makes the kernel's choice random.
    """
    out = []
    fields = [f for f in COMPARED_FIELDS if f not in set(ignore)]
    for i, (k, e) in enumerate(zip(kernel, engine, strict=True)):
        diff = [f"{f}: kernel {getattr(k, f)!r} engine {getattr(e, f)!r}" for f in fields
                if getattr(k, f) != getattr(e, f)]
        if diff:
            out.append(f"probe {i} {k.flow}: " + "; ".join(diff))
    return out
