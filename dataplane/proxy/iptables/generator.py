"""kube-proxy's iptables mode: the proxy model -> the iptables-restore input kube-proxy writes.

`layout="modern"` follows `syncProxyRules` of current kube-proxy (v1.30+: KUBE-SVC/SVL/EXT/FW/SEP
chains, filter KUBE-PROXY-FIREWALL, masquerade check inside KUBE-SVC-*), line for line, including
large-cluster mode (no per-endpoint comments above 1000 endpoints) and partial sync (only the
chains of changed services). `layout="classic"` is the pre-1.21 layout (see `classic.py`).

Upstream prints the rules of a Go map in random order; we sort service ports by name unless
`service_order="random"` (seeded) is asked for, so that output is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from dataplane.k8s.errors import ModelError
from dataplane.k8s.loader import gc_paused
from dataplane.proxy.iptables import names
from dataplane.proxy.iptables.ruleset import RuleSet
from dataplane.proxy.model import (Categorized, EndpointInfo, NodeContext, ProxyState, ServicePortInfo,
                                   categorize_endpoints)

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"  # kubelet's chain; kube-proxy writes its localnet rule
NFACCT_LOCALHOST_NODEPORTS = "localhost_nps_accepted_pkts"
NFACCT_INVALID_DROPPED = "ct_state_invalid_dropped_pkts"
NODEPORTS_TAIL_COMMENT = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'

LAYOUTS = ("modern", "classic")
SERVICE_ORDERS = ("sorted", "random")

# (table, kube chain, base chain, comment, extra match) as iptablesJumpChains lists them.
JUMP_CHAINS = (
    ("filter", KUBE_EXTERNAL_SERVICES, "INPUT", "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_EXTERNAL_SERVICES, "FORWARD", "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_NODEPORTS, "INPUT", "kubernetes health check service ports", ""),
    ("filter", KUBE_SERVICES, "FORWARD", "kubernetes service portals", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", KUBE_PROXY_FIREWALL, "INPUT", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_PROXY_FIREWALL, "OUTPUT", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", ""),
    ("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals", ""),
    ("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules", ""),
    # kubelet's jumps, which kube-proxy also ensures
    ("filter", KUBE_FIREWALL, "INPUT", "", ""),
    ("filter", KUBE_FIREWALL, "OUTPUT", "", ""),
)


@dataclass(frozen=True)
class GeneratorOptions:
    """kube-proxy settings that change the text but are not about the node.

    random_fully: iptables supports `--random-fully` (true on any current system).
    nfacct: kube-proxy could create its nfacct counters (then the INVALID-drop and localhost
        NodePort rules carry `-m nfacct`); off by default because loading such rules needs the
        counters to exist (`nfacct add`) in the target namespace.
    conntrack_tcp_be_liberal: the sysctl is set, so no INVALID-drop rule.
    jump_rules: also write the jumps from the built-in chains that kube-proxy installs with
        `iptables -I` (not part of its restore input), so the text stands alone.
    """

    layout: str = "modern"
    random_fully: bool = True
    nfacct: bool = False
    conntrack_tcp_be_liberal: bool = False
    service_order: str = "sorted"
    seed: int | None = None
    jump_rules: bool = False
    large_cluster_threshold: int = 1000

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ModelError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}",
                             field="layout")
        if self.service_order not in SERVICE_ORDERS:
            raise ModelError(f"unknown service order {self.service_order!r}", field="service-order")


@lru_cache(maxsize=4096)
def probability(n: int) -> str:
    """computeProbability: fmt.Sprintf("%0.10f", 1.0/float64(n)) (cached, as kube-proxy does)."""
    return f"{1.0 / n:.10f}"


def ordered_service_ports(state: ProxyState, options: GeneratorOptions) -> list[ServicePortInfo]:
    ports = sorted(state.service_ports.values(), key=lambda s: (str(s.name), s.protocol))
    if options.service_order == "random":
        random.Random(options.seed).shuffle(ports)
    return ports


def generate(state: ProxyState, options: GeneratorOptions | None = None, *,
             changed: set[str] | None = None, existing_chains: Iterable[str] = (),
             previous: RuleSet | None = None) -> RuleSet:
    """One sync. `changed` (service keys "ns/name") makes it a partial sync: only those services'
    SVC/SVL/EXT/FW/SEP chains are written. `existing_chains` are the nat chains already in the
    kernel; per-service ones no longer needed are flushed and deleted (`-X`). `previous` is the
    last sync's result for the same node: unchanged services reuse its chain list and rule count."""
    options = options or GeneratorOptions()
    with gc_paused():  # hundreds of thousands of acyclic strings
        if options.layout == "classic":
            from dataplane.proxy.iptables.classic import generate_classic

            return generate_classic(state, options, existing_chains=existing_chains)
        return _Modern(state, options, changed, previous).run(existing_chains)


class _Modern:
    def __init__(self, state: ProxyState, options: GeneratorOptions, changed: set[str] | None,
                 previous: RuleSet | None = None) -> None:
        self.state = state
        self.previous = previous.per_service if previous is not None and changed is not None else {}
        self.ctx: NodeContext = state.context
        self.opt = options
        self.changed = changed
        self.rs = RuleSet(partial=changed is not None, family=self.ctx.family)
        self.mark = self.ctx.masquerade_mark
        cidr = self.ctx.local_cidr
        self.if_local = f"-s {cidr}" if cidr else None
        self.if_not_local = f"! -s {cidr}" if cidr else None
        self.ipv6 = self.ctx.ipv6
        # kube-proxy turns localhost NodePorts off for IPv6 and when --nodeport-addresses excludes 127/8.
        npa = self.ctx.nodeport_ips()
        self.localhost_nodeports = (self.ctx.localhost_nodeports and not self.ipv6
                                    and (npa is None or "127.0.0.1" in npa))
        self.large = state.total_endpoints > options.large_cluster_threshold

    def run(self, existing_chains: Iterable[str]) -> RuleSet:
        rs, mark = self.rs, self.mark
        rs.filter_chains += [KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS,
                             KUBE_PROXY_FIREWALL]
        rs.nat_chains += [KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ]
        nat = rs.nat_rules
        nat.append(f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN")
        nat.append(f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}")
        nat.append(f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" '
                   f"-j MASQUERADE" + (" --random-fully" if self.opt.random_fully else ""))
        nat.append(f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}")
        if self.localhost_nodeports:
            rs.filter_chains.append(KUBE_FIREWALL)
            rs.filter_rules.append(
                f'-A {KUBE_FIREWALL} -m comment --comment "block incoming localnet connections" '
                "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")
        elif self.opt.jump_rules:
            rs.filter_chains.append(KUBE_FIREWALL)

        for svc in ordered_service_ports(self.state, self.opt):
            self.service(svc)

        self.delete_stale(existing_chains)
        self.nodeports_tail()
        self.forward_rules()
        if self.opt.jump_rules:
            rs.jump_rules = jump_rules()
        return rs

    # --- per service port ---------------------------------------------------------------------

    def service(self, svc: ServicePortInfo) -> None:
        rs, ctx = self.rs, self.ctx
        proto = svc.protocol.lower()
        name = str(svc.name)
        h = names.port_proto_hash(name, proto)
        cluster_chain, local_chain = names.SVC + h, names.SVL + h
        ext_chain, fw_chain = names.EXT + h, names.FW + h
        cat = categorize_endpoints(self.state.endpoints.get(svc.name, ()), svc, ctx.node_name, ctx.zone)
        uses_cluster_chain = bool(cat.cluster) and svc.uses_cluster_endpoints
        uses_local_chain = bool(cat.local) and svc.uses_local_endpoints
        has_endpoints = cat.has_any
        internal_chain, has_internal = cluster_chain, has_endpoints
        if svc.internal_policy_local:
            internal_chain = local_chain
            has_internal = has_internal and bool(cat.local)
        external_policy_chain, has_external = cluster_chain, has_endpoints
        if svc.external_policy_local:
            external_policy_chain = local_chain
            has_external = has_external and bool(cat.local)
        uses_ext_chain = has_endpoints and svc.externally_accessible
        uses_fw_chain = has_endpoints and bool(svc.load_balancer_vips) and bool(svc.load_balancer_source_ranges)
        lb_chain = fw_chain if uses_fw_chain else ext_chain

        if not has_endpoints:
            int_target = ext_target = "REJECT"
            int_comment = ext_comment = f'"{name} has no endpoints"'
        else:
            int_target = ext_target = ""
            int_comment = ext_comment = ""
            if not has_internal:
                int_target, int_comment = "DROP", f'"{name} has no local endpoints"'
            if not has_external:
                ext_target, ext_comment = "DROP", f'"{name} has no local endpoints"'

        filt, nat = rs.filter_rules, rs.nat_rules
        match = f"-m {proto} -p {proto}"
        dport = f"--dport {svc.port}"
        if has_internal:
            nat.append(f'-A {KUBE_SERVICES} -m comment --comment "{name} cluster IP" {match} '
                       f"-d {svc.cluster_ip} {dport} -j {internal_chain}")
        else:
            filt.append(f"-A {KUBE_SERVICES} -m comment --comment {int_comment} {match} "
                        f"-d {svc.cluster_ip} {dport} -j {int_target}")
        for ip in svc.external_ips:
            if has_endpoints:
                nat.append(f'-A {KUBE_SERVICES} -m comment --comment "{name} external IP" {match} '
                           f"-d {ip} {dport} -j {ext_chain}")
            if not has_external:
                filt.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} {match} "
                            f"-d {ip} {dport} -j {ext_target}")
        for ip in svc.load_balancer_vips:
            if has_endpoints:
                nat.append(f'-A {KUBE_SERVICES} -m comment --comment "{name} loadbalancer IP" {match} '
                           f"-d {ip} {dport} -j {lb_chain}")
            if uses_fw_chain:
                filt.append(f'-A {KUBE_PROXY_FIREWALL} -m comment --comment "{name} traffic not accepted by '
                            f'{fw_chain}" {match} -d {ip} {dport} -j DROP')
        if not has_external:
            for ip in svc.load_balancer_vips:
                filt.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} {match} "
                            f"-d {ip} {dport} -j {ext_target}")
        if svc.node_port:
            if has_endpoints:
                if self.localhost_nodeports and self.opt.nfacct:
                    nat.append(f"-A {KUBE_NODEPORTS} -m comment --comment {name} {match} -d 127.0.0.0/8 "
                               f"--dport {svc.node_port} -m nfacct --nfacct-name {NFACCT_LOCALHOST_NODEPORTS} "
                               f"-j {ext_chain}")
                nat.append(f"-A {KUBE_NODEPORTS} -m comment --comment {name} {match} "
                           f"--dport {svc.node_port} -j {ext_chain}")
            if not has_external:
                filt.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} "
                            f"-m addrtype --dst-type LOCAL {match} --dport {svc.node_port} -j {ext_target}")
        if svc.health_check_node_port:
            filt.append(f'-A {KUBE_NODEPORTS} -m comment --comment "{name} health check node port" '
                        f"-m tcp -p tcp --dport {svc.health_check_node_port} -j ACCEPT")

        if self.changed is not None and svc.name.service_key not in self.changed:
            # Partial sync, unchanged service: like kube-proxy's discard buffer, only count.
            known = self.previous.get(svc.name)
            if known is None:
                known = self.count_unchanged(svc, cat, h, proto, name, has_internal, has_external,
                                             uses_ext_chain, uses_fw_chain, uses_cluster_chain, uses_local_chain)
            rs.active_nat_chains.update(known[0])
            rs.skipped_nat_rules += known[1]
            rs.per_service[svc.name] = known
            return
        chains: list[str] = []
        rules: list[str] = []
        active = rs.active_nat_chains
        if has_internal:
            masq_args = f'-m comment --comment "{name} cluster IP" {match} -d {svc.cluster_ip} {dport}'
            if self.ctx.masquerade_all:
                rules.append(f"-A {internal_chain} {masq_args} -j {KUBE_MARK_MASQ}")
            elif self.if_not_local:
                rules.append(f"-A {internal_chain} {masq_args} {self.if_not_local} -j {KUBE_MARK_MASQ}")
        if uses_ext_chain:
            chains.append(ext_chain)
            if not svc.external_policy_local:
                rules.append(f'-A {ext_chain} -m comment --comment "masquerade traffic for {name} external '
                             f'destinations" -j {KUBE_MARK_MASQ}')
            else:
                if self.if_local:
                    rules.append(f'-A {ext_chain} -m comment --comment "pod traffic for {name} external '
                                 f'destinations" {self.if_local} -j {cluster_chain}')
                rules.append(f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {name} '
                             f'external destinations" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}')
                rules.append(f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {name} '
                             f'external destinations" -m addrtype --src-type LOCAL -j {cluster_chain}')
            if has_external:
                rules.append(f"-A {ext_chain} -j {external_policy_chain}")
        if uses_fw_chain:
            chains.append(fw_chain)
            fw_args = f'-A {fw_chain} -m comment --comment "{name} loadbalancer IP"'
            allow_from_node = False
            node_ip = self.ctx.node_ip
            for cidr in svc.load_balancer_source_ranges:
                rules.append(f"{fw_args} -s {cidr} -j {ext_chain}")
                if node_ip and _contains(cidr, node_ip):
                    allow_from_node = True
            if allow_from_node:
                for ip in svc.load_balancer_vips:
                    rules.append(f"{fw_args} -s {ip} -j {ext_chain}")
            rules.append(f'-A {fw_chain} -m comment --comment "other traffic to {name} will be dropped by '
                         f'{KUBE_PROXY_FIREWALL}"')
        sep_names = {ep.hostport: names.endpoint_chain(name, proto, ep.hostport) for ep in cat.all_reachable}
        for chain_used, chain, eps in ((uses_cluster_chain, cluster_chain, cat.cluster),
                                       (uses_local_chain, local_chain, cat.local)):
            if chain_used:
                chains.append(chain)
                self.endpoint_jumps(rules, name, svc, chain, eps, sep_names, proto)
        comment = "" if self.large else f" -m comment --comment {name}"
        affinity = svc.session_affinity_client_ip
        for ep in cat.all_reachable:
            sep = sep_names[ep.hostport]
            chains.append(sep)
            rules.append(f"-A {sep}{comment} -s {ep.ip} -j {KUBE_MARK_MASQ}")
            recent = f" -m recent --name {sep} --set" if affinity else ""
            rules.append(f"-A {sep}{comment}{recent} {match} -j DNAT --to-destination {ep.hostport}")
        active.update(chains)
        rs.nat_chains += chains
        rs.nat_rules += rules
        rs.per_service[svc.name] = (tuple(chains), len(rules))

    def count_unchanged(self, svc: ServicePortInfo, cat: Categorized, h: str, proto: str, name: str,
                        has_internal: bool, has_external: bool, uses_ext_chain: bool, uses_fw_chain: bool,
                        uses_cluster_chain: bool, uses_local_chain: bool) -> tuple[tuple[str, ...], int]:
        """The chains an unchanged service keeps (they stay active) and how many rules it has."""
        active: list[str] = []
        n = 1 if has_internal and (self.ctx.masquerade_all or self.if_not_local) else 0
        if uses_ext_chain:
            active.append(names.EXT + h)
            n += 1 if not svc.external_policy_local else (2 + (1 if self.if_local else 0))
            n += 1 if has_external else 0
        if uses_fw_chain:
            active.append(names.FW + h)
            node_ip = self.ctx.node_ip
            n += len(svc.load_balancer_source_ranges) + 1
            if node_ip and any(_contains(c, node_ip) for c in svc.load_balancer_source_ranges):
                n += len(svc.load_balancer_vips)
        per_endpoint = 2 if svc.session_affinity_client_ip else 1
        if uses_cluster_chain:
            active.append(names.SVC + h)
            n += per_endpoint * len(cat.cluster)
        if uses_local_chain:
            active.append(names.SVL + h)
            n += per_endpoint * len(cat.local)
        active += [names.endpoint_chain(name, proto, ep.hostport) for ep in cat.all_reachable]
        n += 2 * len(cat.all_reachable)
        return tuple(active), n

    def endpoint_jumps(self, rules: list[str], name: str, svc: ServicePortInfo, chain: str,
                       eps: list[EndpointInfo], sep_names: dict[str, str], proto: str) -> None:
        """writeServiceToEndpointRules: affinity checks, then the statistic cascade."""
        large = self.large
        if svc.session_affinity_client_ip:
            for ep in eps:
                sep = sep_names[ep.hostport]
                comment = "" if large else f' -m comment --comment "{name} -> {ep.hostport}"'
                rules.append(f"-A {chain}{comment} -m recent --name {sep} --rcheck --seconds "
                             f"{svc.sticky_max_age_seconds} --reap -j {sep}")
        last = len(eps) - 1
        for i, ep in enumerate(eps):
            comment = "" if large else f' -m comment --comment "{name} -> {ep.hostport}"'
            if i < last:
                rules.append(f"-A {chain}{comment} -m statistic --mode random --probability "
                             f"{probability(last + 1 - i)} -j {sep_names[ep.hostport]}")
            else:
                rules.append(f"-A {chain}{comment} -j {sep_names[ep.hostport]}")

    # --- tail ---------------------------------------------------------------------------------

    def delete_stale(self, existing_chains: Iterable[str]) -> None:
        rs = self.rs
        for chain in sorted(set(existing_chains) - rs.active_nat_chains):
            if names.is_service_chain(chain):
                rs.nat_chains.append(chain)
                rs.nat_rules.append(f"-X {chain}")
                rs.deleted_chains += 1

    def nodeports_tail(self) -> None:
        nat = self.rs.nat_rules
        ips = self.ctx.nodeport_ips()
        if ips is None:
            dest = "-m addrtype --dst-type LOCAL"
            if self.ipv6:
                dest += " ! -d ::1/128"
            elif not self.localhost_nodeports:
                dest += " ! -d 127.0.0.0/8"
            nat.append(f"-A {KUBE_SERVICES} -m comment --comment {NODEPORTS_TAIL_COMMENT} {dest} -j {KUBE_NODEPORTS}")
            return
        for ip in ips:
            if ip in ("127.0.0.1", "::1") and (self.ipv6 or not self.localhost_nodeports):
                continue
            nat.append(f"-A {KUBE_SERVICES} -m comment --comment {NODEPORTS_TAIL_COMMENT} -d {ip} -j {KUBE_NODEPORTS}")

    def forward_rules(self) -> None:
        filt, mark = self.rs.filter_rules, self.mark
        if not self.opt.conntrack_tcp_be_liberal:
            acct = f" -m nfacct --nfacct-name {NFACCT_INVALID_DROPPED}" if self.opt.nfacct else ""
            filt.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID{acct} -j DROP")
        filt.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" '
                    f"-m mark --mark {mark}/{mark} -j ACCEPT")
        filt.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
                    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")


def jump_rules() -> dict[str, list[str]]:
    """The rules kube-proxy prepends to the built-in chains, in the order prepending leaves them."""
    out: dict[str, list[str]] = {"filter": [], "nat": []}
    for table, dst, src, comment, extra in reversed(JUMP_CHAINS):
        parts = [f"-A {src}"]
        if extra:
            parts.append(extra)
        if comment:
            parts.append(f'-m comment --comment "{comment}"')
        parts.append(f"-j {dst}")
        out[table].append(" ".join(parts))
    # Prepending reverses the list order per base chain; group by base chain in a stable way.
    for table in out:
        out[table].sort(key=lambda r: r.split()[1])
    return out


def _contains(cidr: str, ip: str) -> bool:
    import ipaddress

    net = ipaddress.ip_network(cidr)
    addr = ipaddress.ip_address(ip)
    return addr.version == net.version and addr in net


__all__ = ["GeneratorOptions", "RuleSet", "generate", "jump_rules", "probability"]


def __getattr__(name: str) -> object:
    """`Syncer` and `changed_services` moved to `sync.py`; still importable from here."""
    if name in ("Syncer", "changed_services"):
        from dataplane.proxy.iptables import sync

        return getattr(sync, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
