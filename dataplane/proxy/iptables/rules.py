"""The iptables rule model: Ruleset -> Table -> Chain -> Rule(matches, target).

Every record renders back to the canonical text `iptables-save` prints for it (option order,
number formats and quoting as in iptables 1.8's `save` callbacks), so a dump parsed and rendered
again is byte-identical, and a rule written in any accepted spelling renders in the one spelling
the kernel's tools would show. Semantics live in `dataplane.engine.iptables_eval`; this module
only describes rules.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

ALL_ONES = 0xFFFFFFFF

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

# xtables_chain_protos: consulted before /etc/protocols, as iptables' proto_to_name does.
_BUILTIN_PROTOS = (("tcp", 6), ("sctp", 132), ("udp", 17), ("udplite", 136), ("icmp", 1),
                   ("ipv6-icmp", 58), ("icmpv6", 58), ("esp", 50), ("ah", 51), ("ipv6-mh", 135),
                   ("mh", 135), ("all", 0))


@functools.cache
def _protocols() -> tuple[dict[str, int], dict[int, str]]:
    by_name = {n: v for n, v in _BUILTIN_PROTOS}
    by_num: dict[int, str] = {}
    for n, v in _BUILTIN_PROTOS:
        by_num.setdefault(v, n)
    try:
        with open("/etc/protocols", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[1].isdigit():
                    num = int(fields[1])
                    for name in (fields[0], *fields[2:]):
                        by_name.setdefault(name, num)
                        by_name.setdefault(name.lower(), num)
                    by_num.setdefault(num, fields[0])
    except OSError:
        pass
    return by_name, by_num


def proto_number(name: str) -> int | None:
    """`-p` argument to a protocol number (names, aliases or digits); None if unknown."""
    if name.isdigit():
        num = int(name)
        return num if num <= 255 else None
    return _protocols()[0].get(name.lower())


def proto_name(num: int) -> str:
    return _protocols()[1].get(num, str(num))


def save_string(value: str) -> str:
    """Quote like xtables_save_string: bare if only [A-Za-z0-9_-], else "..." with \\ escapes."""
    if value and all(c.isascii() and (c.isalnum() or c in "_-") for c in value):
        return value
    out = ['"']
    for c in value:
        if c in "\"\\'":
            out.append("\\")
        out.append(c)
    out.append('"')
    return "".join(out)


def _neg(flag: bool) -> str:
    return "! " if flag else ""


def hexmark(v: int) -> str:
    return f"0x{v:x}"


def render_mark(value: int, mask: int) -> str:
    """`0x4000` when the mask is all ones, else `0x4000/0x4000` (libxt_mark's print_mark)."""
    return hexmark(value) if mask == ALL_ONES else f"{hexmark(value)}/{hexmark(mask)}"


# ---------------------------------------------------------------- addresses and ports

@dataclass(frozen=True, slots=True)
class IPNet:
    """An address with a (possibly non-contiguous) netmask, as ipt_ip stores -s/-d."""

    family: int
    addr: int  # already masked
    mask: int

    @property
    def bits(self) -> int:
        return 32 if self.family == 4 else 128

    def prefixlen(self) -> int | None:
        """The prefix length, or None for a non-contiguous mask."""
        full = (1 << self.bits) - 1
        inv = full ^ self.mask
        if inv & (inv + 1):
            return None
        return self.bits - inv.bit_length()

    def contains(self, addr: int) -> bool:
        return (addr & self.mask) == self.addr

    def address_text(self) -> str:
        cls = ipaddress.IPv4Address if self.family == 4 else ipaddress.IPv6Address
        return str(cls(self.addr))

    def render(self) -> str:
        """`10.0.0.0/8`, `1.2.3.4/32` or `10.0.0.0/255.0.255.0` (save_ipv4_addr)."""
        plen = self.prefixlen()
        if plen is not None:
            return f"{self.address_text()}/{plen}"
        cls = ipaddress.IPv4Address if self.family == 4 else ipaddress.IPv6Address
        return f"{self.address_text()}/{cls(self.mask)}"

    def render_short(self) -> str:
        """Without `/32` for a host, as conntrack and recent print addresses."""
        if self.mask == (1 << self.bits) - 1:
            return self.address_text()
        return self.render()


@dataclass(frozen=True, slots=True)
class PortRange:
    lo: int
    hi: int

    def render(self, sep: str = ":") -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}{sep}{self.hi}"

    def contains(self, port: int) -> bool:
        return self.lo <= port <= self.hi


# ---------------------------------------------------------------- matches

class Match:
    """A `-m NAME ...` match. Subclasses are frozen dataclasses with `module` and `render()`."""

    module: str = ""
    __slots__ = ()

    def render(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


TCP_FLAG_NAMES = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10),
                  ("URG", 0x20))


def render_tcp_flags(flags: int) -> str:
    names = [n for n, bit in TCP_FLAG_NAMES if flags & bit]
    return ",".join(names) if names else "NONE"


@dataclass(frozen=True, slots=True)
class PortsMatch(Match):
    """-m tcp / -m udp / -m sctp: --sport, --dport (and tcp --tcp-flags)."""

    module: str
    sport: PortRange | None = None
    sport_neg: bool = False
    dport: PortRange | None = None
    dport_neg: bool = False
    flags_mask: int | None = None  # tcp only
    flags_comp: int = 0
    flags_neg: bool = False

    def render(self) -> str:
        parts = [f"-m {self.module}"]
        if self.sport is not None:
            parts.append(f"{_neg(self.sport_neg)}--sport {self.sport.render()}")
        if self.dport is not None:
            parts.append(f"{_neg(self.dport_neg)}--dport {self.dport.render()}")
        if self.flags_mask is not None:
            parts.append(f"{_neg(self.flags_neg)}--tcp-flags {render_tcp_flags(self.flags_mask)} "
                         f"{render_tcp_flags(self.flags_comp)}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class IcmpMatch(Match):
    """-m icmp --icmp-type TYPE[/CODE] (type 255 is `any`), or -m icmp6 --icmpv6-type."""

    type: int
    code_lo: int = 0
    code_hi: int = 255
    neg: bool = False
    module: str = "icmp"

    def render(self) -> str:
        if self.type == 255 and self.module == "icmp":
            spec = "any"
        elif self.code_lo == 0 and self.code_hi == 255:
            spec = str(self.type)
        else:
            spec = f"{self.type}/{self.code_lo}"
        option = "--icmp-type" if self.module == "icmp" else "--icmpv6-type"
        return f"-m {self.module} {_neg(self.neg)}{option} {spec}"


@dataclass(frozen=True, slots=True)
class CommentMatch(Match):
    comment: str
    module: str = "comment"

    def render(self) -> str:
        return f"-m comment --comment {save_string(self.comment)}"


STATISTIC_SCALE = 0x80000000


@dataclass(frozen=True, slots=True)
class StatisticMatch(Match):
    """-m statistic. `probability` is the kernel's quantised value, lround(p * 2^31)."""

    mode: str  # "random" | "nth"
    probability: int = 0
    every: int = 0  # as the user wrote it (kernel stores every - 1)
    packet: int = 0
    neg: bool = False
    module: str = "statistic"

    @property
    def probability_float(self) -> float:
        return self.probability / STATISTIC_SCALE

    def render(self) -> str:
        n = " !" if self.neg else ""
        if self.mode == "random":
            return f"-m statistic --mode random{n} --probability {self.probability / STATISTIC_SCALE:.11f}"
        # iptables >= 1.8 saves --packet even when 0 (print_match: `packet || *prefix`)
        return f"-m statistic --mode nth{n} --every {self.every} --packet {self.packet}"


@dataclass(frozen=True, slots=True)
class MarkMatch(Match):
    """-m mark / -m connmark: (mark & mask) == value."""

    value: int
    mask: int = ALL_ONES
    neg: bool = False
    module: str = "mark"

    def render(self) -> str:
        return f"-m {self.module} {_neg(self.neg)}--mark {render_mark(self.value, self.mask)}"


ADDRTYPES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
             "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")


def render_addrtypes(mask: int) -> str:
    return ",".join(n for i, n in enumerate(ADDRTYPES) if mask & (1 << i))


@dataclass(frozen=True, slots=True)
class AddrtypeMatch(Match):
    """-m addrtype: bit i of a mask is ADDRTYPES[i] (the kernel's RTN_* order)."""

    src_types: int = 0
    src_neg: bool = False
    dst_types: int = 0
    dst_neg: bool = False
    limit_iface_in: bool = False
    limit_iface_out: bool = False
    module: str = "addrtype"

    def render(self) -> str:
        parts = ["-m addrtype"]
        if self.src_types:
            parts.append(f"{_neg(self.src_neg)}--src-type {render_addrtypes(self.src_types)}")
        if self.dst_types:
            parts.append(f"{_neg(self.dst_neg)}--dst-type {render_addrtypes(self.dst_types)}")
        if self.limit_iface_in:
            parts.append("--limit-iface-in")
        if self.limit_iface_out:
            parts.append("--limit-iface-out")
        return " ".join(parts)


CT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
CT_STATUSES = ("NONE", "EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED")


def render_names(names: tuple[str, ...], order: tuple[str, ...]) -> str:
    return ",".join(n for n in order if n in names)


@dataclass(frozen=True, slots=True)
class StateMatch(Match):
    """-m state --state (the conntrack state subset, legacy spelling)."""

    states: frozenset[str]
    neg: bool = False
    module: str = "state"

    def render(self) -> str:
        return f"-m state {_neg(self.neg)}--state {render_names(tuple(self.states), CT_STATES)}"


@dataclass(frozen=True, slots=True)
class CtAddr:
    net: IPNet
    neg: bool = False


@dataclass(frozen=True, slots=True)
class CtPort:
    ports: PortRange
    neg: bool = False


@dataclass(frozen=True, slots=True)
class ConntrackMatch(Match):
    """-m conntrack (revision 3): every option optional, each with its own negation."""

    states: frozenset[str] | None = None
    states_neg: bool = False
    proto: int | None = None
    proto_neg: bool = False
    origsrc: CtAddr | None = None
    origdst: CtAddr | None = None
    replsrc: CtAddr | None = None
    repldst: CtAddr | None = None
    origsrcport: CtPort | None = None
    origdstport: CtPort | None = None
    replsrcport: CtPort | None = None
    repldstport: CtPort | None = None
    statuses: frozenset[str] | None = None
    statuses_neg: bool = False
    expire: PortRange | None = None
    expire_neg: bool = False
    direction: str | None = None  # ORIGINAL | REPLY
    module: str = "conntrack"

    def render(self) -> str:
        parts = ["-m conntrack"]
        if self.states is not None:
            parts.append(f"{_neg(self.states_neg)}--ctstate {render_names(tuple(self.states), CT_STATES)}")
        if self.proto is not None:
            parts.append(f"{_neg(self.proto_neg)}--ctproto {self.proto}")
        for name in ("origsrc", "origdst", "replsrc", "repldst"):
            a = getattr(self, name)
            if a is not None:
                parts.append(f"{_neg(a.neg)}--ct{name} {a.net.render_short()}")
        for name in ("origsrcport", "origdstport", "replsrcport", "repldstport"):
            p = getattr(self, name)
            if p is not None:
                parts.append(f"{_neg(p.neg)}--ct{name} {p.ports.render()}")
        if self.statuses is not None:
            parts.append(f"{_neg(self.statuses_neg)}--ctstatus "
                         f"{render_names(tuple(self.statuses), CT_STATUSES)}")
        if self.expire is not None:
            parts.append(f"{_neg(self.expire_neg)}--ctexpire {self.expire.render()}")
        if self.direction is not None:
            parts.append(f"--ctdir {self.direction}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class RecentMatch(Match):
    """-m recent (revision 1): one of set/rcheck/update/remove on the list `name`."""

    mode: str  # set | rcheck | update | remove
    name: str = "DEFAULT"
    seconds: int = 0
    reap: bool = False
    hitcount: int = 0
    rttl: bool = False
    mask: IPNet | None = None  # None = all ones
    side: str = "rsource"  # rsource | rdest
    neg: bool = False
    family: int = 4
    module: str = "recent"

    def render(self) -> str:
        parts = ["-m recent", f"{_neg(self.neg)}--{self.mode}"]
        if self.seconds:
            parts.append(f"--seconds {self.seconds}")
        if self.reap:
            parts.append("--reap")
        if self.hitcount:
            parts.append(f"--hitcount {self.hitcount}")
        if self.rttl:
            parts.append("--rttl")
        parts.append(f"--name {self.name}")
        mask = self.mask.address_text() if self.mask else ("255.255.255.255" if self.family == 4
                                                           else "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        parts.append(f"--mask {mask}")
        parts.append(f"--{self.side}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class MultiportMatch(Match):
    """-m multiport --sports/--dports/--ports with up to 15 ports or ranges."""

    kind: str  # sports | dports | ports
    ports: tuple[PortRange, ...]
    neg: bool = False
    module: str = "multiport"

    def render(self) -> str:
        text = ",".join(p.render() for p in self.ports)
        return f"-m multiport {_neg(self.neg)}--{self.kind} {text}"


@dataclass(frozen=True, slots=True)
class SetMatch(Match):
    """-m set --match-set NAME src,dst: each direction picks the packet field per set dimension."""

    name: str
    directions: tuple[str, ...]  # "src" | "dst" per dimension
    neg: bool = False
    return_nomatch: bool = False
    module: str = "set"

    def render(self) -> str:
        text = f"-m set {_neg(self.neg)}--match-set {self.name} {','.join(self.directions)}"
        return text + (" --return-nomatch" if self.return_nomatch else "")


# ---------------------------------------------------------------- targets

class Target:
    """What `-j`/`-g` names. `terminal` says whether evaluation stops at it."""

    __slots__ = ()
    name: str = ""

    def render(self) -> str:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Verdict(Target):
    """ACCEPT, DROP or RETURN."""

    name: str

    def render(self) -> str:
        return f"-j {self.name}"


@dataclass(frozen=True, slots=True)
class Jump(Target):
    """-j CHAIN (push a return point) or -g CHAIN (no return point)."""

    chain: str
    goto: bool = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.chain

    def render(self) -> str:
        return f"{'-g' if self.goto else '-j'} {self.chain}"


REJECT_TYPES_4 = {
    "icmp-net-unreachable": "icmp-net-unreachable", "net-unreach": "icmp-net-unreachable",
    "icmp-host-unreachable": "icmp-host-unreachable", "host-unreach": "icmp-host-unreachable",
    "icmp-proto-unreachable": "icmp-proto-unreachable", "proto-unreach": "icmp-proto-unreachable",
    "icmp-port-unreachable": "icmp-port-unreachable", "port-unreach": "icmp-port-unreachable",
    "icmp-net-prohibited": "icmp-net-prohibited", "net-prohib": "icmp-net-prohibited",
    "icmp-host-prohibited": "icmp-host-prohibited", "host-prohib": "icmp-host-prohibited",
    "tcp-reset": "tcp-reset", "tcp-rst": "tcp-reset",
    "icmp-admin-prohibited": "icmp-admin-prohibited", "admin-prohib": "icmp-admin-prohibited",
}
REJECT_TYPES_6 = {
    "icmp6-no-route": "icmp6-no-route", "no-route": "icmp6-no-route",
    "icmp6-adm-prohibited": "icmp6-adm-prohibited", "adm-prohibited": "icmp6-adm-prohibited",
    "icmp6-addr-unreachable": "icmp6-addr-unreachable", "addr-unreach": "icmp6-addr-unreachable",
    "icmp6-port-unreachable": "icmp6-port-unreachable", "port-unreach": "icmp6-port-unreachable",
    "tcp-reset": "tcp-reset", "tcp-rst": "tcp-reset",
    "icmp6-policy-fail": "icmp6-policy-fail", "policy-fail": "icmp6-policy-fail",
    "icmp6-reject-route": "icmp6-reject-route", "reject-route": "icmp6-reject-route",
}


@dataclass(frozen=True, slots=True)
class Reject(Target):
    reject_with: str = "icmp-port-unreachable"
    name: str = "REJECT"

    def render(self) -> str:
        return f"-j REJECT --reject-with {self.reject_with}"


@dataclass(frozen=True, slots=True)
class NatRange:
    """addr[-addr2][:port[-port2]] of --to-destination/--to-source (no address = port only)."""

    family: int
    addr_lo: int | None = None
    addr_hi: int | None = None
    port_lo: int | None = None
    port_hi: int | None = None

    def render(self) -> str:
        text = ""
        if self.addr_lo is not None:
            cls = ipaddress.IPv4Address if self.family == 4 else ipaddress.IPv6Address
            text = str(cls(self.addr_lo))
            if self.addr_hi is not None and self.addr_hi != self.addr_lo:
                text += f"-{cls(self.addr_hi)}"
            if self.family == 6 and self.port_lo is not None:
                text = f"[{text}]"
        if self.port_lo is not None:
            text += f":{self.port_lo}"
            if self.port_hi is not None and self.port_hi != self.port_lo:
                text += f"-{self.port_hi}"
        return text


@dataclass(frozen=True, slots=True)
class Nat(Target):
    """DNAT --to-destination / SNAT --to-source, with --random, --random-fully, --persistent."""

    name: str  # DNAT | SNAT
    range: NatRange | None = None
    random: bool = False
    random_fully: bool = False
    persistent: bool = False

    def render(self) -> str:
        opt = "--to-destination" if self.name == "DNAT" else "--to-source"
        parts = [f"-j {self.name}"]
        if self.range is not None:
            parts.append(f"{opt} {self.range.render()}")
        if self.random:
            parts.append("--random")
        if self.random_fully:
            parts.append("--random-fully")
        if self.persistent:
            parts.append("--persistent")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Masquerade(Target):
    ports: PortRange | None = None
    random: bool = False
    random_fully: bool = False
    name: str = "MASQUERADE"

    def render(self) -> str:
        parts = ["-j MASQUERADE"]
        if self.ports is not None:
            parts.append(f"--to-ports {self.ports.render('-')}")
        if self.random:
            parts.append("--random")
        if self.random_fully:
            parts.append("--random-fully")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class MarkTarget(Target):
    """MARK (revision 2): mark = (mark & ~mask) ^ value. Every spelling saves as --set-xmark."""

    value: int
    mask: int
    name: str = "MARK"

    def render(self) -> str:
        return f"-j MARK --set-xmark {hexmark(self.value)}/{hexmark(self.mask)}"


@dataclass(frozen=True, slots=True)
class ConnmarkTarget(Target):
    """CONNMARK (revision 1): set (ctmark = (ctmark & ~ctmask) ^ value), save or restore."""

    mode: str  # set | save | restore
    value: int = 0
    ctmask: int = ALL_ONES
    nfmask: int = ALL_ONES
    name: str = "CONNMARK"

    def render(self) -> str:
        if self.mode == "set":
            return f"-j CONNMARK --set-xmark {hexmark(self.value)}/{hexmark(self.ctmask)}"
        return (f"-j CONNMARK --{self.mode}-mark --nfmask {hexmark(self.nfmask)} "
                f"--ctmask {hexmark(self.ctmask)}")


LOG_LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "error": 3, "err": 3, "warning": 4, "warn": 4,
              "notice": 5, "info": 6, "debug": 7, "panic": 0}
LOG_FLAGS = ("tcp-sequence", "tcp-options", "ip-options", "uid", "macdecode")


@dataclass(frozen=True, slots=True)
class LogTarget(Target):
    prefix: str = ""
    level: int = 4
    flags: frozenset[str] = frozenset()
    name: str = "LOG"

    def render(self) -> str:
        parts = ["-j LOG"]
        if self.prefix:
            parts.append(f"--log-prefix {save_string(self.prefix)}")
        if self.level != 4:
            parts.append(f"--log-level {self.level}")
        parts.extend(f"--log-{f}" for f in LOG_FLAGS if f in self.flags)
        return " ".join(parts)


# ---------------------------------------------------------------- rules, chains, tables

@dataclass(slots=True, eq=False)
class Rule:
    """One `-A CHAIN ...` rule: the ipt_entry part (-s -d -i -o -p), matches, then the target.

    `unknown` is set (to the reason) for a rule the lenient parser kept without understanding
    it; such a rule renders as its original `text`. `line` is the 1-based source line.
    """

    chain: str
    src: IPNet | None = None
    src_neg: bool = False
    dst: IPNet | None = None
    dst_neg: bool = False
    iif: str | None = None
    iif_neg: bool = False
    oif: str | None = None
    oif_neg: bool = False
    proto: int | None = None
    proto_neg: bool = False
    matches: tuple[Match, ...] = ()
    target: Target | None = None
    counters: tuple[int, int] | None = None
    line: int = 0
    text: str = ""
    unknown: str | None = None

    def render_spec(self) -> str:
        """Everything after `-A CHAIN`, in iptables-save's order."""
        if self.unknown is not None:
            _, _, rest = self.text.partition(" ")
            return rest.partition(" ")[2] if rest else ""
        parts = []
        if self.src is not None:
            parts.append(f"{_neg(self.src_neg)}-s {self.src.render()}")
        if self.dst is not None:
            parts.append(f"{_neg(self.dst_neg)}-d {self.dst.render()}")
        if self.iif is not None:
            parts.append(f"{_neg(self.iif_neg)}-i {self.iif}")
        if self.oif is not None:
            parts.append(f"{_neg(self.oif_neg)}-o {self.oif}")
        if self.proto is not None and not (self.proto == 0 and not self.proto_neg):
            parts.append(f"{_neg(self.proto_neg)}-p {proto_name(self.proto)}")
        for m in self.matches:
            parts.append(m.render())
        if self.target is not None:
            parts.append(self.target.render())
        return " ".join(parts)

    def render(self) -> str:
        if self.unknown is not None:
            return self.text
        spec = self.render_spec()
        head = f"[{self.counters[0]}:{self.counters[1]}] " if self.counters is not None else ""
        return f"{head}-A {self.chain} {spec}" if spec else f"{head}-A {self.chain}"


@dataclass(slots=True, eq=False)
class Chain:
    name: str
    policy: str | None = None  # ACCEPT/DROP for built-in chains, None ("-") for user chains
    packets: int = 0
    bytes: int = 0
    rules: list[Rule] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.policy is not None

    def render_header(self) -> str:
        return f":{self.name} {self.policy or '-'} [{self.packets}:{self.bytes}]"


@dataclass(slots=True, eq=False)
class Table:
    """A `*table ... COMMIT` block. `rules` keeps the order the rules were written in."""

    name: str
    chains: dict[str, Chain] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    line: int = 0
    declared: list[str] = field(default_factory=list)  # chains with a `:NAME` line, in order

    @classmethod
    def new(cls, name: str, line: int = 0) -> "Table":
        """A table with its built-in chains (ACCEPT policy), which exist even when undeclared."""
        t = cls(name, line=line)
        for c in BUILTIN_CHAINS[name]:
            t.chains[c] = Chain(c, "ACCEPT")
        return t

    def render_lines(self) -> list[str]:
        out = [f"*{self.name}"]
        out.extend(self.chains[c].render_header() for c in self.declared)
        out.extend(r.render() for r in self.rules)
        out.append("COMMIT")
        return out

    def rule_count(self) -> int:
        return len(self.rules)


@dataclass(frozen=True, slots=True)
class UnknownRule:
    """A report of a rule the lenient parser kept as unknown."""

    line: int
    option: str
    reason: str
    text: str


@dataclass(slots=True, eq=False)
class Ruleset:
    """A whole dump: tables (and the comment lines around them) in input order."""

    family: int = 4
    tables: dict[str, Table] = field(default_factory=dict)
    items: list[Table | str] = field(default_factory=list)  # str = a comment line outside tables
    unknown: list[UnknownRule] = field(default_factory=list)

    def render(self) -> str:
        lines: list[str] = []
        for item in self.items:
            if isinstance(item, str):
                lines.append(item)
            else:
                lines.extend(item.render_lines())
        return "\n".join(lines) + "\n" if lines else ""

    def table(self, name: str) -> Table:
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"the rule set has no {name!r} table (has: {', '.join(self.tables) or 'none'})") from None
