"""`dataplane demo`: the README's main job. By default the embedded default scenario; with `--cni`,
one CNI ADD/CHECK/DEL round trip through our plugins, shown step by step.

It installs the plugin executables into a temporary folder, makes a scratch "node" namespace
(where the plugins act, as on a real node) and a "pod" namespace, and drives them with the
runtime client exactly as a container runtime would. Everything it creates is recorded and
removed at the end, also after an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable

import click

POD_CIDR = "10.244.1.0/24"


def default_conflist(data_dir: str) -> dict:
    """What a node's /etc/cni/net.d/10-dataplane.conflist could hold (the design's address plan)."""
    return {
        "cniVersion": "1.0.0",
        "name": "dataplane-demo",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": POD_CIDR}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


class Undo:
    """Cleanup steps, run last-first; each one runs even if an earlier one failed."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self.steps.append((what, fn))

    def run(self) -> list[str]:
        failed = []
        while self.steps:
            what, fn = self.steps.pop()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - report every failure, keep going
                failed.append(f"{what}: {exc}")
        return failed


def _section(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


def _show(ns: str, argv: list[str]) -> str:
    from dataplane.netns import namespace

    res = namespace.run(ns, argv, check=False)
    text = (res.stdout or res.stderr).rstrip()
    click.echo(f"$ {' '.join(argv)}   # in {ns}")
    click.echo(text or "(nothing)")
    return text


def _store(data_dir: str, network: str) -> dict[str, str]:
    path = os.path.join(data_dir, network)
    out = {}
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        with open(os.path.join(path, name), "rb") as f:
            out[name] = f.read().decode(errors="replace")
    return out


def run_demo(plugin_dir: str | None = None) -> None:
    from dataplane.cni.runtime import CNIConfig, RuntimeConf, conf_list_from_bytes
    from dataplane.cni.runtime.conf import to_wire
    from dataplane.cni.runtime.install import install
    from dataplane.netns import namespace
    from dataplane.testing.sandbox import unique_name

    undo = Undo()
    try:
        work = tempfile.mkdtemp(prefix="dataplane-demo-")
        undo.push(f"folder {work}", lambda: shutil.rmtree(work))
        if plugin_dir is None:
            plugin_dir = os.path.join(work, "bin")
            install(plugin_dir, socket="")  # in-process plugins: the demo leaves no daemon behind
            source = "our plugins, installed by `dataplane cni install`"
        else:
            source = f"plugins from {plugin_dir}"
        node, pod = unique_name("dpnode"), unique_name("dppod")
        for ns in (node, pod):
            namespace.create(ns)
            undo.push(f"namespace {ns}", lambda ns=ns: namespace.remove(ns))

        conf = default_conflist(os.path.join(work, "ipam"))
        net = conf_list_from_bytes(to_wire(conf))
        cni = CNIConfig([plugin_dir], os.path.join(work, "cache"))
        rt = RuntimeConf(container_id="demo-pod-1", netns=namespace.path_of(pod), ifname="eth0",
                         args=[("IgnoreUnknown", "1"), ("K8S_POD_NAME", "demo")],
                         capability_args={"portMappings": [{"hostPort": 8080, "containerPort": 80,
                                                            "protocol": "tcp"}]})

        _section(f"Network config ({source}; plugins run in node namespace {node})")
        click.echo(json.dumps(conf, indent=2))
        _section(f"ADD  container={rt.container_id} netns={rt.netns} ifname={rt.ifname}")
        with namespace.entered(node):
            result = cni.add_network_list(net, rt)
        click.echo(json.dumps(result, indent=4))
        undo.push("CNI DEL", lambda: _quiet_del(cni, net, rt, node))

        _section("Inside the pod")
        _show(pod, ["ip", "-br", "addr"])
        _show(pod, ["ip", "route"])
        gateway = result["ips"][0].get("gateway", "")
        if gateway:
            _show(pod, ["ping", "-c", "1", "-W", "2", gateway])
        _section("On the node")
        _show(node, ["ip", "-br", "link", "show", "master", "cni0"])
        _show(node, ["iptables", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT"])
        _section("host-local store")
        for name, content in _store(os.path.join(work, "ipam"), net.name).items():
            click.echo(f"{name}: {content!r}")
        _section("Result cache (libcni format)")
        for name in sorted(os.listdir(os.path.join(work, "cache", "results"))):
            click.echo(f"results/{name}")

        _section("CHECK")
        with namespace.entered(node):
            cni.check_network_list(net, rt)
        click.echo("CHECK passed: interface, addresses, routes and the IP reservation are as ADD left them")

        _section("DEL")
        with namespace.entered(node):
            cni.del_network_list(net, rt)
        undo.steps = [s for s in undo.steps if s[0] != "CNI DEL"]
        _show(pod, ["ip", "-br", "addr"])
        leases = [n for n in _store(os.path.join(work, "ipam"), net.name) if n[0].isdigit() or ":" in n]
        cache_left = os.listdir(os.path.join(work, "cache", "results"))
        rules = namespace.run(node, ["iptables", "-t", "nat", "-S"], check=False).stdout
        click.echo(f"leases left: {leases or 'none'}; cache entries left: {cache_left or 'none'}; "
                   f"per-pod DNAT chains left: {[l for l in rules.splitlines() if 'CNI-DN-' in l] or 'none'}")
    finally:
        failed = undo.run()
        _section("Cleanup")
        click.echo("removed the namespaces, the temporary plugin folder, the IPAM store and the cache"
                   if not failed else "cleanup problems:\n  " + "\n  ".join(failed))


def _quiet_del(cni, net, rt, node) -> None:  # type: ignore[no-untyped-def]
    from dataplane.netns import namespace

    with namespace.entered(node):
        cni.del_network_list(net, rt)


DEFAULT_SCENARIO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenario", "default.yaml")


@click.command("demo")
@click.option("--cni", "cni_only", is_flag=True,
              help="Only one CNI ADD, CHECK and DEL of a pod through our plugins, shown step by step.")
@click.option("--plugin-dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="With --cni: use the plugins in this folder instead (e.g. /usr/lib/cni for the Go reference).")
@click.option("--dataplane", type=click.Choice(["emulated", "kernel"]), default=None,
              help="Service dataplane for the default scenario (default: the scenario's own).")
@click.option("--proxy-mode", type=click.Choice(["iptables", "ipvs", "nftables"]), default=None,
              help="Proxy mode for the default scenario (default: the scenario's own).")
@click.pass_context
def command(ctx: click.Context, cni_only: bool, plugin_dir: str | None, dataplane: str | None,
            proxy_mode: str | None) -> None:
    """The main job: run the embedded default scenario (a two-node cluster of network namespaces,
    pods wired through our CNI plugins, kube-proxy rules, real traffic checked); leaves nothing.

    With --cni: one CNI ADD/CHECK/DEL round trip instead."""
    if os.geteuid() != 0:
        raise click.ClickException("the demo creates network namespaces: run it as root")
    if not cni_only:
        from dataplane.scenario.cli import run_cmd

        click.secho(f"dataplane demo: running the default scenario ({DEFAULT_SCENARIO})", bold=True, err=True)
        ctx.invoke(run_cmd, file=DEFAULT_SCENARIO, proxy_mode=proxy_mode, dataplane=dataplane,
                   pod_network=None, json_path=None, pcap_dir=None, svg_path=None, trace=(), quiet=False)
        return
    from dataplane.cni.runtime import CNIRuntimeError

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run_demo(plugin_dir)
    except CNIRuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted; everything created was removed", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
