"""nft datatypes: which type each expression has, and how constants of a type are read and printed.

Both the text and the JSON parser type a right-hand side by its left-hand side, as nft does; the
renderer prints each type the way `nft list ruleset` does (marks as 0x%08x, protocols by name,
ct states as comma-separated flags in bit order).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from dataplane.proxy.nftables.ast import Const, Prefix, Range, Value

# ---------------------------------------------------------------- expression -> datatype

PAYLOAD_TYPES: dict[tuple[str, str], str] = {
    ("ip", "saddr"): "ipv4_addr", ("ip", "daddr"): "ipv4_addr", ("ip", "protocol"): "inet_proto",
    ("ip", "ttl"): "integer", ("ip", "length"): "integer", ("ip", "dscp"): "integer",
    ("ip6", "saddr"): "ipv6_addr", ("ip6", "daddr"): "ipv6_addr", ("ip6", "nexthdr"): "inet_proto",
    ("ip6", "hoplimit"): "integer",
    ("tcp", "sport"): "inet_service", ("tcp", "dport"): "inet_service", ("tcp", "flags"): "tcp_flag",
    ("udp", "sport"): "inet_service", ("udp", "dport"): "inet_service",
    ("sctp", "sport"): "inet_service", ("sctp", "dport"): "inet_service",
    ("th", "sport"): "inet_service", ("th", "dport"): "inet_service",
    ("icmp", "type"): "icmp_type", ("icmp", "code"): "integer",
    ("icmpv6", "type"): "icmpv6_type", ("icmpv6", "code"): "integer",
}
PAYLOAD_PROTOCOLS = sorted({p for p, _ in PAYLOAD_TYPES})

META_TYPES: dict[str, str] = {
    "l4proto": "inet_proto", "nfproto": "nf_proto", "protocol": "ether_type", "mark": "mark",
    "iifname": "ifname", "oifname": "ifname", "length": "integer", "pkttype": "pkt_type",
}
# meta keys nft lets you write without "meta" (src/parser_bison.y meta_key_unqualified)
META_UNQUALIFIED = ("mark", "iifname", "oifname")

CT_TYPES: dict[str, str] = {"state": "ct_state", "status": "ct_status", "mark": "mark", "direction": "ct_dir"}

FIB_RESULTS = {"type": "fib_addrtype", "oifname": "ifname"}
FIB_FLAGS = ("saddr", "daddr", "mark", "iif", "oif")

# ---------------------------------------------------------------- symbol tables (names <-> numbers)

INET_PROTOS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "dccp": 33, "gre": 47, "esp": 50, "ah": 51,
               "ipv6-icmp": 58, "sctp": 132, "udplite": 136}
INET_PROTO_ALIASES = {"icmpv6": 58}
NF_PROTOS = {"ipv4": 2, "ipv6": 10}
ETHER_TYPES = {"ip": 0x0800, "arp": 0x0806, "ip6": 0x86DD, "vlan": 0x8100}
PKT_TYPES = {"host": 0, "broadcast": 1, "multicast": 2, "other": 3}
CT_STATES = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
CT_STATUSES = {"expected": 1, "seen-reply": 2, "assured": 4, "confirmed": 8, "snat": 16, "dnat": 32,
               "dying": 512}
CT_DIRS = {"original": 0, "reply": 1}
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ecn": 0x40,
             "cwr": 0x80}
ICMP_TYPES = {"echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
              "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11,
              "parameter-problem": 12, "timestamp-request": 13, "timestamp-reply": 14, "info-request": 15,
              "info-reply": 16, "address-mask-request": 17, "address-mask-reply": 18}
ICMPV6_TYPES = {"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4,
                "echo-request": 128, "echo-reply": 129, "mld-listener-query": 130, "mld-listener-report": 131,
                "mld-listener-done": 132, "nd-router-solicit": 133, "nd-router-advert": 134,
                "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136, "nd-redirect": 137}
FIB_ADDRTYPES = {"unspec": 0, "unicast": 1, "local": 2, "broadcast": 3, "anycast": 4, "multicast": 5,
                 "blackhole": 6, "unreachable": 7, "prohibit": 8}

SYMBOLS: dict[str, dict[str, int]] = {
    "inet_proto": INET_PROTOS, "nf_proto": NF_PROTOS, "ether_type": ETHER_TYPES, "pkt_type": PKT_TYPES,
    "ct_state": CT_STATES, "ct_status": CT_STATUSES, "ct_dir": CT_DIRS, "tcp_flag": TCP_FLAGS,
    "icmp_type": ICMP_TYPES, "icmpv6_type": ICMPV6_TYPES, "fib_addrtype": FIB_ADDRTYPES,
}
BITMASK_TYPES = ("ct_state", "ct_status", "tcp_flag")
SET_KEY_TYPES = ("ipv4_addr", "ipv6_addr", "inet_proto", "inet_service", "mark", "ifname", "ether_type",
                 "nf_proto", "ct_state", "ct_status", "icmp_type", "icmpv6_type", "tcp_flag", "integer",
                 "fib_addrtype", "pkt_type", "ct_dir")
MAP_DATA_TYPES = SET_KEY_TYPES + ("verdict",)
BIT_WIDTH = {"inet_service": 16, "mark": 32, "integer": 32, "inet_proto": 8}


class ValueError_(ValueError):
    """A constant that does not fit its datatype (the message names both)."""


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError_(f"{text!r} is not a number") from None


def parse_scalar(text: str, dtype: str) -> object:
    """One constant of `dtype` from its nft spelling (no ranges or prefixes)."""
    if dtype == "ipv4_addr":
        try:
            return IPv4Address(text)
        except ValueError:
            raise ValueError_(f"{text!r} is not an IPv4 address") from None
    if dtype == "ipv6_addr":
        try:
            return IPv6Address(text.strip("[]"))
        except ValueError:
            raise ValueError_(f"{text!r} is not an IPv6 address") from None
    if dtype == "inet_service":
        if text.isdigit():
            port = int(text)
            if port > 65535:
                raise ValueError_(f"port {port} is out of range (0-65535)")
            return port
        raise ValueError_(f"{text!r} is not a port number")
    if dtype in ("mark", "integer"):
        value = _int(text)
        if not 0 <= value < 2**32:
            raise ValueError_(f"{text} does not fit 32 bits")
        return value
    if dtype == "ifname":
        if not text or len(text.rstrip("*")) > 15:
            raise ValueError_(f"{text!r} is not an interface name (1-15 characters)")
        return text
    if dtype in SYMBOLS:
        table = SYMBOLS[dtype]
        if dtype == "inet_proto" and text in INET_PROTO_ALIASES:
            return INET_PROTO_ALIASES[text]
        if text in table:
            return table[text]
        if re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)", text):
            return _int(text)
        raise ValueError_(f"{text!r} is not a {dtype} (known: {', '.join(table)})")
    raise ValueError_(f"values of type {dtype} are not supported")


def parse_value(text: str, dtype: str) -> Value:
    """A constant, a prefix (`10.0.0.0/8`) or a range (`1-1024`, `10.0.0.1-10.0.0.9`) of `dtype`."""
    if dtype in ("ipv4_addr", "ipv6_addr") and "/" in text:
        try:
            net = ip_network(text.strip("[]"), strict=True)
        except ValueError as exc:
            raise ValueError_(f"{text!r} is not a {dtype} prefix: {exc}") from None
        if (net.version == 4) != (dtype == "ipv4_addr"):
            raise ValueError_(f"{text!r} is not a {dtype} prefix")
        return Prefix(net, dtype)
    if "-" in text and dtype in ("ipv4_addr", "ipv6_addr", "inet_service", "mark", "integer"):
        low, _, high = text.partition("-")
        if low and high:
            lo, hi = parse_scalar(low, dtype), parse_scalar(high, dtype)
            if hi < lo:  # type: ignore[operator]
                raise ValueError_(f"range {text!r} is reversed")
            return Range(lo, hi, dtype)
    if dtype in BITMASK_TYPES and "," in text:
        bits = 0
        for part in text.split(","):
            bits |= int(parse_scalar(part, dtype))  # type: ignore[call-overload]
        return Const(bits, dtype)
    return Const(parse_scalar(text, dtype), dtype)


def format_scalar(value: object, dtype: str) -> str:
    if dtype == "mark":
        return f"0x{int(value):08x}"  # type: ignore[call-overload]
    if dtype == "ifname":
        return f'"{value}"'
    if dtype in BITMASK_TYPES:
        names = [n for n, bit in sorted(SYMBOLS[dtype].items(), key=lambda kv: kv[1]) if int(value) & bit]  # type: ignore[call-overload]
        return ",".join(names) if names else str(value)
    if dtype in SYMBOLS:
        for name, number in SYMBOLS[dtype].items():
            if number == value:
                return name
        return str(value)
    return str(value)


def format_value(value: Value) -> str:
    from dataplane.proxy.nftables.ast import ConcatValue

    if isinstance(value, Const):
        return format_scalar(value.value, value.dtype)
    if isinstance(value, Prefix):
        return str(value.network)
    if isinstance(value, Range):
        return f"{format_scalar(value.low, value.dtype)}-{format_scalar(value.high, value.dtype)}"
    if isinstance(value, ConcatValue):
        return " . ".join(format_value(p) for p in value.parts)
    raise TypeError(value)


# ---------------------------------------------------------------- time ("1h30m", "10800s", "250ms")

_TIME_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_TIME_RE = re.compile(r"(\d+)(ms|d|h|m|s)")


def parse_time(text: str) -> float:
    """Seconds from nft's time syntax; a bare number is seconds."""
    if text.isdigit():
        return float(text)
    pos, total = 0, 0.0
    for m in _TIME_RE.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _TIME_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError_(f"{text!r} is not a time (like 3h, 10800s, 1m30s, 250ms)")
    return total


def format_time(seconds: float) -> str:
    """nft's spelling: days, hours, minutes, seconds, milliseconds, each only when non-zero."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def element_wrap(key_type: tuple[str, ...], anonymous: bool) -> int:
    """How many elements `nft list` prints per line (src/expression.c calculate_delim); 0 = all on one."""
    if anonymous:
        return 0
    if len(key_type) != 1:
        return 1
    dtype = key_type[0]
    if dtype in ("nf_proto", "integer", "inet_proto", "inet_service", "tcp_flag", "mark"):
        return 16
    if dtype in ("ipv4_addr", "ct_state", "ct_status", "pkt_type"):
        return 2
    return 1


def address_family(value: object) -> int | None:
    if isinstance(value, (IPv4Address, IPv6Address)):
        return value.version
    return None


def parse_address(text: str) -> IPv4Address | IPv6Address:
    return ip_address(text.strip("[]"))
