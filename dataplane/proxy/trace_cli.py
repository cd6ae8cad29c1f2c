"""`dataplane proxy trace`: the command line over `dataplane.proxy.trace` (names kept stable:
other tools script against the options and the JSON fields)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

# kept in step with dataplane.proxy.ipvs.sched.SCHEDULERS (not imported: `--help` stays fast)
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sed", "nq", "sh", "dh", "mh", "lblc", "lblcr")


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


@click.command("trace")
@click.option("--mode", type=click.Choice(["iptables", "ipvs", "nftables"]), default="iptables", show_default=True)
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False, exists=True),
              help="A rules dump from a node (instead of Kubernetes objects in FILES): iptables-save, or with "
                   "--mode nftables `nft list ruleset` text or `nft -j list ruleset` JSON.")
@click.option("--layout", type=click.Choice(["modern", "classic"]), default="modern", show_default=True,
              help="With FILES: the iptables layout to generate.")
@click.option("--node-name", required=True)
@click.option("--node-ip", "node_ips", multiple=True, required=True, help="A node IP; repeat for more.")
@click.option("--cluster-cidr", "cluster_cidrs", multiple=True, required=True, help="Pod network CIDR(s).")
@click.option("--masquerade-all", is_flag=True)
@click.option("--src", help="Source address of the packet.")
@click.option("--dst", help="Destination address of the packet.")
@click.option("--sport", type=int, default=40000, show_default=True)
@click.option("--dport", type=int, help="Destination port.")
@click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"]), default="tcp", show_default=True)
@click.option("--from-local", is_flag=True, help="The packet is sent by a process on the node (OUTPUT path).")
@click.option("--all-branches", is_flag=True, help="List every outcome of the probabilistic rules.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random stream.")
@click.option("--packets", "packets_file", type=click.Path(dir_okay=False, exists=True),
              help="JSON lines of {src, dst, sport, dport, proto}: one new flow each, one JSON line out each "
                   "(--mode nftables traces them one by one on the per-packet path: about 1 ms a flow).")
@click.option("--with-rules", is_flag=True,
              help="With --packets: trace each flow rule by rule (slow path) and include `rules`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--ipvs-scheduler", type=click.Choice(IPVS_SCHEDULERS), default="rr", show_default=True,
              help="With --mode ipvs: the virtual servers' scheduler (kube-proxy --ipvs-scheduler).")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, exists=True))
def trace(mode: str, rules_file: str | None, layout: str, node_name: str, node_ips: tuple[str, ...],
          cluster_cidrs: tuple[str, ...], masquerade_all: bool, src: str | None, dst: str | None, sport: int,
          dport: int | None, proto: str, from_local: bool, all_branches: bool, seed: int,
          packets_file: str | None, with_rules: bool, as_json: bool, ipvs_scheduler: str,
          files: tuple[str, ...]) -> None:
    """Trace a packet through a node's rules: every rule tested, then verdict, NAT and conntrack.

    Rules come from an iptables-save dump (--rules) or are generated from Kubernetes objects (FILES).
    --mode nftables generates kube-proxy's nftables layout, or reads an `nft list ruleset` dump (text
    or -j JSON); --all-branches then enumerates every `numgen random mod N` outcome.
    """
    from dataplane.proxy.trace import Flow, NodeSpec, TraceInputError, render_text
    from dataplane.proxy.trace import trace as run_trace

    if mode == "ipvs":
        _trace_ipvs(rules_file, layout, node_name, _split(node_ips), _split(cluster_cidrs), masquerade_all,
                    (src, dst, sport, dport, proto), from_local, all_branches, seed, packets_file,
                    with_rules, as_json, ipvs_scheduler, files)
        return
    if mode == "nftables":
        _trace_nft(rules_file, layout, node_name, _split(node_ips), _split(cluster_cidrs), masquerade_all,
                   (src, dst, sport, dport, proto), from_local, all_branches, seed, packets_file,
                   with_rules, as_json, ipvs_scheduler, files)
        return
    if mode != "iptables":
        raise click.UsageError(f"--mode {mode} tracing is not implemented yet; use --mode iptables or ipvs")
    if ipvs_scheduler != "rr":
        raise click.UsageError("--ipvs-scheduler applies to --mode ipvs only")
    if bool(rules_file) == bool(files):
        raise click.UsageError("give either --rules DUMP or Kubernetes object FILES (not both, not neither)")
    ips, cidrs = _split(node_ips), _split(cluster_cidrs)
    text = _rules_text(rules_file, files, layout, node_name, ips, cidrs, masquerade_all)
    spec = NodeSpec(ips, cidrs)
    try:
        if packets_file:
            _trace_many(text, spec, packets_file, seed, with_rules)
            return
        missing = [n for n, v in (("--src", src), ("--dst", dst), ("--dport", dport)) if v is None]
        if missing:
            raise click.UsageError(f"missing {', '.join(missing)} (or give --packets FILE)")
        flow = Flow(src=src, dst=dst, dport=dport, proto=proto, sport=sport)  # type: ignore[arg-type]
        result = run_trace(text, spec, flow, from_local=from_local, seed=seed, all_branches=all_branches)
    except TraceInputError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        click.echo(render_text(result, flow))


def _trace_ipvs(rules_file: str | None, layout: str, node_name: str, ips: tuple[str, ...], cidrs: tuple[str, ...],
                masquerade_all: bool, packet: tuple[Any, ...], from_local: bool, all_branches: bool,
                seed: int, packets_file: str | None, with_rules: bool, as_json: bool, scheduler: str,
                files: tuple[str, ...]) -> None:
    """--mode ipvs: the IPVS layout generated from FILES, traced through the engine (IPVS at LOCAL_IN)."""
    from dataplane.proxy.trace import Flow, NodeSpec, TraceInputError, render_text, trace_ipvs, trace_ipvs_flows

    if rules_file:
        raise click.UsageError("--mode ipvs builds the node from Kubernetes object FILES; --rules takes an "
                               "iptables-save dump, which holds no IPVS virtual servers")
    if not files:
        raise click.UsageError("give Kubernetes object FILES")
    if layout != "modern":
        raise click.UsageError("--layout applies to --mode iptables only")
    if all_branches:
        raise click.UsageError("--all-branches: IPVS schedulers are deterministic, a flow has one outcome "
                               "(use --packets to see the scheduler move over successive flows)")
    ipvs_layout = _ipvs_layout(files, node_name, ips, cidrs, masquerade_all, scheduler)
    spec = NodeSpec(ips, cidrs)
    src, dst, sport, dport, proto = packet
    try:
        if packets_file:
            flows = _read_flows(packets_file)
            for record in trace_ipvs_flows(ipvs_layout, spec, flows, seed=seed, with_rules=with_rules):
                sys.stdout.write(json.dumps(record) + "\n")
            return
        missing = [n for n, v in (("--src", src), ("--dst", dst), ("--dport", dport)) if v is None]
        if missing:
            raise click.UsageError(f"missing {', '.join(missing)} (or give --packets FILE)")
        flow = Flow(src=src, dst=dst, dport=dport, proto=proto, sport=sport)
        result = trace_ipvs(ipvs_layout, spec, flow, from_local=from_local, seed=seed)
    except TraceInputError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        click.echo(render_text(result, flow))


def _ipvs_layout(files: tuple[str, ...], node_name: str, ips: tuple[str, ...], cidrs: tuple[str, ...],
                 masquerade_all: bool, scheduler: str) -> Any:
    from dataplane.k8s import ModelError, load_paths
    from dataplane.proxy.ipvs.generator import IpvsOptions, generate
    from dataplane.proxy.model import NodeContext, build_state, context_zone

    try:
        cluster = load_paths(files)
        context = NodeContext(node_name=node_name, node_ips=ips, cluster_cidrs=cidrs,
                              masquerade_all=masquerade_all, zone=context_zone(cluster, node_name))
        return generate(build_state(cluster, context), IpvsOptions(scheduler))
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None


def _read_flows(packets_file: str) -> list[Any]:
    from dataplane.proxy.trace import Flow, TraceInputError

    flows = []
    with open(packets_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                flows.append(Flow(src=obj["src"], dst=obj["dst"], dport=int(obj["dport"]),
                                  proto=obj.get("proto", "tcp"), sport=int(obj.get("sport", 40000))))
            except (ValueError, KeyError, TypeError, TraceInputError) as exc:
                raise click.ClickException(f"{packets_file}:{lineno}: {exc}") from None
    return flows


def _rules_text(rules_file: str | None, files: tuple[str, ...], layout: str, node_name: str,
                ips: tuple[str, ...], cidrs: tuple[str, ...], masquerade_all: bool) -> str:
    if rules_file:
        with open(rules_file, encoding="utf-8") as f:
            text = f.read()
        from dataplane.proxy.iptables.parser import ParseError, parse

        try:
            parse(text, family=6 if ":" in ips[0] else 4)
        except ParseError as exc:
            raise click.ClickException(f"{rules_file}: {exc}") from None
        return text
    from dataplane.k8s import ModelError, load_paths
    from dataplane.proxy.iptables.generator import GeneratorOptions, generate
    from dataplane.proxy.model import NodeContext, build_state, context_zone

    try:
        cluster = load_paths(files)
        context = NodeContext(node_name=node_name, node_ips=ips, cluster_cidrs=cidrs,
                              masquerade_all=masquerade_all, zone=context_zone(cluster, node_name))
        return generate(build_state(cluster, context), GeneratorOptions(layout=layout, jump_rules=True)).text()
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None


def _trace_many(text: str, spec: Any, packets_file: str, seed: int, with_rules: bool) -> None:  # type: ignore[no-untyped-def]
    from dataplane.proxy.trace import trace_flows

    flows = _read_flows(packets_file)
    out = sys.stdout
    for record in trace_flows(text, spec, flows, seed=seed, with_rules=with_rules):
        out.write(json.dumps(record) + "\n")


def _trace_nft(rules_file: str | None, layout: str, node_name: str, ips: tuple[str, ...], cidrs: tuple[str, ...],
               masquerade_all: bool, packet: tuple[Any, ...], from_local: bool, all_branches: bool, seed: int,
               packets_file: str | None, with_rules: bool, as_json: bool, scheduler: str,
               files: tuple[str, ...]) -> None:
    """--mode nftables: kube-proxy's nftables layout generated from FILES, or a node's `nft list
    ruleset` / `nft -j list ruleset` dump, through the engine's nftables evaluator."""
    from dataplane.proxy.trace import Flow, NodeSpec, TraceInputError, render_text, trace_nft, trace_nft_flows

    if scheduler != "rr":
        raise click.UsageError("--ipvs-scheduler applies to --mode ipvs only")
    if layout != "modern":
        raise click.UsageError("--layout applies to --mode iptables only")
    if bool(rules_file) == bool(files):
        raise click.UsageError("give either --rules DUMP or Kubernetes object FILES (not both, not neither)")
    text = _nft_rules_text(rules_file, files, node_name, ips, cidrs, masquerade_all)
    spec = NodeSpec(ips, cidrs)
    src, dst, sport, dport, proto = packet
    try:
        if packets_file:
            for record in trace_nft_flows(text, spec, _read_flows(packets_file), seed=seed, with_rules=with_rules):
                sys.stdout.write(json.dumps(record) + "\n")
            return
        missing = [n for n, v in (("--src", src), ("--dst", dst), ("--dport", dport)) if v is None]
        if missing:
            raise click.UsageError(f"missing {', '.join(missing)} (or give --packets FILE)")
        flow = Flow(src=src, dst=dst, dport=dport, proto=proto, sport=sport)
        result = trace_nft(text, spec, flow, from_local=from_local, seed=seed, all_branches=all_branches)
    except TraceInputError as exc:
        raise click.ClickException(f"{rules_file}: {exc}" if rules_file else str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        click.echo(render_text(result, flow))


def _nft_rules_text(rules_file: str | None, files: tuple[str, ...], node_name: str, ips: tuple[str, ...],
                    cidrs: tuple[str, ...], masquerade_all: bool) -> str:
    """The dump as read (parsed later, with the trace), or the generated `nft -f` transaction."""
    if rules_file:
        try:
            with open(rules_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"{rules_file}: cannot read: {exc}") from None
    from dataplane.k8s import ModelError, load_paths
    from dataplane.proxy.model import NodeContext, build_state, context_zone
    from dataplane.proxy.nftables.generator import generate

    try:
        cluster = load_paths(files)
        context = NodeContext(node_name=node_name, node_ips=ips, cluster_cidrs=cidrs,
                              masquerade_all=masquerade_all, zone=context_zone(cluster, node_name))
        return generate(build_state(cluster, context))
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
