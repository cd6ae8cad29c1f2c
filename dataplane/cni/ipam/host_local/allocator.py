"""Round-robin allocation over one range set (the reference's allocator.go).

The walk starts after `last_reserved_ip.<i>` (or at the first range's start), goes through each
range start..end inclusive, wraps to the next range, skips the gateway, and gives up when it is
back where it started.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.types import IPAddress, IPConfig
from dataplane.cni.ipam.host_local.ranges import Range, RangeError, RangeSet
from dataplane.cni.ipam.host_local.store import DiskStore


class Allocator:
    def __init__(self, range_set: RangeSet, store: DiskStore, range_id: int) -> None:
        self.range_set = range_set
        self.store = store
        self.range_id = range_id

    def get(self, container_id: str, ifname: str, requested: IPAddress | None) -> IPConfig:
        """Reserve one IP (the requested one, or the next free one); caller holds the lock."""
        if requested is not None:
            try:
                r = self.range_set.range_for(requested)
            except RangeError as exc:
                raise PluginError(str(exc)) from None
            if requested == r.gateway:
                raise PluginError(f"requested ip {requested} is subnet's gateway")
            if not self.store.reserve(container_id, ifname, requested, self.range_id):
                raise PluginError(f"requested IP address {requested} is not available in range set "
                                  f"{self.range_set}")
            return _config(requested, r)
        for ip in self.store.ips_of(container_id, ifname):
            if self.range_set.contains(ip):
                raise PluginError(f"{ip} has been allocated to {container_id}, duplicate allocation is not allowed")
        for ip, r in self.candidates():
            if self.store.reserve(container_id, ifname, ip, self.range_id):
                return _config(ip, r)
        raise PluginError(f"no IP addresses available in range set: {self.range_set}")

    def candidates(self) -> Iterator[tuple[IPAddress, Range]]:
        """Every allocatable IP once, in round-robin order (the reference's RangeIter)."""
        ranges = self.range_set
        last = self.store.last_reserved_ip(self.range_id)
        idx, cur = 0, None
        if last is not None and ranges.contains(last):
            idx = next(i for i, r in enumerate(ranges) if r.contains(last))
            cur = last
        start: IPAddress | None = None
        while True:
            r = ranges[idx]
            if cur is None:
                cur = r.range_start
            elif cur == r.range_end:
                idx = (idx + 1) % len(ranges)
                r = ranges[idx]
                cur = r.range_start
            else:
                cur = cur + 1
            if start is None:
                start = cur
            elif cur == start:
                return
            if cur != r.gateway:
                yield cur, r


def _config(ip: IPAddress, r: Range) -> IPConfig:
    return IPConfig(ipaddress.ip_interface(f"{ip}/{r.subnet.prefixlen}"), r.gateway)
