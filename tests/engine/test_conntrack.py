"""Conntrack: directions, states, the TCP state machine, timeouts on an injected clock, RELATED errors."""

from __future__ import annotations

import pytest

from dataplane.engine import packet as P
from dataplane.engine.clock import ManualClock
from dataplane.engine.conntrack import ORIGINAL, REPLY, ConntrackTable, TcpState, Timeouts
from dataplane.engine.types import CtState

C, S = "10.0.0.1", "10.0.0.2"


def tcp(src, dst, sport, dport, flags):
    return P.parse(P.build(src, dst, "tcp", sport=sport, dport=dport, flags=flags))


def udp(src, dst, sport, dport):
    return P.parse(P.build(src, dst, "udp", sport=sport, dport=dport))


def seen(table, h):
    t = table.track(h)
    table.confirm(t)
    return t


@pytest.fixture
def clock():
    return ManualClock(1000.0)


def test_tcp_handshake_states_and_kube_proxy_timeouts(clock):
    ct = ConntrackTable(clock, Timeouts.kube_proxy())
    t = seen(ct, tcp(C, S, 40000, 80, "S"))
    assert t.state is CtState.NEW and t.conn.tcp_state is TcpState.SYN_SENT
    assert t.conn.timeout_at == 1000 + 120
    again = seen(ct, tcp(C, S, 40000, 80, "S"))  # retransmitted SYN: still NEW, same entry
    assert again.state is CtState.NEW and again.conn is t.conn
    r = seen(ct, tcp(S, C, 80, 40000, "SA"))
    assert (r.state, r.direction, r.conn.tcp_state) == (CtState.ESTABLISHED, REPLY, TcpState.SYN_RECV)
    assert r.conn.timeout_at == 1000 + 60
    a = seen(ct, tcp(C, S, 40000, 80, "A"))
    assert (a.state, a.direction, a.conn.tcp_state) == (CtState.ESTABLISHED, ORIGINAL, TcpState.ESTABLISHED)
    assert "ASSURED" in a.conn.status
    assert a.conn.timeout_at == 1000 + 86400  # kube-proxy: established 24 h (kernel default 5 days)
    seen(ct, tcp(C, S, 40000, 80, "FA"))
    assert a.conn.tcp_state is TcpState.FIN_WAIT
    seen(ct, tcp(S, C, 80, 40000, "A"))
    assert a.conn.tcp_state is TcpState.CLOSE_WAIT and a.conn.timeout_at == 1000 + 3600  # kube-proxy 1 h
    seen(ct, tcp(S, C, 80, 40000, "FA"))
    assert a.conn.tcp_state is TcpState.LAST_ACK and a.conn.timeout_at == 1000 + 30
    seen(ct, tcp(C, S, 40000, 80, "A"))
    assert a.conn.tcp_state is TcpState.TIME_WAIT and a.conn.timeout_at == 1000 + 120
    # A new SYN on the same tuple re-opens: the old entry dies, a NEW one starts
    n = seen(ct, tcp(C, S, 40000, 80, "S"))
    assert n.state is CtState.NEW and n.conn is not a.conn and len(ct) == 1


def test_kernel_default_established_is_five_days(clock):
    ct = ConntrackTable(clock)
    seen(ct, tcp(C, S, 1, 2, "S"))
    seen(ct, tcp(S, C, 2, 1, "SA"))
    a = seen(ct, tcp(C, S, 1, 2, "A"))
    assert a.conn.timeout_at - clock.now() == 5 * 86400
    clock.advance(5 * 86400 - 1)
    assert ct.lookup(a.conn.original) is not None
    clock.advance(1)
    assert ct.lookup(a.conn.original) is None and len(ct) == 0


def test_invalid_tcp_packets(clock):
    ct = ConntrackTable(clock)
    assert ct.track(tcp(C, S, 1, 2, "SA")).state is CtState.INVALID  # SYN/ACK opens nothing
    assert ct.track(tcp(C, S, 1, 2, "F")).state is CtState.INVALID
    assert ct.track(tcp(C, S, 1, 2, "R")).state is CtState.INVALID
    seen(ct, tcp(C, S, 1, 2, "S"))
    assert ct.track(tcp(C, S, 1, 2, "A")).state is CtState.INVALID  # ACK before any SYN/ACK
    # mid-stream pickup (nf_conntrack_tcp_loose=1): ESTABLISHED with the 5 min unacknowledged timer
    p = seen(ct, tcp(C, S, 7, 8, "A"))
    assert p.state is CtState.NEW and p.conn.tcp_state is TcpState.ESTABLISHED
    assert p.conn.timeout_at - clock.now() == 300
    strict = ConntrackTable(clock, tcp_loose=False)
    assert strict.track(tcp(C, S, 7, 8, "A")).state is CtState.INVALID


def test_rst_answer_kills_unreplied_connection(clock):
    ct = ConntrackTable(clock)
    seen(ct, tcp(C, S, 1, 2, "S"))
    r = seen(ct, tcp(S, C, 2, 1, "RA"))
    assert r.state is CtState.ESTABLISHED and len(ct) == 0


def test_udp_timeouts_unreplied_replied_stream(clock):
    ct = ConntrackTable(clock)
    q = seen(ct, udp(C, S, 5353, 53))
    assert q.state is CtState.NEW and q.conn.timeout_at - clock.now() == 30
    clock.advance(29.9)
    assert seen(ct, udp(C, S, 5353, 53)).state is CtState.NEW  # still unreplied, refreshed
    r = seen(ct, udp(S, C, 53, 5353))
    assert r.state is CtState.ESTABLISHED and "SEEN_REPLY" in r.conn.status
    assert r.conn.timeout_at - clock.now() == 30  # the first reply keeps the short timer
    e = seen(ct, udp(C, S, 5353, 53))
    assert e.state is CtState.ESTABLISHED
    assert e.conn.timeout_at - clock.now() == 120 and "ASSURED" in e.conn.status  # a stream now
    clock.advance(120)
    assert seen(ct, udp(C, S, 5353, 53)).state is CtState.NEW  # expired: a new flow


def test_udp_reply_within_two_seconds_is_not_a_stream(clock):
    ct = ConntrackTable(clock)
    seen(ct, udp(C, S, 1, 53))
    seen(ct, udp(S, C, 53, 1))
    clock.advance(1)
    e = seen(ct, udp(C, S, 1, 53))
    assert e.conn.timeout_at - clock.now() == 30 and "ASSURED" not in e.conn.status


def test_icmp_echo_and_related_error(clock):
    ct = ConntrackTable(clock)
    ping = P.build(C, S, "icmp", icmp_id=9)
    t = seen(ct, P.parse(ping))
    assert t.state is CtState.NEW and t.conn.timeout_at - clock.now() == 30
    pong = P.parse(P.build(S, C, "icmp", icmp_type=0, icmp_id=9))
    assert seen(ct, pong).state is CtState.ESTABLISHED
    assert ct.track(P.parse(P.build(S, C, "icmp", icmp_type=0, icmp_id=10))).state is CtState.INVALID
    q = P.build(C, S, "udp", sport=4000, dport=53)
    seen(ct, P.parse(q))
    err = P.parse(P.icmp_error(q, src=S))
    rel = ct.track(err)
    assert rel.state is CtState.RELATED and rel.direction == REPLY
    unknown = P.parse(P.icmp_error(P.build(C, S, "udp", sport=4001, dport=53), src=S))
    assert ct.track(unknown).state is CtState.INVALID


def test_unconfirmed_connection_leaves_nothing(clock):
    ct = ConntrackTable(clock)
    t = ct.track(tcp(C, S, 1, 2, "S"))
    assert t.is_new and len(ct) == 0  # never confirmed (e.g. dropped): not in the table
    assert ct.confirm(t) and len(ct) == 1 and "CONFIRMED" in t.conn.status


def test_manual_clock_refuses_to_go_back():
    c = ManualClock(5)
    with pytest.raises(ValueError, match="backwards"):
        c.advance(-1)
    with pytest.raises(ValueError, match="backwards"):
        c.set(4)


def test_tcp_flag_combinations_the_kernel_calls_invalid(clock):
    ct = ConntrackTable(clock)
    seen(ct, tcp(C, S, 1, 2, "S"))
    seen(ct, tcp(S, C, 2, 1, "SA"))
    seen(ct, tcp(C, S, 1, 2, "A"))
    for flags in ("F", "", "SF", "SR", "FR", "U"):  # not in tcp_valid_flags[]
        assert ct.track(tcp(C, S, 1, 2, flags)).state is CtState.INVALID, flags
    assert ct.track(tcp(C, S, 1, 2, "PA")).state is CtState.ESTABLISHED  # PSH is ignored
