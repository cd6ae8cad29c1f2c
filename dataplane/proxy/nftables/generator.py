"""kube-proxy's nftables mode: the proxy model -> the `nft -f` transaction kube-proxy runs.

Follows kubernetes pkg/proxy/nftables/proxier.go (`setupNFTables`, `syncProxyRules`,
`writeServiceToEndpointRules`), written in the command form kube-proxy's knftables sends to nft
(`add table`, `add chain`, `add rule`, `add element`). One table per IP family (`ip kube-proxy` /
`ip6 kube-proxy`); dispatch through the `service-ips` and `service-nodeports` verdict maps, one
`numgen random mod N vmap` per service chain, one DNAT per endpoint chain.

Differences from upstream, on purpose:
- Priorities are written as numbers (-110, -90, -100, 100): the nft here (1.0.6) refuses
  `dstnat-10` outside prerouting; the values are the same.
- Upstream walks Go maps (random order); we sort service ports by name, so output is reproducible.
- Chains are declared before the rules that use them, as one nft transaction requires.
`changes()` produces kube-proxy's partial sync: only changed services' chains, element diffs, and
flush + delete for chains no longer used.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass, field

from dataplane.proxy.model import EndpointInfo, ProxyState, ServicePortInfo, categorize_endpoints
from dataplane.proxy.nftables.ast import Ruleset

TABLE = "kube-proxy"
CHAIN_NAME_MAX = 256 - 16  # chainNameBaseLengthMax

# (name, type, hook, priority): nftablesBaseChains (dstnat = -100, srcnat = 100)
BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)
# (destination, source, extra match): nftablesJumpChains, in upstream order
JUMP_CHAINS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
)
MAPS = (  # (name, key, comment)
    ("no-endpoint-services", "{addr} . inet_proto . inet_service : verdict",
     "vmap to drop or reject packets to services with no endpoints"),
    ("no-endpoint-nodeports", "inet_proto . inet_service : verdict",
     "vmap to drop or reject packets to service nodeports with no endpoints"),
    ("firewall-ips", "{addr} . inet_proto . inet_service : verdict",
     "destinations that are subject to LoadBalancerSourceRanges"),
    ("service-ips", "{addr} . inet_proto . inet_service : verdict", "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    ("service-nodeports", "inet_proto . inet_service : verdict", "NodePort traffic"),
)
ELEMENT_CONTAINERS = ("cluster-ips", "service-ips", "firewall-ips", "no-endpoint-services", "no-endpoint-nodeports",
                      "service-nodeports")


def hash_and_truncate(name: str) -> str:
    """base32(sha256(name))[:8] + "-" + name, cut to 240 characters with "..." (hashAndTruncate)."""
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8]
    out = f"{digest}-{name}"
    return out[:CHAIN_NAME_MAX - 3] + "..." if len(out) > CHAIN_NAME_MAX else out


def service_chain_base(svc: ServicePortInfo) -> str:
    n = svc.name
    return hash_and_truncate(f"{n.namespace}/{n.name}/{svc.protocol.lower()}/{n.port}")


def endpoint_chain_base(svc: ServicePortInfo, ep: EndpointInfo) -> str:
    n = svc.name
    ip = ep.ip.replace(":", ".")
    return hash_and_truncate(f"{n.namespace}/{n.name}/{svc.protocol.lower()}/{n.port}__{ip}/{ep.port}")


@dataclass(frozen=True)
class NftOptions:
    """kube-proxy flags that change the rules but are not about the node.

    service_cidrs: --service-cluster-ip-range (ServiceCIDRs); traffic to unallocated IPs in them is
    dropped. Empty: no such rule, as upstream.
    """

    service_cidrs: tuple[str, ...] = ()


@dataclass
class Transaction:
    """Lines of one `nft -f` transaction, grouped so that every object exists before it is used."""

    setup: list[str] = field(default_factory=list)  # table, sets, maps, chains (add/flush/delete)
    rules: list[str] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)
    cleanup: list[str] = field(default_factory=list)  # deletes of stale chains and sets, last

    def text(self) -> str:
        return "".join(line + "\n" for line in self.setup + self.rules + self.elements + self.cleanup)


@dataclass
class _ServiceOutput:
    """What one service port contributes: its chains with their rules, sets, and map elements."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    affinity_sets: dict[str, int] = field(default_factory=dict)  # name -> timeout seconds
    elements: dict[str, dict[str, str]] = field(default_factory=dict)  # container -> key -> "" | ": value"


class _Generator:
    def __init__(self, state: ProxyState, options: NftOptions) -> None:
        self.state, self.options = state, options
        ctx = state.context
        self.family = "ip6" if ctx.ipv6 else "ip"
        self.ipx = "ip6" if ctx.ipv6 else "ip"
        self.addr_type = "ipv6_addr" if ctx.ipv6 else "ipv4_addr"
        self.no_localhost = "ip6 daddr != ::1" if ctx.ipv6 else "ip daddr != 127.0.0.0/8"
        self.mark = f"{1 << ctx.masquerade_bit:#08x}"
        self.local_cidr = ctx.local_cidr
        self.nodeport_ips = ctx.nodeport_ips()  # None: every local address
        self.node_ip = ctx.node_ip
        self.prefix = f"{self.family} {TABLE}"

    # ------------------------------------------------------------ fixed part (setupNFTables)

    def setup(self, tx: Transaction) -> None:
        p = self.prefix
        tx.setup.append(f'add table {p} {{ comment "rules for kube-proxy" ; }}')
        for name, ctype, hook, prio in BASE_CHAINS:
            tx.setup.append(f"add chain {p} {name} {{ type {ctype} hook {hook} priority {prio} ; }}")
            tx.setup.append(f"flush chain {p} {name}")
        created: list[str] = []
        for dst, src, extra in JUMP_CHAINS:
            if dst not in created:
                created.append(dst)
                tx.setup.append(f"add chain {p} {dst}")
                tx.setup.append(f"flush chain {p} {dst}")
            tx.rules.append(f"add rule {p} {src} " + (f"{extra} " if extra else "") + f"jump {dst}")
        for name in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
            if name not in created:
                created.append(name)
                tx.setup.append(f"add chain {p} {name}")
                tx.setup.append(f"flush chain {p} {name}")
        tx.rules.append(f"add rule {p} mark-for-masquerade mark set mark or {self.mark}")
        tx.rules.append(f"add rule {p} masquerading mark and {self.mark} == 0 return")
        tx.rules.append(f"add rule {p} masquerading mark set mark xor {self.mark}")
        tx.rules.append(f"add rule {p} masquerading masquerade fully-random")
        tx.setup.append(f'add set {p} cluster-ips {{ type {self.addr_type} ; comment "Active ClusterIPs" ; }}')
        tx.rules.append(f'add rule {p} cluster-ips-check {self.ipx} daddr @cluster-ips reject '
                        'comment "Reject traffic to invalid ports of ClusterIPs"')
        cidrs = [c for c in self.options.service_cidrs
                 if ipaddress.ip_network(c, strict=False).version == self.state.context.family]
        if cidrs:
            tx.rules.append(f"add rule {p} cluster-ips-check {self.ipx} daddr {{ {', '.join(cidrs)} }} drop "
                            'comment "Drop traffic to unallocated ClusterIPs"')
        if self.nodeport_ips is not None:
            tx.setup.append(f'add set {p} nodeport-ips {{ type {self.addr_type} ; '
                            'comment "IPs that accept NodePort traffic" ; }')
            tx.setup.append(f"flush set {p} nodeport-ips")
            for ip in self.nodeport_ips:
                if not ipaddress.ip_address(ip).is_loopback:
                    tx.elements.append(f"add element {p} nodeport-ips {{ {ip} }}")
        for name, key, comment in MAPS:
            tx.setup.append(f'add map {p} {name} {{ type {key.format(addr=self.addr_type)} ; comment "{comment}" ; }}')
            tx.setup.append(f"flush map {p} {name}")
        tx.setup.append(f'add chain {p} reject-chain {{ comment "helper for @no-endpoint-services / '
                        '@no-endpoint-nodeports" ; }')
        tx.setup.append(f"flush chain {p} reject-chain")
        tx.rules.append(f"add rule {p} reject-chain reject")
        tx.rules.append(f"add rule {p} service-endpoints-check {self.ipx} daddr . meta l4proto . th dport "
                        "vmap @no-endpoint-services")
        if self.nodeport_ips is None:
            tx.rules.append(f"add rule {p} nodeport-endpoints-check {self.no_localhost} meta l4proto . th dport "
                            "vmap @no-endpoint-nodeports")
        else:
            tx.rules.append(f"add rule {p} nodeport-endpoints-check {self.ipx} daddr @nodeport-ips "
                            "meta l4proto . th dport vmap @no-endpoint-nodeports")
        tx.rules.append(f"add rule {p} firewall-check {self.ipx} daddr . meta l4proto . th dport vmap @firewall-ips")
        tx.rules.append(f"add rule {p} services {self.ipx} daddr . meta l4proto . th dport vmap @service-ips")
        if self.nodeport_ips is None:
            tx.rules.append(f"add rule {p} services fib daddr type local {self.no_localhost} "
                            "meta l4proto . th dport vmap @service-nodeports")
        else:
            tx.rules.append(f"add rule {p} services {self.ipx} daddr @nodeport-ips "
                            "meta l4proto . th dport vmap @service-nodeports")

    # ------------------------------------------------------------ per service (syncProxyRules)

    def service(self, svc: ServicePortInfo) -> _ServiceOutput:
        out = _ServiceOutput()
        ctx = self.state.context
        proto = svc.protocol.lower()
        cat = categorize_endpoints(self.state.endpoints.get(svc.name, ()), svc, ctx.node_name, ctx.zone)
        base = service_chain_base(svc)
        cluster_chain, local_chain = f"service-{base}", f"local-{base}"
        external_chain, fw_chain = f"external-{base}", f"firewall-{base}"
        name_string = str(svc.name)
        ipx = self.ipx

        def elem(container: str, key: str, value: str | None = None, comment: bool = False) -> None:
            text = (f' comment "{name_string}"' if comment else "") + (f" : {value}" if value else "")
            out.elements.setdefault(container, {})[key] = text

        def chain(name: str) -> list[str]:
            return out.chains.setdefault(name, [])

        ep_chains = {str(ep): f"endpoint-{endpoint_chain_base(svc, ep)}" for ep in cat.all_reachable}
        for ep in cat.all_reachable:
            chain(ep_chains[str(ep)])
            if svc.session_affinity_client_ip:
                out.affinity_sets[f"affinity-{endpoint_chain_base(svc, ep)}"] = svc.sticky_max_age_seconds
        uses_cluster = bool(cat.cluster) and svc.uses_cluster_endpoints
        if uses_cluster:
            chain(cluster_chain)
        uses_local = bool(cat.local) and svc.uses_local_endpoints
        if uses_local:
            chain(local_chain)
        has_endpoints = cat.has_any
        internal_chain, has_internal = cluster_chain, has_endpoints
        if svc.internal_policy_local:
            internal_chain = local_chain
            has_internal = has_internal and bool(cat.local)
        external_policy_chain, has_external = cluster_chain, has_endpoints
        if svc.external_policy_local:
            external_policy_chain = local_chain
            has_external = has_external and bool(cat.local)
        uses_external = has_endpoints and svc.externally_accessible
        if uses_external:
            chain(external_chain)
        internal_verdict = external_verdict = ""
        if not has_endpoints:
            internal_verdict = external_verdict = "goto reject-chain"
        else:
            if not has_internal:
                internal_verdict = "drop"
            if not has_external:
                external_verdict = "drop"

        key = f"{svc.cluster_ip} . {proto} . {svc.port}"
        elem("cluster-ips", svc.cluster_ip)
        if has_internal:
            elem("service-ips", key, f"goto {internal_chain}")
        else:
            elem("no-endpoint-services", key, internal_verdict, comment=True)
        for ip in svc.external_ips:
            if has_endpoints:
                elem("service-ips", f"{ip} . {proto} . {svc.port}", f"goto {external_chain}")
            if not has_external:
                elem("no-endpoint-services", f"{ip} . {proto} . {svc.port}", external_verdict, comment=True)
        uses_fw = bool(svc.load_balancer_vips) and bool(svc.load_balancer_source_ranges)
        if uses_fw:
            chain(fw_chain)
        for ip in svc.load_balancer_vips:
            if has_endpoints:
                elem("service-ips", f"{ip} . {proto} . {svc.port}", f"goto {external_chain}")
            if uses_fw:
                elem("firewall-ips", f"{ip} . {proto} . {svc.port}", f"goto {fw_chain}")
        if not has_external:
            for ip in svc.load_balancer_vips:
                elem("no-endpoint-services", f"{ip} . {proto} . {svc.port}", external_verdict, comment=True)
        if svc.node_port:
            if has_endpoints:
                elem("service-nodeports", f"{proto} . {svc.node_port}", f"goto {external_chain}")
            if not has_external:
                elem("no-endpoint-nodeports", f"{proto} . {svc.node_port}", external_verdict, comment=True)

        if has_internal:
            if ctx.masquerade_all:
                chain(internal_chain).append(f"{ipx} daddr {svc.cluster_ip} {proto} dport {svc.port} "
                                             "jump mark-for-masquerade")
            elif self.local_cidr:
                chain(internal_chain).append(f"{ipx} daddr {svc.cluster_ip} {proto} dport {svc.port} "
                                             f"{ipx} saddr != {self.local_cidr} jump mark-for-masquerade")
        if uses_external:
            rules = chain(external_chain)
            if not svc.external_policy_local:
                rules.append("jump mark-for-masquerade")
            else:
                if self.local_cidr:
                    rules.append(f'{ipx} saddr {self.local_cidr} goto {cluster_chain} '
                                 'comment "short-circuit pod traffic"')
                rules.append('fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"')
                rules.append(f'fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"')
            if has_external:
                rules.append(f"goto {external_policy_chain}")
        if uses_fw:
            sources = list(svc.load_balancer_source_ranges)
            if self.node_ip and any(ipaddress.ip_address(self.node_ip) in ipaddress.ip_network(c, strict=False)
                                    for c in svc.load_balancer_source_ranges):
                sources += list(svc.load_balancer_vips)
            chain(fw_chain).append(f"{ipx} saddr != {{ {', '.join(sources)} }} drop")
        if uses_cluster:
            self.endpoint_dispatch(chain(cluster_chain), svc, cat.cluster)
        if uses_local:
            self.endpoint_dispatch(chain(local_chain), svc, cat.local)
        for ep in cat.all_reachable:
            rules = chain(ep_chains[str(ep)])
            rules.append(f"{ipx} saddr {ep.ip} jump mark-for-masquerade")
            if svc.session_affinity_client_ip:
                rules.append(f"update @affinity-{endpoint_chain_base(svc, ep)} {{ {ipx} saddr }}")
            target = f"[{ep.ip}]:{ep.port}" if ":" in ep.ip else f"{ep.ip}:{ep.port}"
            rules.append(f"meta l4proto {proto} dnat to {target}")
        return out

    def endpoint_dispatch(self, rules: list[str], svc: ServicePortInfo, endpoints: list[EndpointInfo]) -> None:
        """writeServiceToEndpointRules: affinity lookups first, then one numgen vmap."""
        if svc.session_affinity_client_ip:
            for ep in endpoints:
                base = endpoint_chain_base(svc, ep)
                rules.append(f"{self.ipx} saddr @affinity-{base} goto endpoint-{base}")
        targets = " , ".join(f"{i} : goto endpoint-{endpoint_chain_base(svc, ep)}" for i, ep in enumerate(endpoints))
        rules.append(f"numgen random mod {len(endpoints)} vmap {{ {targets} }}")

    def write_service(self, tx: Transaction, out: _ServiceOutput, with_chains: bool = True) -> None:
        p = self.prefix
        if with_chains:
            for name, timeout in out.affinity_sets.items():
                tx.setup.append(f"add set {p} {name} {{ type {self.addr_type} ; flags dynamic,timeout ; "
                                f"timeout {timeout}s ; }}")
            for name, rules in out.chains.items():
                tx.setup.append(f"add chain {p} {name}")
                tx.setup.append(f"flush chain {p} {name}")
                tx.rules.extend(f"add rule {p} {name} {rule}" for rule in rules)

    def element_lines(self, container: str, key: str, tail: str) -> str:
        return f"add element {self.prefix} {container} {{ {key}{tail} }}"


def _ordered(state: ProxyState) -> list[ServicePortInfo]:
    return sorted(state.service_ports.values(), key=lambda s: (str(s.name), s.protocol))


def generate(state: ProxyState, options: NftOptions | None = None) -> str:
    """A full sync: the whole `nft -f` transaction for this state (one family)."""
    gen = _Generator(state, options or NftOptions())
    tx = Transaction()
    gen.setup(tx)
    for svc in _ordered(state):
        out = gen.service(svc)
        gen.write_service(tx, out)
        for container in ELEMENT_CONTAINERS:
            for key, tail in out.elements.get(container, {}).items():
                tx.elements.append(gen.element_lines(container, key, tail))
    return tx.text()


def generate_ruleset(state: ProxyState, options: NftOptions | None = None) -> Ruleset:
    """The full sync parsed into the AST (which also validates it)."""
    from dataplane.proxy.nftables.parser import parse_text

    return parse_text(generate(state, options))


def _outputs(state: ProxyState, options: NftOptions) -> tuple[_Generator, dict[str, _ServiceOutput]]:
    gen = _Generator(state, options)
    outputs: dict[str, _ServiceOutput] = {}
    for svc in _ordered(state):
        out = gen.service(svc)
        merged = outputs.setdefault(svc.name.service_key, _ServiceOutput())
        merged.chains.update(out.chains)
        merged.affinity_sets.update(out.affinity_sets)
        for container, elements in out.elements.items():
            merged.elements.setdefault(container, {}).update(elements)
    return gen, outputs


def changes(before: ProxyState, after: ProxyState, options: NftOptions | None = None) -> str:
    """kube-proxy's partial sync from `before` to `after`: the transaction that rewrites only the
    chains of services that changed, adds and deletes map/set elements by difference, and flushes
    and deletes the chains and affinity sets nothing uses any more."""
    options = options or NftOptions()
    gen_before, old = _outputs(before, options)
    gen, new = _outputs(after, options)
    p = gen.prefix
    tx = Transaction()
    old_fp, new_fp = before.service_fingerprints(), after.service_fingerprints()
    for key, out in new.items():
        if old_fp.get(key) != new_fp.get(key) or key not in old:
            gen.write_service(tx, out)
    old_elements = _all_elements(old)
    new_elements = _all_elements(new)
    for (container, key), tail in old_elements.items():
        if (container, key) not in new_elements or new_elements[(container, key)] != tail:
            tx.elements.append(f"delete element {p} {container} {{ {key} }}")
    for (container, key), tail in new_elements.items():
        if old_elements.get((container, key)) != tail:
            tx.elements.append(gen.element_lines(container, key, tail))
    old_chains = {c for out in old.values() for c in out.chains}
    new_chains = {c for out in new.values() for c in out.chains}
    for name in sorted(old_chains - new_chains):
        tx.setup.append(f"flush chain {p} {name}")
        tx.cleanup.append(f"delete chain {p} {name}")
    old_sets = {s for out in old.values() for s in out.affinity_sets}
    new_sets = {s for out in new.values() for s in out.affinity_sets}
    tx.cleanup.extend(f"delete set {p} {name}" for name in sorted(old_sets - new_sets))
    return tx.text()


def _all_elements(outputs: dict[str, _ServiceOutput]) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for out in outputs.values():
        for container, elements in out.elements.items():
            for key, tail in elements.items():
                found[(container, key)] = tail
    return found
