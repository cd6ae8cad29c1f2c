"""host-local's ADD, DEL, CHECK, STATUS and GC."""

from __future__ import annotations

import os
import sys

from dataplane.cni.spec.errors import NOT_AVAILABLE, CNIError, PluginError
from dataplane.cni.spec.skeleton import CmdArgs
from dataplane.cni.spec.types import DNS, IPAddress, Result
from dataplane.cni.ipam.host_local import config as ipam_config
from dataplane.cni.ipam.host_local.allocator import Allocator
from dataplane.cni.ipam.host_local.dns import parse_resolv_conf
from dataplane.cni.ipam.host_local.store import DiskStore


def cmd_add(args: CmdArgs) -> Result:
    conf = ipam_config.load(args.config, args.args)
    dns = parse_resolv_conf(conf.resolv_conf) if conf.resolv_conf else DNS()
    store = DiskStore(conf.name, conf.data_dir)
    pending: dict[str, IPAddress] = {str(ip): ip for ip in conf.requested}
    result = Result(dns=dns, routes=list(conf.routes))
    allocated: list[IPAddress] = []

    def rollback() -> None:
        with store.locked():
            for ip in allocated:
                store.release(ip)

    for idx, range_set in enumerate(conf.range_sets):
        requested = None
        for key, ip in list(pending.items()):
            if range_set.contains(ip):
                requested = pending.pop(key)
                break
        try:
            with store.locked():
                ip_conf = Allocator(range_set, store, idx).get(args.container_id, args.ifname, requested)
        except (PluginError, OSError) as exc:
            rollback()
            raise PluginError(f"failed to allocate for range {idx}: {exc}") from None
        allocated.append(ip_conf.address.ip)
        result.ips.append(ip_conf)
    if pending:
        rollback()
        raise PluginError("failed to allocate all requested IPs: " + " ".join(pending))
    return result


def cmd_del(args: CmdArgs) -> None:
    conf = ipam_config.load(args.config, args.args)
    store = DiskStore(conf.name, conf.data_dir)
    with store.locked():
        store.release_by_id(args.container_id, args.ifname)


def cmd_check(args: CmdArgs) -> None:
    conf = ipam_config.load(args.config, args.args)
    store = DiskStore(conf.name, conf.data_dir)
    with store.locked():
        found = store.ips_of(args.container_id, args.ifname)
    if not found:
        raise PluginError(f"host-local: Failed to find address added by container {args.container_id}")


def cmd_status(args: CmdArgs) -> None:
    """Ready when the data directory can be created and written."""
    conf = ipam_config.load(args.config, args.args)
    try:
        store = DiskStore(conf.name, conf.data_dir)
    except PluginError as exc:
        raise CNIError(NOT_AVAILABLE, "host-local is not available", str(exc)) from None
    if not os.access(store.dir, os.W_OK):
        raise CNIError(NOT_AVAILABLE, "host-local is not available", f"{store.dir} is not writable")


def cmd_gc(args: CmdArgs) -> None:
    """Release every lease whose (containerID, ifname) is not among the valid attachments."""
    conf = ipam_config.load(args.config, args.args)
    valid = valid_attachments(args.config)
    store = DiskStore(conf.name, conf.data_dir)
    failures = []
    with store.locked():
        for ip, cid, ifname in list(store.leases()):
            if (cid, ifname) in valid or (not ifname and any(c == cid for c, _ in valid)):
                continue
            try:
                store.release(ip)
                print(f"host-local: GC released {ip} ({cid}/{ifname or '-'})", file=sys.stderr)
            except OSError as exc:
                failures.append(f"{ip}: {exc.strerror}")
    if failures:
        raise PluginError("host-local GC could not release: " + "; ".join(failures))


def valid_attachments(config: dict) -> set[tuple[str, str]]:
    """`cni.dev/valid-attachments` (or the legacy `cni.dev/attachments`); absent means none."""
    raw = config.get("cni.dev/valid-attachments")
    if raw is None:
        raw = config.get("cni.dev/attachments")
    if raw is None:
        return set()
    if not isinstance(raw, list):
        raise PluginError("cni.dev/valid-attachments must be a list")
    valid = set()
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise PluginError("cni.dev/valid-attachments entries need string containerID and ifname")
        valid.add((item["containerID"], item["ifname"]))
    return valid
