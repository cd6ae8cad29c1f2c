"""Connection tracking as nf_conntrack does it: tuples, directions, states, TCP tracking and timeouts.

A packet is classified once, at the first hook it meets (PREROUTING or OUTPUT): it belongs to a known
connection in the ORIGINAL or REPLY direction, starts a NEW (unconfirmed) one, is RELATED (an ICMP
error about a known connection), or is INVALID. A new connection enters the table only when
`confirm` runs at the last hook, after NAT has fixed its reply tuple; a packet dropped earlier leaves
nothing behind. Entries expire on the injected clock.

Follows net/netfilter/nf_conntrack_core.c, nf_conntrack_proto_{tcp,udp,icmp}.c. Simplification:
TCP sequence-window checks (tcp_in_window) are not modelled, i.e. behaviour as with
nf_conntrack_tcp_be_liberal=1; the state machine and its timeouts are the kernel's.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field, replace

from dataplane.engine.clock import Clock
from dataplane.engine.packet import (ICMP, ICMPV6, TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, UDP,
                                     Headers)
from dataplane.engine.types import CtState, IPAddress

ORIGINAL, REPLY = "ORIGINAL", "REPLY"

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


class TcpState(enum.IntEnum):
    """TCP conntrack states, in the kernel's order (the state table's column index)."""

    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9


_IV, _IG = -1, -2  # "invalid" and "ignore" entries of the state table
_S = TcpState
# tcp_conntracks[dir][flag index][old state], from nf_conntrack_proto_tcp.c.
# Flag index: SYN, SYN+ACK, FIN, ACK, RST, none. Columns: NO SS SR ES FW CW LA TW CL S2.
_TCP_TABLE = (
    (  # ORIGINAL
        (_S.SYN_SENT, _S.SYN_SENT, _IG, _IG, _IG, _IG, _IG, _S.SYN_SENT, _S.SYN_SENT, _S.SYN_SENT2),
        (_IV, _IV, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _S.SYN_RECV),
        (_IV, _IV, _S.FIN_WAIT, _S.FIN_WAIT, _S.LAST_ACK, _S.LAST_ACK, _S.LAST_ACK, _S.TIME_WAIT,
         _S.CLOSE, _IV),
        (_S.ESTABLISHED, _IV, _S.ESTABLISHED, _S.ESTABLISHED, _S.CLOSE_WAIT, _S.CLOSE_WAIT,
         _S.TIME_WAIT, _S.TIME_WAIT, _S.CLOSE, _IV),
        (_IV, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE),
        (_IV,) * 10,
    ),
    (  # REPLY
        (_IV, _S.SYN_SENT2, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _S.SYN_SENT2),
        (_IV, _S.SYN_RECV, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _S.SYN_RECV),
        (_IV, _IV, _S.FIN_WAIT, _S.FIN_WAIT, _S.LAST_ACK, _S.LAST_ACK, _S.LAST_ACK, _S.TIME_WAIT,
         _S.CLOSE, _IV),
        (_IV, _IG, _S.SYN_RECV, _S.ESTABLISHED, _S.CLOSE_WAIT, _S.CLOSE_WAIT, _S.TIME_WAIT,
         _S.TIME_WAIT, _S.CLOSE, _IG),
        (_IV, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE, _S.CLOSE),
        (_IV,) * 10,
    ),
)


# tcp_valid_flags[] of nf_conntrack_proto_tcp.c: the only combinations tcp_error() lets through
# (after ignoring PSH, ECE and CWR); anything else is INVALID before any lookup.
_URG = 0x20
TCP_VALID_FLAGS = frozenset({
    TCP_SYN, TCP_SYN | _URG, TCP_SYN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK, TCP_FIN | TCP_ACK,
    TCP_FIN | TCP_ACK | _URG, TCP_ACK, TCP_ACK | _URG})


def tcp_flags_valid(flags: int) -> bool:
    return (flags & ~(0x08 | 0x40 | 0x80)) in TCP_VALID_FLAGS


def tcp_flag_index(flags: int) -> int:
    """get_conntrack_index(): which row of the state table a segment uses."""
    if flags & TCP_RST:
        return 4
    if flags & TCP_SYN:
        return 1 if flags & TCP_ACK else 0
    if flags & TCP_FIN:
        return 2
    if flags & TCP_ACK:
        return 3
    return 5


@dataclass
class Timeouts:
    """Seconds, as the nf_conntrack_*_timeout* sysctls name them."""

    tcp: dict[TcpState, float] = field(default_factory=lambda: {
        TcpState.SYN_SENT: 2 * MINUTE, TcpState.SYN_RECV: 60.0, TcpState.ESTABLISHED: 5 * DAY,
        TcpState.FIN_WAIT: 2 * MINUTE, TcpState.CLOSE_WAIT: 60.0, TcpState.LAST_ACK: 30.0,
        TcpState.TIME_WAIT: 2 * MINUTE, TcpState.CLOSE: 10.0, TcpState.SYN_SENT2: 2 * MINUTE,
    })
    tcp_retrans: float = 5 * MINUTE
    tcp_unacknowledged: float = 5 * MINUTE
    udp: float = 30.0  # nf_conntrack_udp_timeout (unreplied)
    udp_stream: float = 120.0  # nf_conntrack_udp_timeout_stream (replied, older kernels 180)
    icmp: float = 30.0
    generic: float = 600.0

    @classmethod
    def kernel_defaults(cls) -> "Timeouts":
        return cls()

    @classmethod
    def kube_proxy(cls) -> "Timeouts":
        """What kube-proxy sets at start: established 24 h and close_wait 1 h (defaults.go)."""
        t = cls()
        t.tcp = {**t.tcp, TcpState.ESTABLISHED: DAY, TcpState.CLOSE_WAIT: HOUR}
        return t


_ICMP_INVERSE = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17}
_ICMPV6_INVERSE = {128: 129, 129: 128, 139: 140, 140: 139}
# Types that may open a connection (icmp_new / icmpv6_new accept only "requests").
_ICMP_NEW = {8, 13, 15, 17}
_ICMPV6_NEW = {128, 139}


@dataclass(frozen=True)
class Tuple:
    """A conntrack tuple. For ICMP echo, `sport` is the identifier and `dport` is type << 8 | code
    (the kernel keeps id in the source half and type/code in the destination half)."""

    family: int
    proto: int
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int

    def invert(self) -> "Tuple":
        if self.proto in (ICMP, ICMPV6):
            inverse = _ICMP_INVERSE if self.proto == ICMP else _ICMPV6_INVERSE
            itype, code = self.dport >> 8, self.dport & 0xFF
            return Tuple(self.family, self.proto, self.dst, self.sport, self.src,
                         (inverse.get(itype, itype) << 8) | code)
        return Tuple(self.family, self.proto, self.dst, self.dport, self.src, self.sport)

    @property
    def has_ports(self) -> bool:
        return self.proto in (TCP, UDP, 132, 136)

    def __str__(self) -> str:
        if self.proto in (ICMP, ICMPV6):
            return (f"src={self.src} dst={self.dst} type={self.dport >> 8} code={self.dport & 0xFF} "
                    f"id={self.sport}")
        return f"src={self.src} dst={self.dst} sport={self.sport} dport={self.dport}"


def tuple_of(h: Headers) -> Tuple | None:
    """The tuple of a packet, or None when conntrack cannot track it (non-echo ICMP, fragments)."""
    if h.fragment:
        return None
    if h.proto in (ICMP, ICMPV6):
        if h.icmp_id is None:
            return None
        return Tuple(h.family, h.proto, h.src, h.icmp_id, h.dst, (h.icmp_type << 8) | (h.icmp_code or 0))
    if h.proto in (TCP, UDP):
        return Tuple(h.family, h.proto, h.src, h.sport, h.dst, h.dport)
    return Tuple(h.family, h.proto, h.src, 0, h.dst, 0)


@dataclass(eq=False)
class Connection:
    """One conntrack entry. `reply` changes when NAT is set up (nf_conntrack_alter_reply)."""

    id: int
    original: Tuple
    reply: Tuple
    timeout_at: float = 0.0
    status: set[str] = field(default_factory=set)  # SEEN_REPLY ASSURED CONFIRMED SRC_NAT DST_NAT ...
    tcp_state: TcpState | None = None
    mark: int = 0
    udp_stream_at: float = 0.0  # when a replied UDP flow counts as a stream (created + 2 s)
    labels: dict[str, object] = field(default_factory=dict)  # e.g. the out-interface for MASQUERADE

    def tuple_for(self, direction: str) -> Tuple:
        return self.original if direction == ORIGINAL else self.reply

    @property
    def confirmed(self) -> bool:
        return "CONFIRMED" in self.status

    def describe(self, now: float) -> str:
        """One line in the style of `conntrack -L`."""
        proto = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmpv6"}.get(self.original.proto,
                                                                             str(self.original.proto))
        state = f" {self.tcp_state.name}" if self.tcp_state is not None else ""
        flags = "" if "SEEN_REPLY" in self.status else " [UNREPLIED]"
        assured = " [ASSURED]" if "ASSURED" in self.status else ""
        return (f"{proto} {self.original.proto} {max(0, int(self.timeout_at - now))}{state} "
                f"{self.original}{flags} {self.reply}{assured} mark={self.mark}")


@dataclass
class Tracked:
    """The conntrack view of one packet: nf_ct_get()'s (ct, ctinfo)."""

    state: CtState
    conn: Connection | None = None
    direction: str = ORIGINAL

    @property
    def is_new(self) -> bool:
        return self.state is CtState.NEW and self.conn is not None and not self.conn.confirmed


class ConntrackTable:
    """The table of confirmed connections, keyed by both their tuples (as the kernel's hash is)."""

    def __init__(self, clock: Clock, timeouts: Timeouts | None = None, *, tcp_loose: bool = True) -> None:
        self.clock = clock
        self.timeouts = timeouts or Timeouts.kernel_defaults()
        self.tcp_loose = tcp_loose  # nf_conntrack_tcp_loose: pick up connections mid-stream
        self._hash: dict[Tuple, tuple[Connection, str]] = {}
        # nf_nat_bysource: connections by their original source, for SNAT mapping reuse
        self._by_source: dict[tuple[int, int, IPAddress, int], dict[int, Connection]] = {}
        self._ids = itertools.count(1)
        self.stats = {"found": 0, "new": 0, "invalid": 0, "insert_failed": 0, "expired": 0}

    # ---- lookups
    def lookup(self, t: Tuple) -> tuple[Connection, str] | None:
        """The live connection holding tuple `t` and the direction it is in (expired ones are reaped)."""
        hit = self._hash.get(t)
        if hit is None:
            return None
        conn = hit[0]
        if conn.timeout_at <= self.clock.now():
            self._unlink(conn)
            self.stats["expired"] += 1
            return None
        return hit

    def tuple_taken(self, t: Tuple, ignoring: Connection | None = None) -> bool:
        """nf_conntrack_tuple_taken: does another live connection hold `t` in either direction?"""
        hit = self.lookup(t)
        return hit is not None and hit[0] is not ignoring

    def by_source(self, family: int, proto: int, src: IPAddress, sport: int) -> list[Connection]:
        """Live connections whose original tuple starts at src:sport (oldest first)."""
        now = self.clock.now()
        conns = self._by_source.get((family, proto, src, sport), {})
        return [conns[k] for k in sorted(conns) if conns[k].timeout_at > now]

    def entries(self) -> list[Connection]:
        """Live connections, oldest first."""
        self.gc()
        seen: dict[int, Connection] = {}
        for conn, _ in self._hash.values():
            seen.setdefault(conn.id, conn)
        return [seen[k] for k in sorted(seen)]

    def __len__(self) -> int:
        return len(self.entries())

    # ---- maintenance
    def gc(self) -> int:
        """Remove every expired entry; returns how many went."""
        now = self.clock.now()
        dead = {id(c): c for c, _ in self._hash.values() if c.timeout_at <= now}
        for conn in dead.values():
            self._unlink(conn)
        self.stats["expired"] += len(dead)
        return len(dead)

    def delete(self, conn: Connection) -> None:
        self._unlink(conn)

    def flush(self) -> None:
        self._hash.clear()
        self._by_source.clear()

    def _unlink(self, conn: Connection) -> None:
        for t in (conn.original, conn.reply):
            hit = self._hash.get(t)
            if hit is not None and hit[0] is conn:
                del self._hash[t]
        o = conn.original
        key = (o.family, o.proto, o.src, o.sport)
        bucket = self._by_source.get(key)
        if bucket is not None:
            bucket.pop(conn.id, None)
            if not bucket:
                del self._by_source[key]
        conn.status.discard("CONFIRMED")

    # ---- the packet path
    def track(self, h: Headers) -> Tracked:
        """nf_conntrack_in: classify a packet, updating protocol state of a known connection."""
        if h.inner is not None:
            return self._track_icmp_error(h)
        t = tuple_of(h)
        if t is None or (t.proto == TCP and not tcp_flags_valid(h.tcp_flags)):
            self.stats["invalid"] += 1
            return Tracked(CtState.INVALID)
        for _attempt in range(2):  # a second pass after a TCP re-open killed the old entry
            hit = self.lookup(t)
            if hit is None:
                return self._new(h, t)
            conn, direction = hit
            verdict = self._packet(conn, h, direction)
            if verdict == "repeat":
                self._unlink(conn)
                continue
            if verdict == "invalid":
                self.stats["invalid"] += 1
                return Tracked(CtState.INVALID)
            self.stats["found"] += 1
            if direction == REPLY:
                conn.status.add("SEEN_REPLY")
                return Tracked(CtState.ESTABLISHED, conn, REPLY)
            state = CtState.ESTABLISHED if "SEEN_REPLY" in conn.status else CtState.NEW
            return Tracked(state, conn, ORIGINAL)
        raise AssertionError("unreachable")

    def confirm(self, tracked: Tracked) -> bool:
        """__nf_conntrack_confirm: insert a new connection under both tuples. False on a clash
        (the kernel then drops the packet and counts insert_failed)."""
        conn = tracked.conn
        if conn is None or conn.confirmed or tracked.direction != ORIGINAL:
            return True  # answers attached in the other direction (REJECT) never confirm
        if self.lookup(conn.original) is not None or self.lookup(conn.reply) is not None:
            self.stats["insert_failed"] += 1
            return False
        self._hash[conn.original] = (conn, ORIGINAL)
        self._hash[conn.reply] = (conn, REPLY)
        o = conn.original
        self._by_source.setdefault((o.family, o.proto, o.src, o.sport), {})[conn.id] = conn
        conn.status.add("CONFIRMED")
        return True

    def alter_reply(self, conn: Connection, reply: Tuple) -> None:
        """nf_conntrack_alter_reply: NAT decided the reply tuple (only before confirmation)."""
        if conn.confirmed:
            raise RuntimeError("cannot alter the reply tuple of a confirmed connection")
        conn.reply = reply

    # ---- internals
    def _new(self, h: Headers, t: Tuple) -> Tracked:
        if t.proto in (ICMP, ICMPV6):
            allowed = _ICMP_NEW if t.proto == ICMP else _ICMPV6_NEW
            if (t.dport >> 8) not in allowed:
                self.stats["invalid"] += 1
                return Tracked(CtState.INVALID)
        if t.proto == TCP:
            first = _TCP_TABLE[0][tcp_flag_index(h.tcp_flags)][TcpState.NONE]
            if first == _IV or (first == TcpState.ESTABLISHED and not self.tcp_loose) or first == _IG:
                self.stats["invalid"] += 1
                return Tracked(CtState.INVALID)
        now = self.clock.now()
        conn = Connection(id=next(self._ids), original=t, reply=t.invert(), udp_stream_at=now + 2.0)
        if t.proto == TCP:
            conn.tcp_state = TcpState.NONE
        self._packet(conn, h, ORIGINAL)
        self.stats["new"] += 1
        return Tracked(CtState.NEW, conn, ORIGINAL)

    def _packet(self, conn: Connection, h: Headers, direction: str) -> str:
        """The protocol's packet handler: update state and timeout. Returns ok, invalid or repeat."""
        now = self.clock.now()
        proto = conn.original.proto
        if proto == TCP:
            return self._tcp_packet(conn, h, direction, now)
        if proto == UDP:
            if "SEEN_REPLY" in conn.status:
                extra = self.timeouts.udp
                stream = False
                if now > conn.udp_stream_at:  # still active after two seconds
                    extra = self.timeouts.udp_stream
                    stream = "ASSURED" not in conn.status
                conn.timeout_at = now + extra
                if stream:
                    conn.status.add("ASSURED")
            else:
                conn.timeout_at = now + self.timeouts.udp
            return "ok"
        if proto in (ICMP, ICMPV6):
            conn.timeout_at = now + self.timeouts.icmp
            return "ok"
        conn.timeout_at = now + self.timeouts.generic
        return "ok"

    def _tcp_packet(self, conn: Connection, h: Headers, direction: str, now: float) -> str:
        index = tcp_flag_index(h.tcp_flags)
        old = conn.tcp_state if conn.tcp_state is not None else TcpState.NONE
        new = _TCP_TABLE[0 if direction == ORIGINAL else 1][index][old]
        if new == _IV:
            return "invalid"
        if new == _IG:
            return "ok"  # accepted, no state change and no timer refresh (window tracking not modelled)
        if new == TcpState.SYN_SENT and old in (TcpState.TIME_WAIT, TcpState.CLOSE) and conn.confirmed:
            return "repeat"  # a SYN re-opens a closed connection: kill it and start over
        conn.tcp_state = new
        t = self.timeouts
        timeout = t.tcp[TcpState.CLOSE] if index == 4 else t.tcp.get(new, t.tcp_unacknowledged)
        if "SEEN_REPLY" not in conn.status:
            if h.tcp_flags & TCP_RST and conn.confirmed:
                self._unlink(conn)  # the only answer was a RST: gone at once
                conn.timeout_at = now
                return "ok"
            if new == TcpState.ESTABLISHED and timeout > t.tcp_unacknowledged:
                timeout = t.tcp_unacknowledged  # picked up mid-stream (loose): short timer
        elif "ASSURED" not in conn.status and old in (TcpState.SYN_RECV, TcpState.ESTABLISHED) \
                and new == TcpState.ESTABLISHED:
            conn.status.add("ASSURED")
        conn.timeout_at = now + timeout
        return "ok"

    def _track_icmp_error(self, h: Headers) -> Tracked:
        """icmp_error_message: an ICMP error is RELATED to the connection of the packet it quotes."""
        inner = h.inner
        assert inner is not None
        if inner.proto in (TCP, UDP) and not inner.fragment:
            quoted = Tuple(inner.family, inner.proto, inner.src, inner.sport, inner.dst, inner.dport)
        elif inner.icmp_id is not None:
            quoted = Tuple(inner.family, inner.proto, inner.src, inner.icmp_id, inner.dst,
                           ((inner.icmp_type or 0) << 8) | (inner.icmp_code or 0))
        else:
            quoted = tuple_of(replace(inner, truncated=False)) if not inner.fragment else None
        if quoted is None:
            self.stats["invalid"] += 1
            return Tracked(CtState.INVALID)
        # The quoted packet travelled the other way: its inverse names the error's direction.
        hit = self.lookup(quoted.invert())
        if hit is None:
            self.stats["invalid"] += 1
            return Tracked(CtState.INVALID)
        conn, direction = hit
        return Tracked(CtState.RELATED, conn, direction)
