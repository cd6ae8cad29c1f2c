"""The host-local IPAM plugin executable."""

from __future__ import annotations

from dataplane.cni.ipam.host_local import commands
from dataplane.cni.spec.skeleton import PluginSpec
from dataplane.cni.spec.skeleton import main as _main

PLUGIN = PluginSpec(
    name="host-local",
    add=commands.cmd_add,
    check=commands.cmd_check,
    delete=commands.cmd_del,
    status=commands.cmd_status,
    gc=commands.cmd_gc,
)


def main() -> None:
    _main(PLUGIN)


if __name__ == "__main__":
    main()
