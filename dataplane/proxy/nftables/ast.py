"""The nftables ruleset as data: tables, chains, sets/maps, rules, expressions and statements.

One model for both inputs (`nft list ruleset` text and `nft -j` JSON) and for the renderer and
the evaluator. Constants carry their nft datatype (`ipv4_addr`, `mark`, `ct_state`...) because nft
itself types every right-hand side by its left-hand side: the same `0x4000` prints as a mark but
`4000` as a port, and `established,related` is a bitmask, not a list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Union

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
HOOKS = ("prerouting", "input", "forward", "output", "postrouting", "ingress", "egress")
CHAIN_TYPES = ("filter", "nat", "route")
POLICIES = ("accept", "drop")

# nft(8) "CHAIN PRIORITIES": the named priorities and the hooks where nft accepts (and prints) them.
STANDARD_PRIORITIES: dict[str, int] = {
    "raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100,
}
BRIDGE_PRIORITIES: dict[str, int] = {"dstnat": -300, "filter": -200, "out": 100, "srcnat": 300}
# nft prints "name + offset" only when |offset| <= 10 (src/rule.c, prio2str).
PRIORITY_NAME_RANGE = 10


def priority_names(family: str) -> dict[str, int]:
    return BRIDGE_PRIORITIES if family == "bridge" else STANDARD_PRIORITIES


def priority_allowed(name: str, family: str, hook: str) -> bool:
    """Whether nft accepts the named priority for this family and hook (src/rule.c std_prio_family_hook_compat)."""
    if family in ("ip", "ip6", "inet"):
        if name == "dstnat":
            return hook == "prerouting"
        if name == "srcnat":
            return hook == "postrouting"
        return True
    if family == "bridge":
        return {"dstnat": "prerouting", "srcnat": "postrouting", "out": "output"}.get(name, hook) == hook
    if family in ("arp", "netdev"):
        return name == "filter"
    return False


@dataclass(frozen=True)
class Priority:
    """A base chain's priority as written: a named base plus an offset, or a plain number."""

    value: int
    name: str | None = field(default=None, compare=False)  # "dstnat" in "dstnat - 10": spelling only



# ---------------------------------------------------------------- values (typed constants)

Address = Union[IPv4Address, IPv6Address]


@dataclass(frozen=True)
class Const:
    """A typed constant: an address, a number, a protocol, an interface name, a bitmask..."""

    value: object  # IPv4Address | IPv6Address | int | str
    dtype: str


@dataclass(frozen=True)
class Prefix:
    network: IPv4Network | IPv6Network
    dtype: str


@dataclass(frozen=True)
class Range:
    low: object
    high: object
    dtype: str


@dataclass(frozen=True)
class ConcatValue:
    """The key of a concatenated set element: `10.96.0.1 . tcp . 80`."""

    parts: tuple["Value", ...]


Value = Union[Const, Prefix, Range, ConcatValue]


# ---------------------------------------------------------------- expressions (packet data)

@dataclass(frozen=True)
class Payload:
    """A header field: `ip saddr`, `tcp dport`, `th dport` (any transport header)."""

    protocol: str
    field: str


@dataclass(frozen=True)
class Meta:
    key: str


@dataclass(frozen=True)
class Ct:
    key: str


@dataclass(frozen=True)
class Numgen:
    """`numgen random mod N [offset K]` (or `inc`)."""

    mode: str
    mod: int
    offset: int = 0


@dataclass(frozen=True)
class Fib:
    """`fib daddr type`, `fib saddr . iif oif`...: a routing lookup."""

    flags: tuple[str, ...]
    result: str


@dataclass(frozen=True)
class Concat:
    parts: tuple["Expr", ...]


@dataclass(frozen=True)
class Binop:
    """`meta mark & 0x4000`, `meta mark | 0x4000`, `meta mark ^ 0x4000`."""

    op: str  # "&", "|", "^"
    left: "Expr"
    right: Const


@dataclass(frozen=True)
class SetRef:
    """`@name`: a named set or map of the same table."""

    name: str


@dataclass(frozen=True)
class Element:
    """A set element, or a map element when `data` is set. Timeouts are in seconds."""

    key: Value
    data: Union[Value, "Verdict", None] = None
    timeout: float | None = None
    expires: float | None = None
    comment: str | None = None


@dataclass(frozen=True)
class AnonSet:
    """An inline set `{ a, b }` or, with element data, an inline map `{ 0 : goto a, 1 : goto b }`."""

    elements: tuple[Element, ...]
    dtype: str  # the key type, "ipv4_addr . inet_proto . inet_service" for concatenations


Expr = Union[Payload, Meta, Ct, Numgen, Fib, Concat, Binop]


# ---------------------------------------------------------------- statements

@dataclass(frozen=True)
class Match:
    """`left op right`; op "==" is the implicit one. For bitmask types (ct state, tcp flags)
    the implicit op means "any of these bits" as in the kernel's bitwise+cmp."""

    left: Expr
    op: str  # "==", "!=", "<", ">", "<=", ">="
    right: Union[Value, SetRef, AnonSet]


@dataclass(frozen=True)
class Verdict:
    kind: str  # accept, drop, continue, return, jump, goto
    target: str | None = None


@dataclass(frozen=True)
class VerdictMap:
    key: Expr
    mapping: Union[SetRef, AnonSet]


@dataclass(frozen=True)
class Counter:
    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Mangle:
    """`meta mark set <expr>`, `ct mark set <expr>`."""

    target: Union[Meta, Ct]
    value: Union[Const, Binop, Meta, Ct]


@dataclass(frozen=True)
class Nat:
    """dnat/snat/masquerade/redirect. `addr`/`port` are Const or Range (None = unchanged)."""

    kind: str  # dnat, snat, masquerade, redirect
    addr: Union[Const, Range, None] = None
    port: Union[Const, Range, None] = None
    flags: tuple[str, ...] = ()  # random, fully-random, persistent
    family: str | None = None  # "ip"/"ip6" qualifier, required in inet tables


@dataclass(frozen=True)
class Reject:
    """`reject` (type None = the family's default), `reject with icmp host-unreachable`, `with tcp reset`."""

    type: str | None = None  # icmp, icmpv6, icmpx, tcp reset
    code: str | None = None


@dataclass(frozen=True)
class SetUpdate:
    """`update @set { ip saddr }` / `add @set { ... }`: the dynamic-set statements."""

    op: str  # add, update, delete
    set_name: str
    key: Expr
    timeout: float | None = None


@dataclass(frozen=True)
class Log:
    prefix: str | None = None
    level: str | None = None


@dataclass(frozen=True)
class Notrack:
    pass


Statement = Union[Match, Verdict, VerdictMap, Counter, Mangle, Nat, Reject, SetUpdate, Log, Notrack]


# ---------------------------------------------------------------- containers

@dataclass
class Rule:
    statements: list[Statement]
    comment: str | None = None
    handle: int | None = field(default=None, compare=False)  # kernel-assigned; not part of the meaning
    line: int | None = field(default=None, compare=False, repr=False)  # where the parser found it


@dataclass
class Set:
    """A named set. `key_type` is a tuple of datatypes (several for a concatenation)."""

    name: str
    key_type: tuple[str, ...]
    flags: tuple[str, ...] = ()
    timeout: float | None = None
    gc_interval: float | None = None
    size: int | None = None
    policy: str | None = None
    comment: str | None = None
    auto_merge: bool = False  # merge adjacent/overlapping intervals on insertion
    elements: list[Element] = field(default_factory=list)
    handle: int | None = field(default=None, compare=False)
    # `typeof ip saddr . tcp dport`: the key written as expressions; spelling only, `key_type` holds
    # the meaning (nft -j reports the same set with "type")
    typeof: tuple["Expr", ...] | None = field(default=None, compare=False)

    @property
    def is_map(self) -> bool:
        return False

    @property
    def interval(self) -> bool:
        return "interval" in self.flags


@dataclass
class Map(Set):
    """A named map: `data_type` is "verdict" for a verdict map."""

    data_type: str = "verdict"

    @property
    def is_map(self) -> bool:
        return True


@dataclass
class Chain:
    name: str
    type: str | None = None  # None: a regular (non-base) chain
    hook: str | None = None
    priority: Priority | None = None
    policy: str | None = None
    device: str | None = None
    comment: str | None = None
    rules: list[Rule] = field(default_factory=list)
    handle: int | None = field(default=None, compare=False)

    @property
    def is_base(self) -> bool:
        return self.hook is not None


@dataclass
class Table:
    family: str
    name: str
    comment: str | None = None
    flags: tuple[str, ...] = ()
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, Set] = field(default_factory=dict)  # sets and maps, in declaration order
    handle: int | None = field(default=None, compare=False)


@dataclass
class Ruleset:
    tables: list[Table] = field(default_factory=list)

    def table(self, family: str, name: str) -> Table | None:
        for t in self.tables:
            if t.family == family and t.name == name:
                return t
        return None
