"""Links in the calling thread's namespace: bridges, veth pairs, addresses and routes.

Thin functions over one pyroute2 IPRoute socket each; pyroute2 is imported lazily so that a
plugin which never touches a link (VERSION, host-local) starts fast.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dataplane.cni.spec.errors import PluginError


@contextlib.contextmanager
def iproute() -> Iterator[Any]:
    """An rtnetlink socket bound to the calling thread's current namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        yield ipr


@dataclass
class LinkInfo:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    up: bool
    master: int | None
    flags: int
    promisc: bool
    peer_index: int | None


def _info(msg: Any) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else ""
    flags = msg["flags"]
    return LinkInfo(msg["index"], msg.get_attr("IFLA_IFNAME"), kind or "", msg.get_attr("IFLA_ADDRESS") or "",
                    msg.get_attr("IFLA_MTU") or 0, bool(flags & 1), msg.get_attr("IFLA_MASTER"), flags,
                    bool(flags & 0x100), msg.get_attr("IFLA_LINK"))


def by_name(ipr: Any, name: str) -> LinkInfo | None:
    """One RTM_GETLINK by name (not a dump of every link, which grows with the node's pods)."""
    from pyroute2 import NetlinkError

    try:
        return _info(ipr.link("get", ifname=name)[0])
    except NetlinkError as exc:
        if exc.code == 19:  # ENODEV
            return None
        raise


def by_index(ipr: Any, index: int) -> LinkInfo | None:
    try:
        return _info(ipr.get_links(index)[0])
    except Exception:  # noqa: BLE001 - NetlinkError ENODEV
        return None


def all_links(ipr: Any) -> list[LinkInfo]:
    return [_info(m) for m in ipr.get_links()]


def ensure_bridge(ipr: Any, name: str, mtu: int, promisc: bool) -> tuple[LinkInfo, bool]:
    """Create the bridge if needed (EEXIST is fine), then bring it up (ensureBridge).

    Returns the bridge and whether this call created it (so a failed ADD can remove it).
    """
    from pyroute2 import NetlinkError

    spec: dict[str, Any] = {"ifname": name, "kind": "bridge"}
    if mtu:
        spec["mtu"] = mtu
    created = False
    try:
        ipr.link("add", **spec)
        created = True
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise PluginError(f'could not add "{name}": {exc.args[1] if len(exc.args) > 1 else exc}') from None
    br = by_name(ipr, name)
    if br is None:
        raise PluginError(f'could not lookup "{name}"')
    if br.kind != "bridge":
        raise PluginError(f'"{name}" already exists but is not a bridge')
    if promisc and not br.promisc:
        ipr.link("set", index=br.index, flags=0x100, mask=0x100)
    if not br.up:
        ipr.link("set", index=br.index, state="up")
    return by_name(ipr, name), created  # type: ignore[return-value]


def delete_bridge_if_unused(ipr: Any, name: str) -> None:
    """Remove a bridge we created, unless something got attached to it meanwhile."""
    br = by_name(ipr, name)
    if br is not None and br.kind == "bridge" and not any(l.master == br.index for l in all_links(ipr)):
        ipr.link("del", index=br.index)


def random_veth_name() -> str:
    return "veth" + secrets.token_hex(4)


def create_veth(ipr: Any, name: str, mtu: int, mac: str, host_ns_fd: int) -> str:
    """Create `name` here with its peer in the host namespace; returns the peer's name.

    Like the reference's makeVethPair: the peer gets a random vethXXXXXXXX name (retried on a
    clash), and an existing `name` here is an error.
    """
    from pyroute2 import NetlinkError

    for _ in range(10):
        peer = random_veth_name()
        spec: dict[str, Any] = {"ifname": name, "kind": "veth",
                                "peer": {"ifname": peer, "net_ns_fd": host_ns_fd}}
        if mtu:
            spec["mtu"] = mtu
            spec["peer"]["mtu"] = mtu
        if mac:
            spec["address"] = mac
        try:
            ipr.link("add", **spec)
            return peer
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise PluginError(f"failed to make veth pair: {exc.args[1] if len(exc.args) > 1 else exc}") from None
            if ipr.link_lookup(ifname=name):
                raise PluginError(f"container veth name provided ({name}) already exists") from None
    raise PluginError("failed to find a free name for the host veth")


def set_up(ipr: Any, index: int) -> None:
    ipr.link("set", index=index, state="up")


def addresses(ipr: Any, index: int, family: int | None = None) -> list[tuple[str, int, int]]:
    """(address, prefix, scope) of a link."""
    kw: dict[str, Any] = {"index": index}
    if family is not None:
        kw["family"] = family
    return [(a.get_attr("IFA_ADDRESS"), a["prefixlen"], a["scope"]) for a in ipr.get_addr(**kw)]


def delete_by_name_collect(ipr: Any, name: str) -> list[str] | None:
    """Delete a link and return its global unicast addresses as CIDRs; None if it is absent."""
    import ipaddress

    link = by_name(ipr, name)
    if link is None:
        return None
    found = []
    for addr, prefix, _scope in addresses(ipr, link.index):
        if is_global_unicast(ipaddress.ip_address(addr)):
            found.append(f"{addr}/{prefix}")
    ipr.link("del", index=link.index)
    return found


def is_global_unicast(ip: Any) -> bool:
    """Go's net.IP.IsGlobalUnicast."""
    return not (ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local
                or str(ip) == "255.255.255.255")


def delete_in_netns(netns_fd: int, name: str) -> None:
    """Delete link `name` inside the namespace open at `netns_fd` (undo of a half-made ADD)."""
    from dataplane.cni.ip import ns

    with ns.entered(netns_fd), iproute() as ipr:
        delete_by_name_collect(ipr, name)
