"""Kernel anchors: the same rule sets in the real kernel, with real packets, in scratch namespaces.

Topology (one fresh set of namespaces per backend and N, removed on any exit, Ctrl-C included):

    client 192.168.100.2 --veth-- 192.168.100.1 NODE 10.255.0.1 --veth-- 10.255.0.2 BACKEND
                                  (forwards; holds the rules)         (172.16.0.0/16 is a local
                                                                        AnyIP route; SYNs dropped
                                                                        and counted at input)

The client sends raw TCP SYNs to a ClusterIP, each from its own source port, so each one is a new
connection for the node: conntrack entry, nat rules (DNAT + MASQUERADE), forwarding, delivery.
veth runs the receiver in softirq on the sending CPU, so with the sender pinned to one CPU the time
per sendto() is the whole path; we take the sender thread's CPU time (the kernel charges that softirq
work to it when CONFIG_IRQ_TIME_ACCOUNTING is off, as here), which neighbours on this shared 2-core VM
do not inflate, and keep the wall time beside it (new_conn_wall_ns). Each round flushes the node's
conntrack first; rounds alternate
first / last service (ABBA) and last - first is taken per adjacent pair, since this VM has slow
speed phases. The rule text is our own generator's output (kube-proxy's layouts), loaded with
iptables-legacy-restore, iptables-nft-restore or `nft -f`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.bench_stats import Record, derived, paired_differences, run_abba, summarize
from dataplane.engine import packet as pkt
from dataplane.netns import namespace
from dataplane.proxy.model import ProxyState
from dataplane.testing.sandbox import Netns, Sandbox

CLIENT, NODE_CLIENT, NODE_BACKEND, BACKEND = "192.168.100.2", "192.168.100.1", "10.255.0.1", "10.255.0.2"
POD_RANGE = "172.16.0.0/16"  # the synthetic endpoints (dataplane.k8s.synthetic)
KERNEL_BACKENDS = {"legacy": "kernel-iptables-legacy", "nft": "kernel-iptables-nft", "vmap": "kernel-nft-vmap"}
LAYOUT = "classic"
PROBE_TTL = 33  # injected packets; the backend drops (and counts) what arrives with TTL 32
LISTEN_PORT = 8080  # the synthetic endpoints' port  # 2 KUBE-SERVICES rules per service, as in the 2019 measurement


def _irq_time_accounting() -> bool:
    """True when the running kernel accounts softirq time apart from tasks (then CPU time of the
    sender would miss the receive path, and wall time is used)."""
    import gzip
    import platform

    for path in (f"/boot/config-{platform.release()}", "/proc/config.gz"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:  # type: ignore[operator]
                return any(line.strip() == "CONFIG_IRQ_TIME_ACCOUNTING=y" for line in f)
        except OSError:
            continue
    return True  # unknown: be safe, use wall time


CPU_TIME = not _irq_time_accounting()
CLOCK = "sender thread CPU time (softirq receive path included)" if CPU_TIME else "wall time"


@dataclass(frozen=True)
class KernelPlan:
    services: tuple[int, ...]
    backends: tuple[str, ...] = ("legacy", "nft", "vmap")
    rounds: int = 8  # per position
    round_s: float = 0.05  # wall time aimed at for the slowest position's round
    update_timeout: float = 30.0


def missing() -> str | None:
    """Why the kernel anchors cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("iptables-legacy-restore", "iptables-nft-restore", "nft", "conntrack", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


# ---------------------------------------------------------------- topology

@dataclass
class Topology:
    client: Netns
    node: Netns
    backend: Netns

    @classmethod
    def create(cls, sb: Sandbox) -> "Topology":
        t = cls(sb.netns("bc"), sb.netns("bn"), sb.netns("bb"))
        sb.veth(t.client, t.node, name="eth0", peer="eth0")
        sb.veth(t.node, t.backend, name="eth1", peer="eth0")
        sysctl_off6 = ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]
        for ns in (t.client, t.node, t.backend):
            _ip(ns, "link set lo up")
            ns.run(sysctl_off6, check=False)
        _ip(t.client, f"addr add {CLIENT}/24 dev eth0")
        _ip(t.client, f"route add 10.0.0.0/8 via {NODE_CLIENT}")
        _ip(t.node, f"addr add {NODE_CLIENT}/24 dev eth0")
        _ip(t.node, f"addr add {NODE_BACKEND}/30 dev eth1")
        _ip(t.node, f"route add {POD_RANGE} via {BACKEND}")
        _ip(t.backend, f"addr add {BACKEND}/30 dev eth0")
        _ip(t.backend, f"route add local {POD_RANGE} dev lo")  # AnyIP: every endpoint is local
        _ip(t.backend, f"route add default via {NODE_BACKEND}")
        # be_liberal: injected ACKs of a real connection are conntrack hits whatever their sequence
        t.node.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.netfilter.nf_conntrack_tcp_be_liberal=1",
                    "net.ipv4.conf.eth0.rp_filter=0", "net.ipv4.conf.eth1.rp_filter=0"])
        # static neighbours: (namespace, its interface, the peer's address, the peer's namespace and interface)
        for ns, ifname, addr, peer_ns, peer_if in ((t.client, "eth0", NODE_CLIENT, t.node, "eth0"),
                                                   (t.node, "eth0", CLIENT, t.client, "eth0"),
                                                   (t.node, "eth1", BACKEND, t.backend, "eth0"),
                                                   (t.backend, "eth0", NODE_BACKEND, t.node, "eth1")):
            _ip(ns, f"neigh replace {addr} lladdr {_mac(peer_ns, peer_if)} dev {ifname} nud permanent")
        res = t.backend.run(["nft", "-f", "-"], check=False, input=(
            "table ip bench {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
            f"  ip ttl {PROBE_TTL - 1} counter drop\n }}\n}}\n"))
        if res.returncode != 0:
            raise RuntimeError(f"backend SYN-drop rule: {res.stderr.strip()}")
        return t

    def delivered(self) -> int:
        out = self.backend.run(["nft", "list", "chain", "ip", "bench", "input"]).stdout
        m = re.search(r"counter packets (\d+)", out)
        return int(m.group(1)) if m else 0

    def flush_conntrack(self) -> None:
        res = self.node.run(["conntrack", "-F"], check=False)
        if res.returncode != 0 and "0 flow entries" not in res.stderr:
            raise RuntimeError(f"conntrack -F failed: {res.stderr.strip()}")


def _ip(ns: Netns, args: str) -> None:
    res = ns.run(["ip", *args.split()], check=False)
    if res.returncode != 0:
        raise RuntimeError(f"`ip {args}` in {ns.name}: {res.stderr.strip()}")


def _mac(ns: Netns, ifname: str) -> str:
    import json

    return str(json.loads(ns.run(["ip", "-j", "link", "show", "dev", ifname]).stdout)[0]["address"])


# ---------------------------------------------------------------- sender

class Sender:
    """Raw-socket SYN sender in the client namespace, pinned to one CPU while sending."""

    def __init__(self, sb: Sandbox, client: Netns) -> None:
        with namespace.entered(client.name):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        sb.defer("raw socket", self.sock.close)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.last_wall = 0.0

    @staticmethod
    def syns(vip: str, port: int, count: int) -> list[tuple[bytes, tuple[str, int]]]:
        return [(pkt.build(CLIENT, vip, "tcp", sport=1024 + i, dport=port, flags="S", seq=i * 7919, ttl=PROBE_TTL),
                 (vip, 0)) for i in range(count)]

    @staticmethod
    def acks(vip: str, port: int, sport: int, count: int) -> list[tuple[bytes, tuple[str, int]]]:
        """Duplicate ACKs of an established connection (client sport -> vip:port)."""
        data = pkt.build(CLIENT, vip, "tcp", sport=sport, dport=port, flags="A", seq=1, ack=1, ttl=PROBE_TTL)
        return [(data, (vip, 0))] * count

    def send(self, packets: list[tuple[bytes, tuple[str, int]]]) -> float:
        """Cost per packet in ns: this thread's CPU time when the kernel charges the softirq work done
        in our context to us (no CONFIG_IRQ_TIME_ACCOUNTING), so neighbours on the shared CPUs do not
        count; wall time otherwise. `last_wall` keeps the wall time per packet."""
        send = self.sock.sendto
        c0, t0 = time.thread_time(), time.perf_counter()
        for data, addr in packets:
            send(data, addr)
        wall = (time.perf_counter() - t0) / len(packets) * 1e9
        self.last_wall = wall
        return (time.thread_time() - c0) / len(packets) * 1e9 if CPU_TIME else wall


def _pinned(fn: Callable[[], object]) -> object:
    try:
        before = os.sched_getaffinity(0)
        cpu = max(before)
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return fn()
    try:
        return fn()
    finally:
        os.sched_setaffinity(0, before)


# ---------------------------------------------------------------- rule loading

@dataclass
class Timed:
    wall: float
    timed_out: bool = False


def _load(ns: Netns, argv: list[str], text: str, timeout: float) -> Timed:
    t0 = time.perf_counter()
    try:
        res = ns.run(argv, input=text, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Timed(timeout, True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed in the node: {(res.stderr or res.stdout).strip()[:500]}")
    return Timed(wall)


def _rule_texts(kind: str, states: tuple[ProxyState, ProxyState, ProxyState]) -> dict[str, str]:
    """initial (state N), partial (N -> N+1, changed chains only), full (N+1 -> N+2, every chain)."""
    s0, s1, s2 = states
    if kind == "vmap":
        from dataplane.proxy.nftables.generator import changes, generate as nft_generate

        return {"initial": nft_generate(s0), "partial": changes(s0, s1)}
    from dataplane.proxy.iptables.generator import GeneratorOptions, generate
    from dataplane.proxy.iptables.sync import Syncer

    opts = GeneratorOptions(layout=LAYOUT, jump_rules=True)
    partial_opts = GeneratorOptions(layout="modern")  # kube-proxy's partial syncs need its modern layout
    syncer = Syncer(partial_opts)
    syncer.sync(s0)
    return {"initial": generate(s0, opts).text(),
            "partial": syncer.sync(s1).text(),
            "full": generate(s2, GeneratorOptions(layout=LAYOUT)).text()}


# ---------------------------------------------------------------- one point

def kernel_point(kind: str, n: int, states: tuple[ProxyState, ProxyState, ProxyState], plan: KernelPlan,
                 ordered: list[tuple[str, int]]) -> list[Record]:
    """Measure one backend at N services in a fresh set of namespaces."""
    backend = KERNEL_BACKENDS[kind]
    texts = _rule_texts(kind, states)
    restore = {"legacy": ["iptables-legacy-restore"], "nft": ["iptables-nft-restore"], "vmap": ["nft", "-f", "-"]}[kind]
    noflush = restore + (["--noflush"] if kind != "vmap" else [])
    recs: list[Record] = []
    with Sandbox(prefix="dpb") as sb:
        topo = Topology.create(sb)
        load = _load(topo.node, restore, texts["initial"], plan.update_timeout * 4)
        recs.append(derived(backend, n, None, "load_s", load.wall, "s", "initial restore, wall time of the loader"))
        sender = Sender(sb, topo.client)
        targets = {"first": ordered[0], "last": ordered[-1]}
        # calibrate the round size on the slower (last) target, and check delivery
        probe = Sender.syns(*targets["last"], 200)
        topo.flush_conntrack()
        before = topo.delivered()
        per = float(_pinned(lambda: sender.send(probe)))  # type: ignore[arg-type]
        time.sleep(0.01)
        got = topo.delivered() - before
        if got < 0.95 * len(probe):
            raise RuntimeError(f"{backend} N={n}: only {got}/{len(probe)} SYNs reached the backend")
        count = int(min(6000, max(100, plan.round_s / (per * 1e-9))))
        batches = {pos: Sender.syns(vip, port, count) for pos, (vip, port) in targets.items()}

        walls: dict[str, list[float]] = {pos: [] for pos in targets}

        def round_of(pos: str) -> float:
            topo.flush_conntrack()
            cost = float(_pinned(lambda: sender.send(batches[pos])))  # type: ignore[arg-type]
            walls[pos].append(sender.last_wall)
            return cost

        for pos in targets:  # warm-up round per target (caches, slab, first-use costs), not recorded
            round_of(pos)
        before = topo.delivered()
        samples = run_abba({pos: (lambda pos=pos: round_of(pos)) for pos in targets}, plan.rounds)
        time.sleep(0.01)
        delivered = (topo.delivered() - before) / (count * plan.rounds * 2)
        for pos in targets:
            recs.append(summarize(backend, n, pos, "new_conn_ns", samples[pos], "ns",
                                  f"{CLOCK} per SYN, {count} per round, sender pinned"))
            recs.append(summarize(backend, n, pos, "new_conn_wall_ns", walls[pos][1:], "ns",
                                  "wall time per SYN (includes waiting for the shared CPU)"))
        diff = paired_differences(samples["first"], samples["last"])
        recs.append(summarize(backend, n, "last", "last_minus_first_ns", diff, "ns", "paired ABBA rounds"))
        if kind != "vmap" and n > 1:
            skipped = 2 * (n - 1)  # classic layout: two KUBE-SERVICES rules per service ahead
            recs.append(summarize(backend, n, "last", "ns_per_rule", [d / skipped for d in diff], "ns",
                                  f"(last - first) / {skipped} KUBE-SERVICES rules skipped"))
        recs.append(derived(backend, n, None, "delivered_fraction", delivered, "fraction",
                            "SYNs counted at the backend's input / SYNs sent"))
        recs += _established(sb, topo, sender, backend, n, targets, plan)
        if kind == "vmap":
            part = _load(topo.node, restore, texts["partial"], plan.update_timeout)
            recs.append(_timed_record(backend, n, "sync_partial_s", part, "one nft -f transaction adding one service"))
        else:
            # partial first (N -> N+1), then a full sync (N+1 -> N+2): a full sync that times out
            # (iptables-nft at a few thousand services) then leaves nothing for a later step to depend on
            part = _load(topo.node, noflush, texts["partial"], plan.update_timeout)
            recs.append(_timed_record(backend, n, "sync_partial_s", part,
                                      "+1 service: restore --noflush, changed chains only (kube-proxy >= 1.27)"))
            full = _load(topo.node, noflush, texts["full"], plan.update_timeout)
            recs.append(_timed_record(backend, n, "sync_full_s", full, "+1 service: restore --noflush, every chain"))
    return recs


def _established(sb: Sandbox, topo: Topology, sender: Sender, backend: str, n: int,
                 targets: dict[str, tuple[str, int]], plan: KernelPlan) -> list[Record]:
    """Packets of an ESTABLISHED connection: a real TCP handshake through the service to a listener
    in the backend, then injected duplicate ACKs on that 4-tuple (conntrack hits: no nat rules)."""
    with namespace.entered(topo.backend.name):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sb.defer("listener", listener.close)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", LISTEN_PORT))
    listener.listen(8)
    listener.settimeout(5)
    packets = {}
    for pos, (vip, port) in targets.items():
        with namespace.entered(topo.client.name):
            conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sb.defer("client connection", conn.close)
        conn.settimeout(5)
        try:
            conn.connect((vip, port))
            accepted, _ = listener.accept()
        except OSError as exc:
            raise RuntimeError(f"{backend} N={n}: TCP connection through the service failed: {exc}") from None
        sb.defer("accepted connection", accepted.close)
        packets[pos] = Sender.acks(vip, port, conn.getsockname()[1], 2000)
    before = topo.delivered()
    _pinned(lambda: sender.send(packets["first"][:100]))
    time.sleep(0.01)
    if topo.delivered() - before < 95:
        raise RuntimeError(f"{backend} N={n}: established packets did not reach the backend")
    def round_of(pos: str) -> float:
        return float(_pinned(lambda: sender.send(packets[pos])))  # type: ignore[arg-type]

    for pos in targets:  # warm-up, not recorded
        round_of(pos)
    samples = run_abba({pos: (lambda pos=pos: round_of(pos)) for pos in targets}, plan.rounds)
    return [summarize(backend, n, pos, "established_ns", samples[pos], "ns",
                      f"{CLOCK} per injected ACK of an established connection (conntrack hit)") for pos in targets]


def _timed_record(backend: str, n: int, metric: str, t: Timed, note: str) -> Record:
    rec = derived(backend, n, None, metric, t.wall, "s", note + (" - TIMED OUT (lower bound)" if t.timed_out else ""))
    if t.timed_out:
        rec.extra["timed_out"] = True
    return rec
