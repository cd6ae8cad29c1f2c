"""Connection table, TCP state machine, counters, persistence and the packet path.

Kernel sources: ip_vs_proto_tcp.c (tcp_states[], tcp_timeouts[], set_tcp_state), ip_vs_proto_udp.c,
ip_vs_conn.c (ip_vs_conn_new, ip_vs_bind_dest/unbind_dest, ip_vs_conn_expire, ip_vs_check_template),
ip_vs_core.c (ip_vs_in conn_reuse_mode, ip_vs_sched_persist, ip_vs_leave).
"""

from __future__ import annotations

import os
from ipaddress import ip_address

import pytest

from dataplane.engine.clock import ManualClock
from dataplane.engine.types import CtState, NatKind, Verdict
from dataplane.proxy.ipvs.conn import TCP_STATE_TABLE, TCP_TIMEOUTS, TcpState, Timeouts
from dataplane.proxy.ipvs.core import ACK, FIN_ACK, RST, SYN, Ipvs, Sysctls, packet

VIP = "10.96.0.10"
CLIENT = "10.244.9.9"


def make(sched: str = "rr", n: int = 2, **kw: object) -> tuple[Ipvs, ManualClock]:
    clock = ManualClock()
    ipvs = Ipvs(clock, **kw)  # type: ignore[arg-type]
    svc = ipvs.services.add_service("tcp", VIP, 80, sched)
    for i in range(n, 0, -1):  # added n..1, so the kernel list reads .1, .2, ...
        svc.add_dest(f"10.244.1.{i}", 8080)
    return ipvs, clock


def reply(ipvs: Ipvs, dest: str, sport: int, flags: int) -> None:
    r = ipvs.ip_vs_out(packet(dest, CLIENT, sport=8080, dport=sport, flags=flags))
    assert r.handled and r.nat is not None and r.nat.kind is NatKind.SNAT and str(r.nat.addr) == VIP


def test_state_table_rows_match_the_kernel_source() -> None:
    """Spot checks against tcp_states[] as printed in ip_vs_proto_tcp.c."""
    s = TcpState
    assert TCP_STATE_TABLE[0][0][s.NONE] is s.SYN_RECV  # INPUT syn from sNO
    assert TCP_STATE_TABLE[0][2][s.SYN_RECV] is s.ESTABLISHED  # INPUT ack sSR -> sES
    assert TCP_STATE_TABLE[0][1][s.ESTABLISHED] is s.CLOSE_WAIT  # INPUT fin sES -> sCW
    assert TCP_STATE_TABLE[1][1][s.ESTABLISHED] is s.FIN_WAIT  # OUTPUT fin sES -> sFW
    assert TCP_STATE_TABLE[1][3][s.SYN_SENT] is s.SYN_SENT  # OUTPUT rst in sSS stays
    assert TCP_STATE_TABLE[2][1][s.ESTABLISHED] is s.FIN_WAIT  # INPUT-ONLY fin sES -> sFW
    assert TCP_TIMEOUTS[s.ESTABLISHED] == 900 and TCP_TIMEOUTS[s.FIN_WAIT] == 120
    assert TCP_TIMEOUTS[s.SYN_RECV] == 60 and TCP_TIMEOUTS[s.CLOSE_WAIT] == 60
    assert TCP_TIMEOUTS[s.TIME_WAIT] == 120 and TCP_TIMEOUTS[s.CLOSE] == 10 and TCP_TIMEOUTS[s.LAST_ACK] == 30


def test_tcp_handshake_counters_and_timeouts() -> None:
    """SYN: NONE -> SYN_RECV (60 s), counted inactive (new conns carry IP_VS_CONN_F_INACTIVE).
    SYN-ACK out: SYN_RECV stays.  ACK in: ESTABLISHED (900 s), active.  Client FIN: CLOSE_WAIT (60 s),
    inactive again.  Server FIN out: CLOSE_WAIT -> TIME_WAIT (120 s).  Then expiry unbinds the dest."""
    ipvs, clock = make()
    r = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=40000))
    assert r.verdict is Verdict.ACCEPT and r.new_conn and str(r.nat.addr) == "10.244.1.1"  # type: ignore[union-attr]
    cp, dest = r.conn, r.dest
    assert cp is not None and dest is not None
    assert (cp.state_name(), cp.timeout, dest.activeconns, dest.inactconns) == ("SYN_RECV", 60, 0, 1)
    reply(ipvs, "10.244.1.1", 40000, SYN | ACK)
    assert cp.state_name() == "SYN_RECV"
    ipvs.ip_vs_in(packet(CLIENT, VIP, sport=40000, flags=ACK))
    assert (cp.state_name(), cp.timeout, dest.activeconns, dest.inactconns) == ("ESTABLISHED", 900, 1, 0)
    clock.advance(899)
    assert ipvs.ip_vs_in(packet(CLIENT, VIP, sport=40000, flags=ACK)).conn is cp  # timer restarted
    ipvs.ip_vs_in(packet(CLIENT, VIP, sport=40000, flags=FIN_ACK))
    assert (cp.state_name(), cp.timeout, dest.activeconns, dest.inactconns) == ("CLOSE_WAIT", 60, 0, 1)
    reply(ipvs, "10.244.1.1", 40000, FIN_ACK)
    assert (cp.state_name(), cp.timeout) == ("TIME_WAIT", 120)
    clock.advance(119)
    assert ipvs.conns.count == 1
    clock.advance(1)
    ipvs.conns.expire_due()
    assert ipvs.conns.count == 0 and dest.inactconns == 0 and cp.gone


def test_server_close_is_fin_wait_and_rst_closes() -> None:
    """OUTPUT fin from ESTABLISHED -> FIN_WAIT (120 s); INPUT rst -> CLOSE (10 s)."""
    ipvs, clock = make()
    cp = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=40001)).conn
    ipvs.ip_vs_in(packet(CLIENT, VIP, sport=40001, flags=ACK))
    reply(ipvs, "10.244.1.1", 40001, FIN_ACK)
    assert (cp.state_name(), cp.timeout) == ("FIN_WAIT", 120)  # type: ignore[union-attr]
    ipvs.ip_vs_in(packet(CLIENT, VIP, sport=40001, flags=RST))
    assert (cp.state_name(), cp.timeout) == ("CLOSE", 10)  # type: ignore[union-attr]


def test_udp_entries_last_300s_and_stay_inactive() -> None:
    clock = ManualClock()
    ipvs = Ipvs(clock)
    svc = ipvs.services.add_service("udp", VIP, 53)
    dest = svc.add_dest("10.244.1.7", 53)
    r = ipvs.ip_vs_in(packet(CLIENT, VIP, "udp", sport=5353, dport=53))
    assert r.conn is not None and r.conn.state_name() == "UDP" and r.conn.timeout == 300
    assert (dest.activeconns, dest.inactconns) == (0, 1)
    clock.advance(299)
    assert ipvs.ip_vs_in(packet(CLIENT, VIP, "udp", sport=5353, dport=53)).new_conn is False
    clock.advance(300)
    ipvs.conns.expire_due()
    assert dest.inactconns == 0 and ipvs.conns.count == 0


def test_ipvsadm_set_timeouts() -> None:
    """ipvsadm --set 3600 30 60: ESTABLISHED, FIN_WAIT and UDP."""
    t = Timeouts()
    t.set(3600, 30, 60)
    assert (t.tcp[TcpState.ESTABLISHED], t.tcp[TcpState.FIN_WAIT], t.udp) == (3600, 30, 60)
    with pytest.raises(ValueError, match="tcpfin timeout -1"):
        t.set(0, -1, 0)


def test_lc_is_driven_by_the_conn_table_counters() -> None:
    """lc on [A, B]: first SYN -> A (tie, first wins), A inactive = 1.  Second -> B (0 < 1).
    Establish the first (A: 256).  Third -> B (1 < 256)."""
    ipvs, _ = make("lc")
    first = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=1001))
    second = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=1002))
    assert [str(first.dest.addr), str(second.dest.addr)] == ["10.244.1.1", "10.244.1.2"]  # type: ignore[union-attr]
    ipvs.ip_vs_in(packet(CLIENT, VIP, sport=1001, flags=ACK))
    assert first.dest.conn_overhead == 256  # type: ignore[union-attr]
    assert str(ipvs.ip_vs_in(packet(CLIENT, VIP, sport=1003)).dest.addr) == "10.244.1.2"  # type: ignore[union-attr]


def test_no_endpoints_rejects_with_port_unreachable_and_non_syn_is_not_scheduled() -> None:
    """ip_vs_leave(): ICMP port unreachable for TCP too.  A non-SYN TCP packet without an entry is
    not scheduled (tcp_conn_schedule) and continues to the local stack."""
    ipvs, _ = make(n=0)
    r = ipvs.ip_vs_in(packet(CLIENT, VIP))
    d = r.decision()
    assert d.verdict is Verdict.REJECT and d.reject_with == "icmp-port-unreachable"
    assert "no destination available" in d.trace[0].note
    assert ipvs.ip_vs_in(packet(CLIENT, VIP, flags=ACK)).handled is False
    assert ipvs.ip_vs_in(packet(CLIENT, "10.96.0.99")).handled is False  # no such service


def test_persistence_pins_a_client_and_templates_outlive_their_timeout_while_in_use() -> None:
    """-p 10 with rr over [A, B].  Client 1 -> A (template), client 2 -> B, client 1 again on a new
    port -> A (template, not rr).  The template's own timer fires at t=10 but it still controls
    connections: ip_vs_conn_expire() re-arms it for 60 s (and its timeout becomes 60)."""
    clock = ManualClock()
    ipvs = Ipvs(clock)
    svc = ipvs.services.add_service("udp", VIP, 53, persistent=10)
    svc.add_dest("10.244.1.2", 53)
    svc.add_dest("10.244.1.1", 53)
    c1 = ipvs.ip_vs_in(packet("10.0.0.1", VIP, "udp", sport=1000, dport=53))
    c2 = ipvs.ip_vs_in(packet("10.0.0.2", VIP, "udp", sport=1000, dport=53))
    c1b = ipvs.ip_vs_in(packet("10.0.0.1", VIP, "udp", sport=2000, dport=53))
    assert [str(r.dest.addr) for r in (c1, c2, c1b)] == ["10.244.1.1", "10.244.1.2", "10.244.1.1"]  # type: ignore[union-attr]
    tpl = c1.template
    assert tpl is not None and c1b.template is tpl and tpl.n_control == 2 and c1.dest.persistconns == 1  # type: ignore[union-attr]
    clock.advance(11)
    ipvs.conns.expire_due()
    assert not tpl.gone and tpl.timeout == 60
    clock.advance(300)  # t=311: the UDP entries (300 s) are gone, the template re-arms ran out
    ipvs.conns.expire_due()
    assert tpl.gone and c1.dest.persistconns == 0  # type: ignore[union-attr]
    # no template any more: rr continues from B -> A
    assert str(ipvs.ip_vs_in(packet("10.0.0.1", VIP, "udp", sport=3000, dport=53)).dest.addr) == "10.244.1.1"  # type: ignore[union-attr]


def test_quiescent_template_expires_with_kube_proxy_sysctls() -> None:
    """expire_quiescent_template=1 (kube-proxy): a template whose dest got weight 0 is invalidated
    by ip_vs_check_template() and the client is scheduled afresh."""
    clock = ManualClock()
    ipvs = Ipvs(clock, Sysctls.kube_proxy())
    svc = ipvs.services.add_service("tcp", VIP, 80, persistent=10800)
    svc.add_dest("10.244.1.2", 8080)
    svc.add_dest("10.244.1.1", 8080)
    first = ipvs.ip_vs_in(packet("10.0.0.1", VIP, sport=1000))
    svc.edit_dest("10.244.1.1", 8080, 0)
    again = ipvs.ip_vs_in(packet("10.0.0.1", VIP, sport=1001))
    assert str(first.dest.addr) == "10.244.1.1" and str(again.dest.addr) == "10.244.1.2"  # type: ignore[union-attr]
    assert any("invalidated" in n for n in again.notes)


def test_conn_reuse_reschedules_time_wait_and_drops_when_conntrack_still_holds_it() -> None:
    """conn_reuse_mode=1: a SYN on a TIME_WAIT entry expires it and schedules again (rr moves on).
    With conntrack=1 and the old conntrack entry still there, the SYN is dropped (kubernetes#81775)."""
    for conntrack, ct_state in ((0, CtState.NEW), (1, CtState.ESTABLISHED)):
        ipvs, _ = make(sysctls=Sysctls(conntrack=conntrack))
        cp = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=5555)).conn
        ipvs.ip_vs_in(packet(CLIENT, VIP, sport=5555, flags=ACK))
        ipvs.ip_vs_in(packet(CLIENT, VIP, sport=5555, flags=FIN_ACK))
        reply(ipvs, "10.244.1.1", 5555, FIN_ACK)
        assert cp.state_name() == "TIME_WAIT"  # type: ignore[union-attr]
        r = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=5555, ct_state=ct_state))
        assert cp.gone  # type: ignore[union-attr]
        if conntrack:
            assert r.verdict is Verdict.DROP and "conntrack" in r.notes[0]
        else:
            assert r.new_conn and str(r.dest.addr) == "10.244.1.2"  # type: ignore[union-attr]


def test_removed_dest_drops_and_expires_with_expire_nodest_conn() -> None:
    ipvs, _ = make(sysctls=Sysctls.kube_proxy())
    cp = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=7000)).conn
    ipvs.services.get("tcp", VIP, 80).del_dest("10.244.1.1", 8080)
    r = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=7000, flags=ACK))
    assert r.verdict is Verdict.DROP and cp.gone and cp.dest.inactconns == 0  # type: ignore[union-attr]


def test_decision_and_trace_for_the_engine() -> None:
    ipvs, _ = make()
    d = ipvs.ip_vs_in(packet(CLIENT, VIP)).decision()
    assert d.verdict is Verdict.ACCEPT and d.nat is not None and d.nat.kind is NatKind.DNAT
    assert (str(d.nat.addr), d.nat.port) == ("10.244.1.1", 8080)
    step = d.trace[0]
    assert step.table == "ipvs" and step.rule_number == 1
    assert step.rule_text == "-a -t 10.96.0.10:80 -r 10.244.1.1:8080 -m -w 1"
    assert "rr chose 10.244.1.1:8080" in step.note


def test_bad_service_definitions_are_clear_errors() -> None:
    ipvs = Ipvs()
    with pytest.raises(ValueError, match="tcp, udp and sctp"):
        ipvs.services.add_service("icmp", VIP, 0)
    svc = ipvs.services.add_service("tcp", VIP, 80)
    with pytest.raises(ValueError, match="already exists"):
        ipvs.services.add_service("tcp", VIP, 80)
    with pytest.raises(ValueError, match="not IPv4"):
        svc.add_dest("fd00::1", 80)
    with pytest.raises(ValueError, match="weight -1"):
        svc.add_dest("10.244.1.1", 80, -1)
    with pytest.raises(ValueError, match="lower threshold 5 is higher than upper threshold 2"):
        svc.add_dest("10.244.1.1", 80, 1, u_threshold=2, l_threshold=5)
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        svc.add_dest("10.244.1.300", 80)
    assert svc.destinations == [] and ip_address(VIP) == svc.addr


def test_weight_zero_dest_reschedules_reused_port_even_without_conn_reuse_mode() -> None:
    """Since "ipvs: Fix reuse connection if RS weight is 0" (v5.16): with expire_nodest_conn a SYN
    on an entry whose dest was quiesced expires it and is scheduled elsewhere, conn_reuse_mode=0 too.
    Without expire_nodest_conn and with conn_reuse_mode=0 the SYN keeps the old entry."""
    for expire_nodest, expect in ((1, "10.244.1.2"), (0, "10.244.1.1")):
        ipvs, _ = make(sysctls=Sysctls(conn_reuse_mode=0, expire_nodest_conn=expire_nodest))
        cp = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=6000)).conn
        ipvs.services.get("tcp", VIP, 80).edit_dest("10.244.1.1", 8080, 0)
        r = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=6000))
        assert str(r.dest.addr) == expect and cp.gone is bool(expire_nodest)  # type: ignore[union-attr]


def test_controlled_entries_are_never_rescheduled_on_port_reuse() -> None:
    """`!cp->control` guards the reuse block: under persistence a SYN on a TIME_WAIT entry reuses it."""
    clock = ManualClock()
    ipvs = Ipvs(clock)
    svc = ipvs.services.add_service("tcp", VIP, 80, persistent=60)
    svc.add_dest("10.244.1.2", 8080)
    svc.add_dest("10.244.1.1", 8080)
    cp = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=6100)).conn
    ipvs.ip_vs_in(packet(CLIENT, VIP, sport=6100, flags=RST))
    assert cp.state_name() == "SYN_RECV"  # type: ignore[union-attr]  # INPUT rst keeps sSR (tcp_states[])
    ipvs.ip_vs_in(packet(CLIENT, VIP, sport=6100, flags=ACK))
    ipvs.ip_vs_in(packet(CLIENT, VIP, sport=6100, flags=RST))
    assert cp.state_name() == "CLOSE"  # type: ignore[union-attr]
    again = ipvs.ip_vs_in(packet(CLIENT, VIP, sport=6100))
    assert again.conn is cp and not again.new_conn and cp.state_name() == "SYN_RECV"  # type: ignore[union-attr]


def test_ipvsadm_lnc_listing() -> None:
    """ipvsadm -Lnc rows: `%-3s %-6s %-11s %-18s %-18s %s`, expiry mm:ss.  A persistent UDP service:
    the template (client port 0, state 0 = "UDP" in udp_state_name_table, 600 s) and the entry
    (UDP, 300 s), 5 s later."""
    from dataplane.proxy.ipvs.ipvsadm import conn_list_text

    clock = ManualClock()
    ipvs = Ipvs(clock)
    ipvs.services.add_service("udp", VIP, 53, persistent=600).add_dest("10.244.1.7", 53)
    ipvs.ip_vs_in(packet("10.0.0.1", VIP, "udp", sport=5353, dport=53))
    clock.advance(5)
    assert conn_list_text(ipvs.conns, clock.now()).splitlines() == [
        "IPVS connection entries",
        "pro expire state       source             virtual            destination",
        "UDP 09:55  UDP         10.0.0.1:0         10.96.0.10:53      10.244.1.7:53",
        "UDP 04:55  UDP         10.0.0.1:5353      10.96.0.10:53      10.244.1.7:53",
    ]


def test_upper_threshold_sets_overload_and_three_quarters_clears_it() -> None:
    """ip_vs_bind_dest(): OVERLOAD once totalconns >= u_threshold; ip_vs_unbind_dest() without an
    l_threshold clears it when totalconns * 4 < u_threshold * 3.  A (-x 2) and B under rr:
    conn1 -> A, conn2 -> B, conn3 -> A (A now 2: overloaded), conn4 -> B, conn5 -> B (A skipped).
    One A entry expires: 1 * 4 < 2 * 3 -> A usable again."""
    clock = ManualClock()
    ipvs = Ipvs(clock)
    svc = ipvs.services.add_service("udp", VIP, 53)
    svc.add_dest("10.244.1.2", 53)
    a = svc.add_dest("10.244.1.1", 53, u_threshold=2)
    got = [str(ipvs.ip_vs_in(packet(CLIENT, VIP, "udp", sport=p, dport=53)).dest.addr)  # type: ignore[union-attr]
           for p in (1, 2, 3)]
    assert got == ["10.244.1.1", "10.244.1.2", "10.244.1.1"] and a.overloaded
    got = [str(ipvs.ip_vs_in(packet(CLIENT, VIP, "udp", sport=p, dport=53)).dest.addr)  # type: ignore[union-attr]
           for p in (4, 5)]
    assert got == ["10.244.1.2", "10.244.1.2"]
    first = ipvs.conns.lookup_in(17, ip_address(CLIENT), 1, ip_address(VIP), 53)
    ipvs.conns.expire_now(first)  # type: ignore[arg-type]
    assert not a.overloaded and a.inactconns == 1


def _live(ipvs: Ipvs) -> list:  # type: ignore[type-arg]
    return list(ipvs.conns)


FUZZ_SEEDS = int(os.environ.get("IPVS_FUZZ_SEEDS", "3"))  # e.g. 100 for a longer hunt


@pytest.mark.parametrize("seed", range(FUZZ_SEEDS))
def test_counters_always_match_the_live_entries(seed: int) -> None:
    """Random packets (both directions, all TCP flag kinds), weight changes, removals and clock jumps:
    each dest's activeconns/inactconns/persistconns always equal what its live entries say
    (ESTABLISHED TCP entries are the active ones), and conn_count the number of live entries."""
    import random

    from dataplane.proxy.ipvs.conn import TcpState

    rng = random.Random(seed)
    clock = ManualClock()
    ipvs = Ipvs(clock, Sysctls.kube_proxy())
    svc = ipvs.services.add_service("tcp", VIP, 80, rng.choice(["rr", "lc", "wlc", "sh"]),
                                    persistent=rng.choice([None, 30]))
    dests = [svc.add_dest(f"10.244.1.{i}", 8080) for i in range(1, 4)]
    flags = [SYN, ACK, FIN_ACK, RST, SYN | ACK]
    for _ in range(400):
        roll = rng.random()
        client, port = f"10.0.0.{rng.randint(1, 4)}", rng.randint(1000, 1005)
        if roll < 0.55:
            ipvs.ip_vs_in(packet(client, VIP, sport=port, flags=rng.choice(flags)))
        elif roll < 0.8:
            cp = ipvs.conns.lookup_in(6, ip_address(client), port, ip_address(VIP), 80)
            if cp is not None:
                ipvs.ip_vs_out(packet(str(cp.daddr), client, sport=cp.dport, dport=port, flags=rng.choice(flags)))
        elif roll < 0.85 and svc.destinations:
            d = rng.choice(svc.destinations)
            svc.edit_dest(d.addr, d.port, rng.choice([0, 1, 2]))
        else:
            clock.advance(rng.choice([1, 10, 61, 130]))
        live = _live(ipvs)
        for d in dests:
            mine = [c for c in live if c.dest is d]
            assert d.persistconns == sum(1 for c in mine if c.template)
            entries = [c for c in mine if not c.template]
            assert d.activeconns == sum(1 for c in entries if not c.inactive)
            assert d.inactconns == sum(1 for c in entries if c.inactive)
            assert all(c.inactive == (c.state != TcpState.ESTABLISHED) for c in entries)
        assert ipvs.conns.count == len(live)
