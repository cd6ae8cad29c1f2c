"""Links: veth pairs and bridges, created in the root namespace or inside a named one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dataplane.netns import namespace

IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL


def check_ifname(name: str) -> None:
    if not name or len(name) >= IFNAMSIZ or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid interface name {name!r}")


@contextlib.contextmanager
def iproute(netns: str | None = None) -> Iterator["object"]:
    """An IPRoute socket in the root namespace (netns=None) or inside `netns`."""
    from pyroute2 import IPRoute

    if netns is None:
        with IPRoute() as ipr:
            yield ipr
    else:
        with namespace.entered(netns), IPRoute() as ipr:
            yield ipr


def exists(name: str, netns: str | None = None) -> bool:
    with iproute(netns) as ipr:
        return bool(ipr.link_lookup(ifname=name))


def names(netns: str | None = None) -> list[str]:
    with iproute(netns) as ipr:
        return sorted(link.get("ifname") for link in ipr.get_links())


def add_veth(name: str, peer: str, *, netns: str | None = None, peer_netns: str | None = None,
             up: bool = True) -> None:
    """Create a veth pair: `name` in `netns`, `peer` in `peer_netns` (None = root namespace)."""
    check_ifname(name)
    check_ifname(peer)
    peer_spec: dict[str, object] = {"ifname": peer}
    if peer_netns is not None:
        peer_spec["net_ns_fd"] = namespace.path_of(peer_netns)
    with iproute(netns) as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=peer_spec)
        if up:
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    if up:
        with iproute(peer_netns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=peer)[0], state="up")


def add_bridge(name: str, *, netns: str | None = None, up: bool = True) -> None:
    check_ifname(name)
    with iproute(netns) as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        if up:
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")


def set_master(name: str, master: str, *, netns: str | None = None) -> None:
    with iproute(netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0],
                 master=ipr.link_lookup(ifname=master)[0])


def delete(name: str, *, netns: str | None = None) -> None:
    """Delete a link if it exists (deleting one veth end removes its peer too)."""
    with iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            ipr.link("del", index=idx[0])
