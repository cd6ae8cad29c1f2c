"""kube-proxy's IPVS mode: the proxy model -> virtual servers, ipsets, kube-ipvs0 addresses and the
iptables rules the IPVS proxier still writes.

Follows kubernetes pkg/proxy/ipvs/proxier.go `syncProxyRules`, `syncEndpoint`,
`writeIptablesRules`, `acceptIPVSTraffic`, the tables `ipsetInfo`, `ipsetWithIptablesChain` and
`iptablesJumpChain`, and pkg/proxy/ipvs/ipset.go (set names and comments, `KUBE-6-` for IPv6):
- one virtual server per ClusterIP:port (address bound to kube-ipvs0), per externalIP (bound unless
  it is a node address), per LoadBalancer ingress IP (likewise), and per node IP x NodePort;
- the configured scheduler (rr by default); ClientIP affinity -> persistent with the sticky
  timeout; `mh` also gets FlagSourceHash (IP_VS_SVC_F_SCHED2, i.e. mh-port);
- real servers of weight 1: cluster endpoints, or with a Local policy the local ones, falling back
  to the cluster endpoints when there are none (kubernetes#97081) - unlike iptables/nftables mode;
- every ipset of `ipsetInfo` exists (empty ones too); entries as util/ipset `Entry.String()`.

Upstream iterates Go maps and sets (random order). We take service ports sorted by name and add
real servers in sorted "ip:port" order, so the kernel list (newest first) reads in reverse.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from dataplane.k8s.errors import ModelError
from dataplane.proxy.iptables.ruleset import RuleSet
from dataplane.proxy.ipvs import ipset as ipsets
from dataplane.proxy.ipvs import ipvsadm
from dataplane.proxy.ipvs.sched import SCHEDULERS
from dataplane.proxy.ipvs.sched.base import SVC_F_PERSISTENT, SVC_F_SCHED2
from dataplane.proxy.ipvs.service import IPVS_PROTOCOLS, ServiceTable, VirtualService
from dataplane.proxy.model import EndpointInfo, ProxyState, ServicePortInfo, categorize_endpoints

DUMMY_DEVICE = "kube-ipvs0"

# pkg/proxy/ipvs/ipset.go: name, type, comment (ipsetInfo order)
SETS: tuple[tuple[str, str, str], ...] = (
    ("KUBE-LOOP-BACK", "hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    ("KUBE-CLUSTER-IP", "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    ("KUBE-EXTERNAL-IP", "hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    ("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port", "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    ("KUBE-LOAD-BALANCER", "hash:ip,port", "Kubernetes service lb portal"),
    ("KUBE-LOAD-BALANCER-FW", "hash:ip,port",
     "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    ("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port",
     "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip",
     "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net",
     "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    ("KUBE-NODE-PORT-TCP", "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port", "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    ("KUBE-NODE-PORT-UDP", "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port", "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    ("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port",
     "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port",
     "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"),
    ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", "Kubernetes health check node port"),
    ("KUBE-IPVS-IPS", "hash:ip", "Addresses on the ipvs interface"),
)

# ipsetWithIptablesChain: (set, table, from chain, to, match type, protocol match)
SET_RULES: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("KUBE-LOOP-BACK", "nat", "KUBE-POSTROUTING", "MASQUERADE", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER", "nat", "KUBE-SERVICES", "KUBE-LOAD-BALANCER", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-LOCAL", "nat", "KUBE-LOAD-BALANCER", "RETURN", "dst,dst", ""),
    ("KUBE-NODE-PORT-LOCAL-TCP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "tcp"),
    ("KUBE-NODE-PORT-TCP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "tcp"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "udp"),
    ("KUBE-NODE-PORT-UDP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "udp"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "nat", "KUBE-NODE-PORT", "RETURN", "dst,dst", "sctp"),
    ("KUBE-NODE-PORT-SCTP-HASH", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst,dst", "sctp"),
    ("KUBE-LOAD-BALANCER-FW", "filter", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
)

NAT_CHAINS = ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ")
FILTER_CHAINS = ("KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL",
                 "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER")
# iptablesJumpChain, each installed with EnsureRule(Prepend, ...)
JUMPS: tuple[tuple[str, str, str, str], ...] = (
    ("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
    ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
    ("filter", "INPUT", "KUBE-NODE-PORT", "kubernetes health check rules"),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "INPUT", "KUBE-IPVS-FILTER", "kubernetes ipvs access filter"),
    ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", "kubernetes ipvs access filter"),
)


@dataclass(frozen=True)
class IpvsOptions:
    scheduler: str = "rr"  # --ipvs-scheduler
    random_fully: bool = True  # iptables has --random-fully

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ModelError(f"unknown IPVS scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}",
                             field="ipvs-scheduler")


@dataclass
class IpvsLayout:
    """One sync of the IPVS proxier, as the node would hold it."""

    family: int
    dummy_addresses: list[str] = field(default_factory=list)
    services: ServiceTable = field(default_factory=ServiceTable)
    sets: dict[str, ipsets.IpSet] = field(default_factory=dict)
    rules: RuleSet = field(default_factory=RuleSet)
    origin: dict[tuple[int, str, int], str] = field(default_factory=dict)  # VS key -> "ns/svc:port <kind>"

    def ipvsadm_save(self) -> str:
        return ipvsadm.save(self.services)

    def ipset_save(self) -> str:
        return ipsets.save(list(self.sets.values()))

    def iptables_restore(self) -> str:
        return self.rules.text()

    def text(self) -> str:
        """Everything, as `dataplane proxy rules --mode ipvs` should print it: four sections, each
        in its tool's own format after a '#' header line (all four tools skip '#' lines)."""
        addrs = "".join(f"{a}\n" for a in self.dummy_addresses)
        return (f"# {DUMMY_DEVICE} addresses\n{addrs}# ipvsadm-save -n\n{self.ipvsadm_save()}"
                f"# ipset save\n{self.ipset_save()}# iptables-restore\n{self.iptables_restore()}")

    def stats(self) -> dict[str, object]:
        """Counts for `--stats`: virtual servers, real servers, set members, iptables rules."""
        services = list(self.services)
        return {"family": f"IPv{self.family}", "virtual_servers": len(services),
                "real_servers": sum(len(s.destinations) for s in services),
                "kube_ipvs0_addresses": len(self.dummy_addresses),
                "ipset_members": {s.name: len(s.members) for s in self.sets.values() if s.members},
                "iptables": self.rules.stats()}


def set_name(name: str, family: int) -> str:
    """ipset.go newIPSet(): "KUBE-" -> "KUBE-6-" for IPv6, cut to 31 characters."""
    if family == 6 and name.startswith("KUBE-"):
        return ("KUBE-6-" + name[5:])[:31]
    return name



class _Generator:
    def __init__(self, state: ProxyState, options: IpvsOptions) -> None:
        self.state = state
        self.ctx = state.context
        self.options = options
        self.family = self.ctx.family
        self.layout = IpvsLayout(self.family)
        fam = "inet6" if self.family == 6 else "inet"
        for name, type_, _comment in SETS:
            real = set_name(name, self.family)
            self.layout.sets[name] = ipsets.IpSet(real, type_, family=fam)
        self.bound: list[str] = []
        self.no_node_access: list[tuple[str, str, int]] = []
        self.node_addresses = {str(ipaddress.ip_address(ip)) for ip in self.ctx.node_ips}

    # -- helpers ---------------------------------------------------------------------------
    def _add(self, set_key: str, entry: str) -> None:
        self.layout.sets[set_key].add(entry)

    def _node_ips(self) -> list[str]:
        chosen = self.ctx.nodeport_ips()
        if chosen is None:
            chosen = [ip for ip in self.ctx.node_ips if ipaddress.ip_address(ip).version == self.family]
        return [ip for ip in chosen if not ipaddress.ip_address(ip).is_loopback]

    def _virtual_server(self, info: ServicePortInfo, addr: str, port: int, kind: str,
                        bind: bool, only_local: bool) -> None:
        flags = 0
        timeout = 0
        if info.session_affinity_client_ip:
            flags |= SVC_F_PERSISTENT
            timeout = info.sticky_max_age_seconds
        if self.options.scheduler == "mh":
            flags |= SVC_F_SCHED2
        proto = IPVS_PROTOCOLS[info.protocol.lower()]
        vs = VirtualService(proto, ipaddress.ip_address(addr), port, self.options.scheduler, flags, timeout,
                            32 if self.family == 4 else 128)
        if self.layout.services.find(vs.proto, vs.addr, vs.port) is not None:
            return  # the same VS from another service port: syncService sees it exists
        self.layout.services.add(vs)
        self.layout.origin[(proto, str(vs.addr), port)] = f"{info.name} {kind}"
        if bind and addr not in self.bound:
            self.bound.append(addr)
        for ep in sorted(self._endpoints(info, only_local), key=str):
            vs.add_dest(ep.ip, ep.port, 1)

    def _endpoints(self, info: ServicePortInfo, only_local: bool) -> list[EndpointInfo]:
        """syncEndpoint(): local endpoints when asked and present, else the cluster ones."""
        eps = self.state.endpoints.get(info.name, [])
        cat = categorize_endpoints(eps, info, self.ctx.node_name, self.ctx.zone)
        if only_local:
            return cat.local if cat.local else cat.cluster
        return cat.cluster

    # -- the sync --------------------------------------------------------------------------
    def run(self) -> IpvsLayout:
        ports = sorted(self.state.service_ports.values(), key=lambda s: (str(s.name), s.protocol))
        node_ips = self._node_ips() if any(p.node_port for p in ports) else []
        for info in ports:
            self._service_port(info, node_ips)
        self.layout.dummy_addresses = list(self.bound)
        for addr in self.bound:
            self._add("KUBE-IPVS-IPS", addr)
        self._iptables()
        return self.layout

    def _service_port(self, info: ServicePortInfo, node_ips: list[str]) -> None:
        proto = info.protocol.lower()
        for ep in self.state.endpoints.get(info.name, []):
            if ep.is_local:
                self._add("KUBE-LOOP-BACK", f"{ep.ip},{proto}:{ep.port},{ep.ip}")
        self._add("KUBE-CLUSTER-IP", f"{info.cluster_ip},{proto}:{info.port}")
        self._virtual_server(info, info.cluster_ip, info.port, "cluster IP", True, info.internal_policy_local)
        for ext in info.external_ips:
            key = "KUBE-EXTERNAL-IP-LOCAL" if info.external_policy_local else "KUBE-EXTERNAL-IP"
            self._add(key, f"{ext},{proto}:{info.port}")
            self._virtual_server(info, ext, info.port, "external IP", ext not in self.node_addresses,
                                 info.external_policy_local)
        for lb in info.load_balancer_vips:
            entry = f"{lb},{proto}:{info.port}"
            self._add("KUBE-LOAD-BALANCER", entry)
            if info.external_policy_local:
                self._add("KUBE-LOAD-BALANCER-LOCAL", entry)
            if info.load_balancer_source_ranges:
                self._add("KUBE-LOAD-BALANCER-FW", entry)
                node_ip = self.ctx.node_ip
                allow_from_node = False
                for cidr in info.load_balancer_source_ranges:
                    self._add("KUBE-LOAD-BALANCER-SOURCE-CIDR", f"{lb},{proto}:{info.port},{cidr}")
                    if node_ip and ipaddress.ip_address(node_ip) in ipaddress.ip_network(cidr, strict=False):
                        allow_from_node = True
                if allow_from_node:
                    self._add("KUBE-LOAD-BALANCER-SOURCE-IP", f"{lb},{proto}:{info.port},{lb}")
                else:
                    self.no_node_access.append((lb, proto, info.port))
            self._virtual_server(info, lb, info.port, "load balancer", lb not in self.node_addresses,
                                 info.external_policy_local)
        if info.node_port and node_ips:
            if proto == "sctp":
                entries = [f"{ip},sctp:{info.node_port}" for ip in node_ips]
                plain, local = "KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
            else:
                entries = [str(info.node_port)]
                plain, local = f"KUBE-NODE-PORT-{proto.upper()}", f"KUBE-NODE-PORT-LOCAL-{proto.upper()}"
            for e in entries:
                self._add(plain, e)
                if info.external_policy_local:
                    self._add(local, e)
            for ip in node_ips:
                self._virtual_server(info, ip, info.node_port, "node port", False, info.external_policy_local)
        if info.health_check_node_port:
            self._add("KUBE-HEALTH-CHECK-NODE-PORT", str(info.health_check_node_port))

    # -- writeIptablesRules ----------------------------------------------------------------
    def _comment(self, key: str) -> str:
        return next(f'"{c}"' for n, _, c in SETS if n == key)

    def _iptables(self) -> None:
        rs = RuleSet(family=self.family)
        rs.nat_chains = list(NAT_CHAINS)
        rs.filter_chains = list(FILTER_CHAINS)
        sets = self.layout.sets
        name = {k: s.name for k, s in sets.items()}
        mark = f"{1 << self.ctx.masquerade_bit:#08x}"
        nat, flt = rs.nat_rules, rs.filter_rules
        lo = "::1/128" if self.family == 6 else "127.0.0.0/8"
        nat.append(f"-A KUBE-SERVICES -s {lo} -j RETURN")
        for key, table, src, to, match, proto in SET_RULES:
            if not sets[key].members:
                continue
            p = f" -p {proto}" if proto else ""
            line = (f"-A {src}{p} -m comment --comment {self._comment(key)} -m set --match-set {name[key]} "
                    f"{match} -j {to}")
            (flt if table == "filter" else nat).append(line)
        if sets["KUBE-CLUSTER-IP"].members:
            base = (f"-A KUBE-SERVICES -m comment --comment {self._comment('KUBE-CLUSTER-IP')} "
                    f"-m set --match-set {name['KUBE-CLUSTER-IP']}")
            cidr = self.ctx.local_cidr
            if self.ctx.masquerade_all:
                nat.append(f"{base} dst,dst -j KUBE-MARK-MASQ")
            elif cidr:
                nat.append(f"{base} dst,dst ! -s {cidr} -j KUBE-MARK-MASQ")
            else:
                nat.append(f"{base} src,dst -j KUBE-MARK-MASQ")
        for key, masq in (("KUBE-EXTERNAL-IP", True), ("KUBE-EXTERNAL-IP-LOCAL", False)):
            if not sets[key].members:
                continue
            base = f"-A KUBE-SERVICES -m comment --comment {self._comment(key)} -m set --match-set {name[key]} dst,dst"
            if masq:
                nat.append(f"{base} -j KUBE-MARK-MASQ")
            nat.append(f"{base} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
            nat.append(f"{base} -m addrtype --dst-type LOCAL -j ACCEPT")
        nat.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
        nat.append("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ")
        flt.append("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP")
        for ip, proto, port in self.no_node_access:
            flt.append(f"-A KUBE-IPVS-OUT-FILTER -s {ip} -m ipvs --vaddr {ip} --vproto {proto} --vport {port} -j DROP")
        for key in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):
            if sets[key].members:
                nat.append(f"-A KUBE-SERVICES -m set --match-set {name[key]} dst,dst -j ACCEPT")
        flt.append(f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT')
        flt.append('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
                   "--ctstate RELATED,ESTABLISHED -j ACCEPT")
        flt.append(f"-A KUBE-NODE-PORT -m comment --comment {self._comment('KUBE-HEALTH-CHECK-NODE-PORT')} "
                   f"-m set --match-set {name['KUBE-HEALTH-CHECK-NODE-PORT']} dst -j ACCEPT")
        for key, match in (("KUBE-LOAD-BALANCER", "dst,dst"), ("KUBE-CLUSTER-IP", "dst,dst"),
                           ("KUBE-EXTERNAL-IP", "dst,dst"), ("KUBE-EXTERNAL-IP-LOCAL", "dst,dst"),
                           ("KUBE-HEALTH-CHECK-NODE-PORT", "dst")):
            flt.append(f"-A KUBE-IPVS-FILTER -m set --match-set {name[key]} {match} -j RETURN")
        flt.append(f"-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set {name['KUBE-IPVS-IPS']} dst -j REJECT")
        nat.append(f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN")
        nat.append(f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}")
        fully = " --random-fully" if self.options.random_fully else ""
        nat.append(f'-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE{fully}')
        nat.append(f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}")
        rs.jump_rules = _jump_rules()
        self.layout.rules = rs


def _jump_rules() -> dict[str, list[str]]:
    """The built-in chain jumps, in the order repeated EnsureRule(Prepend) leaves them."""
    out: dict[str, list[str]] = {"nat": [], "filter": []}
    by_chain: dict[tuple[str, str], list[str]] = {}
    for table, chain, to, comment in JUMPS:
        by_chain.setdefault((table, chain), []).insert(0, f'-A {chain} -m comment --comment "{comment}" -j {to}')
    for (table, _chain), lines in by_chain.items():
        out[table].extend(lines)
    return out


def generate(state: ProxyState, options: IpvsOptions | None = None) -> IpvsLayout:
    """One IPVS-proxier sync for the node in `state.context`."""
    return _Generator(state, options or IpvsOptions()).run()
