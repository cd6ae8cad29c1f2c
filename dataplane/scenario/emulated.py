"""The `emulated` service dataplane: live traffic through our packet engine, one per node.

kube-proxy's iptables or nftables rules (the text the kernel mode loads, generated in full on
every sync) run in `dataplane.engine`'s pipeline instead of the node's netfilter; in ipvs mode,
the IPVS proxier's iptables rules and ipsets, with its virtual servers in the engine's IPVS
(`dataplane.engine.ipvs_hook`) and the virtual IPs local to the engine's node (kube-ipvs0).

Per node namespace:

- a TUN device `dpsvc0` (IFF_TUN|IFF_NO_PI), created from inside the namespace and held open by
  the runner; one reader thread feeds what it reads to that node's engine `Pipeline` (the node's
  addresses and main routing table, the same kube-proxy rules the kernel mode would restore,
  conntrack on a real monotonic clock) and writes the translated packet (or a REJECT's ICMP
  error / reset) back into the TUN, from where the kernel forwards or delivers it;
- steering by policy routing, no netfilter in the path: rules ahead of the `local` table (moved
  from preference 0 to 31000) send into table 100 (`default dev dpsvc0`)
    * everything routed with a pod source (`from <clusterCIDR>`): service traffic from pods, and
      the endpoints' replies, wherever they go;
    * `to <serviceCIDR>`, `to <LB/external IP>`, and `to <node IP>` with a TCP/UDP destination
      port in the NodePort range, from any interface;
    * everything routed to the node's own pods (`to <podCIDR>`), so the engine sees both
      directions of every pod connection, as the kernel's conntrack would (a reply whose request
      it had not seen would be INVALID, and kube-proxy drops INVALID in KUBE-FORWARD);
  while `iif dpsvc0` (what the engine wrote back) and `iif lo` (the node's own sockets, e.g.
  kubelet's probes) skip straight to the normal tables.

Symmetry without masquerading everything. kube-proxy only masquerades what its rules mark, so
the client source is preserved where the kernel mode preserves it. Replies still come back
through the engine that translated the request because every node's engine sees all traffic a
pod sends (`from <clusterCIDR>`): a reply to a preserved client leaves the endpoint's node
through that node's engine and reaches the client's node, whose rule catches it again (it is
pod-sourced); a reply to a masqueraded flow is addressed to the node IP (or the pod gateway) and
is pod-sourced too. The one path routing never sees is a reply between two pods on the same
bridge, switched at layer 2 (the kernel mode relies on br_netfilter for it). The runner closes
that path the way private-VLAN setups do: every pod port on `cni0` is `isolated`, and `cni0`
answers ARP for its pods (`proxy_arp`, `proxy_arp_pvlan`, `proxy_delay 0`), so same-node pod
traffic is routed through the node, and so through its engine. The cost: pod-to-pod traffic on
one node is routed (TTL decremented, MAC of cni0) instead of switched. The `l2` pod-network
design, whose cross-node traffic is switched too, is refused with that reason. (The simpler
answer, masquerading everything the engine DNATs to an address routed back to its node,
kube-proxy's masquerade-all, would hide every client address: the `source: preserved` and
externalTrafficPolicy Local expectations could not hold, so it is not used.)

Kernel settings that make the loop work, per node: `accept_local` on the TUN (the engine writes
packets whose source is a node address after MASQUERADE), `tcp_early_demux`/`udp_early_demux`
off (early demux would attach a node socket to a pod's reply to it, and a packet with a socket
attached is never forwarded: ip_forward drops it), IPv6 off on the TUN, no ICMP redirects.
Established flows skip the rules through a flow cache (`emulated_flows`, after nf_flow_table),
and the reader runs at nice -10, as the kernel forwards in softirq ahead of user tasks.

Lifetimes: the TUN disappears when its file descriptor closes (the runner's process exiting,
even by SIGKILL) or with the node namespace; the rules and the bridge port flags live in the
node namespace, which the run's state file records. Reader threads are recorded in `describe()`
with their start and stop times and counters; `close()` stops them before teardown removes the
namespaces.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import struct
import threading
import time
from dataclasses import dataclass, field

from dataplane.k8s.errors import ModelError
from dataplane.netns import namespace
from dataplane.scenario import cluster_model, spec
from dataplane.scenario.dataplanes import DataplaneError
from dataplane.scenario.emulated_flows import FlowCache
from dataplane.scenario.endpoints import ServicePortEndpoints
from dataplane.scenario.topology import NODE_UPLINK, POD_BRIDGE, NodePlan, Topology

TUN_NAME = "dpsvc0"
STEER_TABLE = 100
LOCAL_RULE_PREF = 31000   # where the `local` table's rule moves to, after the steering rules
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_READ_BURST = 256
READER_NICE = -10
MAX_TRACE_LINES = 2000


class EmulatedError(DataplaneError):
    """The emulated dataplane could not be set up (message names the node and the cause)."""


# ---------------------------------------------------------------------------------------------
# The TUN device
# ---------------------------------------------------------------------------------------------
def open_tun(netns: str, name: str = TUN_NAME) -> int:
    """Create the TUN device `name` inside `netns`; returns its (non-blocking) file descriptor.

    The device belongs to the namespace the opening thread is in, and is not persistent: it goes
    away when the descriptor is closed.
    """
    with namespace.entered(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
    return fd


# ---------------------------------------------------------------------------------------------
# The node as the engine sees it
# ---------------------------------------------------------------------------------------------
def read_node(netns: str):  # type: ignore[no-untyped-def]
    """The namespace's interfaces, addresses and main-table routes as a `dataplane.engine.node.Node`."""
    from dataplane.engine.node import Interface, Node, Route

    addrs = json.loads(namespace.run(netns, ["ip", "-4", "-j", "addr", "show"]).stdout or "[]")
    interfaces = [Interface.of(i["ifname"], *(f"{a['local']}/{a['prefixlen']}" for a in i.get("addr_info", [])
                                             if a.get("family") == "inet")) for i in addrs]
    routes = []
    for r in json.loads(namespace.run(netns, ["ip", "-4", "-j", "route", "show", "table", "main"]).stdout or "[]"):
        if r.get("type", "unicast") != "unicast" or "dev" not in r:
            continue
        routes.append(Route.of(r["dst"], r["dev"], r.get("gateway")))
    return Node(interfaces, routes)


# ---------------------------------------------------------------------------------------------
# One node's engine and its reader thread
# ---------------------------------------------------------------------------------------------
@dataclass
class Counters:
    received: int = 0       # packets read from the TUN
    written: int = 0        # packets written back (translated, or a REJECT's answer)
    dropped: int = 0
    rejected: int = 0
    ignored: int = 0        # not IPv4 (the kernel's own IPv6 chatter)
    fast: int = 0           # handled by the flow cache (established flows)
    errors: int = 0
    last_error: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class NodeEngine:
    """A node's Pipeline behind its TUN; `handle` is one packet's whole trip."""

    node: NodePlan
    fd: int
    pipeline: object
    lock: threading.Lock = field(default_factory=threading.Lock)
    counters: Counters = field(default_factory=Counters)
    started_at: float | None = None
    stopped_at: float | None = None
    fast_path: bool = True
    cpu_seconds: float = 0.0     # the reader thread's CPU time so far (updated between bursts)
    flows: FlowCache = field(default_factory=FlowCache)
    trace_source: bytes | None = None     # packets from this address are traced (EngineTrace)
    ipvs: object | None = None            # dataplane.proxy.ipvs.core.Ipvs in ipvs mode
    trace_lines: list = field(default_factory=list)
    _iif_cache: dict = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _wake: tuple[int, int] | None = None
    _stop: bool = False

    def update(self, model, ruleset, ipvs_services=None) -> None:  # type: ignore[no-untyped-def]
        """A sync: the node's addresses and routes, its rules (and IPVS virtual servers), at once."""
        with self.lock:
            self.pipeline.node = model  # type: ignore[attr-defined]
            self.pipeline.ruleset = ruleset  # type: ignore[attr-defined]
            if ipvs_services is not None and self.ipvs is not None:
                self.ipvs.services = ipvs_services   # its connection table stays: flows keep their server
            self._iif_cache = {}
            self.flows.invalidate()

    def ingress(self, data: bytes) -> str:
        """The interface the packet came in on, as reverse-path routing names it (the TUN hides it)."""
        src = data[12:16]
        iif = self._iif_cache.get(src)
        if iif is None:
            from ipaddress import IPv4Address

            from dataplane.engine.node import NoRoute

            node = self.pipeline.node  # type: ignore[attr-defined]
            try:
                r = node.route(IPv4Address(src))
                iif = r.oif if not r.local else "lo"
            except NoRoute:
                iif = NODE_UPLINK
            try:
                node.interface(iif)
            except KeyError:
                iif = NODE_UPLINK
            self._iif_cache[src] = iif
        return iif

    def handle(self, data: bytes) -> bytes | None:
        """Run one packet through the engine; returns what goes back into the TUN (or None).

        Established flows take the flow cache (`emulated_flows`); the rest, and every TCP packet
        with SYN, FIN or RST, the whole pipeline, which may teach the cache a new flow."""
        from dataplane.engine.types import CtState, Verdict

        c = self.counters
        c.received += 1
        if len(data) < 20 or data[0] >> 4 != 4:
            c.ignored += 1
            return None
        with self.lock:
            traced = self.trace_source is not None and data[12:16] == self.trace_source
            if self.fast_path and not traced:
                out = self.flows.forward(data, time.monotonic())
                if out is not None:
                    c.fast += 1
                    return out
            if traced:
                res = self._traced(data)
            else:
                res = self.pipeline.receive(data, self.ingress(data))  # type: ignore[attr-defined]
            if self.fast_path and res.verdict is Verdict.ACCEPT and res.ct_state is CtState.ESTABLISHED \
                    and res.conntrack is not None:
                refresh = _refresher(self.pipeline.conntrack.timeouts, res.conntrack)  # type: ignore[attr-defined]
                if refresh is not None:
                    self.flows.learn(data, res.packet, res.conntrack, refresh)
        if res.verdict is Verdict.ACCEPT:
            return res.packet
        if res.verdict is Verdict.REJECT:
            c.rejected += 1
            return res.response
        c.dropped += 1
        return None

    def _traced(self, data: bytes):  # type: ignore[no-untyped-def]
        from dataplane.engine import packet as pkt

        evaluator = _evaluator(self.pipeline.ruleset)  # type: ignore[attr-defined]
        if evaluator is not None:
            evaluator.trace_enabled = True
        try:
            res = self.pipeline.receive(data, self.ingress(data))  # type: ignore[attr-defined]
        finally:
            if evaluator is not None:
                evaluator.trace_enabled = False
        h = pkt.parse(data)
        proto = {6: "tcp", 17: "udp", 1: "icmp"}.get(h.proto, str(h.proto))
        n = len([ln for ln in self.trace_lines if ln.startswith("packet ")]) + 1
        lines = [f"packet {n} {proto} {h.src}:{h.sport} -> {h.dst}:{h.dport} iif {self.ingress(data)} "
                 f"ct {res.ct_state.value}"]
        lines += [f"  {st.table} {st.chain} rule {st.rule_number}: {st.rule_text or st.note}"
                  for st in res.trace if st.matched or st.note.startswith("policy")]
        lines += [f"  nat {n_}" for n_ in res.nat_applied]
        lines.append(f"  verdict {res.verdict.value}" + (f" out {res.oif}" if res.oif else "")
                     + (f" ({res.reason})" if res.reason else ""))
        if len(self.trace_lines) < MAX_TRACE_LINES:
            self.trace_lines += lines
        return res

    # -- the reader thread -----------------------------------------------------------------------
    def start(self) -> None:
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._loop, name=f"emulated-{self.node.name}", daemon=True)
        self.started_at = time.time()
        self._thread.start()

    def _loop(self) -> None:
        assert self._wake is not None
        try:   # the kernel forwards in softirq, ahead of user tasks; the engine's reader gets a head start too
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICE)
        except OSError:
            pass
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake[0], select.POLLIN)
        while not self._stop:
            self.cpu_seconds = time.thread_time()
            poller.poll(1000)
            for _ in range(_READ_BURST):
                try:
                    data = os.read(self.fd, 65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF or self._stop:
                        return
                    self._error(exc)
                    break
                try:
                    out = self.handle(data)
                    if out is not None:
                        os.write(self.fd, out)
                        self.counters.written += 1
                except Exception as exc:  # noqa: BLE001 - one bad packet must not stop the node
                    self._error(exc)

    def _error(self, exc: BaseException) -> None:
        self.counters.errors += 1
        self.counters.last_error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        """Stop the reader (it wakes at once), then close the TUN: the device goes with it."""
        self._stop = True
        if self._wake is not None:
            os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join(5.0)
        if self._wake is not None:
            for wfd in self._wake:
                os.close(wfd)
            self._wake = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.stopped_at = time.time()

    def describe(self) -> dict:
        return {"tun": TUN_NAME, "thread": f"emulated-{self.node.name}", "startedAt": self.started_at,
                "stoppedAt": self.stopped_at, "alive": bool(self._thread and self._thread.is_alive()),
                "conntrackEntries": len(self.pipeline.conntrack),  # type: ignore[attr-defined]
                "flowsLearned": self.flows.learned, "cpuSeconds": round(self.cpu_seconds, 3),
                **self.counters.to_json()}


def _refresher(timeouts, conn):  # type: ignore[no-untyped-def]
    """How a cached packet refreshes its conntrack entry, as the protocol handler would for it;
    None while the connection is not yet in a state where its packets change nothing else."""
    from dataplane.engine.conntrack import TcpState

    if conn.tcp_state is not None:
        if conn.tcp_state is not TcpState.ESTABLISHED:
            return None
        established = timeouts.tcp[TcpState.ESTABLISHED]

        def tcp(c, now: float) -> None:  # type: ignore[no-untyped-def]
            c.timeout_at = now + established
        return tcp
    if conn.original.proto == 17 and "SEEN_REPLY" in conn.status:
        def udp(c, now: float) -> None:  # type: ignore[no-untyped-def]
            if now > c.udp_stream_at:      # nf_conntrack_udp_packet: a stream after two seconds
                c.timeout_at = now + timeouts.udp_stream
                c.status.add("ASSURED")
            else:
                c.timeout_at = now + timeouts.udp
        return udp
    return None


# ---------------------------------------------------------------------------------------------
# The ServiceDataplane
# ---------------------------------------------------------------------------------------------
def steering_rules(node: NodePlan, cluster_cidr: str, service_cidr: str, external_ips: list[str]) -> list[str]:
    """`ip -batch` lines that steer service traffic and pod-sourced traffic into the TUN."""
    low, high = spec.NODE_PORT_RANGE
    return [
        f"rule add pref {LOCAL_RULE_PREF} lookup local",
        f"route add default dev {TUN_NAME} table {STEER_TABLE}",
        f"rule add pref 50 iif {TUN_NAME} goto {LOCAL_RULE_PREF}",
        f"rule add pref 51 iif lo goto {LOCAL_RULE_PREF}",
        f"rule add pref 100 from {cluster_cidr} lookup {STEER_TABLE}",
        f"rule add pref 101 to {service_cidr} lookup {STEER_TABLE}",
        *(f"rule add pref 102 to {ip}/32 lookup {STEER_TABLE}" for ip in external_ips),
        *(f"rule add pref 103 to {node.ip}/32 ipproto {p} dport {low}-{high} lookup {STEER_TABLE}"
          for p in ("tcp", "udp")),
        f"rule add pref 104 to {node.pod_cidr} lookup {STEER_TABLE}",
        "rule del pref 0 lookup local",
    ]


def check_design(pod_network: str) -> None:
    """Refuse, before anything is built, the pod network this dataplane cannot make symmetric."""
    if pod_network == "l2":
        raise EmulatedError("the emulated dataplane does not support podNetwork l2: pod replies switched "
                            "between nodes at layer 2 never reach a node's routing, so its engine cannot "
                            "reverse the service translation (use host-gw or vxlan, or --dataplane kernel)")


@dataclass
class Emulated:
    """kube-proxy's iptables rules run by our engine on every node's live traffic (see module doc)."""

    cluster_cidr: str
    service_cidr: str
    layout: str = "modern"
    masquerade_all: bool = False
    proxy_mode: str = "iptables"     # iptables | nftables | ipvs: which kube-proxy the engines run
    ipvs_scheduler: str = "rr"
    fast_path: bool = True           # the flow cache for established flows (emulated_flows)
    syncs: int = 0
    engines: dict[str, NodeEngine] = field(default_factory=dict)
    last_stats: dict = field(default_factory=dict)
    sync_seconds: float = 0.0

    def setup(self, topology: Topology) -> None:
        from dataplane.engine.clock import MonotonicClock
        from dataplane.engine.conntrack import Timeouts
        from dataplane.engine.pipeline import Pipeline

        check_design(topology.design)
        ext = sorted({ip for s in topology.services for ip in (*s.service.load_balancer_ips, *s.service.external_ips)})
        for node in topology.nodes:
            try:
                fd = open_tun(node.netns)
            except OSError as exc:
                raise EmulatedError(f"node {node.name}: cannot create TUN device {TUN_NAME}: {exc.strerror}") from None
            pipeline = Pipeline(read_node(node.netns), None, clock=MonotonicClock(), timeouts=Timeouts.kube_proxy(),
                                seed=None)
            # ipvs: no flow cache, IPVS's own connection table must see every packet (its timeouts)
            engine = NodeEngine(node, fd, pipeline, fast_path=self.fast_path and self.proxy_mode != "ipvs")
            if self.proxy_mode == "ipvs":
                from dataplane.engine.ipvs_hook import attach
                from dataplane.proxy.ipvs.core import Ipvs, Sysctls

                engine.ipvs = Ipvs(pipeline.clock, Sysctls.kube_proxy())
                attach(pipeline, engine.ipvs)  # type: ignore[arg-type]
            self.engines[node.name] = engine
            # early demux would attach a node socket to its own replies (pod -> node), and a packet
            # with a socket attached is never forwarded (ip_forward drops it): they go via the TUN.
            _sysctls(node.netns, {"net.ipv4.tcp_early_demux": "0", "net.ipv4.udp_early_demux": "0",
                                  "net.ipv4.conf.all.send_redirects": "0", "net.ipv4.conf.all.route_localnet": "1",
                                  f"net.ipv6.conf.{TUN_NAME}.disable_ipv6": "1",
                                  f"net.ipv4.conf.{TUN_NAME}.accept_local": "1",
                                  f"net.ipv4.conf.{TUN_NAME}.rp_filter": "0"})
            _ip_batch(node, [f"link set {TUN_NAME} up", *steering_rules(node, self.cluster_cidr, self.service_cidr, ext)])
            engine.start()

    def render(self, topology: Topology, node: NodePlan, endpoints: dict[str, list[ServicePortEndpoints]]) -> str:
        """The whole rule set kube-proxy would have in the node's kernel after this sync: iptables-restore
        text with the jumps from the built-in chains, or the `ip kube-proxy` nft table."""
        from dataplane.proxy.model import NodeContext, build_state

        ctx = NodeContext(node.name, (node.ip,), (self.cluster_cidr,), masquerade_all=self.masquerade_all)
        state = build_state(cluster_model.cluster(topology, endpoints), ctx)
        if self.proxy_mode == "nftables":
            from dataplane.proxy.nftables.generator import NftOptions, generate as generate_nft

            return generate_nft(state, NftOptions(service_cidrs=(self.service_cidr,)))
        from dataplane.proxy.iptables.generator import GeneratorOptions, generate

        rs = generate(state, GeneratorOptions(layout=self.layout, jump_rules=True))
        self.last_stats[node.name] = rs.stats()
        return rs.text()

    def render_ipvs(self, topology: Topology, node: NodePlan, endpoints: dict[str, list[ServicePortEndpoints]]):  # type: ignore[no-untyped-def]
        """kube-proxy's IPVS proxier for this node: its iptables rules and ipsets as the pipeline's
        ruleset, its virtual servers, and the addresses it would put on kube-ipvs0."""
        import ipaddress

        from dataplane.proxy.ipvs.generator import IpvsOptions, generate
        from dataplane.proxy.ipvs.pipeline import iptables_ruleset as ipvs_ruleset
        from dataplane.proxy.model import NodeContext, build_state

        ctx = NodeContext(node.name, (node.ip,), (self.cluster_cidr,), masquerade_all=self.masquerade_all)
        layout = generate(build_state(cluster_model.cluster(topology, endpoints), ctx),
                          IpvsOptions(scheduler=self.ipvs_scheduler))
        ruleset = ipvs_ruleset(layout)
        evaluator = _evaluator(ruleset)
        if evaluator is not None:
            evaluator.trace_enabled = False
        self.last_stats[node.name] = layout.stats()
        return ruleset, layout.services, {ipaddress.ip_address(a) for a in layout.dummy_addresses}

    def sync(self, topology: Topology, endpoints: dict[str, list[ServicePortEndpoints]]) -> None:
        t0 = time.monotonic()
        for node in topology.nodes:
            engine = self.engines[node.name]
            isolate_pod_ports(node)
            model = read_node(node.netns)
            services = None
            try:
                if self.proxy_mode == "ipvs":
                    ruleset, services, vips = self.render_ipvs(topology, node, endpoints)
                    model.extra_local |= vips      # kube-ipvs0: the virtual IPs are local to the engine's node
                else:
                    ruleset = _ruleset(self.proxy_mode, self.render(topology, node, endpoints))
            except ModelError as exc:
                raise EmulatedError(f"rules for node {node.name}: {exc}") from None
            engine.update(model, ruleset, services)
        self.syncs += 1
        self.sync_seconds += time.monotonic() - t0

    def tracer(self, client_ip: str) -> EngineTrace:
        return EngineTrace(self.engines, client_ip)

    def close(self) -> None:
        for engine in self.engines.values():
            if engine.stopped_at is None:
                engine.stop()

    def describe(self) -> dict:
        return {"dataplane": "emulated", "proxyMode": self.proxy_mode, "layout": self.layout, "syncs": self.syncs,
                "syncSeconds": round(self.sync_seconds, 3), "ruleStats": self.last_stats,
                "symmetry": "pod-sourced traffic and service destinations policy-routed through the engine; "
                            "pod ports isolated with proxy ARP on cni0 (client sources preserved)",
                "engines": {name: e.describe() for name, e in self.engines.items()}}


def _evaluator(ruleset):  # type: ignore[no-untyped-def]
    """The rule evaluator inside a pipeline ruleset (whose `trace_enabled` tracing switches)."""
    inner = getattr(ruleset, "inner", ruleset)   # ipvs: AddressCachingRuleset around the iptables one
    return getattr(inner, "evaluator", None)


def _ruleset(proxy_mode: str, text: str):  # type: ignore[no-untyped-def]
    """The generated text as the pipeline's ruleset; per-rule trace steps only while tracing.

    nftables: the whole table is reloaded on every sync, so the contents of kube-proxy's dynamic
    sets (sessionAffinity's `update @affinity-...`) start empty again after each sync (the kernel
    keeps them across kube-proxy's partial transactions)."""
    if proxy_mode == "nftables":
        from dataplane.engine.nft_eval import NftEvaluator, NftRuleset
        from dataplane.proxy.nftables.parser import parse as parse_nft

        return NftRuleset(NftEvaluator(parse_nft(text), trace=False))
    from dataplane.engine.iptables_eval import IptablesEvaluator
    from dataplane.engine.pipeline import IptablesRuleset
    from dataplane.proxy.iptables.parser import parse

    parsed = parse(text, family=4)
    return IptablesRuleset(IptablesEvaluator(parsed, trace=False), tuple(parsed.tables))


@dataclass
class EngineTrace:
    """`--trace` on the emulated dataplane: the engine's own rule-by-rule path of every packet the
    client sends (its flows skip the flow cache meanwhile), per node, like `nft monitor trace`."""

    engines: dict[str, NodeEngine]
    client_ip: str

    def start(self) -> None:
        import socket

        for e in self.engines.values():
            with e.lock:
                e.trace_lines = []
                e.trace_source = socket.inet_aton(self.client_ip)

    def stop(self) -> dict[str, list[str]]:
        out = {}
        for name, e in self.engines.items():
            with e.lock:
                e.trace_source = None
                out[name] = e.trace_lines[:MAX_TRACE_LINES]
                e.trace_lines = []
        return out


def isolate_pod_ports(node: NodePlan) -> None:
    """Route same-node pod traffic through the node: isolated ports, proxy ARP on cni0 (idempotent)."""
    links = json.loads(namespace.run(node.netns, ["ip", "-j", "link", "show", "master", POD_BRIDGE],
                                     check=False).stdout or "[]")
    if not links:
        return
    _sysctls(node.netns, {f"net.ipv4.conf.{POD_BRIDGE}.proxy_arp": "1",
                          f"net.ipv4.conf.{POD_BRIDGE}.proxy_arp_pvlan": "1",
                          f"net.ipv4.neigh.{POD_BRIDGE}.proxy_delay": "0"})
    _ip_batch(node, [f"link set dev {ln['ifname']} type bridge_slave isolated on" for ln in links], )


def _sysctls(netns: str, values: dict[str, str]) -> None:
    with namespace.entered(netns):
        for key, value in values.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)


def _ip_batch(node: NodePlan, lines: list[str]) -> None:
    res = namespace.run(node.netns, ["ip", "-batch", "-"], input="\n".join(lines) + "\n", check=False)
    if res.returncode != 0:
        raise EmulatedError(f"node {node.name}: `ip -batch` failed: {res.stderr.strip()[:400]}")
