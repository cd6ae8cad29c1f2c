"""Packets as bytes: parsing, NAT rewrites with checksums checked against scapy, ICMP errors, pcap, batches."""

from __future__ import annotations

import io
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import IP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from dataplane.engine import packet as P
from dataplane.engine.types import PacketMeta


def scapy_recomputed(data: bytes) -> bytes:
    """The same packet with every checksum deleted and recomputed by scapy."""
    p = IP(data) if data[0] >> 4 == 4 else IPv6(data)
    for layer in p.iterpayloads():
        for name in ("chksum", "cksum"):
            if name in layer.fields:
                del layer.fields[name]
    return bytes(p.__class__(bytes(p)))


v4 = st.integers(0x01000000, 0xDFFFFFFF).map(IPv4Address)
v6 = st.integers(1, 2**128 - 1).map(IPv6Address)
ports = st.integers(1, 65535)


@settings(max_examples=150, deadline=None)
@given(fam=st.sampled_from([4, 6]), proto=st.sampled_from(["tcp", "udp", "icmp"]), data=st.data())
def test_rewrite_checksums_match_scapy(fam, proto, data):
    addrs = v4 if fam == 4 else v6
    src, dst, nsrc, ndst = (data.draw(addrs) for _ in range(4))
    sp, dp, nsp, ndp = (data.draw(ports) for _ in range(4))
    payload = data.draw(st.binary(max_size=40))
    raw = P.build(src, dst, proto, sport=sp, dport=dp, payload=payload, icmp_id=sp,
                  flags=data.draw(st.sampled_from(["S", "SA", "A", "FA", "R", "PA"])))
    out = P.rewrite(raw, src=nsrc, dst=ndst, sport=nsp, dport=ndp)
    h = P.parse(out)
    assert (h.src, h.dst) == (nsrc, ndst)
    if proto == "icmp":
        assert h.icmp_id == nsp
    else:
        assert (h.sport, h.dport) == (nsp, ndp)
    assert out == scapy_recomputed(out)
    assert out.endswith(payload) and len(out) == len(raw)


def test_parse_fields_v4_tcp_and_meta():
    raw = P.build("10.244.1.5", "10.96.0.10", "tcp", sport=40000, dport=53, flags="SA", seq=7, ack=9)
    h = P.parse(raw)
    assert (h.family, h.proto, h.sport, h.dport, h.tcp_seq, h.tcp_ack) == (4, 6, 40000, 53, 7, 9)
    assert h.tcp_flags == P.TCP_SYN | P.TCP_ACK
    m = h.to_meta(iif="eth0", mark=0x4000)
    assert m == PacketMeta.make("10.244.1.5", "10.96.0.10", "tcp", 40000, 53, tcp_flags=0x12,
                                iif="eth0", mark=0x4000, length=40)


def test_parse_v6_udp_and_echo_id():
    h = P.parse(P.build("fd00::1", "fd00::2", "udp", sport=5, dport=53, payload=b"x"))
    assert (h.family, h.proto, h.sport, h.dport, h.length) == (6, 17, 5, 53, 49)
    e = P.parse(P.build("fd00::1", "fd00::2", "icmp", icmp_id=77))
    assert (e.proto, e.icmp_type, e.icmp_id) == (58, 128, 77)
    assert e.to_meta().sport == 0  # ports are 0 for ICMP, as iptables sees them


def test_ipv4_udp_without_checksum_stays_without():
    raw = bytearray(P.build("1.1.1.1", "2.2.2.2", "udp", sport=1, dport=2, payload=b"abc"))
    raw[26:28] = b"\0\0"
    out = P.rewrite(bytes(raw), dst="3.3.3.3")
    assert out[26:28] == b"\0\0"
    assert IP(out).chksum == IP(scapy_recomputed(out)).chksum


@pytest.mark.parametrize("src,dst", [("10.0.0.1", "10.96.0.10"), ("fd00::1", "fd00:96::a")])
def test_icmp_error_quotes_original_and_checksums(src, dst):
    raw = P.build(src, dst, "udp", sport=1234, dport=53, payload=b"q" * 20)
    router = "10.0.0.254" if ":" not in src else "fd00::fe"
    err = P.icmp_error(raw, src=router)
    assert err == scapy_recomputed(err)
    h = P.parse(err)
    assert h.is_icmp_error and h.dst == ip_address(src) and h.src == ip_address(router)
    assert (h.inner.src, h.inner.dst, h.inner.sport, h.inner.dport) == (ip_address(src), ip_address(dst), 1234, 53)
    assert h.icmp_type == (3 if ":" not in src else 1)


def test_icmp_error_is_capped_at_576_bytes():
    big = P.build("10.0.0.1", "10.0.0.2", "udp", sport=1, dport=2, payload=b"z" * 1400)
    err = P.icmp_error(big, src="10.0.0.3")
    assert len(err) == 576
    assert P.parse(err).inner.truncated is False  # the UDP header itself is complete


def test_rewrite_quoted_fixes_inner_and_outer_checksums():
    inner = P.build("10.0.0.1", "10.244.2.7", "udp", sport=4000, dport=8053, payload=b"hello")
    err = P.icmp_error(inner, src="10.244.2.7")
    out = P.rewrite_quoted(err, dst="10.96.0.10", dport=53)
    out = P.rewrite(out, src="10.96.0.10")
    p = IP(out)
    assert p[IPerror].dst == "10.96.0.10" and p[UDPerror].dport == 53
    # scapy recomputes the quoted UDP checksum from the complete quote: ours must agree
    assert out == scapy_recomputed(out)
    tcp_inner = P.build("10.0.0.1", "10.244.2.7", "tcp", sport=4000, dport=8080, flags="S", seq=5)
    out2 = P.rewrite_quoted(P.icmp_error(tcp_inner, src="10.0.0.9"), dst="10.96.0.1", dport=80)
    assert out2 == scapy_recomputed(out2) and IP(out2)[TCPerror].dport == 80


def test_tcp_reset_answers_syn_like_the_kernel():
    syn = P.build("10.0.0.1", "10.0.0.2", "tcp", sport=1000, dport=80, flags="S", seq=100)
    rst = P.parse(P.tcp_reset(syn))
    assert (rst.src, rst.dst, rst.sport, rst.dport) == (ip_address("10.0.0.2"), ip_address("10.0.0.1"), 80, 1000)
    assert rst.tcp_flags == P.TCP_RST | P.TCP_ACK and rst.tcp_seq == 0 and rst.tcp_ack == 101
    ack = P.build("10.0.0.1", "10.0.0.2", "tcp", sport=1000, dport=80, flags="A", seq=100, ack=555)
    r2 = P.parse(P.tcp_reset(ack))
    assert r2.tcp_flags == P.TCP_RST and r2.tcp_seq == 555
    assert P.tcp_reset(ack) == scapy_recomputed(P.tcp_reset(ack))
    with pytest.raises(P.PacketError, match="RST"):
        P.tcp_reset(P.build("10.0.0.1", "10.0.0.2", "tcp", sport=1, dport=2, flags="R"))


def test_pcap_round_trip_and_scapy_interop(tmp_path):
    pkts = [P.build("10.0.0.1", "10.0.0.2", "udp", sport=i, dport=53) for i in range(1, 6)]
    pkts.append(P.build("fd00::1", "fd00::2", "tcp", sport=1, dport=2))
    path = str(tmp_path / "ours.pcap")
    assert P.write_pcap(path, [(1.5 + i, p) for i, p in enumerate(pkts)]) == 6
    back = P.read_pcap(path)
    assert [p for _, p in back] == pkts and back[0][0] == pytest.approx(1.5)
    assert [bytes(p) for p in rdpcap(path)] == pkts  # scapy reads our LINKTYPE_RAW file
    eth = str(tmp_path / "eth.pcap")
    wrpcap(eth, [Ether() / IP(p) for p in pkts[:5]])
    assert [p for _, p in P.read_pcap(eth)] == pkts[:5]  # we read scapy's Ethernet capture
    buf = io.BytesIO()
    P.write_pcap(buf, pkts)
    buf.seek(0)
    assert len(P.read_pcap(buf)) == 6


@pytest.mark.parametrize("bad,msg", [(b"", "empty"), (b"\x45" + b"\0" * 10, "20 bytes"),
                                     (b"\x75" + b"\0" * 30, "not an IP"),
                                     (bytes(IP(dst="1.2.3.4") / UDP())[:24], "exceeds")])
def test_malformed_packets_get_specific_errors(bad, msg):
    with pytest.raises(P.PacketError, match=msg):
        P.parse(bad)


def test_bad_pcap_is_a_clear_error(tmp_path):
    f = tmp_path / "x.pcap"
    f.write_bytes(b"not a pcap at all, sorry.....")
    with pytest.raises(P.PacketError, match="magic"):
        P.read_pcap(str(f))


def test_batch_round_trip():
    metas = [P.meta_of(P.build("10.0.0.1", "10.96.0.10", "tcp", sport=5, dport=80)),
             P.meta_of(P.build("fd00::1", "fd00:ffff::a", "udp", sport=6, dport=53)),
             P.meta_of(P.build("10.0.0.1", "10.0.0.2", "icmp", icmp_id=3))]
    batch = P.metas_to_batch(metas)
    assert batch.dtype == P.header_dtype() and len(batch) == 3
    assert batch["dst_lo"][0] == int(IPv4Address("10.96.0.10")) and batch["dst_hi"][0] == 0
    assert batch["icmp_type"][0] == P.NO_ICMP and batch["icmp_type"][2] == 8
    assert P.batch_to_metas(batch) == metas


@pytest.mark.parametrize("src,dst", [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")])
@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp"])
@pytest.mark.parametrize("payload", [b"", b"abc"])
@pytest.mark.parametrize("flags", ["S", "SA", "FPA", "R"])
def test_fast_build_is_byte_identical_to_scapy(src, dst, proto, payload, flags):
    kw = dict(sport=5, dport=6, flags=flags, seq=7, ack=8, payload=payload, icmp_id=3, icmp_seq=4)
    assert P.build(src, dst, proto, **kw) == P.build_scapy(src, dst, proto, **kw)


def test_build_rejects_bad_input():
    with pytest.raises(P.PacketError, match="different IP versions"):
        P.build("10.0.0.1", "fd00::1", "udp")
    with pytest.raises(P.PacketError, match="unknown protocol"):
        P.build("10.0.0.1", "10.0.0.2", "quic")
    with pytest.raises(P.PacketError, match="outside 0-65535"):
        P.build("10.0.0.1", "10.0.0.2", "udp", sport=70000)
    with pytest.raises(P.PacketError, match="bad TCP flags"):
        P.build("10.0.0.1", "10.0.0.2", "tcp", flags="SX")
    with pytest.raises(P.PacketError, match="IPv6 address"):
        P.rewrite(P.build("10.0.0.1", "10.0.0.2", "udp"), dst="fd00::1")
