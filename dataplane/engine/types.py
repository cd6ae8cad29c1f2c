"""Records shared by the packet engine's parts: the packet as netfilter sees it, and what rule
evaluation decides about it.

This is the contract between the rule evaluators (iptables, nftables, IPVS), conntrack/NAT and
the hook pipeline. Evaluators read a `PacketMeta` and return a `Decision`; they never mutate the
packet themselves: NAT is applied by conntrack, as in the kernel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

IPAddress = IPv4Address | IPv6Address

PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}


class Hook(enum.Enum):
    PREROUTING = "PREROUTING"
    INPUT = "INPUT"
    FORWARD = "FORWARD"
    OUTPUT = "OUTPUT"
    POSTROUTING = "POSTROUTING"


class CtState(enum.Enum):
    """Conntrack states as `-m conntrack --ctstate` names them."""

    NEW = "NEW"
    ESTABLISHED = "ESTABLISHED"
    RELATED = "RELATED"
    INVALID = "INVALID"
    UNTRACKED = "UNTRACKED"


class Verdict(enum.Enum):
    ACCEPT = "ACCEPT"
    DROP = "DROP"
    REJECT = "REJECT"


class NatKind(enum.Enum):
    DNAT = "DNAT"
    SNAT = "SNAT"
    MASQUERADE = "MASQUERADE"


@dataclass(frozen=True)
class NatAction:
    """A NAT binding chosen by a rule: applied by conntrack to this and later packets of the flow.

    `addr`/`port` are the chosen translation (port None = keep). MASQUERADE leaves `addr` None:
    the pipeline fills in the out-interface's address. `random_fully` is --random-fully.
    `addr_max`/`port_max` close a range (`--to-destination a-b:p-q`; None = same as the minimum),
    `random`/`persistent` are the targets' --random/--persistent.
    """

    kind: NatKind
    addr: IPAddress | None = None
    port: int | None = None
    random_fully: bool = False
    addr_max: IPAddress | None = None
    port_max: int | None = None
    random: bool = False
    persistent: bool = False


@dataclass
class PacketMeta:
    """The header fields and metadata netfilter matches on, for one packet at one hook."""

    family: int  # 4 or 6
    src: IPAddress
    dst: IPAddress
    proto: int  # IP protocol number (PROTO_NUMBERS)
    sport: int = 0  # 0 when the protocol has no ports
    dport: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    tcp_flags: int = 0  # the TCP flag byte (SYN=0x02, ACK=0x10, FIN=0x01, RST=0x04)
    iif: str | None = None  # in-interface name (None at OUTPUT)
    oif: str | None = None  # out-interface name (None before routing)
    mark: int = 0  # skb mark (meta mark / -m mark / MARK)
    length: int = 0
    # conntrack view, filled in by conntrack before the first hook
    ct_state: CtState = CtState.NEW
    ct_mark: int = 0
    ct_origsrc: IPAddress | None = None
    ct_origdst: IPAddress | None = None
    ct_origsport: int | None = None
    ct_origdport: int | None = None
    ct_direction: str = "ORIGINAL"  # or "REPLY"
    ct_status: frozenset[str] = frozenset()  # e.g. {"DNAT", "SNAT", "CONFIRMED"}
    # reply tuple (None = the inverse of the original tuple, i.e. no NAT) and seconds left
    ct_replsrc: IPAddress | None = None
    ct_repldst: IPAddress | None = None
    ct_replsport: int | None = None
    ct_repldport: int | None = None
    ct_expire: int | None = None
    ttl: int = 64  # IPv4 TTL / IPv6 hop limit (-m recent --rttl)

    @classmethod
    def make(cls, src: str, dst: str, proto: str | int, sport: int = 0, dport: int = 0,
             **kw: object) -> "PacketMeta":
        s, d = ip_address(src), ip_address(dst)
        p = PROTO_NUMBERS[proto] if isinstance(proto, str) else proto
        return cls(family=s.version, src=s, dst=d, proto=p, sport=sport, dport=dport, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TraceStep:
    """One rule tested, like a line of the kernel's TRACE target output."""

    table: str
    chain: str
    rule_number: int  # 1-based position in the chain; 0 for the chain's policy
    rule_text: str  # as iptables-save prints it (or nft list)
    matched: bool
    note: str = ""  # e.g. "probability 0.33333 sampled", "policy ACCEPT"


@dataclass
class Decision:
    """What one table's evaluation at one hook decided.

    `verdict` None means "continue to the next table/hook" (the chain fell through to an ACCEPT
    policy of a non-terminal kind is still ACCEPT: the kernel's semantics are preserved by the
    evaluator). `nat` is set only by nat-table evaluation. `mark`/`ct_mark` are the values after
    MARK/CONNMARK targets ran. `reject_with` names the ICMP type of a REJECT.
    """

    verdict: Verdict = Verdict.ACCEPT
    nat: NatAction | None = None
    mark: int | None = None
    ct_mark: int | None = None
    reject_with: str | None = None
    trace: list[TraceStep] = field(default_factory=list)
    rules_evaluated: int = 0
