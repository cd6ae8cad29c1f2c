"""Entry point of the `dataplane` command.

Subcommands are imported only when invoked, so that `dataplane --help` and the CNI paths
do not pay for numba, scapy or pyroute2 imports they do not use.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from dataplane import __version__

# name -> "module:attribute" of a click command or group. Each subpackage owns its command.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("dataplane.demo", "Run the embedded default job and print what it did."),
    "cni": ("dataplane.cni.cli", "Run CNI plugins like a container runtime does (cnitool/libcni)."),
    "proxy": ("dataplane.proxy.cli", "Turn Services and EndpointSlices into kube-proxy rules; trace packets."),
    "scenario": ("dataplane.scenario.cli", "Build emulated clusters and send real traffic through them."),
    "bench": ("benchmarks.cli", "Measure rule-evaluation cost against the real kernel."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in SUBCOMMANDS if self._available(name))

    @staticmethod
    def _available(name: str) -> bool:
        try:
            return importlib.util.find_spec(SUBCOMMANDS[name][0]) is not None
        except ModuleNotFoundError:  # the parent package is not there either
            return False

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS or not self._available(name):
            return None
        module = importlib.import_module(SUBCOMMANDS[name][0])
        return getattr(module, "command")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="dataplane")
def main() -> None:
    """dataplane: a packet-level emulator of the Kubernetes node network.

    Real CNI plugins, a kube-proxy-equivalent service router (iptables, IPVS and nftables
    modes) that evaluates real packets, a scenario runner that builds small clusters out of
    network namespaces, and benchmarks set beside the real kernel.
    """
