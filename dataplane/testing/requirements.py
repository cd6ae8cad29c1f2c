"""Probes for what this machine can do, so tests skip (and say why) instead of failing.

Each probe runs once per process. Link kinds are probed by creating one inside a scratch
namespace, never in the root namespace.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil

from dataplane.netns import namespace

FEATURES = ("root", "netns", "veth", "bridge", "vxlan", "tun", "dummy", "ipvs", "iptables-legacy",
            "iptables-nft", "nft", "conntrack", "ipset", "podman", "reference-plugins")

REFERENCE_PLUGIN_DIR = "/usr/lib/cni"


def _scratch_link(kind: str, **extra: object) -> str | None:
    from pyroute2 import IPRoute

    name = f"dpprobe{secrets.token_hex(3)}"
    try:
        namespace.create(name)
    except Exception as exc:  # noqa: BLE001 - any failure means "no netns here"
        return f"cannot create a network namespace: {exc}"
    try:
        with namespace.entered(name), IPRoute() as ipr:
            spec: dict[str, object] = {"ifname": "probe0", "kind": kind, **extra}
            ipr.link("add", **spec)
        return None
    except Exception as exc:  # noqa: BLE001
        return f"the kernel cannot create a {kind} link: {exc}"
    finally:
        namespace.remove(name)


def _tool_in_netns(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} is not installed"
    name = f"dpprobe{secrets.token_hex(3)}"
    try:
        namespace.create(name)
    except Exception as exc:  # noqa: BLE001
        return f"cannot create a network namespace: {exc}"
    try:
        res = namespace.run(name, argv, check=False)
        if res.returncode != 0:
            return f"`{' '.join(argv)}` fails here: {(res.stderr or res.stdout).strip()[:200]}"
        return None
    finally:
        namespace.remove(name)


@functools.cache
def missing(feature: str) -> str | None:
    """None when `feature` is available, else a sentence saying what is missing."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; known: {', '.join(FEATURES)}")
    if feature == "root":
        return None if os.geteuid() == 0 else "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    if os.geteuid() != 0:
        return f"{feature}: needs root"
    if feature == "netns":
        return _scratch_link("bridge") if shutil.which("nsenter") else "nsenter is not installed"
    if feature in ("veth",):
        return _scratch_link("veth", peer={"ifname": "probe1"})
    if feature == "vxlan":
        return _scratch_link("vxlan", vxlan_id=42)
    if feature in ("bridge", "dummy"):
        return _scratch_link(feature)
    if feature == "tun":
        return None if os.path.exists("/dev/net/tun") else "no /dev/net/tun"
    if feature == "ipvs":
        return None if os.path.exists("/proc/net/ip_vs") else "the kernel has no IPVS (CONFIG_IP_VS)"
    if feature == "iptables-legacy":
        return _tool_in_netns(["iptables-legacy", "-t", "nat", "-S"])
    if feature == "iptables-nft":
        return _tool_in_netns(["iptables-nft", "-t", "nat", "-S"])
    if feature == "nft":
        return _tool_in_netns(["nft", "list", "ruleset"])
    if feature == "conntrack":
        return _tool_in_netns(["conntrack", "-L"])
    if feature == "ipset":
        return _tool_in_netns(["ipset", "list"])
    if feature == "podman":
        return None if shutil.which("podman") and shutil.which("runc") else "podman or runc is not installed"
    if feature == "reference-plugins":
        need = ("bridge", "host-local", "loopback", "ptp", "portmap")
        absent = [p for p in need if not os.access(os.path.join(REFERENCE_PLUGIN_DIR, p), os.X_OK)]
        return f"reference CNI plugins missing in {REFERENCE_PLUGIN_DIR}: {', '.join(absent)}" if absent else None
    raise AssertionError(feature)


def require(*features: str) -> None:
    """Skip the calling test unless every feature is available (pytest.skip with the reason)."""
    import pytest

    for feature in features:
        reason = missing(feature)
        if reason:
            pytest.skip(f"missing {feature}: {reason}")

