"""The pre-1.21 iptables layout (kube-proxy v1.20), kept for the "2N rules per new connection" benchmarks.

What differs from today's layout (PR kubernetes/kubernetes#96959 changed the first two):
- every ClusterIP puts two rules in nat KUBE-SERVICES: `! -s <clusterCIDR> ... -j KUBE-MARK-MASQ`,
  then `... -j KUBE-SVC-*`, so a first packet to the last service walks about 2N rules;
- NodePorts put a KUBE-MARK-MASQ rule and a jump per port in KUBE-NODEPORTS; externalIPs likewise;
- destinations are written as `/32` (`/128`) CIDRs, and probabilities of the statistic cascade
  with `%0.10f`;
- externalTrafficPolicy=Local uses a KUBE-XLB-* chain and LoadBalancer source ranges a KUBE-FW-*
  chain that ends in kubelet's KUBE-MARK-DROP (declared here so the text loads on its own);
- only ready endpoints are used (no terminating fallback, no KUBE-EXT/SVL/PROXY-FIREWALL chains).
This is reconstructed from the v1.20 proxier and its dumps; see the report for what is not verified.
"""

from __future__ import annotations

from collections.abc import Iterable

from dataplane.proxy.iptables import names
from dataplane.proxy.iptables.generator import (KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD,
                                                KUBE_MARK_MASQ, KUBE_NODEPORTS, KUBE_POSTROUTING,
                                                KUBE_SERVICES, NODEPORTS_TAIL_COMMENT,
                                                GeneratorOptions, jump_rules, ordered_service_ports,
                                                probability)
from dataplane.proxy.iptables.ruleset import RuleSet
from dataplane.proxy.model import ProxyState, ServicePortInfo

KUBE_MARK_DROP = "KUBE-MARK-DROP"
DROP_MARK = "0x8000"  # kubelet's --iptables-drop-bit default 15
XLB = "KUBE-XLB-"


def _cidr(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def generate_classic(state: ProxyState, options: GeneratorOptions, *,
                     existing_chains: Iterable[str] = ()) -> RuleSet:
    ctx = state.context
    rs = RuleSet(family=ctx.family)
    mark = ctx.masquerade_mark
    cidr = ctx.local_cidr
    large = state.total_endpoints > options.large_cluster_threshold
    rs.filter_chains += [KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_FIREWALL]
    rs.nat_chains += [KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ, KUBE_MARK_DROP]
    nat, filt = rs.nat_rules, rs.filter_rules
    # kubelet's chains of that era, so the text is self-contained.
    nat.append(f"-A {KUBE_MARK_DROP} -j MARK --or-mark {DROP_MARK}")
    filt.append(f'-A {KUBE_FIREWALL} -m comment --comment "kubernetes firewall for dropping marked packets" '
                f"-m mark --mark {DROP_MARK}/{DROP_MARK} -j DROP")
    nat.append(f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN")
    nat.append(f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}")
    nat.append(f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" '
               "-j MASQUERADE" + (" --random-fully" if options.random_fully else ""))
    nat.append(f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}")

    for svc in ordered_service_ports(state, options):
        _service(rs, state, svc, cidr, large)

    for chain in sorted(set(existing_chains) - rs.active_nat_chains):
        if names.is_service_chain(chain) or chain.startswith(XLB):
            rs.nat_chains.append(chain)
            nat.append(f"-X {chain}")
            rs.deleted_chains += 1
    ips = ctx.nodeport_ips()
    if ips is None:
        nat.append(f"-A {KUBE_SERVICES} -m comment --comment {NODEPORTS_TAIL_COMMENT} "
                   f"-m addrtype --dst-type LOCAL -j {KUBE_NODEPORTS}")
    else:
        for ip in ips:
            nat.append(f"-A {KUBE_SERVICES} -m comment --comment {NODEPORTS_TAIL_COMMENT} -d {_cidr(ip)} "
                       f"-j {KUBE_NODEPORTS}")
    filt.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP")
    filt.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" '
                f"-m mark --mark {mark}/{mark} -j ACCEPT")
    filt.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack pod source rule" '
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    filt.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack pod destination '
                'rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT')
    if options.jump_rules:
        rs.jump_rules = jump_rules()
        rs.jump_rules["filter"] = [r for r in rs.jump_rules["filter"] if "KUBE-PROXY-FIREWALL" not in r]
    return rs


def _service(rs: RuleSet, state: ProxyState, svc: ServicePortInfo, cidr: str | None, large: bool) -> None:
    ctx = state.context
    nat, filt = rs.nat_rules, rs.filter_rules
    proto = svc.protocol.lower()
    name = str(svc.name)
    h = names.port_proto_hash(name, proto)
    svc_chain, xlb_chain, fw_chain = names.SVC + h, XLB + h, names.FW + h
    endpoints = [ep for ep in state.endpoints.get(svc.name, ()) if ep.ready]
    has_endpoints = bool(endpoints)
    local_external = svc.external_policy_local
    match = f"-m {proto} -p {proto}"
    dport = f"--dport {svc.port}"
    not_local = f"! -s {cidr} " if cidr else ""
    if has_endpoints:
        rs.nat_chains.append(svc_chain)
        rs.active_nat_chains.add(svc_chain)
    if local_external:
        rs.nat_chains.append(xlb_chain)
        rs.active_nat_chains.add(xlb_chain)
    no_ep = f'-m comment --comment "{name} has no endpoints"'
    if has_endpoints:
        args = f'-A {KUBE_SERVICES} -m comment --comment "{name} cluster IP" {match} -d {_cidr(svc.cluster_ip)} {dport}'
        if ctx.masquerade_all:
            nat.append(f"{args} -j {KUBE_MARK_MASQ}")
        elif cidr:
            nat.append(f"{args} {not_local}-j {KUBE_MARK_MASQ}")
        nat.append(f"{args} -j {svc_chain}")
    else:
        filt.append(f"-A {KUBE_SERVICES} {no_ep} {match} -d {_cidr(svc.cluster_ip)} {dport} -j REJECT")
    for ip in svc.external_ips:
        if has_endpoints:
            args = f'-A {KUBE_SERVICES} -m comment --comment "{name} external IP" {match} -d {_cidr(ip)} {dport}'
            dest = xlb_chain
            if not local_external:
                dest = svc_chain
                nat.append(f"{args} {not_local}-j {KUBE_MARK_MASQ}")
            nat.append(f"{args} -j {dest}")
        else:
            filt.append(f"-A {KUBE_EXTERNAL_SERVICES} {no_ep} {match} -d {_cidr(ip)} {dport} -j REJECT")
    for ip in svc.load_balancer_vips:
        if has_endpoints:
            if fw_chain not in rs.active_nat_chains:
                rs.nat_chains.append(fw_chain)
                rs.active_nat_chains.add(fw_chain)
            nat.append(f'-A {KUBE_SERVICES} -m comment --comment "{name} loadbalancer IP" {match} '
                       f"-d {_cidr(ip)} {dport} -j {fw_chain}")
            args = f'-A {fw_chain} -m comment --comment "{name} loadbalancer IP"'
            chosen = xlb_chain
            if not local_external:
                nat.append(f"{args} -j {KUBE_MARK_MASQ}")
                chosen = svc_chain
            if not svc.load_balancer_source_ranges:
                nat.append(f"{args} -j {chosen}")
            else:
                node_ip = ctx.node_ip
                allow = False
                for rng in svc.load_balancer_source_ranges:
                    nat.append(f"{args} -s {rng} -j {chosen}")
                    if node_ip and _contains(rng, node_ip):
                        allow = True
                if allow:
                    nat.append(f"{args} -s {_cidr(ip)} -j {chosen}")
            nat.append(f"{args} -j {KUBE_MARK_DROP}")
        else:
            filt.append(f"-A {KUBE_EXTERNAL_SERVICES} {no_ep} {match} -d {_cidr(ip)} {dport} -j REJECT")
    if svc.node_port:
        if has_endpoints:
            args = f"-A {KUBE_NODEPORTS} -m comment --comment {name} {match} --dport {svc.node_port}"
            if not local_external:
                nat.append(f"{args} -j {KUBE_MARK_MASQ}")
                nat.append(f"{args} -j {svc_chain}")
            else:
                loopback = "::1/128" if ctx.ipv6 else "127.0.0.0/8"
                nat.append(f"{args} -s {loopback} -j {KUBE_MARK_MASQ}")
                nat.append(f"{args} -j {xlb_chain}")
        else:
            filt.append(f"-A {KUBE_EXTERNAL_SERVICES} {no_ep} -m addrtype --dst-type LOCAL {match} "
                        f"--dport {svc.node_port} -j REJECT")
    if svc.health_check_node_port:
        filt.append(f'-A {KUBE_NODEPORTS} -m comment --comment "{name} health check node port" '
                    f"-m tcp -p tcp --dport {svc.health_check_node_port} -j ACCEPT")
    if not has_endpoints:
        return
    seps = [names.endpoint_chain(name, proto, str(ep)) for ep in endpoints]
    rs.nat_chains += seps
    rs.active_nat_chains.update(seps)
    comment = "" if large else f" -m comment --comment {name}"
    if svc.session_affinity_client_ip:
        for sep in seps:
            nat.append(f"-A {svc_chain}{comment} -m recent --name {sep} --rcheck --seconds "
                       f"{svc.sticky_max_age_seconds} --reap -j {sep}")
    n = len(seps)
    local_seps = []
    for i, (ep, sep) in enumerate(zip(endpoints, seps)):
        if local_external and ep.is_local:
            local_seps.append(sep)
        stat = f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        nat.append(f"-A {svc_chain}{comment}{stat} -j {sep}")
        nat.append(f"-A {sep}{comment} -s {_cidr(ep.ip)} -j {KUBE_MARK_MASQ}")
        recent = f" -m recent --name {sep} --set" if svc.session_affinity_client_ip else ""
        nat.append(f"-A {sep}{comment}{recent} {match} -j DNAT --to-destination {ep}")
    if not local_external:
        return
    if cidr:
        nat.append(f'-A {xlb_chain} -m comment --comment "Redirect pods trying to reach external loadbalancer '
                   f'VIP to clusterIP" -s {cidr} -j {svc_chain}')
    nat.append(f'-A {xlb_chain} -m comment --comment "masquerade LOCAL traffic for {name} LB IP" '
               f"-m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}")
    nat.append(f'-A {xlb_chain} -m comment --comment "route LOCAL traffic for {name} LB IP to service chain" '
               f"-m addrtype --src-type LOCAL -j {svc_chain}")
    if not local_seps:
        nat.append(f'-A {xlb_chain} -m comment --comment "{name} has no local endpoints" -j {KUBE_MARK_DROP}')
        return
    if svc.session_affinity_client_ip:
        for sep in local_seps:
            nat.append(f"-A {xlb_chain} -m comment --comment {name} -m recent --name {sep} --rcheck "
                       f"--seconds {svc.sticky_max_age_seconds} --reap -j {sep}")
    m = len(local_seps)
    for i, sep in enumerate(local_seps):
        stat = f" -m statistic --mode random --probability {probability(m - i)}" if i < m - 1 else ""
        nat.append(f'-A {xlb_chain} -m comment --comment "Balancing rule {i} for {name}"{stat} -j {sep}')


def _contains(cidr: str, ip: str) -> bool:
    import ipaddress

    net = ipaddress.ip_network(cidr)
    addr = ipaddress.ip_address(ip)
    return addr.version == net.version and addr in net
