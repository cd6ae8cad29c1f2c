"""`dataplane proxy ...`: kube-proxy's control plane from Kubernetes objects.

Subcommands register on the `command` group; heavy modules are imported inside them so that
`dataplane proxy --help` stays fast. Other modes and `proxy trace` attach here later.
"""

from __future__ import annotations

import json
import sys

import click

MODES = ("iptables", "ipvs", "nftables")
# kept in step with dataplane.proxy.ipvs.sched.SCHEDULERS (not imported: `--help` stays fast)
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sed", "nq", "sh", "dh", "mh", "lblc", "lblcr")


@click.group("proxy")
def command() -> None:
    """Turn Services and EndpointSlices into kube-proxy rules; trace packets."""


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeated options may also be comma-separated (kube-proxy's --cluster-cidr is)."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


@command.command("rules")
@click.option("--mode", type=click.Choice(MODES), default="iptables", show_default=True,
              help="Proxy backend to generate rules for.")
@click.option("--layout", type=click.Choice(["modern", "classic"]), default="modern", show_default=True,
              help="iptables layout: today's, or the pre-1.21 one (2 KUBE-SERVICES rules per service).")
@click.option("--node-name", required=True, help="This node's name (endpoints with this nodeName are local).")
@click.option("--node-ip", "node_ips", multiple=True, required=True,
              help="A node IP; repeat for more. The first one picks the IP family of the rule set.")
@click.option("--cluster-cidr", "cluster_cidrs", multiple=True, required=True,
              help="Pod network CIDR(s) for the local-traffic detector (comma-separated or repeated).")
@click.option("--masquerade-all", is_flag=True, help="SNAT all traffic to ClusterIPs (kube-proxy --masquerade-all).")
@click.option("--masquerade-bit", type=click.IntRange(0, 31), default=14, show_default=True,
              help="fwmark bit that marks packets for SNAT.")
@click.option("--nodeport-addresses", "nodeport_addresses", multiple=True,
              help="CIDRs whose node IPs accept NodePorts (default: all local addresses).")
@click.option("--no-localhost-nodeports", is_flag=True,
              help="Do not accept NodePorts on 127.0.0.0/8 (kube-proxy --iptables-localhost-nodeports=false).")
@click.option("--service-order", type=click.Choice(["sorted", "random"]), default="sorted", show_default=True,
              help="Order of services in KUBE-SERVICES: sorted, or random like kube-proxy's Go map.")
@click.option("--seed", type=int, default=None, help="Seed for --service-order random.")
@click.option("--no-random-fully", is_flag=True, help="Leave --random-fully off the MASQUERADE rule.")
@click.option("--nfacct", is_flag=True, help="Add kube-proxy's nfacct counter matches (needs the counters to exist).")
@click.option("--jumps", is_flag=True,
              help="Also write the jumps from INPUT/FORWARD/OUTPUT/PREROUTING/POSTROUTING to the kube chains.")
@click.option("--previous", "previous", multiple=True, type=click.Path(dir_okay=False),
              help="Objects of the previous sync (repeatable): print the partial restore kube-proxy writes "
                   "for the change (only changed services' chains, stale chains deleted).")
@click.option("--stats", is_flag=True, help="Print rule and chain counts per table as JSON instead of the rules.")
@click.option("--ipvs-scheduler", type=click.Choice(IPVS_SCHEDULERS), default="rr", show_default=True,
              help="With --mode ipvs: the virtual servers' scheduler (kube-proxy --ipvs-scheduler).")
@click.option("--service-cidr", "service_cidrs", multiple=True,
              help="With --mode nftables: the service CIDR(s) (kube-proxy --service-cluster-ip-range); "
                   "traffic to unallocated ClusterIPs in them is dropped.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def rules(mode: str, layout: str, node_name: str, node_ips: tuple[str, ...], cluster_cidrs: tuple[str, ...],
          masquerade_all: bool, masquerade_bit: int, nodeport_addresses: tuple[str, ...],
          no_localhost_nodeports: bool, service_order: str, seed: int | None, no_random_fully: bool,
          nfacct: bool, jumps: bool, previous: tuple[str, ...], stats: bool, ipvs_scheduler: str,
          service_cidrs: tuple[str, ...], files: tuple[str, ...]) -> None:
    """Print the rules kube-proxy would write for the Kubernetes objects in FILES (YAML or JSON).

    --mode ipvs prints four sections, each in its tool's format after a '#' header: the kube-ipvs0
    addresses, `ipvsadm-save -n`, `ipset save` and `iptables-restore` input (with the jumps from
    the built-in chains, which the IPVS proxier always installs).

    --mode nftables prints the `nft -f` transaction of kube-proxy's nftables proxier (table
    `ip kube-proxy` or `ip6 kube-proxy`); --stats then counts chains, rules and map/set elements."""
    if mode == "ipvs":
        _ipvs_rules(layout, node_name, node_ips, cluster_cidrs, masquerade_all, masquerade_bit,
                    nodeport_addresses, no_localhost_nodeports, service_order, no_random_fully, nfacct,
                    previous, stats, ipvs_scheduler, files)
        return
    if ipvs_scheduler != "rr":
        raise click.UsageError("--ipvs-scheduler applies to --mode ipvs only")
    if mode == "nftables":
        _nft_rules(layout, node_name, node_ips, cluster_cidrs, masquerade_all, masquerade_bit, nodeport_addresses,
                   service_order, no_random_fully, nfacct, jumps, previous, stats, service_cidrs, files)
        return
    if service_cidrs:
        raise click.UsageError("--service-cidr applies to --mode nftables only")
    if mode != "iptables":
        raise click.UsageError(f"--mode {mode} is not implemented yet; use --mode iptables or ipvs")
    from dataplane.k8s import ModelError, load_paths
    from dataplane.proxy.iptables.generator import GeneratorOptions, generate
    from dataplane.proxy.iptables.sync import Syncer
    from dataplane.proxy.model import NodeContext, build_state, context_zone

    try:
        cluster = load_paths(files)
        context = NodeContext(node_name=node_name, node_ips=_split(node_ips),
                              cluster_cidrs=_split(cluster_cidrs), masquerade_bit=masquerade_bit,
                              masquerade_all=masquerade_all, nodeport_addresses=_split(nodeport_addresses),
                              localhost_nodeports=not no_localhost_nodeports,
                              zone=context_zone(cluster, node_name))
        options = GeneratorOptions(layout=layout, random_fully=not no_random_fully, nfacct=nfacct,
                                   service_order=service_order, seed=seed, jump_rules=jumps)
        if previous:
            if layout != "modern":
                raise click.UsageError("--previous (partial sync) needs --layout modern, as in kube-proxy")
            before = load_paths(previous)
            syncer = Syncer(options)
            syncer.sync(build_state(before, context))
            ruleset = syncer.sync(build_state(cluster, context))
        else:
            ruleset = generate(build_state(cluster, context), options)
    except ModelError as exc:
        raise click.ClickException(_option_names(str(exc))) from None
    if stats:
        click.echo(json.dumps(ruleset.stats(), indent=2, sort_keys=True))
    else:
        sys.stdout.write(ruleset.text())


def _ipvs_rules(layout: str, node_name: str, node_ips: tuple[str, ...], cluster_cidrs: tuple[str, ...],
                masquerade_all: bool, masquerade_bit: int, nodeport_addresses: tuple[str, ...],
                no_localhost_nodeports: bool, service_order: str, no_random_fully: bool, nfacct: bool,
                previous: tuple[str, ...], stats: bool, scheduler: str, files: tuple[str, ...]) -> None:
    """`rules --mode ipvs`: kube-proxy's IPVS proxier sync (dataplane.proxy.ipvs.generator)."""
    for given, option in ((layout != "modern", "--layout"), (service_order != "sorted", "--service-order"),
                          (nfacct, "--nfacct"), (bool(previous), "--previous")):
        if given:
            raise click.UsageError(f"{option} applies to --mode iptables only")
    from dataplane.k8s import ModelError, load_paths
    from dataplane.proxy.ipvs.generator import IpvsOptions, generate
    from dataplane.proxy.model import NodeContext, build_state, context_zone

    try:
        cluster = load_paths(files)
        context = NodeContext(node_name=node_name, node_ips=_split(node_ips),
                              cluster_cidrs=_split(cluster_cidrs), masquerade_bit=masquerade_bit,
                              masquerade_all=masquerade_all, nodeport_addresses=_split(nodeport_addresses),
                              localhost_nodeports=not no_localhost_nodeports,
                              zone=context_zone(cluster, node_name))
        out = generate(build_state(cluster, context), IpvsOptions(scheduler, random_fully=not no_random_fully))
    except ModelError as exc:
        raise click.ClickException(_option_names(str(exc))) from None
    if stats:
        click.echo(json.dumps(out.stats(), indent=2, sort_keys=True))
    else:
        sys.stdout.write(out.text())


def _nft_rules(layout: str, node_name: str, node_ips: tuple[str, ...], cluster_cidrs: tuple[str, ...],
               masquerade_all: bool, masquerade_bit: int, nodeport_addresses: tuple[str, ...],
               service_order: str, no_random_fully: bool, nfacct: bool, jumps: bool, previous: tuple[str, ...],
               stats: bool, service_cidrs: tuple[str, ...], files: tuple[str, ...]) -> None:
    """`rules --mode nftables`: the `nft -f` transaction of kube-proxy's nftables proxier
    (dataplane.proxy.nftables.generator); with --previous, its partial sync."""
    for given, option, why in (
            (layout != "modern", "--layout", "applies to --mode iptables only"),
            (service_order != "sorted", "--service-order", "applies to --mode iptables only (nftables "
                                                           "dispatches through maps: rule order is moot)"),
            (nfacct, "--nfacct", "applies to --mode iptables only"),
            (no_random_fully, "--no-random-fully", "is not available: kube-proxy's nftables mode always "
                                                   "masquerades fully-random"),
            (jumps, "--jumps", "is not needed: nftables base chains hook themselves in, always written")):
        if given:
            raise click.UsageError(f"{option} {why}")
    import ipaddress

    from dataplane.k8s import ModelError, load_paths
    from dataplane.proxy.model import NodeContext, build_state, context_zone
    from dataplane.proxy.nftables.generator import NftOptions, changes, generate

    cidrs = _split(service_cidrs)
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise click.ClickException(f"--service-cidr: {cidr!r} is not a CIDR") from None
    try:
        cluster = load_paths(files)
        context = NodeContext(node_name=node_name, node_ips=_split(node_ips),
                              cluster_cidrs=_split(cluster_cidrs), masquerade_bit=masquerade_bit,
                              masquerade_all=masquerade_all, nodeport_addresses=_split(nodeport_addresses),
                              zone=context_zone(cluster, node_name))
        options = NftOptions(service_cidrs=cidrs)
        after = build_state(cluster, context)
        if previous:
            text = changes(build_state(load_paths(previous), context), after, options)
        else:
            text = generate(after, options)
    except ModelError as exc:
        raise click.ClickException(_option_names(str(exc))) from None
    if stats:
        click.echo(json.dumps(_nft_stats(text, partial=bool(previous)), indent=2, sort_keys=True))
    else:
        sys.stdout.write(text)


def _nft_stats(text: str, *, partial: bool) -> dict[str, object]:
    """Chains, rules and map/set elements of the ruleset; for a partial sync, what the
    transaction adds, rewrites and deletes (counted from its commands)."""
    if partial:
        counts: dict[str, int] = {}
        for line in text.splitlines():
            words = line.split()
            key = f"{words[0]}_{words[1]}" if len(words) > 1 else words[0]
            counts[key] = counts.get(key, 0) + 1
        family = "IPv6" if " ip6 kube-proxy " in text else "IPv4"
        return {"family": family, "partial": True, "chains_written": counts.get("add_chain", 0),
                "rules": counts.get("add_rule", 0), "elements_added": counts.get("add_element", 0),
                "elements_deleted": counts.get("delete_element", 0), "chains_deleted": counts.get("delete_chain", 0),
                "sets_added": counts.get("add_set", 0), "sets_deleted": counts.get("delete_set", 0)}
    from dataplane.proxy.nftables.parser import parse_text

    out: dict[str, object] = {"partial": False}
    for table in parse_text(text).tables:
        sets = {name: len(s.elements) for name, s in table.sets.items() if not s.is_map}
        maps = {name: len(s.elements) for name, s in table.sets.items() if s.is_map}
        out["family"] = "IPv6" if table.family == "ip6" else "IPv4"
        out[f"{table.family} {table.name}"] = {
            "chains": len(table.chains), "base_chains": sum(c.is_base for c in table.chains.values()),
            "rules": sum(len(c.rules) for c in table.chains.values()),
            "sets": sets, "maps": maps, "elements": sum(sets.values()) + sum(maps.values())}
    return out


def _option_names(message: str) -> str:
    """NodeContext errors name fields after the CLI options; make that explicit."""
    for opt in ("node-name", "node-ip", "cluster-cidr", "nodeport-addresses", "masquerade-bit"):
        message = message.replace(f"field {opt}:", f"--{opt}:")
    return message


def _register_subcommands() -> None:
    from dataplane.proxy.trace_cli import trace

    command.add_command(trace)


_register_subcommands()
