"""Ranges and range sets, canonicalised exactly as the reference allocator does (range.go)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dataplane.cni.spec.types import IPAddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RangeError(ValueError):
    """A range or range set that cannot be allocated from."""


@dataclass
class Range:
    """One allocatable span of a subnet; start and end inclusive."""

    subnet: Network
    range_start: IPAddress
    range_end: IPAddress
    gateway: IPAddress

    def contains(self, ip: IPAddress) -> bool:
        return (ip.version == self.subnet.version and ip in self.subnet
                and self.range_start <= ip <= self.range_end)

    def overlaps(self, other: "Range") -> bool:
        if self.subnet.version != other.subnet.version:
            return False
        return (self.contains(other.range_start) or self.contains(other.range_end)
                or other.contains(self.range_start) or other.contains(self.range_end))

    def __str__(self) -> str:
        return f"{self.range_start}-{self.range_end}"

    @classmethod
    def parse(cls, obj: object) -> "Range":
        """Read and canonicalise one range object ({subnet, rangeStart, rangeEnd, gateway})."""
        if not isinstance(obj, dict):
            raise RangeError("a range must be a JSON object")
        subnet_text = obj.get("subnet")
        if not isinstance(subnet_text, str) or not subnet_text:
            raise RangeError(f"invalid CIDR address: {subnet_text if subnet_text is not None else ''}")
        try:
            iface = ipaddress.ip_interface(subnet_text)
            if "/" not in subnet_text:
                raise ValueError
        except ValueError:
            raise RangeError(f"invalid CIDR address: {subnet_text}") from None
        net = iface.network
        bits = net.max_prefixlen
        if net.prefixlen > bits - 2:
            raise RangeError(f"Network {iface.ip}/{net.prefixlen} too small to allocate from")
        if iface.ip != net.network_address:
            raise RangeError(f"network has host bits set. For a subnet mask of length {net.prefixlen} "
                             f"the network address is {net.network_address}")

        def ip_field(key: str) -> IPAddress | None:
            value = obj.get(key)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise RangeError(f"{key} must be a string")
            try:
                return ipaddress.ip_address(value)
            except ValueError:
                raise RangeError(f"invalid IP address {value!r} in {key}") from None

        gateway = ip_field("gateway") or net.network_address + 1
        start = ip_field("rangeStart")
        end = ip_field("rangeEnd")
        unbounded = cls(net, net.network_address, net.broadcast_address, gateway)
        if start is not None and not unbounded.contains(start):
            raise RangeError(f"RangeStart {start} not in network {net}")
        if end is not None and not unbounded.contains(end):
            raise RangeError(f"RangeEnd {end} not in network {net}")
        start = start if start is not None else net.network_address + 1
        if end is None:
            end = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
        if start > end:
            raise RangeError(f"RangeStart {start} is after RangeEnd {end}")
        return cls(net, start, end, gateway)


class RangeSet(list[Range]):
    """Ranges of one family that together yield one address per ADD."""

    @classmethod
    def parse(cls, obj: object) -> "RangeSet":
        if not isinstance(obj, list):
            raise RangeError("a range set must be a list of ranges")
        if not obj:
            raise RangeError("empty range set")
        ranges = cls(Range.parse(r) for r in obj)
        if len({r.subnet.version for r in ranges}) > 1:
            raise RangeError("mixed address families")
        for i, a in enumerate(ranges):
            for b in ranges[i + 1:]:
                if a.overlaps(b):
                    raise RangeError(f"subnets {a} and {b} overlap")
        return ranges

    @property
    def version(self) -> int:
        return self[0].subnet.version

    def contains(self, ip: IPAddress) -> bool:
        return any(r.contains(ip) for r in self)

    def range_for(self, ip: IPAddress) -> Range:
        for r in self:
            if r.contains(ip):
                return r
        raise RangeError(f"{ip} not in range set {self}")

    def overlaps(self, other: "RangeSet") -> bool:
        return any(a.overlaps(b) for a in self for b in other)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self)
