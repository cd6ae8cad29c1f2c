"""The loopback plugin: bring `lo` up in the container (CNI_IFNAME is ignored, as upstream)."""

from __future__ import annotations

import ipaddress

from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.skeleton import CmdArgs, PluginSpec
from dataplane.cni.spec.skeleton import main as _main
from dataplane.cni.spec.types import Interface, IPConfig, Result

LO = "lo"


def cmd_add(args: CmdArgs) -> Result:
    from dataplane.cni.ip import link, ns

    prev = args.prev_result()
    with ns.netns_path(args.netns), link.iproute() as ipr:
        lo = link.by_name(ipr, LO)
        if lo is None:
            raise PluginError("Link not found")
        link.set_up(ipr, lo.index)
        firsts: dict[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface] = {}
        for family in (2, 10):
            for addr, prefix, _scope in link.addresses(ipr, lo.index, family):
                iface = ipaddress.ip_interface(f"{addr}/{prefix}")
                if not iface.ip.is_loopback:
                    raise PluginError("loopback interface found with non-loopback address")
                firsts.setdefault(iface.version, iface)
    if prev is not None:
        return prev
    result = Result(interfaces=[Interface(LO, "00:00:00:00:00:00", sandbox=args.netns)])
    for version in (4, 6):
        if version in firsts:
            result.ips.append(IPConfig(firsts[version], None, 0))
    return result


def cmd_del(args: CmdArgs) -> None:
    from dataplane.cni.ip import link, ns

    if not args.netns:
        return
    try:
        with ns.netns_path(args.netns), link.iproute() as ipr:
            lo = link.by_name(ipr, LO)
            if lo is not None:
                ipr.link("set", index=lo.index, state="down")
    except ns.NetnsGone:
        return


def cmd_check(args: CmdArgs) -> None:
    from dataplane.cni.ip import link, ns

    with ns.netns_path(args.netns), link.iproute() as ipr:
        lo = link.by_name(ipr, LO)
        if lo is None or not lo.up:
            raise PluginError("loopback interface is down")


PLUGIN = PluginSpec(name="loopback", add=cmd_add, check=cmd_check, delete=cmd_del)


def main() -> None:
    _main(PLUGIN)


if __name__ == "__main__":
    main()
