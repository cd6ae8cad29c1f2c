"""Packets as real bytes: craft them, parse them into header fields, rewrite them for NAT with correct
checksums, read and write pcap files, and pack header fields into numpy batches for the fast path.

Parsing and rewriting are hand-written (struct, no scapy) because they run per packet; scapy is used
only to craft packets, where its readability is worth its cost. A packet here starts at the IP header
(no link layer), the form netfilter sees and LINKTYPE_RAW stores.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING, BinaryIO

from dataplane.engine.types import IPAddress, PacketMeta

if TYPE_CHECKING:
    import numpy as np

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
ICMP_DEST_UNREACH = 3
ICMPV6_DEST_UNREACH = 1
# ICMP types that quote the offending packet (RFC 792 / RFC 4443): these are "errors".
ICMP_ERROR_TYPES = {3, 4, 5, 11, 12}
ICMPV6_ERROR_TYPES = {1, 2, 3, 4}
ECHO_TYPES = {ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY}

_IPV6_EXT_HEADERS = {0, 43, 60}  # hop-by-hop, routing, destination options (skipped while parsing)


class PacketError(ValueError):
    """The bytes are not a packet this engine understands (says which part is wrong)."""


@dataclass(frozen=True)
class Headers:
    """The fields of one parsed packet, with the offsets needed to rewrite it.

    For ICMP echo, `icmp_id` plays the role conntrack gives it (the "port"). For ICMP errors, `inner`
    holds the quoted packet's headers (possibly truncated: `inner.truncated`).
    """

    family: int
    src: IPAddress
    dst: IPAddress
    proto: int
    length: int  # IP total length as the header says
    l4_offset: int
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    tcp_seq: int = 0
    tcp_ack: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    inner: "Headers | None" = None
    truncated: bool = False  # the L4 header is cut short (only in quoted packets)
    fragment: bool = False  # a non-first fragment: no L4 header
    ttl: int = 64  # IPv4 TTL / IPv6 hop limit

    @property
    def is_icmp_error(self) -> bool:
        return self.inner is not None

    def to_meta(self, *, iif: str | None = None, oif: str | None = None, mark: int = 0) -> PacketMeta:
        """The PacketMeta an evaluator matches on (ports 0 for ICMP, as iptables sees them)."""
        return PacketMeta(family=self.family, src=self.src, dst=self.dst, proto=self.proto,
                          sport=self.sport, dport=self.dport, icmp_type=self.icmp_type,
                          icmp_code=self.icmp_code, tcp_flags=self.tcp_flags, iif=iif, oif=oif,
                          mark=mark, length=self.length, ttl=self.ttl)


# --------------------------------------------------------------------------- parsing

def parse(data: bytes) -> Headers:
    """Parse an IPv4 or IPv6 packet (IP header first). Raises PacketError on malformed input."""
    return _parse(memoryview(data), quoted=False)


def _parse(buf: memoryview, *, quoted: bool) -> Headers:
    if len(buf) < 1:
        raise PacketError("empty packet")
    version = buf[0] >> 4
    if version == 4:
        if len(buf) < 20:
            raise PacketError(f"IPv4 header needs 20 bytes, got {len(buf)}")
        ihl = (buf[0] & 0x0F) * 4
        if ihl < 20 or len(buf) < ihl:
            raise PacketError(f"bad IPv4 header length {ihl}")
        total = struct.unpack_from("!H", buf, 2)[0]
        if not quoted and total > len(buf):
            raise PacketError(f"IPv4 total length {total} exceeds the {len(buf)} bytes given")
        frag = struct.unpack_from("!H", buf, 6)[0] & 0x1FFF
        proto = buf[9]
        src = IPv4Address(bytes(buf[12:16]))
        dst = IPv4Address(bytes(buf[16:20]))
        family, l4, ttl = 4, ihl, buf[8]
        end = len(buf) if quoted else total
    elif version == 6:
        if len(buf) < 40:
            raise PacketError(f"IPv6 header needs 40 bytes, got {len(buf)}")
        payload_len = struct.unpack_from("!H", buf, 4)[0]
        total = 40 + payload_len
        if not quoted and total > len(buf):
            raise PacketError(f"IPv6 payload length {payload_len} exceeds the bytes given")
        proto = buf[6]
        src = IPv6Address(bytes(buf[8:24]))
        dst = IPv6Address(bytes(buf[24:40]))
        family, l4, frag, ttl = 6, 40, 0, buf[7]
        while proto in _IPV6_EXT_HEADERS and l4 + 2 <= len(buf):
            proto, l4 = buf[l4], l4 + (buf[l4 + 1] + 1) * 8
        end = len(buf) if quoted else total
    else:
        raise PacketError(f"not an IP packet (version {version})")
    def base(**kw: object) -> Headers:
        return Headers(family, src, dst, proto, total, l4, ttl=ttl, **kw)  # type: ignore[arg-type]

    if frag:
        return base(fragment=True)
    seg = buf[l4:end]
    if proto == TCP:
        if len(seg) < 20:
            if quoted and len(seg) >= 8:
                sport, dport, seq = struct.unpack_from("!HHI", seg, 0)
                return base(sport=sport, dport=dport, tcp_seq=seq, truncated=True)
            raise PacketError(f"TCP header cut short ({len(seg)} bytes)")
        sport, dport, seq, ack, _off, flags = struct.unpack_from("!HHIIBB", seg, 0)
        return base(sport=sport, dport=dport, tcp_seq=seq, tcp_ack=ack, tcp_flags=flags)
    if proto == UDP:
        if len(seg) < 8:
            raise PacketError(f"UDP header cut short ({len(seg)} bytes)")
        sport, dport = struct.unpack_from("!HH", seg, 0)
        return base(sport=sport, dport=dport)
    if proto in (ICMP, ICMPV6):
        if (proto == ICMP) != (family == 4):
            raise PacketError(f"ICMP protocol {proto} in an IPv{family} packet")
        if len(seg) < 8:
            raise PacketError(f"ICMP header cut short ({len(seg)} bytes)")
        itype, code = seg[0], seg[1]
        errors = ICMP_ERROR_TYPES if proto == ICMP else ICMPV6_ERROR_TYPES
        if itype in errors:
            if quoted:
                raise PacketError("an ICMP error quoting an ICMP error")
            inner = _parse(seg[8:], quoted=True)
            return base(icmp_type=itype, icmp_code=code, inner=inner)
        icmp_id = struct.unpack_from("!H", seg, 4)[0] if itype in ECHO_TYPES else None
        return base(icmp_type=itype, icmp_code=code, icmp_id=icmp_id)
    return base


def meta_of(data: bytes, **kw: object) -> PacketMeta:
    """Bytes -> the PacketMeta evaluators match on (keyword args: iif, oif, mark)."""
    return parse(data).to_meta(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- checksums

def checksum(data: bytes | memoryview) -> int:
    """The Internet checksum (RFC 1071) of `data`, ready to store."""
    b = bytes(data)
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _pseudo_header(family: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if family == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def _csum_adjust(old_csum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 incremental update: the checksum after `old` bytes became `new` (equal lengths)."""
    s = ~old_csum & 0xFFFF
    for i in range(0, len(old), 2):
        s += ~struct.unpack_from("!H", old, i)[0] & 0xFFFF
        s += struct.unpack_from("!H", new, i)[0]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def fix_checksums(data: bytes) -> bytes:
    """Recompute the IPv4 header checksum and the TCP/UDP/ICMP checksum from scratch."""
    buf = bytearray(data)
    h = parse(bytes(buf))
    _fix_l3(buf, h)
    _fix_l4(buf, h)
    return bytes(buf)


def _fix_l3(buf: bytearray, h: Headers, base: int = 0) -> None:
    if h.family == 4:
        ihl = (buf[base] & 0x0F) * 4
        buf[base + 10:base + 12] = b"\0\0"
        buf[base + 10:base + 12] = struct.pack("!H", checksum(buf[base:base + ihl]))


def _fix_l4(buf: bytearray, h: Headers) -> None:
    if h.fragment:
        return
    l4, end = h.l4_offset, h.length
    seg_len = end - l4
    offsets = {TCP: 16, UDP: 6, ICMP: 2, ICMPV6: 2}
    if h.proto not in offsets:
        return
    off = l4 + offsets[h.proto]
    if h.proto == UDP and h.family == 4 and buf[off:off + 2] == b"\0\0":
        return  # IPv4 UDP without a checksum stays without one (RFC 768)
    buf[off:off + 2] = b"\0\0"
    body = bytes(buf[l4:end])
    if h.proto == ICMP:
        value = checksum(body)
    else:  # addresses from the buffer: callers may have rewritten them after parsing
        src, dst = (bytes(buf[12:16]), bytes(buf[16:20])) if h.family == 4 else (bytes(buf[8:24]), bytes(buf[24:40]))
        value = checksum(_pseudo_header(h.family, src, dst, h.proto, seg_len) + body)
        if h.proto == UDP and value == 0:
            value = 0xFFFF
    buf[off:off + 2] = struct.pack("!H", value)


# --------------------------------------------------------------------------- NAT rewrite

def rewrite(data: bytes, *, src: IPAddress | str | None = None, dst: IPAddress | str | None = None,
            sport: int | None = None, dport: int | None = None) -> bytes:
    """The packet with its addresses/ports replaced and every checksum correct.

    For ICMP echo, `sport`/`dport` set the echo identifier (conntrack's "port" for ICMP). The quoted
    packet inside an ICMP error is left alone: use `rewrite_quoted` for it.
    """
    h = parse(data)
    buf = bytearray(data)
    _set_addresses(buf, 0, h.family, src, dst)
    if not h.fragment:
        l4 = h.l4_offset
        if h.proto in (TCP, UDP):
            if sport is not None:
                buf[l4:l4 + 2] = struct.pack("!H", _port(sport))
            if dport is not None:
                buf[l4 + 2:l4 + 4] = struct.pack("!H", _port(dport))
        elif h.icmp_id is not None and (sport is not None or dport is not None):
            buf[l4 + 4:l4 + 6] = struct.pack("!H", _port(sport if sport is not None else dport))
    _fix_l3(buf, h)  # offsets and lengths are unchanged by a rewrite: h still describes them
    _fix_l4(buf, h)
    return bytes(buf)


def decrement_ttl(data: bytes) -> bytes:
    """What forwarding does to the IP header: TTL / hop limit minus one (IPv4 checksum fixed)."""
    buf = bytearray(data)
    off = 8 if buf[0] >> 4 == 4 else 7
    if buf[off] == 0:
        raise PacketError("TTL is already 0")
    buf[off] -= 1
    if off == 8:
        ihl = (buf[0] & 0x0F) * 4
        buf[10:12] = b"\0\0"
        buf[10:12] = struct.pack("!H", checksum(buf[:ihl]))
    return bytes(buf)


def rewrite_quoted(data: bytes, *, src: IPAddress | str | None = None,
                   dst: IPAddress | str | None = None, sport: int | None = None,
                   dport: int | None = None) -> bytes:
    """Rewrite the packet quoted inside an ICMP error, as nf_nat_icmp_reply_translation does.

    The quoted IPv4 header checksum is recomputed, the quoted TCP/UDP checksum (when the quote holds
    it) is adjusted incrementally, and the outer ICMP checksum is recomputed.
    """
    h = parse(data)
    if h.inner is None:
        raise PacketError("not an ICMP error: nothing quoted to rewrite")
    inner = h.inner
    buf = bytearray(data)
    base = h.l4_offset + 8
    end_of_quote = h.length
    old_pseudo = _addr_bytes(buf, base, inner.family)
    _set_addresses(buf, base, inner.family, src, dst)
    new_pseudo = _addr_bytes(buf, base, inner.family)
    ql4 = base + inner.l4_offset
    if inner.family == 4:
        ihl = (buf[base] & 0x0F) * 4
        buf[base + 10:base + 12] = b"\0\0"
        buf[base + 10:base + 12] = struct.pack("!H", checksum(buf[base:base + ihl]))
    if inner.proto in (TCP, UDP) and not inner.fragment and ql4 + 4 <= end_of_quote:
        old_ports = bytes(buf[ql4:ql4 + 4])
        if sport is not None:
            buf[ql4:ql4 + 2] = struct.pack("!H", _port(sport))
        if dport is not None:
            buf[ql4 + 2:ql4 + 4] = struct.pack("!H", _port(dport))
        new_ports = bytes(buf[ql4:ql4 + 4])
        coff = ql4 + (16 if inner.proto == TCP else 6)
        if coff + 2 <= end_of_quote:
            old_c = struct.unpack_from("!H", buf, coff)[0]
            if not (inner.proto == UDP and old_c == 0):
                new_c = _csum_adjust(old_c, old_pseudo + old_ports, new_pseudo + new_ports)
                buf[coff:coff + 2] = struct.pack("!H", new_c)
    elif inner.icmp_id is not None and (sport is not None or dport is not None) \
            and ql4 + 8 <= end_of_quote:
        old = bytes(buf[ql4 + 4:ql4 + 6])
        buf[ql4 + 4:ql4 + 6] = struct.pack("!H", _port(sport if sport is not None else dport))
        old_c = struct.unpack_from("!H", buf, ql4 + 2)[0]
        extra_old = old_pseudo if inner.proto == ICMPV6 else b""
        extra_new = new_pseudo if inner.proto == ICMPV6 else b""
        buf[ql4 + 2:ql4 + 4] = struct.pack("!H", _csum_adjust(old_c, extra_old + old,
                                                                extra_new + bytes(buf[ql4 + 4:ql4 + 6])))
    _fix_l4(buf, h)
    return bytes(buf)


def _port(value: int) -> int:
    if not 0 <= value <= 0xFFFF:
        raise PacketError(f"port {value} is outside 0-65535")
    return value


def _addr_bytes(buf: bytearray, base: int, family: int) -> bytes:
    return bytes(buf[base + 12:base + 20]) if family == 4 else bytes(buf[base + 8:base + 40])


def _set_addresses(buf: bytearray, base: int, family: int, src: IPAddress | str | None,
                   dst: IPAddress | str | None) -> None:
    offsets = (12, 16) if family == 4 else (8, 24)
    for value, off in ((src, offsets[0]), (dst, offsets[1])):
        if value is None:
            continue
        addr = ip_address(value)
        if addr.version != family:
            raise PacketError(f"cannot put IPv{addr.version} address {addr} into an IPv{family} packet")
        buf[base + off:base + off + len(addr.packed)] = addr.packed


# --------------------------------------------------------------------------- crafting (scapy)

def build(src: str | IPAddress, dst: str | IPAddress, proto: str | int, *, sport: int = 0,
          dport: int = 0, flags: str | int = "S", seq: int = 0, ack: int = 0,
          payload: bytes = b"", icmp_type: int | None = None, icmp_code: int = 0,
          icmp_id: int = 0, icmp_seq: int = 0, ttl: int = 64) -> bytes:
    """Craft one TCP, UDP or ICMP echo packet: byte for byte what `build_scapy` makes (a test
    checks), at a fraction of scapy's cost, since labs and benchmarks craft thousands."""
    s, d = ip_address(src), ip_address(dst)
    if s.version != d.version:
        raise PacketError(f"source {s} and destination {d} are of different IP versions")
    pnum = _proto_number(proto, s.version)
    if pnum == TCP:
        fl = flags if isinstance(flags, int) else _tcp_flag_bits(flags)
        l4 = struct.pack("!HHIIBBHHH", _port(sport), _port(dport), seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                         5 << 4, fl, 8192, 0, 0) + payload
    elif pnum == UDP:
        # a non-zero placeholder: fix_checksums leaves a zero IPv4 UDP checksum alone
        l4 = struct.pack("!HHHH", _port(sport), _port(dport), 8 + len(payload), 0xFFFF) + payload
    elif pnum in (ICMP, ICMPV6):
        default = ICMP_ECHO_REQUEST if pnum == ICMP else ICMPV6_ECHO_REQUEST
        t = default if icmp_type is None else icmp_type
        if t not in ECHO_TYPES:
            raise PacketError("build() crafts ICMP echo only; use icmp_error() for errors")
        l4 = struct.pack("!BBHHH", t, icmp_code, 0, icmp_id, icmp_seq) + payload
    else:
        return build_scapy(s, d, pnum, payload=payload, ttl=ttl)
    if s.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, ttl, pnum, 0, s.packed, d.packed)
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), pnum, ttl, s.packed, d.packed)
    return fix_checksums(ip + l4)


_TCP_FLAG_LETTERS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}


def _tcp_flag_bits(flags: str) -> int:
    try:
        return sum(_TCP_FLAG_LETTERS[c] for c in set(flags.upper()))
    except KeyError:
        raise PacketError(f"bad TCP flags {flags!r} (letters F S R P A U E C)") from None


def _proto_number(proto: str | int, version: int) -> int:
    if isinstance(proto, int):
        return proto
    names = {"tcp": TCP, "udp": UDP, "icmp": ICMP if version == 4 else ICMPV6, "icmpv6": ICMPV6}
    if proto.lower() not in names:
        raise PacketError(f"unknown protocol {proto!r} (tcp, udp, icmp, icmpv6 or a number)")
    return names[proto.lower()]


def build_scapy(src: str | IPAddress, dst: str | IPAddress, proto: str | int, *, sport: int = 0,
          dport: int = 0, flags: str | int = "S", seq: int = 0, ack: int = 0,
          payload: bytes = b"", icmp_type: int | None = None, icmp_code: int = 0,
          icmp_id: int = 0, icmp_seq: int = 0, ttl: int = 64) -> bytes:
    """Craft one packet with scapy (the reference for `build`). proto: tcp, udp, icmp or a number.

    For ICMP/ICMPv6 without `icmp_type`, an echo request is built.
    """
    from scapy.layers.inet import ICMP as S_ICMP, IP, TCP as S_TCP, UDP as S_UDP
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.packet import Raw

    s, d = ip_address(src), ip_address(dst)
    if s.version != d.version:
        raise PacketError(f"source {s} and destination {d} are of different IP versions")
    pnum = _proto_number(proto, s.version)
    ip = IP(src=str(s), dst=str(d), ttl=ttl) if s.version == 4 else IPv6(src=str(s), dst=str(d), hlim=ttl)
    if pnum == TCP:
        l4 = S_TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
    elif pnum == UDP:
        l4 = S_UDP(sport=sport, dport=dport)
    elif pnum == ICMP:
        l4 = S_ICMP(type=ICMP_ECHO_REQUEST if icmp_type is None else icmp_type, code=icmp_code,
                    id=icmp_id, seq=icmp_seq)
    elif pnum == ICMPV6:
        t = ICMPV6_ECHO_REQUEST if icmp_type is None else icmp_type
        if t not in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY):
            raise PacketError("build() crafts ICMPv6 echo only; use icmp_error() for errors")
        l4 = (ICMPv6EchoRequest if t == ICMPV6_ECHO_REQUEST else ICMPv6EchoReply)(id=icmp_id, seq=icmp_seq)
    else:
        pkt = ip / Raw(payload)
        if s.version == 4:
            pkt[IP].proto = pnum
        else:
            pkt[IPv6].nh = pnum
        return bytes(pkt)
    return bytes(ip / l4 / Raw(payload)) if payload else bytes(ip / l4)


def icmp_error(original: bytes, *, src: IPAddress | str, icmp_type: int | None = None,
               icmp_code: int = 3, ttl: int = 64) -> bytes:
    """The ICMP error a router or REJECT sends back about `original` (default: port unreachable).

    Quotes as much of the original as icmp_send does: the reply fits in 576 bytes (IPv4) or 1280
    bytes (IPv6, RFC 4443). `icmp_code` for IPv6 is an ICMPv6 code (4 = port unreachable).
    """
    h = parse(original)
    s = ip_address(src)
    if s.version != h.family:
        raise PacketError(f"ICMP error source {s} is not IPv{h.family}")
    quoted = original[:h.length]
    if h.family == 4:
        t = ICMP_DEST_UNREACH if icmp_type is None else icmp_type
        quoted = quoted[:576 - 20 - 8]
        body = struct.pack("!BBHI", t, icmp_code, 0, 0) + quoted
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, ttl, ICMP, 0,
                             s.packed, h.src.packed)
    else:
        t = ICMPV6_DEST_UNREACH if icmp_type is None else icmp_type
        quoted = quoted[:1280 - 40 - 8]
        body = struct.pack("!BBHI", t, icmp_code, 0, 0) + quoted
        header = struct.pack("!IHBB16s16s", 6 << 28, len(body), ICMPV6, ttl, s.packed, h.src.packed)
    return fix_checksums(header + body)


def tcp_reset(original: bytes, ttl: int = 64) -> bytes:
    """The RST that `REJECT --reject-with tcp-reset` sends for a TCP segment (nf_send_reset's rules)."""
    h = parse(original)
    if h.proto != TCP:
        raise PacketError("tcp-reset answers TCP segments only")
    if h.tcp_flags & TCP_RST:
        raise PacketError("the kernel never answers a RST with a RST")
    if h.tcp_flags & TCP_ACK:
        seq, ack, flags = h.tcp_ack, 0, TCP_RST
    else:
        data_len = h.length - h.l4_offset - ((original[h.l4_offset + 12] >> 4) * 4)
        seq = 0
        ack = (h.tcp_seq + data_len + (1 if h.tcp_flags & TCP_SYN else 0)
               + (1 if h.tcp_flags & TCP_FIN else 0)) & 0xFFFFFFFF
        flags = TCP_RST | TCP_ACK
    tcp = struct.pack("!HHIIBBHHH", h.dport, h.sport, seq, ack, 5 << 4, flags, 0, 0, 0)
    if h.family == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, ttl, TCP, 0, h.dst.packed, h.src.packed)
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, 20, TCP, ttl, h.dst.packed, h.src.packed)
    return fix_checksums(ip + tcp)


# --------------------------------------------------------------------------- pcap

LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6 = 1, 101, 113, 228, 229
_PCAP_MAGIC_US, _PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D


def write_pcap(target: str | BinaryIO, packets: Iterable[bytes | tuple[float, bytes]]) -> int:
    """Write IP packets (optionally with timestamps) as a LINKTYPE_RAW pcap. Returns the count."""
    own = isinstance(target, str)
    f: BinaryIO = open(target, "wb") if own else target  # type: ignore[assignment]
    n = 0
    try:
        f.write(struct.pack("<IHHiIII", _PCAP_MAGIC_US, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for item in packets:
            ts, data = (item if isinstance(item, tuple) else (float(n), item))
            sec, usec = int(ts), int(round((ts - int(ts)) * 1e6))
            if usec >= 1_000_000:
                sec, usec = sec + 1, usec - 1_000_000
            f.write(struct.pack("<IIII", sec, usec, len(data), len(data)))
            f.write(data)
            n += 1
    finally:
        if own:
            f.close()
    return n


def read_pcap(source: str | BinaryIO) -> list[tuple[float, bytes]]:
    """Read a pcap file into (timestamp, IP packet) pairs; link headers (Ethernet, SLL) are removed.

    Frames that carry no IP packet (ARP, ...) are skipped.
    """
    own = isinstance(source, str)
    f: BinaryIO = open(source, "rb") if own else source  # type: ignore[assignment]
    try:
        return list(_iter_pcap(f))
    finally:
        if own:
            f.close()


def _iter_pcap(f: BinaryIO) -> Iterator[tuple[float, bytes]]:
    head = f.read(24)
    if len(head) < 24:
        raise PacketError("not a pcap file: shorter than its 24-byte header")
    for endian in ("<", ">"):
        magic = struct.unpack(endian + "I", head[:4])[0]
        if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
            break
    else:
        raise PacketError("not a pcap file (bad magic; pcapng is not supported)")
    scale = 1e-9 if magic == _PCAP_MAGIC_NS else 1e-6
    linktype = struct.unpack(endian + "I", head[20:24])[0] & 0x0FFFFFFF
    while True:
        rec = f.read(16)
        if not rec:
            return
        if len(rec) < 16:
            raise PacketError("pcap file truncated inside a record header")
        sec, frac, caplen, _orig = struct.unpack(endian + "IIII", rec)
        data = f.read(caplen)
        if len(data) < caplen:
            raise PacketError("pcap file truncated inside a packet")
        ip = _strip_link(linktype, data)
        if ip is not None:
            yield sec + frac * scale, ip


def _strip_link(linktype: int, frame: bytes) -> bytes | None:
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return frame
    if linktype == LINKTYPE_ETHERNET:
        off, ethertype = 14, struct.unpack_from("!H", frame, 12)[0]
        while ethertype in (0x8100, 0x88A8):  # VLAN tags
            ethertype, off = struct.unpack_from("!H", frame, off + 2)[0], off + 4
    elif linktype == LINKTYPE_LINUX_SLL:
        off, ethertype = 16, struct.unpack_from("!H", frame, 14)[0]
    else:
        raise PacketError(f"unsupported pcap link type {linktype}")
    return frame[off:] if ethertype in (0x0800, 0x86DD) else None


# --------------------------------------------------------------------------- numpy batches

NO_ICMP = 255  # icmp_type/icmp_code value meaning "not ICMP" in a batch


def header_dtype() -> "np.dtype":
    """One row per packet: the header fields matchers use, as fixed-width integers for numba.

    Addresses are two big-endian 64-bit halves (IPv4 in the low half, high half 0), so one layout
    serves both families and prefix matches are two masked compares.
    """
    import numpy as np

    return np.dtype([
        ("family", np.uint8), ("proto", np.uint8), ("tcp_flags", np.uint8),
        ("icmp_type", np.uint8), ("icmp_code", np.uint8),
        ("src_hi", np.uint64), ("src_lo", np.uint64), ("dst_hi", np.uint64), ("dst_lo", np.uint64),
        ("sport", np.uint16), ("dport", np.uint16), ("length", np.uint16), ("mark", np.uint32),
    ])


def _split(addr: IPAddress) -> tuple[int, int]:
    v = int(addr)
    return v >> 64, v & 0xFFFF_FFFF_FFFF_FFFF


def metas_to_batch(metas: Sequence[PacketMeta]) -> "np.ndarray":
    """PacketMetas -> a structured array (interface names are not carried: match them outside)."""
    import numpy as np

    out = np.zeros(len(metas), dtype=header_dtype())
    for i, m in enumerate(metas):
        sh, sl = _split(m.src)
        dh, dl = _split(m.dst)
        out[i] = (m.family, m.proto, m.tcp_flags,
                  NO_ICMP if m.icmp_type is None else m.icmp_type,
                  NO_ICMP if m.icmp_code is None else m.icmp_code,
                  sh, sl, dh, dl, m.sport, m.dport, min(m.length, 0xFFFF), m.mark)
    return out


def packets_to_batch(packets: Sequence[bytes]) -> "np.ndarray":
    """Raw packets -> a structured array (parses each)."""
    return metas_to_batch([meta_of(p) for p in packets])


def batch_to_metas(batch: "np.ndarray") -> list[PacketMeta]:
    """The inverse of metas_to_batch (interface names come back as None)."""
    out = []
    for row in batch:
        fam = int(row["family"])
        if fam == 4:
            src: IPAddress = IPv4Address(int(row["src_lo"]))
            dst: IPAddress = IPv4Address(int(row["dst_lo"]))
        else:
            src = IPv6Address((int(row["src_hi"]) << 64) | int(row["src_lo"]))
            dst = IPv6Address((int(row["dst_hi"]) << 64) | int(row["dst_lo"]))
        it, ic = int(row["icmp_type"]), int(row["icmp_code"])
        out.append(PacketMeta(family=fam, src=src, dst=dst, proto=int(row["proto"]),
                              sport=int(row["sport"]), dport=int(row["dport"]),
                              icmp_type=None if it == NO_ICMP else it,
                              icmp_code=None if ic == NO_ICMP else ic,
                              tcp_flags=int(row["tcp_flags"]), mark=int(row["mark"]),
                              length=int(row["length"])))
    return out
