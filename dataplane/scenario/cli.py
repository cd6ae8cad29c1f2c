"""`dataplane scenario run|list|clean`: build emulated clusters and send real traffic through them."""

from __future__ import annotations

import json
import os
import sys

import click

SCENARIO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scenarios")


@click.group("scenario")
def command() -> None:
    """Build emulated clusters and send real traffic through them."""


def _resolve(file: str) -> str:
    if os.path.exists(file) or "/" in file:
        return file
    for candidate in (os.path.join(SCENARIO_DIR, file), os.path.join(SCENARIO_DIR, file + ".yaml")):
        if os.path.exists(candidate):
            return candidate
    return file


@command.command("run")
@click.argument("file")
@click.option("--proxy-mode", type=click.Choice(["iptables", "ipvs", "nftables"]), help="Override cluster.proxy.mode.")
@click.option("--dataplane", "dataplane", type=click.Choice(["emulated", "kernel"]), help="Override cluster.dataplane.")
@click.option("--pod-network", type=click.Choice(["l2", "host-gw", "vxlan"]), help="Override cluster.podNetwork.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the JSON report here ('-' for stdout).")
@click.option("--pcap", "pcap_dir", type=click.Path(file_okay=False), help="Write a pcap per node into this folder.")
@click.option("--svg", "svg_path", type=click.Path(dir_okay=False), help="Draw the cluster's topology into this SVG file.")
@click.option("--trace", "trace", multiple=True, metavar="TRAFFIC",
              help="Record the rule-by-rule path of this traffic entry (repeatable): nft monitor trace on the kernel dataplane, the engine's own trace on the emulated one.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def run_cmd(file: str, proxy_mode: str | None, dataplane: str | None, pod_network: str | None, json_path: str | None, pcap_dir: str | None,
            svg_path: str | None, trace: tuple[str, ...], quiet: bool) -> None:
    """Run the scenario FILE (a path, or the name of a shipped scenario) and check its expectations."""
    from dataplane.scenario import report as rep, spec
    from dataplane.scenario.runtime import Interrupted, RunError, ScenarioRun
    from dataplane.scenario.schema import SpecError

    if os.geteuid() != 0:
        raise click.ClickException("running a scenario needs root (it creates network namespaces)")
    try:
        scenario = spec.load(_resolve(file))
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    progress = None if quiet else (lambda msg: click.echo(f"  .. {msg}", err=True))
    try:
        report = ScenarioRun(scenario, proxy_mode=proxy_mode, dataplane=dataplane, pod_network=pod_network,
                             pcap_dir=pcap_dir, trace=trace, progress=progress).execute()
    except RunError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}{': ' + exc.filename if exc.filename else ''} "
                                   "(the cluster was torn down)") from None
    except (Interrupted, KeyboardInterrupt):
        click.echo("interrupted: the cluster was torn down", err=True)
        sys.exit(130)
    if svg_path:
        from dataplane.scenario.picture import svg

        with open(svg_path, "w") as f:
            f.write(svg(report.to_json()))
    if json_path == "-":
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        click.echo(rep.summary(report))
        if json_path:
            with open(json_path, "w") as f:
                json.dump(report.to_json(), f, indent=1)
    sys.exit(0 if report.passed else 1)


@command.command("list")
def list_cmd() -> None:
    """The shipped scenarios, and runs whose state is still recorded."""
    from dataplane.scenario import spec
    from dataplane.scenario.schema import SpecError
    from dataplane.scenario.state import list_runs

    names = sorted(n for n in os.listdir(SCENARIO_DIR) if n.endswith(".yaml")) if os.path.isdir(SCENARIO_DIR) else []
    click.echo("shipped scenarios:")
    for n in names:
        try:
            sc = spec.load(os.path.join(SCENARIO_DIR, n))
            click.echo(f"  {n[:-5]:<24} {sc.description.splitlines()[0] if sc.description else ''}")
        except SpecError as exc:
            click.echo(f"  {n[:-5]:<24} INVALID: {exc}")
    runs = list_runs()
    if runs:
        click.echo("recorded runs:")
        for r in runs:
            status = "running" if r.runner_alive() else "left behind (dataplane scenario clean)"
            click.echo(f"  {r.run_id}  {len(r.records)} object(s)  {status}  {r.scenario}")


@command.command("clean")
@click.option("--run", "run_ids", multiple=True, help="Only this run id (repeatable).")
@click.option("--force", is_flag=True, help="Also clean runs whose runner process is still alive.")
def clean_cmd(run_ids: tuple[str, ...], force: bool) -> None:
    """Remove what killed runs left, from their recorded state only (never by name pattern)."""
    from dataplane.scenario.state import list_runs

    if os.geteuid() != 0:
        raise click.ClickException("cleaning needs root")
    failed = False
    runs = list_runs()
    if not runs:
        click.echo("nothing recorded: no run to clean")
    for r in runs:
        if run_ids and r.run_id not in run_ids:
            continue
        if r.runner_alive() and not force:
            click.echo(f"run {r.run_id}: runner {r.owner_pid} is still alive; skipped (use --force)")
            continue
        n = len(r.records)
        errors = r.undo_all()
        if errors:
            failed = True
            click.echo(f"run {r.run_id}: {len(errors)} object(s) could not be removed:")
            for e in errors:
                click.echo(f"  {e}")
        else:
            click.echo(f"run {r.run_id}: removed {n} recorded object(s)")
    if failed:
        sys.exit(1)
