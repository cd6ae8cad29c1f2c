"""The nftables rules of the reference CNI plugins (portmap, bridge ipMasq) traced by the evaluator."""

from __future__ import annotations

from ipaddress import ip_address

from conftest import DATA
from dataplane.engine.nft_eval import NftEvaluator
from dataplane.engine.types import Hook, NatKind, PacketMeta
from dataplane.proxy.nftables.parser import parse_text

RULES = parse_text((DATA / "cni_plugins.nft").read_text())


def evaluate(src: str, dst: str, proto: str, dport: int, hook: Hook):
    ev = NftEvaluator(RULES, local_addresses=["192.168.0.2", "2001:db8:a::1"])
    return ev.evaluate(PacketMeta.make(src, dst, proto, 40000, dport), hook)


def test_portmap_hostports():
    d = evaluate("192.168.0.50", "192.168.0.2", "tcp", 8080, Hook.PREROUTING)
    assert d.nat.kind == NatKind.DNAT and d.nat.addr == ip_address("10.0.0.2") and d.nat.port == 80
    udp = evaluate("192.168.0.50", "192.168.0.2", "udp", 8080, Hook.PREROUTING)
    assert udp.nat.port == 81  # same host port, other protocol, other mapping
    # from the host itself only to local addresses (output: fib daddr type local); prerouting has no such check
    assert evaluate("192.168.0.2", "192.168.0.2", "tcp", 8080, Hook.OUTPUT).nat.port == 80
    assert evaluate("192.168.0.2", "192.168.0.9", "tcp", 8080, Hook.OUTPUT).nat is None
    v6 = evaluate("2001:db8:ffff::5", "2001:db8:a::1", "tcp", 8085, Hook.PREROUTING)
    assert v6.nat.addr == ip_address("2001:db8::2") and v6.nat.port == 85


def test_portmap_host_ip_mapping_and_hairpin_masquerade():
    d = evaluate("192.168.0.50", "192.168.0.2", "tcp", 8083, Hook.PREROUTING)
    assert d.nat.addr == ip_address("10.0.0.2") and d.nat.port == 83
    hairpin = evaluate("10.0.0.2", "10.0.0.2", "tcp", 80, Hook.POSTROUTING)
    assert hairpin.nat.kind == NatKind.MASQUERADE
    assert [s.table for s in hairpin.trace][0] == "ip cni_hostport"


def test_bridge_ipmasq_masquerades_off_subnet_traffic_but_not_multicast():
    out = evaluate("10.88.0.5", "8.8.8.8", "udp", 53, Hook.POSTROUTING)
    assert out.nat.kind == NatKind.MASQUERADE
    assert evaluate("10.88.0.5", "10.88.0.7", "udp", 53, Hook.POSTROUTING).nat is None
    assert evaluate("10.88.0.5", "239.1.1.1", "udp", 53, Hook.POSTROUTING).nat is None
    v6 = evaluate("fd00:88::5", "2001:4860::8888", "tcp", 443, Hook.POSTROUTING)
    assert v6.nat.kind == NatKind.MASQUERADE
