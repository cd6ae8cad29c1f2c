"""Parse `iptables-save` / `iptables-restore` text into the rule model.

Strict by default: anything the model cannot represent is a `ParseError` naming the line and the
option. `strict=False` keeps such a rule as unknown (it renders verbatim) and lists it in
`Ruleset.unknown`. Options are resolved as iptables does: an option belongs to the most recently
loaded module that defines it (the target counts as the last module), and an option no loaded
module knows loads the protocol's module implicitly (`-p tcp --dport 80` saves as
`-p tcp -m tcp --dport 80`).

Besides `-A`, restore input's `-N`, `-F` and `-X CHAIN` are applied (kube-proxy deletes stale
chains with `-X`); the model is then the resulting state, as iptables-save would show it.
"""

from __future__ import annotations

import gc
import ipaddress
import math
import socket
from collections.abc import Callable
from typing import Any

from dataplane.proxy.iptables.rules import (
    ADDRTYPES,
    ALL_ONES,
    BUILTIN_CHAINS,
    CT_STATES,
    CT_STATUSES,
    LOG_FLAGS,
    LOG_LEVELS,
    REJECT_TYPES_4,
    REJECT_TYPES_6,
    STATISTIC_SCALE,
    TCP_FLAG_NAMES,
    AddrtypeMatch,
    Chain,
    CommentMatch,
    ConnmarkTarget,
    ConntrackMatch,
    CtAddr,
    CtPort,
    IcmpMatch,
    IPNet,
    Jump,
    LogTarget,
    MarkMatch,
    MarkTarget,
    Masquerade,
    Match,
    MultiportMatch,
    Nat,
    NatRange,
    PortRange,
    PortsMatch,
    RecentMatch,
    Reject,
    Rule,
    Ruleset,
    SetMatch,
    StateMatch,
    StatisticMatch,
    Table,
    Target,
    UnknownRule,
    Verdict,
    proto_number,
)


class ParseError(ValueError):
    """A dump the model cannot represent: `line` (1-based) and the `option` at fault."""

    def __init__(self, line: int, option: str, message: str) -> None:
        self.line = line
        self.option = option
        self.message = message
        where = f"line {line}" + (f", option {option}" if option else "")
        super().__init__(f"{where}: {message}")


class _OptionError(Exception):
    """Raised inside a rule; turned into ParseError with the line number by the caller."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        self.message = message
        super().__init__(message)


# ---------------------------------------------------------------- tokens

def tokenize(line: str) -> list[str]:
    """Split one line as iptables-restore does: whitespace separates, "..." quotes, and inside
    quotes a backslash escapes the next character. Single quotes are ordinary characters."""
    if '"' not in line:
        return line.split()
    if "\\" not in line:
        parts = line.split('"')
        if len(parts) == 3:  # one quoted argument, the common case (a comment)
            pre, quoted, post = parts
            if (not pre or pre[-1] in " \t") and (not post or post[0] in " \t"):
                toks = pre.split()
                toks.append(quoted)
                toks.extend(post.split())
                return toks
        if len(parts) % 2 == 0:
            raise _OptionError("", "unterminated double quote")
        toks: list[str] = []
        glue = False
        for i, part in enumerate(parts):
            if i % 2:
                if glue and toks:
                    toks[-1] += part
                else:
                    toks.append(part)
                glue = True
            elif part:
                words = part.split()
                if not words:
                    glue = False
                    continue
                if glue and not part[0].isspace():
                    toks[-1] += words[0]
                    del words[0]
                toks.extend(words)
                glue = not part[-1].isspace()
        return toks
    return _tokenize_slow(line)


def _tokenize_slow(line: str) -> list[str]:
    toks: list[str] = []
    buf: list[str] = []
    have = False  # a token is open (possibly empty, from "")
    quote = escaped = False
    for ch in line:
        if quote:
            if escaped:
                buf.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quote = False
            else:
                buf.append(ch)
            continue
        if ch == '"':
            quote = have = True
        elif ch in " \t\n\r":
            if have:
                toks.append("".join(buf))
                buf.clear()
                have = False
        else:
            buf.append(ch)
            have = True
    if quote:
        raise _OptionError("", "unterminated double quote")
    if have:
        toks.append("".join(buf))
    return toks


# ---------------------------------------------------------------- value parsers

def _ipv4(text: str) -> int:
    """Dotted quad to int, faster than ipaddress for the parser's hot path (same strictness)."""
    parts = text.split(".")
    if len(parts) == 4:
        a, b, c, d = parts
        if a.isdigit() and b.isdigit() and c.isdigit() and d.isdigit() and max(len(a), len(b), len(c), len(d)) <= 3:
            ai, bi, ci, di = int(a), int(b), int(c), int(d)
            if ai <= 255 and bi <= 255 and ci <= 255 and di <= 255:
                return (ai << 24) | (bi << 16) | (ci << 8) | di
    return int(ipaddress.IPv4Address(text))


def parse_net(text: str, family: int, option: str) -> IPNet:
    """`1.2.3.4`, `10.0.0.0/8` or `10.0.0.0/255.0.0.0`; the address is masked as iptables does."""
    addr_s, slash, mask_s = text.partition("/")
    bits = 32 if family == 4 else 128
    full = (1 << bits) - 1
    try:
        addr = _ipv4(addr_s) if family == 4 else int(ipaddress.IPv6Address(addr_s))
        if not slash:
            mask = full
        elif mask_s.isdigit():
            plen = int(mask_s)
            if plen > bits:
                raise ValueError
            mask = full ^ ((1 << (bits - plen)) - 1)
        else:
            mask = _ipv4(mask_s) if family == 4 else int(ipaddress.IPv6Address(mask_s))
    except ValueError:
        raise _OptionError(option, f"invalid IPv{family} address or network {text!r} "
                           "(host names are not resolved)") from None
    return IPNet(family, addr & mask, mask)


def parse_u32(text: str, option: str, maximum: int = ALL_ONES) -> int:
    """A number as strtoul(text, 0) reads it: decimal, 0x hex or 0-prefixed octal."""
    try:
        if not text or not text.isascii() or "_" in text or text[0] in "+-":
            raise ValueError
        if text[:2].lower() == "0x":
            v = int(text[2:], 16)
        elif len(text) > 1 and text[0] == "0":
            v = int(text[1:], 8)
        else:
            v = int(text, 10)
    except ValueError:
        raise _OptionError(option, f"invalid number {text!r}") from None
    if not 0 <= v <= maximum:
        raise _OptionError(option, f"{text!r} is out of range (0..{maximum})")
    return v


def parse_markmask(text: str, option: str) -> tuple[int, int, bool]:
    """`value[/mask]` -> (value, mask, mask_given)."""
    v, slash, m = text.partition("/")
    return parse_u32(v, option), parse_u32(m, option) if slash else ALL_ONES, bool(slash)


def parse_port(text: str, option: str, proto: str = "tcp") -> int:
    if text.isdigit():
        p = int(text)
        if p <= 65535:
            return p
        raise _OptionError(option, f"port {text!r} is out of range (0..65535)")
    try:
        return socket.getservbyname(text, proto if proto in ("tcp", "udp") else "tcp")
    except OSError:
        raise _OptionError(option, f"invalid port or service name {text!r}") from None


_RANGE_CACHE: dict[str, PortRange] = {}


def parse_portrange(text: str, option: str, proto: str = "tcp") -> PortRange:
    """`80`, `80:90`, `:90` (0:90) or `80:` (80:65535)."""
    r = _RANGE_CACHE.get(text)
    if r is not None:
        return r
    lo_s, colon, hi_s = text.partition(":")
    lo = parse_port(lo_s, option, proto) if lo_s else 0
    hi = (parse_port(hi_s, option, proto) if hi_s else 65535) if colon else lo
    if lo > hi:
        raise _OptionError(option, f"port range {text!r} is reversed")
    r = PortRange(lo, hi)
    if len(_RANGE_CACHE) < 100_000:
        _RANGE_CACHE[text] = r
    return r


def parse_names(text: str, allowed: tuple[str, ...], option: str) -> frozenset[str]:
    names = text.split(",")
    for n in names:
        if n not in allowed:
            raise _OptionError(option, f"unknown value {n!r} (expected one of {', '.join(allowed)})")
    return frozenset(names)


def _tcp_flags(text: str, option: str) -> int:
    table = dict(TCP_FLAG_NAMES, ALL=0x3F, NONE=0)
    v = 0
    for n in text.split(","):
        if n not in table:
            raise _OptionError(option, f"unknown TCP flag {n!r}")
        v |= table[n]
    return v


ICMP_TYPES: dict[str, tuple[int, int, int]] = {
    "any": (255, 0, 255), "echo-reply": (0, 0, 255), "pong": (0, 0, 255),
    "destination-unreachable": (3, 0, 255), "network-unreachable": (3, 0, 0),
    "host-unreachable": (3, 1, 1), "protocol-unreachable": (3, 2, 2), "port-unreachable": (3, 3, 3),
    "fragmentation-needed": (3, 4, 4), "source-route-failed": (3, 5, 5),
    "network-prohibited": (3, 9, 9), "host-prohibited": (3, 10, 10),
    "communication-prohibited": (3, 13, 13), "source-quench": (4, 0, 255), "redirect": (5, 0, 255),
    "echo-request": (8, 0, 255), "ping": (8, 0, 255), "router-advertisement": (9, 0, 255),
    "router-solicitation": (10, 0, 255), "time-exceeded": (11, 0, 255), "ttl-exceeded": (11, 0, 255),
    "ttl-zero-during-transit": (11, 0, 0), "ttl-zero-during-reassembly": (11, 1, 1),
    "parameter-problem": (12, 0, 255), "timestamp-request": (13, 0, 255),
    "timestamp-reply": (14, 0, 255), "address-mask-request": (17, 0, 255),
    "address-mask-reply": (18, 0, 255),
}


# ---------------------------------------------------------------- module option tables
# Each module: {option spelling: (canonical key, number of arguments)}; `!` is allowed unless
# the key is in _NO_NEGATION.

_PORT_OPTS = {"--sport": ("sport", 1), "--source-port": ("sport", 1),
              "--dport": ("dport", 1), "--destination-port": ("dport", 1)}
MODULE_OPTIONS: dict[str, dict[str, tuple[str, int]]] = {
    "tcp": {**_PORT_OPTS, "--tcp-flags": ("flags", 2), "--syn": ("syn", 0)},
    "udp": dict(_PORT_OPTS),
    "sctp": dict(_PORT_OPTS),
    "icmp": {"--icmp-type": ("type", 1)},
    "icmp6": {"--icmpv6-type": ("type", 1)},
    "comment": {"--comment": ("comment", 1)},
    "statistic": {"--mode": ("mode", 1), "--probability": ("probability", 1),
                  "--every": ("every", 1), "--packet": ("packet", 1)},
    "mark": {"--mark": ("mark", 1)},
    "connmark": {"--mark": ("mark", 1)},
    "addrtype": {"--src-type": ("src", 1), "--dst-type": ("dst", 1),
                 "--limit-iface-in": ("in", 0), "--limit-iface-out": ("out", 0)},
    "conntrack": {"--ctstate": ("ctstate", 1), "--ctproto": ("ctproto", 1),
                  "--ctorigsrc": ("origsrc", 1), "--ctorigdst": ("origdst", 1),
                  "--ctreplsrc": ("replsrc", 1), "--ctrepldst": ("repldst", 1),
                  "--ctorigsrcport": ("origsrcport", 1), "--ctorigdstport": ("origdstport", 1),
                  "--ctreplsrcport": ("replsrcport", 1), "--ctrepldstport": ("repldstport", 1),
                  "--ctstatus": ("ctstatus", 1), "--ctexpire": ("ctexpire", 1),
                  "--ctdir": ("ctdir", 1)},
    "state": {"--state": ("state", 1)},
    "recent": {"--set": ("set", 0), "--rcheck": ("rcheck", 0), "--update": ("update", 0),
               "--remove": ("remove", 0), "--seconds": ("seconds", 1), "--reap": ("reap", 0),
               "--hitcount": ("hitcount", 1), "--rttl": ("rttl", 0), "--name": ("name", 1),
               "--mask": ("mask", 1), "--rsource": ("rsource", 0), "--rdest": ("rdest", 0)},
    "multiport": {"--sports": ("sports", 1), "--source-ports": ("sports", 1),
                  "--dports": ("dports", 1), "--destination-ports": ("dports", 1),
                  "--ports": ("ports", 1)},
    "set": {"--match-set": ("match-set", 2), "--return-nomatch": ("return-nomatch", 0)},
}
_NAT_COMMON = {"--random": ("random", 0), "--persistent": ("persistent", 0)}
TARGET_OPTIONS: dict[str, dict[str, tuple[str, int]]] = {
    "ACCEPT": {}, "DROP": {}, "RETURN": {},
    "REJECT": {"--reject-with": ("with", 1)},
    "DNAT": {"--to-destination": ("to", 1), **_NAT_COMMON},
    "SNAT": {"--to-source": ("to", 1), **_NAT_COMMON, "--random-fully": ("random-fully", 0)},
    "MASQUERADE": {"--to-ports": ("ports", 1), "--random": ("random", 0),
                   "--random-fully": ("random-fully", 0)},
    "MARK": {"--set-xmark": ("set-xmark", 1), "--set-mark": ("set-mark", 1),
             "--and-mark": ("and-mark", 1), "--or-mark": ("or-mark", 1), "--xor-mark": ("xor-mark", 1)},
    "CONNMARK": {"--set-xmark": ("set-xmark", 1), "--set-mark": ("set-mark", 1),
                 "--and-mark": ("and-mark", 1), "--or-mark": ("or-mark", 1),
                 "--xor-mark": ("xor-mark", 1), "--save-mark": ("save-mark", 0),
                 "--restore-mark": ("restore-mark", 0), "--mask": ("mask", 1),
                 "--nfmask": ("nfmask", 1), "--ctmask": ("ctmask", 1)},
    "LOG": {"--log-level": ("level", 1), "--log-prefix": ("prefix", 1),
            **{f"--log-{f}": (f, 0) for f in LOG_FLAGS}},
}
_NEGATABLE = {
    "tcp": {"sport", "dport", "flags", "syn"}, "udp": {"sport", "dport"}, "sctp": {"sport", "dport"},
    "icmp": {"type"}, "icmp6": {"type"}, "statistic": {"probability", "every"}, "mark": {"mark"}, "connmark": {"mark"},
    "addrtype": {"src", "dst"}, "state": {"state"}, "multiport": {"sports", "dports", "ports"},
    "set": {"match-set"}, "recent": {"set", "rcheck", "update", "remove"},
    "conntrack": {"ctstate", "ctproto", "origsrc", "origdst", "replsrc", "repldst", "origsrcport",
                  "origdstport", "replsrcport", "repldstport", "ctstatus", "ctexpire"},
}
_IMPLICIT_PROTO_MODULES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmp6"}

Vals = dict[str, tuple[Any, bool]]  # key -> (arguments, negated)


class _RuleContext:
    __slots__ = ("family", "proto", "proto_neg", "table")

    def __init__(self, family: int, table: str) -> None:
        self.family = family
        self.proto: int | None = None
        self.proto_neg = False
        self.table = table


# ---------------------------------------------------------------- match builders

def _arg(vals: Vals, key: str) -> Any:
    return vals[key][0]


def _build_ports(module: str, vals: Vals, ctx: _RuleContext) -> Match:
    want = {"tcp": 6, "udp": 17, "sctp": 132}[module]
    if ctx.proto != want or ctx.proto_neg:
        raise _OptionError(f"-m {module}", f"-m {module} needs `-p {module}` before it")
    sport = dport = None
    sneg = dneg = False
    if "sport" in vals:
        sport, sneg = parse_portrange(_arg(vals, "sport"), "--sport", module), vals["sport"][1]
    if "dport" in vals:
        dport, dneg = parse_portrange(_arg(vals, "dport"), "--dport", module), vals["dport"][1]
    fmask, fcomp, fneg = None, 0, False
    if "flags" in vals and "syn" in vals:
        raise _OptionError("--syn", "only one of --syn and --tcp-flags is allowed")
    if "flags" in vals:
        m, c = _arg(vals, "flags")
        fmask, fcomp, fneg = _tcp_flags(m, "--tcp-flags"), _tcp_flags(c, "--tcp-flags"), vals["flags"][1]
    elif "syn" in vals:
        fmask, fcomp, fneg = 0x17, 0x02, vals["syn"][1]
    return PortsMatch(module, sport, sneg, dport, dneg, fmask, fcomp, fneg)


def _build_icmp(vals: Vals, ctx: _RuleContext) -> Match:
    if ctx.family != 4:
        raise _OptionError("-m icmp", "-m icmp is for iptables (family 4); ip6tables uses -m icmp6")
    if ctx.proto != 1 or ctx.proto_neg:
        raise _OptionError("-m icmp", "-m icmp needs `-p icmp` before it")
    if "type" not in vals:
        return IcmpMatch(255)
    spec, neg = vals["type"]
    if spec in ICMP_TYPES:
        t, lo, hi = ICMP_TYPES[spec]
        return IcmpMatch(t, lo, hi, neg)
    t_s, slash, c_s = spec.partition("/")
    t = parse_u32(t_s, "--icmp-type", 255)
    if slash:
        c = parse_u32(c_s, "--icmp-type", 255)
        return IcmpMatch(t, c, c, neg)
    return IcmpMatch(t, 0, 255, neg)


ICMP6_TYPES: dict[str, tuple[int, int, int]] = {
    "destination-unreachable": (1, 0, 255), "no-route": (1, 0, 0), "communication-prohibited": (1, 1, 1),
    "beyond-scope": (1, 2, 2), "address-unreachable": (1, 3, 3), "port-unreachable": (1, 4, 4),
    "failed-policy": (1, 5, 5), "reject-route": (1, 6, 6), "packet-too-big": (2, 0, 255),
    "time-exceeded": (3, 0, 255), "ttl-exceeded": (3, 0, 255), "ttl-zero-during-transit": (3, 0, 0),
    "ttl-zero-during-reassembly": (3, 1, 1), "parameter-problem": (4, 0, 255),
    "bad-header": (4, 0, 0), "unknown-header-type": (4, 1, 1), "unknown-option": (4, 2, 2),
    "echo-request": (128, 0, 255), "ping": (128, 0, 255), "echo-reply": (129, 0, 255), "pong": (129, 0, 255),
    "mld-listener-query": (130, 0, 255), "mld-listener-report": (131, 0, 255),
    "mld-listener-done": (132, 0, 255), "router-solicitation": (133, 0, 255),
    "router-advertisement": (134, 0, 255), "neighbour-solicitation": (135, 0, 255),
    "neighbor-solicitation": (135, 0, 255), "neighbour-advertisement": (136, 0, 255),
    "neighbor-advertisement": (136, 0, 255), "redirect": (137, 0, 255),
}


def _build_icmp6(vals: Vals, ctx: _RuleContext) -> Match:
    if ctx.family != 6:
        raise _OptionError("-m icmp6", "-m icmp6 is for ip6tables (family 6)")
    if ctx.proto != 58 or ctx.proto_neg:
        raise _OptionError("-m icmp6", "-m icmp6 needs `-p ipv6-icmp` before it")
    if "type" not in vals:
        raise _OptionError("--icmpv6-type", "-m icmp6 needs --icmpv6-type")
    spec, neg = vals["type"]
    if spec in ICMP6_TYPES:
        t, lo, hi = ICMP6_TYPES[spec]
        return IcmpMatch(t, lo, hi, neg, "icmp6")
    t_s, slash, c_s = spec.partition("/")
    t = parse_u32(t_s, "--icmpv6-type", 255)
    if slash:
        c = parse_u32(c_s, "--icmpv6-type", 255)
        return IcmpMatch(t, c, c, neg, "icmp6")
    return IcmpMatch(t, 0, 255, neg, "icmp6")


def _build_statistic(vals: Vals, ctx: _RuleContext) -> Match:
    if "mode" not in vals:
        raise _OptionError("--mode", "-m statistic needs --mode random or --mode nth")
    mode = _arg(vals, "mode")
    if mode == "random":
        if "every" in vals or "packet" in vals:
            raise _OptionError("--every", "--every/--packet need --mode nth")
        if "probability" not in vals:
            raise _OptionError("--probability", "--mode random needs --probability")
        text, neg = vals["probability"]
        try:
            p = float(text)
        except ValueError:
            raise _OptionError("--probability", f"invalid probability {text!r}") from None
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise _OptionError("--probability", f"probability {text!r} is not in 0..1")
        # libxt_statistic: lround(0x80000000 * prob) (round half away from zero)
        q = int(math.floor(STATISTIC_SCALE * p + 0.5))
        return StatisticMatch("random", probability=q, neg=neg)
    if mode == "nth":
        if "probability" in vals:
            raise _OptionError("--probability", "--probability needs --mode random")
        if "every" not in vals or "packet" not in vals:
            missing = "--every" if "every" not in vals else "--packet"
            raise _OptionError(missing, "--mode nth needs both --every and --packet")
        every = parse_u32(_arg(vals, "every"), "--every")
        if every == 0:
            raise _OptionError("--every", "--every must be at least 1")
        packet = parse_u32(_arg(vals, "packet"), "--packet")
        if packet >= every:
            raise _OptionError("--packet", f"--packet {packet} must be below --every {every}")
        return StatisticMatch("nth", every=every, packet=packet, neg=vals["every"][1])
    raise _OptionError("--mode", f"unknown statistic mode {mode!r} (random or nth)")


def _build_mark(module: str, vals: Vals, ctx: _RuleContext) -> Match:
    if "mark" not in vals:
        raise _OptionError("--mark", f"-m {module} needs --mark")
    text, neg = vals["mark"]
    v, m, _ = parse_markmask(text, "--mark")
    return MarkMatch(v, m, neg, module)


def _addrtypes(text: str, option: str) -> int:
    mask = 0
    for n in text.split(","):
        if n not in ADDRTYPES:
            raise _OptionError(option, f"unknown address type {n!r}")
        mask |= 1 << ADDRTYPES.index(n)
    return mask


def _build_addrtype(vals: Vals, ctx: _RuleContext) -> Match:
    if "in" in vals and "out" in vals:
        raise _OptionError("--limit-iface-out", "--limit-iface-in and --limit-iface-out exclude each other")
    src = _addrtypes(_arg(vals, "src"), "--src-type") if "src" in vals else 0
    dst = _addrtypes(_arg(vals, "dst"), "--dst-type") if "dst" in vals else 0
    return AddrtypeMatch(src, vals.get("src", (0, False))[1], dst, vals.get("dst", (0, False))[1],
                         "in" in vals, "out" in vals)


def _build_conntrack(vals: Vals, ctx: _RuleContext) -> Match:
    kw: dict[str, Any] = {}
    if "ctstate" in vals:
        kw["states"] = parse_names(_arg(vals, "ctstate"), CT_STATES, "--ctstate")
        kw["states_neg"] = vals["ctstate"][1]
    if "ctproto" in vals:
        p = proto_number(_arg(vals, "ctproto"))
        if p is None:
            raise _OptionError("--ctproto", f"unknown protocol {_arg(vals, 'ctproto')!r}")
        kw["proto"], kw["proto_neg"] = p, vals["ctproto"][1]
    for key in ("origsrc", "origdst", "replsrc", "repldst"):
        if key in vals:
            kw[key] = CtAddr(parse_net(_arg(vals, key), ctx.family, f"--ct{key}"), vals[key][1])
    for key in ("origsrcport", "origdstport", "replsrcport", "repldstport"):
        if key in vals:
            kw[key] = CtPort(parse_portrange(_arg(vals, key), f"--ct{key}"), vals[key][1])
    if "ctstatus" in vals:
        kw["statuses"] = parse_names(_arg(vals, "ctstatus"), CT_STATUSES, "--ctstatus")
        kw["statuses_neg"] = vals["ctstatus"][1]
    if "ctexpire" in vals:
        lo_s, colon, hi_s = _arg(vals, "ctexpire").partition(":")
        lo = parse_u32(lo_s, "--ctexpire")
        kw["expire"] = PortRange(lo, parse_u32(hi_s, "--ctexpire") if colon else lo)
        kw["expire_neg"] = vals["ctexpire"][1]
    if "ctdir" in vals:
        d = _arg(vals, "ctdir")
        if d not in ("ORIGINAL", "REPLY"):
            raise _OptionError("--ctdir", f"--ctdir must be ORIGINAL or REPLY, not {d!r}")
        kw["direction"] = d
    if not kw:
        raise _OptionError("-m conntrack", "-m conntrack needs at least one option")
    return ConntrackMatch(**kw)


def _build_state(vals: Vals, ctx: _RuleContext) -> Match:
    if "state" not in vals:
        raise _OptionError("--state", "-m state needs --state")
    states = parse_names(_arg(vals, "state"), CT_STATES[:5], "--state")
    return StateMatch(states, vals["state"][1])


def _build_recent(vals: Vals, ctx: _RuleContext) -> Match:
    modes = [m for m in ("set", "rcheck", "update", "remove") if m in vals]
    if len(modes) != 1:
        raise _OptionError("--" + (modes[1] if modes else "rcheck"),
                           "-m recent needs exactly one of --set, --rcheck, --update, --remove")
    mode = modes[0]
    seconds = parse_u32(_arg(vals, "seconds"), "--seconds") if "seconds" in vals else 0
    hitcount = parse_u32(_arg(vals, "hitcount"), "--hitcount", 255) if "hitcount" in vals else 0
    if mode in ("set", "remove") and (seconds or hitcount or "reap" in vals or "rttl" in vals):
        raise _OptionError("--" + mode, f"--{mode} takes no --seconds, --hitcount, --reap or --rttl")
    if "reap" in vals and not seconds:
        raise _OptionError("--reap", "--reap needs --seconds")
    if "rsource" in vals and "rdest" in vals:
        raise _OptionError("--rdest", "only one of --rsource and --rdest")
    name = _arg(vals, "name") if "name" in vals else "DEFAULT"
    if not name or len(name) > 199:
        raise _OptionError("--name", "the list name must be 1 to 199 characters")
    mask = None
    if "mask" in vals:
        net = parse_net(_arg(vals, "mask"), ctx.family, "--mask")
        full = (1 << net.bits) - 1
        mask = None if net.addr == full else IPNet(ctx.family, net.addr, full)
    return RecentMatch(mode, name, seconds, "reap" in vals, hitcount, "rttl" in vals, mask,
                       "rdest" if "rdest" in vals else "rsource", vals[mode][1], ctx.family)


def _build_multiport(vals: Vals, ctx: _RuleContext) -> Match:
    if ctx.proto not in (6, 17, 132, 33, 136) or ctx.proto_neg:
        raise _OptionError("-m multiport", "multiport needs `-p tcp`, `-p udp`, `-p udplite`, "
                           "`-p sctp` or `-p dccp`")
    kinds = [k for k in ("sports", "dports", "ports") if k in vals]
    if len(kinds) != 1:
        raise _OptionError("--dports", "-m multiport needs exactly one of --sports, --dports, --ports")
    kind = kinds[0]
    text, neg = vals[kind]
    ports = tuple(parse_portrange(p, f"--{kind}") for p in text.split(","))
    if sum(1 if p.lo == p.hi else 2 for p in ports) > 15:
        raise _OptionError(f"--{kind}", "too many ports specified (at most 15, a range counts as 2)")
    return MultiportMatch(kind, ports, neg)


def _build_set(vals: Vals, ctx: _RuleContext) -> Match:
    if "match-set" not in vals:
        raise _OptionError("--match-set", "-m set needs --match-set NAME FLAGS")
    (name, flags), neg = vals["match-set"]
    dirs = tuple(flags.split(","))
    if not 1 <= len(dirs) <= 6 or any(d not in ("src", "dst") for d in dirs):
        raise _OptionError("--match-set", f"set flags must be src/dst, comma separated, not {flags!r}")
    return SetMatch(name, dirs, neg, "return-nomatch" in vals)


def _build_comment(vals: Vals, ctx: _RuleContext) -> Match:
    if "comment" not in vals:
        raise _OptionError("--comment", "-m comment needs --comment")
    text = _arg(vals, "comment")
    if len(text) > 255:
        raise _OptionError("--comment", "comments are limited to 255 characters")
    return CommentMatch(text)


MATCH_BUILDERS: dict[str, Callable[[Vals, _RuleContext], Match]] = {
    "tcp": lambda v, c: _build_ports("tcp", v, c),
    "udp": lambda v, c: _build_ports("udp", v, c),
    "sctp": lambda v, c: _build_ports("sctp", v, c),
    "icmp": _build_icmp,
    "icmp6": _build_icmp6,
    "comment": _build_comment,
    "statistic": _build_statistic,
    "mark": lambda v, c: _build_mark("mark", v, c),
    "connmark": lambda v, c: _build_mark("connmark", v, c),
    "addrtype": _build_addrtype,
    "conntrack": _build_conntrack,
    "state": _build_state,
    "recent": _build_recent,
    "multiport": _build_multiport,
    "set": _build_set,
}


# ---------------------------------------------------------------- target builders

def _nat_range(text: str, family: int, option: str, need_addr: bool) -> NatRange:
    addr_part, port_part = text, ""
    if family == 6 and text.startswith("["):
        end = text.find("]")
        addr_part, port_part = text[1:end], text[end + 1:].lstrip(":")
        if end < 0:
            raise _OptionError(option, f"invalid range {text!r}")
    elif family == 4 and ":" in text:
        addr_part, _, port_part = text.partition(":")
        if not port_part:
            raise _OptionError(option, f"invalid range {text!r}: a port must follow ':'")
    lo = hi = None
    if addr_part:
        a, dash, b = addr_part.partition("-")
        lo = parse_net(a, family, option)
        if lo.mask != (1 << lo.bits) - 1:
            raise _OptionError(option, f"{text!r}: a NAT range takes addresses, not networks")
        hi = parse_net(b.strip("[]"), family, option) if dash else lo
        if hi.addr < lo.addr:
            raise _OptionError(option, f"address range {addr_part!r} is reversed")
    elif need_addr:
        raise _OptionError(option, f"{text!r} has no address")
    plo = phi = None
    if port_part:
        p, dash, q = port_part.partition("-")
        plo = parse_port(p, option)
        phi = parse_port(q, option) if dash else plo
        if phi < plo:
            raise _OptionError(option, f"port range {port_part!r} is reversed")
    return NatRange(family, lo.addr if lo else None, hi.addr if hi else None, plo, phi)


def _need_nat_table(name: str, ctx: _RuleContext) -> None:
    if ctx.table != "nat":
        raise _OptionError(f"-j {name}", f"the {name} target is only valid in the nat table")


def _port_protocol(ctx: _RuleContext) -> bool:
    return ctx.proto in (6, 17, 132, 33, 136) and not ctx.proto_neg


def _build_dnat(vals: Vals, ctx: _RuleContext) -> Target:
    _need_nat_table("DNAT", ctx)
    if "to" not in vals:
        raise _OptionError("--to-destination", "DNAT needs --to-destination")
    rng = _nat_range(_arg(vals, "to"), ctx.family, "--to-destination", need_addr=False)
    if rng.port_lo is not None and not _port_protocol(ctx):
        raise _OptionError("--to-destination", "a port needs `-p tcp`, `-p udp`, `-p sctp` ...")
    return Nat("DNAT", rng, "random" in vals, False, "persistent" in vals)


def _build_snat(vals: Vals, ctx: _RuleContext) -> Target:
    _need_nat_table("SNAT", ctx)
    if "to" not in vals:
        raise _OptionError("--to-source", "SNAT needs --to-source")
    rng = _nat_range(_arg(vals, "to"), ctx.family, "--to-source", need_addr=True)
    if rng.port_lo is not None and not _port_protocol(ctx):
        raise _OptionError("--to-source", "a port needs `-p tcp`, `-p udp`, `-p sctp` ...")
    return Nat("SNAT", rng, "random" in vals, "random-fully" in vals, "persistent" in vals)


def _build_masquerade(vals: Vals, ctx: _RuleContext) -> Target:
    _need_nat_table("MASQUERADE", ctx)
    ports = None
    if "ports" in vals:
        if not _port_protocol(ctx):
            raise _OptionError("--to-ports", "--to-ports needs `-p tcp`, `-p udp`, `-p sctp` ...")
        p, dash, q = _arg(vals, "ports").partition("-")
        lo = parse_port(p, "--to-ports")
        ports = PortRange(lo, parse_port(q, "--to-ports") if dash else lo)
    return Masquerade(ports, "random" in vals, "random-fully" in vals)


def _build_reject(vals: Vals, ctx: _RuleContext) -> Target:
    if ctx.table != "filter":
        raise _OptionError("-j REJECT", "the REJECT target is only valid in the filter table")
    if "with" not in vals:
        return Reject("icmp-port-unreachable" if ctx.family == 4 else "icmp6-port-unreachable")
    table = REJECT_TYPES_4 if ctx.family == 4 else REJECT_TYPES_6
    w = _arg(vals, "with")
    if w not in table:
        raise _OptionError("--reject-with", f"unknown reject type {w!r}")
    canon = table[w]
    if canon == "tcp-reset" and (ctx.proto != 6 or ctx.proto_neg):
        raise _OptionError("--reject-with", "tcp-reset needs `-p tcp`")
    return Reject(canon)


_MARK_OPS = ("set-xmark", "set-mark", "and-mark", "or-mark", "xor-mark")


def _xmark(op: str, text: str, option: str) -> tuple[int, int]:
    """Any MARK/CONNMARK spelling to (value, mask) of `(x & ~mask) ^ value`."""
    if op in ("set-xmark", "set-mark"):
        v, m, _ = parse_markmask(text, option)
        return (v, m) if op == "set-xmark" else (v, v | m)
    v = parse_u32(text, option)
    if op == "and-mark":
        return 0, ALL_ONES ^ v
    if op == "or-mark":
        return v, v
    return v, 0  # xor-mark


def _build_mark_target(vals: Vals, ctx: _RuleContext) -> Target:
    ops = [k for k in _MARK_OPS if k in vals]
    if len(ops) != 1:
        raise _OptionError("--set-xmark", "MARK needs exactly one of --set-xmark, --set-mark, "
                           "--and-mark, --or-mark, --xor-mark")
    v, m = _xmark(ops[0], _arg(vals, ops[0]), f"--{ops[0]}")
    return MarkTarget(v, m)


def _build_connmark_target(vals: Vals, ctx: _RuleContext) -> Target:
    ops = [k for k in (*_MARK_OPS, "save-mark", "restore-mark") if k in vals]
    if len(ops) != 1:
        raise _OptionError("--set-xmark", "CONNMARK needs exactly one of --set-xmark, --set-mark, "
                           "--and-mark, --or-mark, --xor-mark, --save-mark, --restore-mark")
    op = ops[0]
    if op in _MARK_OPS:
        if any(k in vals for k in ("mask", "nfmask", "ctmask")):
            raise _OptionError("--mask", "--mask/--nfmask/--ctmask go with --save-mark/--restore-mark")
        v, m = _xmark(op, _arg(vals, op), f"--{op}")
        return ConnmarkTarget("set", v, m)
    if "mask" in vals and ("nfmask" in vals or "ctmask" in vals):
        raise _OptionError("--mask", "--mask excludes --nfmask/--ctmask")
    mask = parse_u32(_arg(vals, "mask"), "--mask") if "mask" in vals else ALL_ONES
    nf = parse_u32(_arg(vals, "nfmask"), "--nfmask") if "nfmask" in vals else mask
    ct = parse_u32(_arg(vals, "ctmask"), "--ctmask") if "ctmask" in vals else mask
    return ConnmarkTarget("save" if op == "save-mark" else "restore", 0, ct, nf)


def _build_log(vals: Vals, ctx: _RuleContext) -> Target:
    level = 4
    if "level" in vals:
        t = _arg(vals, "level")
        level = LOG_LEVELS[t] if t in LOG_LEVELS else parse_u32(t, "--log-level", 7)
    prefix = _arg(vals, "prefix") if "prefix" in vals else ""
    if len(prefix) > 29:
        raise _OptionError("--log-prefix", "the log prefix is limited to 29 characters")
    return LogTarget(prefix, level, frozenset(f for f in LOG_FLAGS if f in vals))


TARGET_BUILDERS: dict[str, Callable[[Vals, _RuleContext], Target]] = {
    "ACCEPT": lambda v, c: _VERDICTS["ACCEPT"],
    "DROP": lambda v, c: _VERDICTS["DROP"],
    "RETURN": lambda v, c: _VERDICTS["RETURN"],
    "REJECT": _build_reject,
    "DNAT": _build_dnat,
    "SNAT": _build_snat,
    "MASQUERADE": _build_masquerade,
    "MARK": _build_mark_target,
    "CONNMARK": _build_connmark_target,
    "LOG": _build_log,
}
_VERDICTS = {n: Verdict(n) for n in ("ACCEPT", "DROP", "RETURN")}


# ---------------------------------------------------------------- the rule parser

_GENERAL = {"-s": "s", "--source": "s", "--src": "s", "-d": "d", "--destination": "d", "--dst": "d",
            "-i": "i", "--in-interface": "i", "-o": "o", "--out-interface": "o",
            "-p": "p", "--protocol": "p", "-m": "m", "--match": "m", "-j": "j", "--jump": "j",
            "-g": "g", "--goto": "g", "-c": "c", "--set-counters": "c"}


class _Module:
    __slots__ = ("name", "options", "vals", "is_target")

    def __init__(self, name: str, options: dict[str, tuple[str, int]], is_target: bool) -> None:
        self.name = name
        self.options = options
        self.vals: Vals = {}
        self.is_target = is_target


def _iface(text: str, option: str) -> str:
    if not text or len(text) > 15 or any(c in text for c in " /"):
        raise _OptionError(option, f"invalid interface name {text!r}")
    return text


def parse_rule_tokens(toks: list[str], start: int, chain: str, table: str, family: int,
                      cache: dict[Any, Any] | None = None) -> list[Rule]:
    """Parse the options of one rule (tokens after `-A CHAIN`). Several rules come back when -s
    or -d list several addresses, as iptables expands them.

    The fast path handles rules whose options all sit right after their own `-m`/`-j` (every
    rule iptables-save prints, and kube-proxy's input) with cached matches and targets; anything
    else, errors included, goes through the general parser, which gives identical results.
    """
    rules = _parse_fast(toks, start, chain, table, family, {} if cache is None else cache)
    if rules is None:
        rules = parse_rule_tokens_general(toks, start, chain, table, family)
    return rules


_FAST_GENERAL = {"-s", "-d", "-i", "-o", "-p"}


def _nets(text: str, family: int, option: str, cache: dict[Any, Any]) -> list[IPNet]:
    nets = cache.get(text)
    if nets is None:
        nets = cache[text] = [parse_net(a, family, option) for a in text.split(",")]
    return nets


def _parse_fast(toks: list[str], start: int, chain: str, table: str, family: int,
                cache: dict[Any, Any]) -> list[Rule] | None:
    """The common case, or None to defer to the general parser. `cache` lives for one parse:
    segments (a match or target with its options) and addresses repeat across rules."""
    n = len(toks)
    i = start
    srcs: list[IPNet] | None = None
    dsts: list[IPNet] | None = None
    sneg = dneg = ineg = oneg = pneg = False
    iif = oif = None
    proto: int | None = None
    have_proto = False
    segs: list[tuple[str, str, int, int]] = []
    have_target = False
    while i < n:
        tok = toks[i]
        neg = False
        if tok == "!":
            neg = True
            i += 1
            if i >= n:
                return None
            tok = toks[i]
        if i + 1 >= n:
            return None
        arg = toks[i + 1]
        if tok == "-m" or tok == "-j" or tok == "-g":
            if neg:
                return None
            if tok == "-m":
                opts = MODULE_OPTIONS.get(arg)
                if opts is None:
                    return None
            else:
                if have_target:
                    return None
                have_target = True
                opts = TARGET_OPTIONS.get(arg, {}) if tok == "-j" else {}
            j = i + 2
            while j < n:
                t = toks[j]
                k = j
                if t == "!":
                    k = j + 1
                    if k >= n:
                        return None
                    t = toks[k]
                spec = opts.get(t)
                if spec is None:
                    break
                j = k + 1 + spec[1]
            if j > n:
                return None
            segs.append((tok, arg, i + 2, j))
            i = j
            continue
        if tok not in _FAST_GENERAL:
            return None
        if tok == "-s":
            if srcs is not None:
                return None
            srcs = _nets(arg, family, tok, cache)
            sneg = neg
        elif tok == "-d":
            if dsts is not None:
                return None
            dsts = _nets(arg, family, tok, cache)
            dneg = neg
        elif tok == "-p":
            if have_proto:
                return None
            p = proto_number(arg)
            if p is None or (p == 0 and neg):
                return None
            have_proto = True
            proto, pneg = p, neg
        elif tok == "-i":
            if iif is not None:
                return None
            iif, ineg = _iface(arg, tok), neg
        else:
            if oif is not None:
                return None
            oif, oneg = _iface(arg, tok), neg
        i += 2
    matches: list[Match] = []
    target: Target | None = None
    for kind, name, s, e in segs:
        if name == "comment" and e - s == 2 and kind == "-m" and toks[s] == "--comment" \
                and len(toks[s + 1]) <= 255:
            # the commonest segment, and mostly unique: keyed by its text alone
            ckey = ("comment", toks[s + 1])  # (addresses are keyed by their bare text)
            comment = cache.get(ckey)
            if comment is None:
                comment = cache[ckey] = CommentMatch(toks[s + 1])
            matches.append(comment)
            continue
        key = (kind, name, proto, pneg, family, table, *toks[s:e])
        built = cache.get(key)
        if built is None:
            built = _build_segment(kind, name, toks, s, e, proto, pneg, family, table)
            if built is None:
                return None
            cache[key] = built
        if kind == "-m":
            matches.append(built)
        else:
            target = built
    if proto == 0:
        proto, pneg = None, False
    mt = tuple(matches)
    if srcs is None and dsts is None:
        return [Rule(chain, None, False, None, False, iif, ineg, oif, oneg, proto, pneg, mt, target)]
    return [Rule(chain, s_, sneg, d_, dneg, iif, ineg, oif, oneg, proto, pneg, mt, target)
            for s_ in (srcs or [None]) for d_ in (dsts or [None])]


def _build_segment(kind: str, name: str, toks: list[str], s: int, e: int, proto: int | None,
                   pneg: bool, family: int, table: str) -> Any:
    """Build one match or target from its own options; None when the general parser must decide."""
    if kind == "-g" or (kind == "-j" and name not in TARGET_OPTIONS):
        if s != e or not name or name.startswith("-"):
            return None
        return Jump(name, kind == "-g")
    opts = MODULE_OPTIONS[name] if kind == "-m" else TARGET_OPTIONS[name]
    negatable = _NEGATABLE.get(name, ()) if kind == "-m" else ()
    vals: Vals = {}
    i = s
    while i < e:
        neg = toks[i] == "!"
        if neg:
            i += 1
        key, nargs = opts[toks[i]]
        if key in vals or (neg and key not in negatable):
            return None
        if nargs == 0:
            vals[key] = (True, neg)
        elif nargs == 1:
            vals[key] = (toks[i + 1], neg)
        else:
            vals[key] = (tuple(toks[i + 1:i + 1 + nargs]), neg)
        i += 1 + nargs
    ctx = _RuleContext(family, table)
    ctx.proto, ctx.proto_neg = proto, pneg
    try:
        if kind == "-m":
            return MATCH_BUILDERS[name](vals, ctx)
        return TARGET_BUILDERS[name](vals, ctx)
    except _OptionError:
        return None


def parse_rule_tokens_general(toks: list[str], start: int, chain: str, table: str,
                              family: int) -> list[Rule]:
    """The general rule parser: every option in any position, and the precise errors."""
    ctx = _RuleContext(family, table)
    srcs: list[IPNet] | None = None
    dsts: list[IPNet] | None = None
    kw: dict[str, Any] = {}
    modules: list[_Module] = []
    target_mod: _Module | None = None
    target_name: str | None = None
    goto = False
    counters = None
    seen: set[str] = set()
    n = len(toks)
    i = start
    while i < n:
        tok = toks[i]
        neg = False
        if tok == "!":
            neg = True
            i += 1
            if i >= n:
                raise _OptionError("!", "`!` at the end of the rule")
            tok = toks[i]
            if tok == "!":
                raise _OptionError("!", "`!` given twice")
        g = _GENERAL.get(tok)
        if g is not None:
            if g in seen and g not in "m":
                raise _OptionError(tok, f"{tok} given twice")
            seen.add(g)
            if i + 1 >= n:
                raise _OptionError(tok, f"{tok} needs an argument")
            arg = toks[i + 1]
            i += 2
            if g == "m":
                if neg:
                    raise _OptionError(tok, "`!` cannot negate -m")
                opts = MODULE_OPTIONS.get(arg)
                if opts is None:
                    raise _OptionError(f"-m {arg}", f"match module {arg!r} is not supported")
                modules.append(_Module(arg, opts, False))
            elif g in "jg":
                if neg:
                    raise _OptionError(tok, f"`!` cannot negate {tok}")
                if target_name is not None or "j" in seen and "g" in seen:
                    raise _OptionError(tok, "only one -j/-g per rule")
                target_name = arg
                goto = g == "g"
                opts_t = TARGET_OPTIONS.get(arg) if not goto else None
                if opts_t is not None:
                    target_mod = _Module(arg, opts_t, True)
            elif g == "s":
                srcs = [parse_net(a, family, tok) for a in arg.split(",")]
                kw["src_neg"] = neg
            elif g == "d":
                dsts = [parse_net(a, family, tok) for a in arg.split(",")]
                kw["dst_neg"] = neg
            elif g == "i":
                kw["iif"], kw["iif_neg"] = _iface(arg, tok), neg
            elif g == "o":
                kw["oif"], kw["oif_neg"] = _iface(arg, tok), neg
            elif g == "p":
                p = proto_number(arg)
                if p is None:
                    raise _OptionError(tok, f"unknown protocol {arg!r}")
                if p == 0 and neg:
                    raise _OptionError(tok, "rule would never match protocol (! -p all)")
                ctx.proto, ctx.proto_neg = p, neg
                kw["proto"], kw["proto_neg"] = (p, neg) if p != 0 else (None, False)
            elif g == "c":
                if i >= n:
                    raise _OptionError(tok, "-c needs packet and byte counts")
                counters = (parse_u32(arg, tok, (1 << 64) - 1), parse_u32(toks[i], tok, (1 << 64) - 1))
                i += 1
            continue
        if not tok.startswith("-"):
            raise _OptionError(tok, f"unexpected argument {tok!r}")
        # Module option: the most recently loaded module (target first) that knows it.
        owner: _Module | None = None
        spec = None
        if target_mod is not None:
            spec = target_mod.options.get(tok)
            if spec is not None:
                owner = target_mod
        if owner is None:
            for m in reversed(modules):
                spec = m.options.get(tok)
                if spec is not None:
                    owner = m
                    break
        if owner is None:
            implicit = _IMPLICIT_PROTO_MODULES.get(ctx.proto or -1) if not ctx.proto_neg else None
            if implicit and not any(m.name == implicit for m in modules) and tok in MODULE_OPTIONS[implicit]:
                owner = _Module(implicit, MODULE_OPTIONS[implicit], False)
                modules.append(owner)
                spec = owner.options[tok]
            elif target_name is not None and target_mod is None:
                raise _OptionError(tok, f"target {target_name!r} takes no option {tok} "
                                   "(or is not a supported target)")
            else:
                raise _OptionError(tok, f"unknown option {tok}")
        assert spec is not None
        key, nargs = spec
        if key in owner.vals:
            raise _OptionError(tok, f"{tok} given twice")
        if neg and key not in _NEGATABLE.get(owner.name, ()):
            raise _OptionError(tok, f"`!` cannot negate {tok}")
        if i + nargs >= n:
            raise _OptionError(tok, f"{tok} needs {nargs} argument(s)")
        if nargs == 0:
            owner.vals[key] = (True, neg)
        elif nargs == 1:
            owner.vals[key] = (toks[i + 1], neg)
        else:
            owner.vals[key] = (tuple(toks[i + 1:i + 1 + nargs]), neg)
        i += 1 + nargs

    matches = [MATCH_BUILDERS[m.name](m.vals, ctx) for m in modules]
    target: Target | None = None
    if target_name is not None:
        if target_mod is not None:
            target = TARGET_BUILDERS[target_name](target_mod.vals, ctx)
        else:
            if not target_name or target_name.startswith("-"):
                raise _OptionError("-j", f"invalid target name {target_name!r}")
            target = Jump(target_name, goto)
    base = dict(kw, matches=tuple(matches), target=target, counters=counters)
    rules = []
    for s in srcs or [None]:
        for d in dsts or [None]:
            rules.append(Rule(chain, src=s, dst=d, **base))
    return rules


# ---------------------------------------------------------------- the dump parser

_POLICIES = ("ACCEPT", "DROP")


def parse(text: str, *, strict: bool = True, family: int = 4, check_hooks: bool = False) -> Ruleset:
    """Parse a whole iptables-save dump (or iptables-restore input).

    `family` 4 for iptables, 6 for ip6tables. With `strict=False`, a rule the model cannot
    represent becomes an unknown rule (reported in `Ruleset.unknown`) instead of an error;
    structural errors (tables, chains, COMMIT) are errors in both modes. `check_hooks` also
    refuses what iptables-restore refuses although the model can hold it: a target used from a
    hook it does not support (DNAT reached from POSTROUTING, ...). Dumps from iptables-save
    never contain those; hand-written rule files may.
    """
    if family not in (4, 6):
        raise ValueError("family must be 4 or 6")
    gc_was_enabled = gc.isenabled()
    gc.disable()  # hundreds of thousands of acyclic records: the cycle collector only costs time
    try:
        return _parse(text, strict, family, check_hooks)
    finally:
        if gc_was_enabled:
            gc.enable()


def _parse(text: str, strict: bool, family: int, check_hooks: bool) -> Ruleset:
    rs = Ruleset(family=family)
    table: Table | None = None
    pending: list[Rule] = []  # rules with jumps, checked at COMMIT
    cache: dict[Any, Any] = {}
    lines = text.splitlines()
    for lineno, raw in enumerate(lines, 1):
        if raw[:3] == "-A " and table is not None:
            # hot path: a rule as iptables-save prints it
            rules = None
            try:
                toks = tokenize(raw)
                chain = table.chains.get(toks[1]) if len(toks) > 1 else None
                if chain is not None:
                    rules = _parse_fast(toks, 2, toks[1], table.name, family, cache)
            except _OptionError:
                rules = None
            if rules is not None and len(rules) == 1:
                r = rules[0]
                r.line = lineno
                r.text = raw.rstrip()
                chain.rules.append(r)  # type: ignore[union-attr]
                table.rules.append(r)
                if type(r.target) is Jump:
                    pending.append(r)
                continue
        line = raw.strip()
        if not line:
            continue
        c0 = line[0]
        if c0 == "#":
            if table is None:
                rs.items.append(line)
            continue
        if c0 == "-" or c0 == "[":
            if table is None:
                raise ParseError(lineno, line.split()[0], "rule outside a table (missing *table line)")
            _rule_line(rs, table, line, lineno, strict, pending, cache)
            continue
        if c0 == "*":
            if table is not None:
                raise ParseError(lineno, "", f"table {line[1:]!r} starts before table "
                                 f"{table.name!r} was committed (missing COMMIT)")
            name = line[1:]
            if name not in BUILTIN_CHAINS:
                raise ParseError(lineno, "", f"unknown table {name!r} (expected one of "
                                 f"{', '.join(BUILTIN_CHAINS)})")
            if name in rs.tables:
                raise ParseError(lineno, "", f"table {name!r} appears twice")
            table = Table.new(name, lineno)
            pending = []
            continue
        if c0 == ":":
            if table is None:
                raise ParseError(lineno, "", "chain line outside a table")
            _chain_line(table, line, lineno)
            continue
        if line == "COMMIT":
            if table is None:
                raise ParseError(lineno, "COMMIT", "COMMIT outside a table")
            _check_jumps(rs, table, pending, strict)
            if check_hooks:
                _check_hooks(rs, table, strict)
            rs.tables[table.name] = table
            rs.items.append(table)
            table = None
            continue
        raise ParseError(lineno, line.split()[0], f"cannot parse line {line[:60]!r}")
    if table is not None:
        raise ParseError(len(lines), "COMMIT", f"table {table.name!r} is not committed (missing COMMIT)")
    return rs


def _chain_line(table: Table, line: str, lineno: int) -> None:
    parts = line[1:].split()
    if len(parts) not in (2, 3):
        raise ParseError(lineno, "", f"bad chain line {line!r} (expected ':NAME POLICY [packets:bytes]')")
    name, policy = parts[0], parts[1]
    builtin = name in BUILTIN_CHAINS[table.name]
    if builtin and policy not in _POLICIES:
        raise ParseError(lineno, "", f"built-in chain {name} needs policy ACCEPT or DROP, not {policy!r}")
    if not builtin and policy != "-":
        raise ParseError(lineno, "", f"user chain {name} cannot have a policy ({policy!r}); use '-'")
    if len(name) > 28 or name.startswith("-") or name in TARGET_OPTIONS or name == "!":
        raise ParseError(lineno, "", f"invalid chain name {name!r}")
    packets = bytes_ = 0
    if len(parts) == 3:
        c = parts[2]
        pk, colon, by = c[1:-1].partition(":")
        if not (c.startswith("[") and c.endswith("]") and colon and pk.isdigit() and by.isdigit()):
            raise ParseError(lineno, "", f"bad counters {c!r} (expected [packets:bytes])")
        packets, bytes_ = int(pk), int(by)
    if name in table.chains and (not builtin or name in table.declared):
        raise ParseError(lineno, "", f"chain {name} declared twice")
    table.declared.append(name)
    table.chains[name] = Chain(name, policy if builtin else None, packets, bytes_)


def _rule_line(rs: Ruleset, table: Table, line: str, lineno: int, strict: bool,
               pending: list[Rule], cache: dict[Any, Any]) -> None:
    chain_name = ""
    try:
        toks = tokenize(line)
        start = 0
        counters = None
        if toks[0].startswith("["):
            c = toks[0]
            pk, colon, by = c[1:-1].partition(":")
            if not (c.endswith("]") and colon and pk.isdigit() and by.isdigit()):
                raise _OptionError(c, f"bad counters {c!r}")
            counters = (int(pk), int(by))
            start = 1
        if len(toks) < start + 2:
            raise _OptionError(toks[start], f"{toks[start]} needs a chain name")
        cmd = toks[start]
        chain_name = toks[start + 1]
        if cmd in _CHAIN_COMMANDS:
            if counters is not None or len(toks) != start + 2:
                raise _OptionError(cmd, f"{cmd} takes exactly one chain name")
            _chain_command(table, _CHAIN_COMMANDS[cmd], chain_name, lineno, cache)
            return
        if cmd not in ("-A", "--append"):
            raise _OptionError(cmd, f"command {cmd} is not supported in a dump (only -A, -N, -F, -X)")
        chain = table.chains.get(chain_name)
        if chain is None:
            raise ParseError(lineno, cmd, f"chain {chain_name!r} does not exist in table "
                             f"{table.name!r} (declare it with ':{chain_name} - [0:0]')")
        rules = parse_rule_tokens(toks, start + 2, chain_name, table.name, rs.family, cache)
        multi = len(rules) > 1
        for r in rules:
            if counters is not None:
                r.counters = counters
            r.line = lineno
            r.text = r.render() if multi else line
            chain.rules.append(r)
            table.rules.append(r)
            if type(r.target) is Jump:
                pending.append(r)
    except _OptionError as exc:
        err = ParseError(lineno, exc.option, exc.message)
        if strict or not chain_name or chain_name not in table.chains:
            raise err from None
        _keep_unknown(rs, table, chain_name, line, lineno, exc.option, exc.message)


_CHAIN_COMMANDS = {"-N": "new", "--new-chain": "new", "-F": "flush", "--flush": "flush",
                   "-X": "delete", "--delete-chain": "delete"}


def _chain_command(table: Table, what: str, name: str, lineno: int, cache: dict[Any, Any]) -> None:
    """-N/-F/-X CHAIN, as kube-proxy's restore input uses them (`-X` for stale chains).

    The model is the resulting state: a deleted chain is gone, so such input renders without it.
    """
    chain = table.chains.get(name)
    builtin = name in BUILTIN_CHAINS[table.name]
    if what == "new":
        if chain is not None:
            raise ParseError(lineno, "-N", f"chain {name} already exists")
        if len(name) > 28 or name.startswith("-") or name in TARGET_OPTIONS:
            raise ParseError(lineno, "-N", f"invalid chain name {name!r}")
        table.chains[name] = Chain(name)
        table.declared.append(name)
        return
    if chain is None:
        raise ParseError(lineno, "-X" if what == "delete" else "-F", f"chain {name!r} does not exist in table "
                         f"{table.name!r}")
    refs_key = ("jump-refs", table.name)
    if what == "flush":
        chain.rules.clear()
        table.rules = [r for r in table.rules if r.chain != name]
        cache.pop(refs_key, None)
        return
    if builtin:
        raise ParseError(lineno, "-X", f"cannot delete built-in chain {name}")
    if chain.rules:
        raise ParseError(lineno, "-X", f"cannot delete chain {name}: it still has {len(chain.rules)} rule(s)")
    # who jumps where, scanned incrementally: kube-proxy writes thousands of -X lines after its rules
    scanned, refs = cache.get(refs_key, (0, {}))
    for r in table.rules[scanned:]:
        if type(r.target) is Jump:
            refs.setdefault(r.target.chain, r.line)
    cache[refs_key] = (len(table.rules), refs)
    if name in refs:
        raise ParseError(lineno, "-X", f"cannot delete chain {name}: line {refs[name]} jumps to it")
    del table.chains[name]
    if name in table.declared:
        table.declared.remove(name)


def _keep_unknown(rs: Ruleset, table: Table, chain_name: str, line: str, lineno: int,
                  option: str, reason: str) -> Rule:
    rule = Rule(chain_name, line=lineno, text=line, unknown=reason)
    table.chains[chain_name].rules.append(rule)
    table.rules.append(rule)
    rs.unknown.append(UnknownRule(lineno, option, reason, line))
    return rule


# Targets the kernel accepts only from some hooks (xt_target.hooks), by table.
TARGET_HOOKS = {"nat": {"DNAT": ("PREROUTING", "OUTPUT"), "SNAT": ("POSTROUTING", "INPUT"),
                        "MASQUERADE": ("POSTROUTING",)},
                "filter": {"REJECT": ("INPUT", "FORWARD", "OUTPUT")}}


def _check_hooks(rs: Ruleset, table: Table, strict: bool) -> None:
    """A target used from a chain reached from a hook it does not support fails to load
    (xt_check_target); find those rules, naming the line and the hook."""
    limits = TARGET_HOOKS.get(table.name)
    if not limits:
        return
    edges: dict[str, set[str]] = {}
    restricted: list[Rule] = []
    for r in table.rules:
        t = r.target
        if t is None:
            continue
        if type(t) is Jump:
            edges.setdefault(r.chain, set()).add(t.chain)
        elif t.name in limits:
            restricted.append(r)
    if not restricted:
        return
    reached_from: dict[str, set[str]] = {}
    for base in BUILTIN_CHAINS[table.name]:
        stack, seen = [base], set()
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            reached_from.setdefault(c, set()).add(base)
            stack.extend(edges.get(c, ()))
    for r in restricted:
        name = r.target.name  # type: ignore[union-attr]
        bad = sorted(reached_from.get(r.chain, set()) - set(limits[name]))
        if not bad or r.unknown is not None:
            continue
        via = "" if r.chain in BUILTIN_CHAINS[table.name] else f" (chain {r.chain} is reached from {', '.join(bad)})"
        msg = f"{name} is only valid from {'/'.join(limits[name])}, not {', '.join(bad)}{via}"
        if strict:
            raise ParseError(r.line, f"-j {name}", msg)
        r.unknown = msg
        r.matches, r.target = (), None
        rs.unknown.append(UnknownRule(r.line, f"-j {name}", msg, r.text))


def _check_jumps(rs: Ruleset, table: Table, pending: list[Rule], strict: bool) -> None:
    for rule in pending:
        target = rule.target.chain  # type: ignore[union-attr]
        if target in table.chains and target not in BUILTIN_CHAINS[table.name]:
            continue
        if target in BUILTIN_CHAINS[table.name]:
            msg = f"cannot jump to built-in chain {target}"
        else:
            msg = (f"-j {target}: no chain {target!r} in table {table.name!r}, and {target} is not a "
                   "supported target")
        if strict:
            raise ParseError(rule.line, f"-j {target}", msg)
        rule.unknown = msg
        rule.matches, rule.target = (), None
        rs.unknown.append(UnknownRule(rule.line, f"-j {target}", msg, rule.text))
