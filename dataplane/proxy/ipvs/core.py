"""The IPVS packet path at LOCAL_IN (client -> VIP) and for replies (real server -> client).

Follows net/netfilter/ipvs/ip_vs_core.c:
- `ip_vs_in()`: look the connection up; a SYN that hits an uncontrolled entry whose dest has
  weight 0 (with `expire_nodest_conn`), or with `conn_reuse_mode` one in TIME_WAIT/CLOSE
  (`is_new_conn_expected()`), expires it and schedules afresh - unless the old conntrack entry is still
  in use, in which case the SYN is dropped (the kube-proxy "1 s connect delay" of port reuse,
  kubernetes#81775); a connection whose dest was removed is dropped (and expired with
  `expire_nodest_conn`).
- `tcp_conn_schedule()`: only a SYN schedules a TCP connection (unless `sloppy_tcp`); other
  packets without an entry are not IPVS's business and go on to the local stack.
- `ip_vs_schedule()` / `ip_vs_sched_persist()`: persistence templates keyed on
  <proto, client address & netmask, VIP, vport>, checked by `ip_vs_check_template()`.
- `ip_vs_leave()`: a service with no usable destination answers ICMP port unreachable, for TCP
  too ("the TCP RST packet cannot be sent"), and drops the packet.
- `ip_vs_out()`: a reply on a known entry is SNATed back to the VIP and moves the state machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_network

from dataplane.engine.clock import Clock
from dataplane.engine.types import (CtState, Decision, IPAddress, NatAction, NatKind, PacketMeta,
                                    TraceStep, Verdict)
from dataplane.proxy.ipvs.conn import (DIR_INPUT, DIR_OUTPUT, TCP_ACK, TCP_SYN, Conn, ConnTable, TcpState,
                                       Timeouts)
from dataplane.proxy.ipvs.dest import Dest
from dataplane.proxy.ipvs.sched.base import Flow
from dataplane.proxy.ipvs.service import ServiceTable, VirtualService

FTPPORT = 21


@dataclass
class Sysctls:
    """net.ipv4.vs.* knobs that change the packet path. Defaults are the kernel's."""

    conn_reuse_mode: int = 1
    expire_nodest_conn: int = 0
    expire_quiescent_template: int = 0
    sloppy_tcp: int = 0
    conntrack: int = 0

    @classmethod
    def kube_proxy(cls) -> "Sysctls":
        """What kube-proxy's IPVS proxier sets at start (pkg/proxy/ipvs/proxier.go)."""
        return cls(conn_reuse_mode=1, expire_nodest_conn=1, expire_quiescent_template=1, conntrack=1)


@dataclass
class IpvsResult:
    """What IPVS did with one packet. `handled` False: not IPVS's packet, it continues as is."""

    handled: bool
    verdict: Verdict | None = None
    service: VirtualService | None = None
    dest: Dest | None = None
    conn: Conn | None = None
    new_conn: bool = False
    template: Conn | None = None
    reject_with: str | None = None
    notes: list[str] = field(default_factory=list)
    scheduler_state: dict[str, object] = field(default_factory=dict)
    nat: NatAction | None = None  # DNAT to the real server, or SNAT back to the VIP for replies

    def decision(self) -> Decision:
        """The engine's contract: DNAT to the real server (or SNAT back), REJECT or DROP."""
        if not self.handled:
            return Decision(verdict=Verdict.ACCEPT)
        trace = [TraceStep(table="ipvs", chain=self.service.label() if self.service else "conn",
                           rule_number=self._dest_position(), rule_text=self._rule_text(),
                           matched=self.verdict is Verdict.ACCEPT, note="; ".join(self.notes))]
        nat = None
        if self.verdict is Verdict.ACCEPT and self.conn is not None:
            nat = self.nat
        return Decision(verdict=self.verdict or Verdict.ACCEPT, nat=nat, reject_with=self.reject_with,
                        trace=trace, rules_evaluated=1)

    def _dest_position(self) -> int:
        if self.service is None or self.dest is None:
            return 0
        for i, d in enumerate(self.service.destinations, 1):
            if d is self.dest:
                return i
        return 0

    def _rule_text(self) -> str:
        from dataplane.proxy.ipvs.ipvsadm import dest_line, service_line

        if self.service is None:
            return ""
        if self.dest is None:
            return service_line(self.service)
        return dest_line(self.service, self.dest)


class Ipvs:
    """One network namespace's IPVS: services, connections and sysctls."""

    def __init__(self, clock: Clock | None = None, sysctls: Sysctls | None = None,
                 timeouts: Timeouts | None = None) -> None:
        self.services = ServiceTable()
        self.conns = ConnTable(clock, timeouts)
        self.sysctls = sysctls or Sysctls()

    # -- client -> virtual service ---------------------------------------------------------
    def ip_vs_in(self, pkt: PacketMeta) -> IpvsResult:
        if pkt.proto not in (6, 17, 132):
            return IpvsResult(False)
        if pkt.proto == 132:
            svc = self.services.find(pkt.proto, pkt.dst, pkt.dport)
            if svc is None:
                return IpvsResult(False)
            raise NotImplementedError("SCTP connection state (ip_vs_proto_sctp.c) is not modelled")
        conns = self.conns
        cp = conns.lookup_in(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        notes: list[str] = []
        syn = pkt.proto == 6 and bool(pkt.tcp_flags & TCP_SYN)
        if cp is not None and syn and cp.control is None:
            cp, dropped = self._maybe_reuse(cp, pkt, notes)
            if dropped:
                return IpvsResult(True, Verdict.DROP, notes=notes)
        if cp is None:
            return self._schedule(pkt, notes)
        if cp.dest is not None and not cp.dest.available:
            if self.sysctls.expire_nodest_conn:
                conns.expire_now(cp)
                notes.append("destination removed: connection expired (expire_nodest_conn)")
            else:
                notes.append("destination removed: packet dropped")
            return IpvsResult(True, Verdict.DROP, dest=cp.dest, conn=cp, notes=notes)
        return self._forward(cp, pkt, None, notes, new=False)

    def _maybe_reuse(self, cp: Conn, pkt: PacketMeta, notes: list[str]) -> tuple[Conn | None, bool]:
        """ip_vs_core.c `ip_vs_in()` port-reuse block, as since "ipvs: Fix reuse connection if RS
        weight is 0" (v5.16): a weight-0 dest with expire_nodest_conn reschedules even with
        conn_reuse_mode=0; otherwise conn_reuse_mode and `is_new_conn_expected()` decide."""
        resched = old_ct = False
        uses_old_ct = bool(self.sysctls.conntrack) and pkt.ct_state is not CtState.NEW
        if self.sysctls.expire_nodest_conn and cp.dest is not None and cp.dest.weight == 0:
            resched, old_ct = True, uses_old_ct
        elif self.sysctls.conn_reuse_mode and _new_conn_expected(cp, self.sysctls.conn_reuse_mode):
            old_ct = uses_old_ct
            resched = True if not cp.n_control else not old_ct
        if not resched:
            return cp, False
        if not cp.n_control:
            self.conns.expire_now(cp)
        if old_ct:
            notes.append(f"SYN reuses {cp.state_name()} entry still tracked by conntrack: dropped "
                         "(conn_reuse_mode with conntrack)")
            return None, True
        notes.append(f"SYN reuses {cp.state_name()} entry: rescheduled (conn_reuse_mode)")
        return None, False

    def _schedule(self, pkt: PacketMeta, notes: list[str]) -> IpvsResult:
        svc = self.services.find(pkt.proto, pkt.dst, pkt.dport)
        if svc is None:
            return IpvsResult(False)
        if pkt.proto == 6 and not (pkt.tcp_flags & TCP_SYN) and not self.sysctls.sloppy_tcp:
            return IpvsResult(False, service=svc, notes=["TCP without SYN and no entry: not scheduled"])
        flow = Flow(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, self.conns.clock.now())
        svc.scheduler.last_error = None
        template: Conn | None = None
        if svc.persistent:
            dest, template = self._sched_persist(svc, flow, notes)
        else:
            dest = svc.scheduler.schedule(svc, flow)
        state = svc.scheduler.state()
        if dest is None:
            err = svc.scheduler.last_error or "no destination available"
            notes.append(f"{svc.scheduler_name}: {err}; ICMP port unreachable (ip_vs_leave)")
            return IpvsResult(True, Verdict.REJECT, service=svc, reject_with="icmp-port-unreachable",
                              notes=notes, scheduler_state=state)
        dport = dest.port or pkt.dport
        cp = self.conns.new(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, dest.addr, dport, dest)
        if template is not None:
            self.conns.add_control(cp, template)
            self.conns.put(template)
        notes.append(f"{svc.scheduler_name} chose {dest.label()} {state}")
        result = self._forward(cp, pkt, svc, notes, new=True)
        result.template = template
        result.scheduler_state = state
        return result

    def _sched_persist(self, svc: VirtualService, flow: Flow, notes: list[str]) -> tuple[Dest | None, Conn | None]:
        """ip_vs_core.c `ip_vs_sched_persist()`."""
        snet = ip_network(f"{flow.saddr}/{svc.netmask}", strict=False).network_address
        vport = flow.dport if (flow.dport == svc.port and svc.port != FTPPORT) else 0
        ct = self.conns.lookup_template(flow.proto, snet, flow.daddr, vport)
        if ct is not None and not self._check_template(ct):
            notes.append(f"persistence template to {ct.daddr}:{ct.dport} invalidated")
            ct = None
        if ct is None:
            dest = svc.scheduler.schedule(svc, flow)
            if dest is None:
                return None, None
            dport = dest.port if (flow.dport == svc.port and svc.port != FTPPORT) else 0
            ct = self.conns.new(flow.proto, snet, 0, flow.daddr, vport, dest.addr, dport, dest, template=True)
            ct.timeout = svc.timeout
            notes.append(f"new persistence template {snet}/{svc.netmask} for {svc.timeout}s")
            return dest, ct
        notes.append(f"persistence template {snet}/{svc.netmask} -> {ct.daddr}:{ct.dport}")
        return ct.dest, ct

    def _check_template(self, ct: Conn) -> bool:
        """ip_vs_conn.c `ip_vs_check_template()`."""
        dest = ct.dest
        if dest is None or not dest.available or (self.sysctls.expire_quiescent_template and dest.weight == 0):
            self.conns.invalidate_template(ct)
            return False
        return True

    def _forward(self, cp: Conn, pkt: PacketMeta, svc: VirtualService | None, notes: list[str],
                 *, new: bool) -> IpvsResult:
        self.conns.state_transition(cp, DIR_INPUT, pkt.tcp_flags)
        cp.packets += 1
        self.conns.put(cp)
        svc = svc or self.services.find(cp.proto, cp.vaddr, cp.vport)
        result = IpvsResult(True, Verdict.ACCEPT, service=svc, dest=cp.dest, conn=cp, new_conn=new, notes=notes)
        result.nat = NatAction(NatKind.DNAT, cp.daddr, cp.dport)
        if not new:
            notes.append(f"existing entry {cp.state_name()} -> {cp.daddr}:{cp.dport}")
        return result

    # -- real server -> client -------------------------------------------------------------
    def ip_vs_out(self, pkt: PacketMeta) -> IpvsResult:
        """A reply on a known entry: SNAT back to VIP:port and the OUTPUT state transition."""
        cp = self.conns.lookup_out(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if cp is None:
            return IpvsResult(False)
        self.conns.state_transition(cp, DIR_OUTPUT, pkt.tcp_flags)
        cp.packets += 1
        self.conns.put(cp)
        result = IpvsResult(True, Verdict.ACCEPT, service=self.services.find(cp.proto, cp.vaddr, cp.vport),
                            dest=cp.dest, conn=cp, notes=[f"reply on {cp.state_name()} entry"])
        result.nat = NatAction(NatKind.SNAT, cp.vaddr, cp.vport)
        return result


def _new_conn_expected(cp: Conn, conn_reuse_mode: int) -> bool:
    """ip_vs_core.c `is_new_conn_expected()` (controlled entries are excluded by the caller)."""
    if cp.proto == 6:
        return (cp.state in (TcpState.TIME_WAIT, TcpState.CLOSE)
                or bool(conn_reuse_mode & 2 and cp.state == TcpState.FIN_WAIT and cp.nooutput))
    return False


def packet(src: str, dst: str, proto: str = "tcp", sport: int = 40000, dport: int = 80,
           flags: int = TCP_SYN, **kw: object) -> PacketMeta:
    """A PacketMeta for IPVS tests and traces: a TCP SYN unless told otherwise."""
    return PacketMeta.make(src, dst, proto, sport, dport, tcp_flags=flags if proto == "tcp" else 0, **kw)


SYN, ACK, FIN_ACK, RST = TCP_SYN, TCP_ACK, 0x11, 0x04
__all__ = ["Ipvs", "IpvsResult", "Sysctls", "packet", "SYN", "ACK", "FIN_ACK", "RST", "IPAddress"]
