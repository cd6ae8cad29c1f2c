"""Put a result's addresses and routes on an interface (the reference's ipam.ConfigureIface)."""

from __future__ import annotations

import socket
import time
from typing import Any

from dataplane.cni.ip import link, sysctl
from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.types import IPAddress, Result


def _nl_error(exc: Exception) -> str:
    return exc.args[1] if len(getattr(exc, "args", ())) > 1 else str(exc)


def configure_iface(ipr: Any, ifname: str, result: Result) -> None:
    """Add the result's IPs meant for `ifname`, set it up, then add the result's routes."""
    from pyroute2 import NetlinkError

    if not result.interfaces:
        raise PluginError("no interfaces to configure")
    dev = link.by_name(ipr, ifname)
    if dev is None:
        raise PluginError(f'failed to lookup "{ifname}": Link not found')
    v4gw: IPAddress | None = None
    v6gw: IPAddress | None = None
    ipv6_enabled = False
    for ipc in result.ips:
        if ipc.interface is None:
            continue
        if not 0 <= ipc.interface < len(result.interfaces) or result.interfaces[ipc.interface].name != ifname:
            raise PluginError(f'failed to add IP addr {ipc.address} to "{ifname}": invalid interface index')
        if ipc.address.version == 6 and not ipv6_enabled:
            for name in ("lo", ifname):
                key = f"net/ipv6/conf/{name}/disable_ipv6"
                if sysctl.read(key) not in (None, "0"):
                    sysctl.write(key, "0")
            ipv6_enabled = True
        try:
            ipr.addr("add", index=dev.index, address=str(ipc.address.ip), prefixlen=ipc.address.network.prefixlen)
        except NetlinkError as exc:
            raise PluginError(f'failed to add IP addr {ipc.address} to "{ifname}": {_nl_error(exc)}') from None
        if ipc.gateway is not None:
            if ipc.gateway.version == 4 and v4gw is None:
                v4gw = ipc.gateway
            elif ipc.gateway.version == 6 and v6gw is None:
                v6gw = ipc.gateway
    link.set_up(ipr, dev.index)
    if v6gw is not None:
        settle_addresses(ipr, dev.index)
    for route in result.routes:
        gw = route.gw or (v4gw if route.dst.version == 4 else v6gw)
        spec: dict[str, Any] = {"dst": str(route.dst.network), "oif": dev.index, "proto": 3,  # RTPROT_BOOT, as netlink (Go) adds them
                                "family": socket.AF_INET if route.dst.version == 4 else socket.AF_INET6}
        if gw is not None:
            spec["gateway"] = str(gw)
        if route.priority:
            spec["priority"] = route.priority
        if route.table is not None:
            spec["table"] = route.table
        if route.scope is not None:
            spec["scope"] = route.scope
        if route.mtu:
            spec["metrics"] = {"RTAX_MTU": route.mtu}
        try:
            ipr.route("add", **spec)
        except NetlinkError as exc:
            raise PluginError(f"failed to add route '{route.dst.network} via {gw} dev {ifname}': "
                              f"{_nl_error(exc)}") from None


def settle_addresses(ipr: Any, index: int, timeout: float = 5.0) -> None:
    """Wait until no IPv6 address of the link is tentative (DAD done), as the reference does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flags = [a.get_attr("IFA_FLAGS") or a["flags"] for a in ipr.get_addr(index=index, family=socket.AF_INET6)]
        tentative = [f for f in flags if f & 0x40 and not f & 0x08]  # IFA_F_TENTATIVE, not DADFAILED
        if not tentative:
            return
        time.sleep(0.05)
