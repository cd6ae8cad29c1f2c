"""The ptp plugin: a veth pair per container with host routes, no bridge (plugins/main/ptp).

The container gets its address with the subnet route replaced by `gw/32 dev eth0` and
`subnet via gw`, so all traffic goes through the host end, which holds `gw/32` and a host
route to the container's IP.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import Any

from dataplane.cni.ipam import delegate
from dataplane.cni.plugins._netconf import field
from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.skeleton import CmdArgs, PluginSpec
from dataplane.cni.spec.skeleton import main as _main
from dataplane.cni.spec.types import DNS, Interface, IPInterface, Result

RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RTPROT_BOOT = 3


def _load(args: CmdArgs) -> tuple[bool, int, str, DNS]:
    conf = args.config
    ip_masq = field(conf, "ipMasq", bool, False)
    mtu = field(conf, "mtu", int, 0)
    if mtu < 0 or (mtu and mtu < 68) or mtu > 65535:
        raise PluginError(f"invalid MTU {mtu}")
    try:
        dns = DNS.from_dict(field(conf, "dns", dict, None))
    except ValueError as exc:
        raise PluginError(f"failed to load netconf: {exc}") from None
    return ip_masq, mtu, delegate.ipam_type(conf), dns


def cmd_add(args: CmdArgs) -> Result:
    from dataplane.cni.ip import ipmasq, link, ns, sysctl
    from dataplane.cni.ip.configure import configure_iface

    ip_masq, mtu, ipam_type, dns = _load(args)
    cont_fd = ns.open_netns(args.netns)
    host_fd = ns.own_netns()
    undo: list[Any] = []
    try:
        result = delegate.add(ipam_type, args)
        undo.append(lambda: delegate.delete(ipam_type, args))
        if not result.ips:
            raise PluginError("IPAM plugin returned missing IP config")
        for version in sorted({ip.address.version for ip in result.ips}):
            sysctl.enable_forwarding(version)
        with ns.entered(cont_fd), link.iproute() as cont:
            host_name = link.create_veth(cont, args.ifname, mtu, "", host_fd)
            undo.append(lambda: link.delete_in_netns(cont_fd, args.ifname))
            cont_link = link.by_name(cont, args.ifname)
            assert cont_link is not None
            with ns.entered(host_fd), link.iproute() as host_tmp:
                host_link = link.by_name(host_tmp, host_name)
                assert host_link is not None
                link.set_up(host_tmp, host_link.index)
            for ipc in result.ips:
                ipc.interface = 1
            result.interfaces = [Interface(host_name, host_link.mac),
                                 Interface(args.ifname, cont_link.mac, sandbox=args.netns)]
            if any(ip.address.version == 6 for ip in result.ips):
                _try(sysctl.write, f"net/ipv6/conf/{args.ifname}/accept_dad", "0")
            configure_iface(cont, args.ifname, result)
            _point_to_point_routes(cont, cont_link.index, result)
        with link.iproute() as host:
            veth = link.by_name(host, host_name)
            assert veth is not None
            for ipc in result.ips:
                bits = ipc.address.max_prefixlen
                if ipc.gateway is None:
                    raise PluginError(f"IPAM gave no gateway for {ipc.address}")
                host.addr("add", index=veth.index, address=str(ipc.gateway), prefixlen=bits)
                _route(host, dst=f"{ipc.address.ip}/{bits}", oif=veth.index, scope=RT_SCOPE_HOST,
                       family=_family(ipc.address), exist_ok=True)
        if ip_masq:
            chain, note = ipmasq.chain_name(args.config["name"], args.container_id), \
                ipmasq.comment(args.config["name"], args.container_id)
            undo.append(lambda: [ipmasq.teardown(ip.address, chain, note) for ip in result.ips])
            for ipc in result.ips:
                ipmasq.setup(ipc.address, chain, note)
        if not dns.is_empty():
            result.dns = dns
        undo.clear()
        return result
    finally:
        for step in reversed(undo):
            _try(step)
        os.close(cont_fd)
        os.close(host_fd)


def _point_to_point_routes(ipr: Any, index: int, result: Result) -> None:
    """Swap the connected subnet route for `gw/32 scope link` + `subnet via gw`."""
    from pyroute2 import NetlinkError

    for ipc in result.ips:
        net = ipc.address.network
        family = _family(ipc.address)
        try:
            # The connected route the kernel added: proto kernel, scope link (v4) / universe (v6).
            ipr.route("del", dst=str(net), oif=index, family=family, proto=2,
                      scope=RT_SCOPE_LINK if ipc.address.version == 4 else RT_SCOPE_UNIVERSE)
        except NetlinkError as exc:
            raise PluginError(f"failed to delete route {net}: {exc}") from None
        bits = ipc.address.max_prefixlen
        _route(ipr, dst=f"{ipc.gateway}/{bits}", oif=index, scope=RT_SCOPE_LINK, prefsrc=str(ipc.address.ip),
               family=family)
        _route(ipr, dst=str(net), oif=index, gateway=str(ipc.gateway), prefsrc=str(ipc.address.ip),
               family=family)


def _route(ipr: Any, *, exist_ok: bool = False, **spec: Any) -> None:
    from pyroute2 import NetlinkError

    try:
        ipr.route("add", proto=RTPROT_BOOT, **spec)
    except NetlinkError as exc:
        if not (exist_ok and exc.code == 17):
            raise PluginError(f"failed to add route {spec.get('dst')}: {exc}") from None


def _family(address: IPInterface) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def cmd_del(args: CmdArgs) -> None:
    from dataplane.cni.ip import ipmasq, link, ns

    ip_masq, _mtu, ipam_type, _dns = _load(args)
    delegate.delete(ipam_type, args)
    if not args.netns:
        return
    try:
        with ns.netns_path(args.netns), link.iproute() as cont:
            found = link.delete_by_name_collect(cont, args.ifname) or []
    except ns.NetnsGone:
        return
    if ip_masq:
        chain, note = ipmasq.chain_name(args.config["name"], args.container_id), \
            ipmasq.comment(args.config["name"], args.container_id)
        for cidr in found:
            ipmasq.teardown(ipaddress.ip_interface(cidr), chain, note)


def cmd_check(args: CmdArgs) -> None:
    from dataplane.cni.ip import link, ns
    from dataplane.cni.plugins import _check

    _ip_masq, _mtu, ipam_type, _dns = _load(args)
    delegate.check(ipam_type, args)
    prev = args.prev_result()
    if prev is None:
        raise PluginError("Required prevResult missing")
    rec = _check.container_iface(prev, args)
    with ns.netns_path(args.netns), link.iproute() as cont:
        _check.container_link(cont, args, rec)
        _check.addresses_and_routes(cont, args.ifname, prev)


def cmd_status(args: CmdArgs) -> None:
    delegate.status(_load(args)[2], args)


def cmd_gc(args: CmdArgs) -> None:
    delegate.gc(_load(args)[2], args)


def _try(fn: Any, *a: Any) -> None:
    try:
        fn(*a)
    except Exception as exc:  # noqa: BLE001 - best effort, logged
        print(f"ptp: ignoring: {exc}", file=sys.stderr)


PLUGIN = PluginSpec(name="ptp", add=cmd_add, check=cmd_check, delete=cmd_del, status=cmd_status, gc=cmd_gc)


def main() -> None:
    _main(PLUGIN)


if __name__ == "__main__":
    main()
