"""The bridge plugin: a veth pair from the container to a Linux bridge in the calling namespace.

Follows the reference (plugins/main/bridge) step by step; where it is knowingly weak we do
better and say so: a failed ADD removes what it built, and DEL tears down ipMasq rules using
prevResult when the container namespace is already gone (plugins#810).
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from dataplane.cni.ipam import delegate
from dataplane.cni.plugins._netconf import field, mac_from
from dataplane.cni.spec.errors import CNIError, PluginError
from dataplane.cni.spec.skeleton import CmdArgs, PluginSpec
from dataplane.cni.spec.skeleton import main as _main
from dataplane.cni.spec.types import DNS, Interface, IPInterface, Result, Route

DEFAULT_BRIDGE = "cni0"


@dataclass
class BridgeConf:
    name: str
    bridge: str
    is_gateway: bool
    is_default_gateway: bool
    force_address: bool
    ip_masq: bool
    mtu: int
    hairpin: bool
    promisc: bool
    ipam_type: str
    dns: DNS
    mac: str

    @classmethod
    def load(cls, args: CmdArgs) -> "BridgeConf":
        conf = args.config
        bridge = field(conf, "bridge", str, "") or DEFAULT_BRIDGE
        if len(bridge) > 15 or "/" in bridge or any(c.isspace() for c in bridge):
            raise PluginError(f'invalid bridge name "{bridge}"')
        mtu = field(conf, "mtu", int, 0)
        if mtu < 0 or (mtu and mtu < 68) or mtu > 65535:
            raise PluginError(f"invalid MTU {mtu}")
        # Reference features this implementation does not have: refuse rather than ignore.
        for key, kind in (("vlan", int), ("vlanTrunk", list), ("macspoofchk", bool), ("enabledad", bool),
                          ("disableContainerInterface", bool), ("portIsolation", bool)):
            if field(conf, key, kind, None):
                raise PluginError(f"{key} is not supported by this bridge plugin")
        if field(conf, "ipMasqBackend", str, "") not in ("", "iptables"):
            raise PluginError('ipMasqBackend: only "iptables" is supported by this bridge plugin')
        hairpin = field(conf, "hairpinMode", bool, False)
        promisc = field(conf, "promiscMode", bool, False)
        if hairpin and promisc:
            raise PluginError("cannot set hairpin mode and promiscuous mode at the same time.")
        try:
            dns = DNS.from_dict(field(conf, "dns", dict, None))
        except ValueError as exc:
            raise PluginError(f"failed to load netconf: {exc}") from None
        default_gw = field(conf, "isDefaultGateway", bool, False)
        return cls(conf["name"], bridge, field(conf, "isGateway", bool, False) or default_gw, default_gw,
                   field(conf, "forceAddress", bool, False), field(conf, "ipMasq", bool, False), mtu,
                   hairpin, promisc, delegate.ipam_type(conf), dns, mac_from(conf, args.args))


def cmd_add(args: CmdArgs) -> Result:
    from dataplane.cni.ip import link, ns

    n = BridgeConf.load(args)
    cont_fd = ns.open_netns(args.netns)
    host_fd = ns.own_netns()
    undo: list[Any] = []    # what to take back, in reverse, if the ADD fails half-way
    try:
        with link.iproute() as host:
            br, veth, cont_link = _plug_veth(host, n, args, cont_fd, host_fd, undo)
            interfaces = [Interface(n.bridge, br.mac), Interface(veth.name, veth.mac),
                          Interface(args.ifname, cont_link.mac, sandbox=args.netns)]
            if n.ipam_type:
                result = delegate.add(n.ipam_type, args)
                undo.append(lambda: delegate.delete(n.ipam_type, args))
                result.interfaces = interfaces
                _configure_l3(host, br, n, args, cont_fd, result, undo)
            else:
                result = Result(interfaces=interfaces)
                with ns.entered(cont_fd), link.iproute() as cont:
                    link.set_up(cont, cont_link.index)
            _wait_port_up(host, veth.index)
            # Re-read the MACs: the bridge's may change when a port joins or an address is set.
            for iface in result.interfaces[:2]:
                now = link.by_name(host, iface.name)
                iface.mac = now.mac if now else iface.mac
        if not n.dns.is_empty():
            result.dns = n.dns
        undo.clear()
        return result
    finally:
        for step in reversed(undo):
            _try(step)
        os.close(cont_fd)
        os.close(host_fd)


def _plug_veth(host: Any, n: BridgeConf, args: CmdArgs, cont_fd: int, host_fd: int,
               undo: list[Any]) -> tuple[Any, Any, Any]:
    """Ensure the bridge, create the veth pair and attach its host end; returns the three links."""
    from dataplane.cni.ip import link, ns, sysctl

    br, created = link.ensure_bridge(host, n.bridge, n.mtu, n.promisc)
    if created:
        undo.append(lambda: _remove_bridge_if_unused(n.bridge))
    _try(sysctl.write, f"net/ipv6/conf/{n.bridge}/accept_ra", "0")
    with ns.entered(cont_fd), link.iproute() as cont:
        host_veth = link.create_veth(cont, args.ifname, n.mtu, n.mac, host_fd)
        undo.append(lambda: link.delete_in_netns(cont_fd, args.ifname))
        cont_link = link.by_name(cont, args.ifname)
    veth = link.by_name(host, host_veth)
    if veth is None or cont_link is None:
        raise PluginError(f"failed to lookup veth pair {args.ifname}/{host_veth}")
    _try(sysctl.write, f"net/ipv6/conf/{host_veth}/accept_ra", "0")
    host.link("set", index=veth.index, state="up", master=br.index)  # one RTM_NEWLINK for both
    if n.hairpin:
        host.link("set", index=veth.index, kind="bridge_slave", mode=1)   # IFLA_BRPORT_MODE
    return br, veth, cont_link


def _configure_l3(host: Any, br: Any, n: BridgeConf, args: CmdArgs, cont_fd: int, result: Result,
                  undo: list[Any]) -> None:
    """Addresses and routes in the container, gateways on the bridge, forwarding, ipMasq."""
    from dataplane.cni.ip import ipmasq, link, ns, sysctl
    from dataplane.cni.ip.configure import configure_iface

    if not result.ips:
        raise PluginError("IPAM plugin returned missing IP config")
    gateways = _gateways(result, n)
    with ns.entered(cont_fd), link.iproute() as cont:
        if any(ip.address.version == 6 for ip in result.ips):
            # No DAD: hairpin echoes our own solicitations back, and waiting for DAD is slow.
            _try(sysctl.write, f"net/ipv6/conf/{args.ifname}/accept_dad", "0")
        _try(sysctl.write, f"net/ipv4/conf/{args.ifname}/arp_notify", "1")
        configure_iface(cont, args.ifname, result)
    if n.is_gateway:
        for gw in gateways:
            _ensure_bridge_addr(host, br, gw, n.force_address)
        for version in sorted({gw.version for gw in gateways}):
            sysctl.enable_forwarding(version)
        # Pin the bridge's current MAC, so it stops following its ports' MACs.
        current = link.by_name(host, n.bridge)
        if current is not None and current.mac != "00:00:00:00:00:00":
            host.link("set", index=br.index, address=current.mac)
    if n.ip_masq:
        chain, note = ipmasq.chain_name(n.name, args.container_id), ipmasq.comment(n.name, args.container_id)
        undo.append(lambda: [ipmasq.teardown(ip.address, chain, note) for ip in result.ips])
        for ip in result.ips:
            ipmasq.setup(ip.address, chain, note)


def cmd_del(args: CmdArgs) -> None:
    from dataplane.cni.ip import ipmasq, link, ns

    n = BridgeConf.load(args)
    addresses: list[IPInterface] = []
    if args.netns:
        try:
            with ns.netns_path(args.netns), link.iproute() as cont:
                found = link.delete_by_name_collect(cont, args.ifname)
            addresses = [ipaddress.ip_interface(a) for a in found or []]
        except ns.NetnsGone:
            pass
    if n.ipam_type:
        delegate.delete(n.ipam_type, args)
    if n.ip_masq:
        if not addresses:
            addresses = _prev_addresses(args)
        chain, note = ipmasq.chain_name(n.name, args.container_id), ipmasq.comment(n.name, args.container_id)
        for address in addresses:
            ipmasq.teardown(address, chain, note)


def cmd_check(args: CmdArgs) -> None:
    from dataplane.cni.ip import link, ns
    from dataplane.cni.plugins import _check

    n = BridgeConf.load(args)
    if n.ipam_type:
        delegate.check(n.ipam_type, args)
    prev = args.prev_result()
    if prev is None:
        raise PluginError("Required prevResult missing")
    br_rec = next((i for i in prev.interfaces if i.name == n.bridge), None)
    with link.iproute() as host:
        br = link.by_name(host, n.bridge)
        if br is None:
            raise PluginError(f'failed to lookup bridge "{n.bridge}"')
        if br.kind != "bridge":
            raise PluginError(f'"{n.bridge}" already exists but is not a bridge')
        if br_rec is not None and br_rec.mac and br_rec.mac != br.mac:
            raise PluginError(f"bridge {n.bridge} has MAC {br.mac}, not {br_rec.mac}")
        if n.promisc and not br.promisc:
            raise PluginError(f"bridge {n.bridge} is not in promiscuous mode")
        cont_rec = _check.container_iface(prev, args)
        with ns.netns_path(args.netns), link.iproute() as cont:
            peer_index = _check.container_link(cont, args, cont_rec)
            _check.addresses_and_routes(cont, args.ifname, prev)
        # The container end's IFLA_LINK is its peer's index in this (the host) namespace.
        ports = [l for l in link.all_links(host) if l.kind == "veth" and l.master == br.index
                 and l.index == peer_index]
        if not ports:
            raise PluginError(f"no veth on bridge {n.bridge} is the peer of {args.ifname}")


def cmd_status(args: CmdArgs) -> None:
    n = BridgeConf.load(args)
    if n.ipam_type:
        delegate.status(n.ipam_type, args)


def cmd_gc(args: CmdArgs) -> None:
    """Forward GC to IPAM, then drop masquerade rules of containers that are no longer valid."""
    from dataplane.cni.ip import ipmasq
    from dataplane.cni.ipam.host_local.commands import valid_attachments

    n = BridgeConf.load(args)
    errors = []
    if n.ipam_type:
        try:
            delegate.gc(n.ipam_type, args)
        except CNIError as exc:
            errors.append(str(exc))
    if n.ip_masq:
        keep = {cid for cid, _ifname in valid_attachments(args.config)}
        try:
            ipmasq.remove_stale(n.name, keep)
        except PluginError as exc:
            errors.append(str(exc))
    if errors:
        raise PluginError("; ".join(errors))


def _gateways(result: Result, n: BridgeConf) -> list[IPInterface]:
    """Fill in gateways, add default routes and list bridge addresses (the reference's calcGateways)."""
    have_default: set[int] = set()
    gateways: list[IPInterface] = []
    for ipc in result.ips:
        version = ipc.address.version
        ipc.interface = 2
        if ipc.gateway is None and n.is_gateway:
            ipc.gateway = ipc.address.network.network_address + 1
        if n.is_default_gateway and version not in have_default:
            default = "0.0.0.0/0" if version == 4 else "::/0"
            if not any(r.gw is not None and str(r.dst) == default for r in result.routes):
                result.routes.append(Route(ipaddress.ip_interface(default), ipc.gateway))
            have_default.add(version)
        if n.is_gateway and ipc.gateway is not None:
            gateways.append(ipaddress.ip_interface(f"{ipc.gateway}/{ipc.address.network.prefixlen}"))
    return gateways


def _ensure_bridge_addr(host: Any, br: Any, gw: IPInterface, force: bool) -> None:
    """Put the gateway on the bridge; a conflicting address is an error unless forceAddress."""
    from pyroute2 import NetlinkError

    from dataplane.cni.ip import link

    family = 2 if gw.version == 4 else 10
    for addr, prefix, _scope in link.addresses(host, br.index, family):
        have = ipaddress.ip_interface(f"{addr}/{prefix}")
        if have == gw:
            return
        if gw.version == 4 or gw.ip in have.network or have.ip in gw.network:
            if not force:
                raise PluginError(f'"{br.name}" already has an IP address different from {gw}')
            host.addr("del", index=br.index, address=addr, prefixlen=prefix)
    try:
        host.addr("add", index=br.index, address=str(gw.ip), prefixlen=gw.network.prefixlen)
    except NetlinkError as exc:
        if exc.code != 17:
            raise PluginError(f'could not add IP address to "{br.name}": {exc}') from None


def _wait_port_up(host: Any, index: int) -> None:
    for sleep_ms in (0, 50, 500, 1000, 1000):
        time.sleep(sleep_ms / 1000)
        try:
            msg = host.get_links(index)[0]  # one RTM_GETLINK: admin state and operstate together
        except Exception:  # noqa: BLE001 - ENODEV: not there (yet)
            continue
        if msg["flags"] & 1 and str(msg.get_attr("IFLA_OPERSTATE") or "") in ("up", "UP"):
            return
    raise PluginError(f"bridge port in error state: {_operstate(host, index)}")


def _operstate(host: Any, index: int) -> str:
    msg = host.get_links(index)[0]
    return str(msg.get_attr("IFLA_OPERSTATE") or "unknown")


def _prev_addresses(args: CmdArgs) -> list[IPInterface]:
    try:
        prev = args.prev_result()
    except Exception:  # noqa: BLE001 - a bad prevResult must not block DEL
        return []
    return [ip.address for ip in prev.ips] if prev else []


def _remove_bridge_if_unused(name: str) -> None:
    from dataplane.cni.ip import link

    with link.iproute() as ipr:
        link.delete_bridge_if_unused(ipr, name)


def _try(fn: Any, *a: Any) -> None:
    try:
        fn(*a)
    except Exception as exc:  # noqa: BLE001 - best effort, logged
        print(f"bridge: ignoring: {exc}", file=sys.stderr)


PLUGIN = PluginSpec(name="bridge", add=cmd_add, check=cmd_check, delete=cmd_del, status=cmd_status, gc=cmd_gc)


def main() -> None:
    _main(PLUGIN)


if __name__ == "__main__":
    main()
