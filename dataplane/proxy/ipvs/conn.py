"""The IPVS connection table: entries, templates, the TCP state machine and timeouts.

Follows the kernel's files:
- net/netfilter/ipvs/ip_vs_conn.c: `ip_vs_conn_new()` (state NONE, 3 s until the first state
  transition; the dest counters via `ip_vs_bind_dest()`, new connections start INACTIVE because
  `__ip_vs_update_dest()` ORs IP_VS_CONN_F_INACTIVE into the dest's conn_flags),
  `ip_vs_conn_expire()` (a template still controlling connections is re-armed for 60 s, and keeps
  that 60 s timeout), `ip_vs_unbind_dest()`, `ip_vs_check_template()`.
- net/netfilter/ipvs/ip_vs_proto_tcp.c: `tcp_states[]` (INPUT / OUTPUT / INPUT-ONLY tables),
  `tcp_state_idx()` (RST, then SYN, then FIN, then ACK), `set_tcp_state()` (activeconns only in
  ESTABLISHED), `tcp_timeouts[]`.
- net/netfilter/ipvs/ip_vs_proto_udp.c: one state "UDP", 300 s, never active.
Every packet restarts the entry's timer with its state's timeout (`ip_vs_conn_put()`). Expiry runs
on an injectable clock (dataplane.engine.clock).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from enum import IntEnum

from dataplane.engine.clock import Clock, ManualClock
from dataplane.engine.types import PROTO_NAMES, IPAddress
from dataplane.proxy.ipvs.dest import FWD_MASQ, Dest


class TcpState(IntEnum):
    """enum IP_VS_TCP_S_* (include/net/ip_vs.h), names as ipvsadm -Lnc prints them."""

    NONE = 0
    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT = 4
    TIME_WAIT = 5
    CLOSE = 6
    CLOSE_WAIT = 7
    LAST_ACK = 8
    LISTEN = 9
    SYNACK = 10


# tcp_timeouts[] in seconds (ip_vs_proto_tcp.c); ipvsadm --set changes ESTABLISHED and FIN_WAIT
TCP_TIMEOUTS: dict[TcpState, int] = {
    TcpState.NONE: 2, TcpState.ESTABLISHED: 15 * 60, TcpState.SYN_SENT: 2 * 60,
    TcpState.SYN_RECV: 60, TcpState.FIN_WAIT: 2 * 60, TcpState.TIME_WAIT: 2 * 60,
    TcpState.CLOSE: 10, TcpState.CLOSE_WAIT: 60, TcpState.LAST_ACK: 30,
    TcpState.LISTEN: 2 * 60, TcpState.SYNACK: 120,
}
UDP_TIMEOUT = 5 * 60  # udp_timeouts[IP_VS_UDP_S_NORMAL]
NEW_CONN_TIMEOUT = 3  # ip_vs_conn_new(): cp->timeout = 3*HZ
EXPIRE_LATER = 60  # ip_vs_conn_expire(): "expire_later" re-arm

# directions (IP_VS_DIR_*) and tcp_state_off[]
DIR_INPUT, DIR_OUTPUT, DIR_INPUT_ONLY = 0, 1, 2

_sNO, _sES, _sSS, _sSR, _sFW, _sTW, _sCL, _sCW, _sLA, _sLI, _sSA = list(TcpState)
# tcp_states[] rows: [direction][syn, fin, ack, rst][current state] -> next state
TCP_STATE_TABLE: tuple[tuple[tuple[TcpState, ...], ...], ...] = (
    (  # INPUT
        (_sSR, _sES, _sES, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR),
        (_sCL, _sCW, _sSS, _sTW, _sTW, _sTW, _sCL, _sCW, _sLA, _sLI, _sTW),
        (_sES, _sES, _sSS, _sES, _sFW, _sTW, _sCL, _sCW, _sCL, _sLI, _sES),
        (_sCL, _sCL, _sCL, _sSR, _sCL, _sCL, _sCL, _sCL, _sLA, _sLI, _sSR),
    ),
    (  # OUTPUT
        (_sSS, _sES, _sSS, _sSR, _sSS, _sSS, _sSS, _sSS, _sSS, _sLI, _sSR),
        (_sTW, _sFW, _sSS, _sTW, _sFW, _sTW, _sCL, _sTW, _sLA, _sLI, _sTW),
        (_sES, _sES, _sSS, _sES, _sFW, _sTW, _sCL, _sCW, _sLA, _sES, _sES),
        (_sCL, _sCL, _sSS, _sCL, _sCL, _sTW, _sCL, _sCL, _sCL, _sCL, _sCL),
    ),
    (  # INPUT-ONLY
        (_sSR, _sES, _sES, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR),
        (_sCL, _sFW, _sSS, _sTW, _sFW, _sTW, _sCL, _sCW, _sLA, _sLI, _sTW),
        (_sES, _sES, _sSS, _sES, _sFW, _sTW, _sCL, _sCW, _sCL, _sLI, _sES),
        (_sCL, _sCL, _sCL, _sSR, _sCL, _sCL, _sCL, _sCL, _sLA, _sLI, _sCL),
    ),
)

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


def tcp_state_idx(flags: int) -> int:
    """ip_vs_proto_tcp.c `tcp_state_idx()`: RST wins, then SYN, FIN, ACK; -1 for none."""
    if flags & TCP_RST:
        return 3
    if flags & TCP_SYN:
        return 0
    if flags & TCP_FIN:
        return 1
    if flags & TCP_ACK:
        return 2
    return -1


@dataclass(eq=False)
class Conn:
    """`struct ip_vs_conn`: client, virtual and real (dest) address/port, state and timer."""

    proto: int
    caddr: IPAddress
    cport: int
    vaddr: IPAddress
    vport: int
    daddr: IPAddress
    dport: int
    dest: Dest | None
    template: bool = False
    inactive: bool = True
    nooutput: bool = False  # IP_VS_CONN_F_NOOUTPUT: DR/tunnel, replies bypass the director
    state: int = 0
    timeout: float = NEW_CONN_TIMEOUT
    expires: float = 0.0
    control: Conn | None = None  # the persistence template that controls this entry
    n_control: int = 0
    hashed: bool = True  # False once expired, or a template invalidated by ip_vs_check_template()
    packets: int = 0
    gone: bool = False  # expired and unlinked

    def state_name(self) -> str:
        """`ip_vs_state_name()`: templates keep state 0, so TCP ones read NONE and UDP ones UDP."""
        if self.proto == 6:
            return TcpState(self.state).name
        return "UDP" if self.proto == 17 else "NONE"

    def label(self) -> str:
        return (f"{PROTO_NAMES.get(self.proto, self.proto)} {self.caddr}:{self.cport} -> "
                f"{self.vaddr}:{self.vport} -> {self.daddr}:{self.dport} {self.state_name()}")


InKey = tuple[int, IPAddress, int, IPAddress, int]
TemplateKey = tuple[int, IPAddress, IPAddress, int]


@dataclass
class Timeouts:
    """The timeouts `ipvsadm --set TCP TCPFIN UDP` changes (0 keeps the current value)."""

    tcp: dict[TcpState, int] = field(default_factory=lambda: dict(TCP_TIMEOUTS))
    udp: int = UDP_TIMEOUT

    def set(self, tcp: int = 0, tcpfin: int = 0, udp: int = 0) -> None:
        for value, what in ((tcp, "tcp"), (tcpfin, "tcpfin"), (udp, "udp")):
            if value < 0:
                raise ValueError(f"{what} timeout {value} must be >= 0")
        if tcp:
            self.tcp[TcpState.ESTABLISHED] = tcp
        if tcpfin:
            self.tcp[TcpState.FIN_WAIT] = tcpfin
        if udp:
            self.udp = udp


class ConnTable:
    """Connection entries by their incoming and outgoing tuples, templates by client network."""

    def __init__(self, clock: Clock | None = None, timeouts: Timeouts | None = None) -> None:
        self.clock: Clock = clock or ManualClock()
        self.timeouts = timeouts or Timeouts()
        self._in: dict[InKey, Conn] = {}
        self._out: dict[InKey, Conn] = {}
        self._templates: dict[TemplateKey, Conn] = {}
        self._invalidated: dict[int, Conn] = {}  # templates rehashed out of reach, still timed
        self._timers: list[tuple[float, int, Conn]] = []
        self._seq = itertools.count()
        self.count = 0  # ipvs->conn_count, templates included

    # -- lookups ---------------------------------------------------------------------------
    def lookup_in(self, proto: int, saddr: IPAddress, sport: int, daddr: IPAddress, dport: int) -> Conn | None:
        """`ip_vs_conn_in_get()`: a packet from the client to the virtual service."""
        self.expire_due()
        return self._in.get((proto, saddr, sport, daddr, dport))

    def lookup_out(self, proto: int, saddr: IPAddress, sport: int, daddr: IPAddress, dport: int) -> Conn | None:
        """`ip_vs_conn_out_get()`: a reply from the real server to the client."""
        self.expire_due()
        return self._out.get((proto, saddr, sport, daddr, dport))

    def lookup_template(self, proto: int, snet: IPAddress, vaddr: IPAddress, vport: int) -> Conn | None:
        """`ip_vs_ct_in_get()`: the persistence template for a client network."""
        self.expire_due()
        return self._templates.get((proto, snet, vaddr, vport))

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.expire_due()
        yield from self._templates.values()
        yield from self._invalidated.values()
        yield from self._in.values()

    # -- life cycle ------------------------------------------------------------------------
    def new(self, proto: int, caddr: IPAddress, cport: int, vaddr: IPAddress, vport: int,
            daddr: IPAddress, dport: int, dest: Dest | None, *, template: bool = False) -> Conn:
        """`ip_vs_conn_new()` + `ip_vs_bind_dest()` + `ip_vs_conn_hash()`."""
        conn = Conn(proto, caddr, cport, vaddr, vport, daddr, dport, dest, template=template,
                    nooutput=bool(dest is not None and dest.fwd != FWD_MASQ and not template))
        if dest is not None:
            dest.bind(template=template, inactive=conn.inactive)
        if template:
            self._templates[(proto, caddr, vaddr, vport)] = conn
        else:
            self._in[(proto, caddr, cport, vaddr, vport)] = conn
            self._out[(proto, daddr, dport, caddr, cport)] = conn
        self.count += 1
        self.put(conn)
        return conn

    def put(self, conn: Conn, at: float | None = None) -> None:
        """`ip_vs_conn_put()`: restart the entry's timer with its current timeout (from `at`,
        the time of the event, when timers are caught up after the clock jumped)."""
        conn.expires = (self.clock.now() if at is None else at) + conn.timeout
        heapq.heappush(self._timers, (conn.expires, next(self._seq), conn))

    def expire_now(self, conn: Conn) -> None:
        """`ip_vs_conn_expire_now()`: fire the timer at once."""
        conn.expires = self.clock.now()
        self._expire(conn)

    def invalidate_template(self, template: Conn) -> None:
        """`ip_vs_check_template()` failure: rehashed with vport and dport 0xffff and cport 0, so no
        lookup finds it, but it stays in the table with its timer running."""
        key = (template.proto, template.caddr, template.vaddr, template.vport)
        if self._templates.get(key) is template:
            del self._templates[key]
        if template.vport != 0xFFFF and not template.gone:
            template.vport = template.dport = 0xFFFF
            template.cport = 0
            self._invalidated[id(template)] = template
        template.hashed = False

    def add_control(self, conn: Conn, template: Conn) -> None:
        """`ip_vs_control_add()`."""
        conn.control = template
        template.n_control += 1

    def expire_due(self) -> None:
        now = self.clock.now()
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, conn = heapq.heappop(timers)
            if when == conn.expires and not conn.gone:
                self._expire(conn, when)

    def _expire(self, conn: Conn, at: float | None = None) -> None:
        """`ip_vs_conn_expire()`, as the timer fires at time `at`."""
        if conn.gone:
            return
        if conn.n_control:
            conn.timeout = EXPIRE_LATER
            self.put(conn, at)
            return
        if conn.template:
            key = (conn.proto, conn.caddr, conn.vaddr, conn.vport)
            if self._templates.get(key) is conn:
                del self._templates[key]
            self._invalidated.pop(id(conn), None)
        else:
            key_in = (conn.proto, conn.caddr, conn.cport, conn.vaddr, conn.vport)
            if self._in.get(key_in) is conn:
                del self._in[key_in]
            key_out = (conn.proto, conn.daddr, conn.dport, conn.caddr, conn.cport)
            if self._out.get(key_out) is conn:
                del self._out[key_out]
        conn.hashed = False
        conn.gone = True
        if conn.control is not None:
            conn.control.n_control -= 1
            conn.control = None
        if conn.dest is not None:
            conn.dest.unbind(template=conn.template, inactive=conn.inactive)
        self.count -= 1

    # -- protocol state --------------------------------------------------------------------
    def state_transition(self, conn: Conn, direction: int, tcp_flags: int = 0) -> None:
        """`pp->state_transition()`: TCP's `set_tcp_state()`, UDP's fixed timeout."""
        if conn.proto == 17:
            conn.timeout = self.timeouts.udp
            return
        if conn.proto != 6:
            raise NotImplementedError("only TCP and UDP connection states are modelled")
        state_dir = direction
        if conn.nooutput:
            if direction == DIR_OUTPUT:
                conn.nooutput = False
            else:
                state_dir = DIR_INPUT_ONLY
        idx = tcp_state_idx(tcp_flags)
        new_state = TCP_STATE_TABLE[state_dir][idx][conn.state] if idx >= 0 else TcpState.CLOSE
        if new_state != conn.state and conn.dest is not None:
            dest = conn.dest
            if not conn.inactive and new_state != TcpState.ESTABLISHED:
                dest.activeconns -= 1
                dest.inactconns += 1
                conn.inactive = True
            elif conn.inactive and new_state == TcpState.ESTABLISHED:
                dest.activeconns += 1
                dest.inactconns -= 1
                conn.inactive = False
        conn.state = int(new_state)
        conn.timeout = self.timeouts.tcp[TcpState(new_state)]
