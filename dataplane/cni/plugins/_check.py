"""CHECK helpers shared by bridge and ptp: compare the container side with prevResult."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.skeleton import CmdArgs
from dataplane.cni.spec.types import Interface, Result


def container_iface(prev: Result, args: CmdArgs) -> Interface:
    for iface in prev.interfaces:
        if iface.name == args.ifname and iface.sandbox == args.netns:
            return iface
    raise PluginError(f"Sandbox interface {args.ifname} in {args.netns} is not in prevResult")


def container_link(ipr: Any, args: CmdArgs, rec: Interface) -> int:
    """The container interface must exist, be a veth and keep its MAC; returns its peer index."""
    from dataplane.cni.ip import link

    dev = link.by_name(ipr, args.ifname)
    if dev is None:
        raise PluginError(f"Container Interface name in prevResult: {args.ifname} not found")
    if dev.kind != "veth":
        raise PluginError(f"Error: Container interface {args.ifname} not of type veth")
    if rec.mac and rec.mac != dev.mac:
        raise PluginError(f"Interface MAC {dev.mac} does not match prevResult MAC {rec.mac}")
    return dev.peer_index or 0


def addresses_and_routes(ipr: Any, ifname: str, prev: Result) -> None:
    """Every prevResult address of this interface is there, and every prevResult route too."""
    from dataplane.cni.ip import link

    dev = link.by_name(ipr, ifname)
    assert dev is not None
    have = {ipaddress.ip_interface(f"{a}/{p}") for a, p, _s in link.addresses(ipr, dev.index)}
    for ipc in prev.ips:
        if ipc.interface is not None and prev.interfaces and prev.interfaces[ipc.interface].name != ifname:
            continue
        if ipc.address not in have:
            raise PluginError(f"Failed to match addr {ipc.address} on interface {ifname}")
    for route in prev.routes:
        family = socket.AF_INET if route.dst.version == 4 else socket.AF_INET6
        found = False
        for r in ipr.get_routes(family=family):
            dst = r.get_attr("RTA_DST")
            dst_net = f"{dst}/{r['dst_len']}" if dst else ("0.0.0.0/0" if family == socket.AF_INET else "::/0")
            gw = r.get_attr("RTA_GATEWAY")
            if ipaddress.ip_network(dst_net) != route.dst.network:
                continue
            if route.gw is None or (gw is not None and ipaddress.ip_address(gw) == route.gw):
                found = True
                break
        if not found:
            raise PluginError(f"Failed to match route {route.dst} via {route.gw} in the container")
