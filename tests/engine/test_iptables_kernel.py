"""The reference evaluator against the kernel for stateful matches: nth counters and ipsets.

Rules go into a scratch namespace's filter OUTPUT chain; UDP packets to loopback addresses, each
with its own destination port, pass through it. Per-port counting rules in HIT chains record which
packets a rule matched; `iptables-save -c` gives the counters, which our parser reads. The
evaluator runs the same rules (parsed from the kernel's own dump) on the same packet sequence.
"""

from __future__ import annotations

import socket

import pytest

from dataplane.engine.iptables_eval import HostAddresses, IptablesEvaluator, MatchContext
from dataplane.engine.ipset import IpsetStore
from dataplane.engine.types import Hook, PacketMeta
from dataplane.netns import namespace
from dataplane.proxy.iptables.parser import parse

BACKENDS = [pytest.param("legacy", marks=pytest.mark.requires("root", "netns", "iptables-legacy", "ipset"), id="legacy"),
            pytest.param("nft", marks=pytest.mark.requires("root", "netns", "iptables-nft", "ipset"), id="nft")]
HOST = HostAddresses.of({"lo": ["127.0.0.1/8"]})


def send_udp(netns, packets: list[tuple[str, int]]) -> None:  # type: ignore[no-untyped-def]
    with namespace.entered(netns.name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", 40000))
            for dst, port in packets:
                s.sendto(b"x", (dst, port))
        finally:
            s.close()


def kernel_hits(netns, backend: str, rules: str, packets: list[tuple[str, int]],  # type: ignore[no-untyped-def]
                hit_chains: list[str]) -> dict[str, set[int]]:
    res = netns.run([f"iptables-{backend}-restore"], input=rules, check=False)
    assert res.returncode == 0, res.stderr
    send_udp(netns, packets)
    saved = netns.run([f"iptables-{backend}-save", "-c", "-t", "filter"]).stdout
    table = parse(saved).tables["filter"]
    out = {}
    for name in hit_chains:
        out[name] = {r.matches[0].dport.lo for r in table.chains[name].rules if r.counters and r.counters[0]}
    netns.run([f"iptables-{backend}", "-F"])
    netns.run([f"iptables-{backend}", "-X"])
    return out


def engine_hits(rules: str, packets: list[tuple[str, int]], hit_chains: list[str],
                ipsets: IpsetStore | None = None) -> dict[str, set[int]]:
    ev = IptablesEvaluator(parse(rules), ipsets=ipsets)
    out: dict[str, set[int]] = {name: set() for name in hit_chains}
    for dst, port in packets:
        p = PacketMeta.make("127.0.0.1", dst, "udp", 40000, port, oif="lo")
        d = ev.evaluate("filter", Hook.OUTPUT, p, MatchContext(HOST))
        for step in d.trace:
            if step.chain in out and step.matched:
                out[step.chain].add(port)
    return out


def hit_chain(name: str, ports: range) -> str:
    return "".join(f"-A {name} -p udp -m udp --dport {p} -j RETURN\n" for p in ports)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nth_counters_agree_with_the_kernel(netns, backend: str) -> None:  # type: ignore[no-untyped-def]
    ports = range(5000, 5030)
    rules = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:H1 - [0:0]\n:H2 - [0:0]\n"
             "-A OUTPUT -p udp -m udp --dport 5000:5099 -m statistic --mode nth --every 3 --packet 1 -j H1\n"
             "-A OUTPUT -p udp -m udp --dport 5000:5099 -m statistic --mode nth ! --every 4 --packet 2 -j ACCEPT\n"
             "-A OUTPUT -p udp -m udp --dport 5000:5099 -j H2\n"
             + hit_chain("H1", ports) + hit_chain("H2", ports) + "COMMIT\n")
    packets = [("127.0.0.1", p) for p in ports]
    kernel = kernel_hits(netns, backend, rules, packets, ["H1", "H2"])
    assert 0 < len(kernel["H1"]) < len(ports) and 0 < len(kernel["H2"]) < len(ports)
    assert engine_hits(rules, packets, ["H1", "H2"]) == kernel, kernel


SETS = """create S4 hash:ip family inet hashsize 1024 maxelem 65536
add S4 127.0.0.2
create N4 hash:net family inet hashsize 1024 maxelem 65536
add N4 127.0.0.0/8
add N4 127.1.0.0/16 nomatch
add N4 127.1.2.0/24
create P4 hash:ip,port family inet hashsize 1024 maxelem 65536
add P4 127.0.0.3,udp:6003
add P4 127.0.0.3,tcp:6004
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_matches_agree_with_the_kernel(netns, backend: str) -> None:  # type: ignore[no-untyped-def]
    netns.run(["ipset", "restore"], input=SETS)
    store = IpsetStore.from_save(netns.run(["ipset", "save"]).stdout)
    packets = [("127.0.0.2", 6000), ("127.0.0.5", 6001), ("127.1.9.9", 6002), ("127.0.0.3", 6003),
               ("127.0.0.3", 6004), ("127.1.2.3", 6005), ("127.2.0.1", 6006), ("127.0.0.2", 6007)]
    ports = range(6000, 6008)
    rules = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
             ":HS - [0:0]\n:HN - [0:0]\n:HP - [0:0]\n:HX - [0:0]\n"
             "-A OUTPUT -m set --match-set S4 dst -j HS\n"
             "-A OUTPUT -m set --match-set N4 dst -j HN\n"
             "-A OUTPUT -m set --match-set P4 dst,dst -j HP\n"
             "-A OUTPUT -m set ! --match-set N4 dst -j HX\n"
             + hit_chain("HS", ports) + hit_chain("HN", ports) + hit_chain("HP", ports) + hit_chain("HX", ports)
             + "COMMIT\n")
    chains = ["HS", "HN", "HP", "HX"]
    kernel = kernel_hits(netns, backend, rules, packets, chains)
    assert kernel["HN"] and kernel["HX"] and kernel["HP"] == {6003}
    assert engine_hits(rules, packets, chains, store) == kernel, kernel
    netns.run(["ipset", "destroy"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_recent_lists_agree_with_the_kernel(netns, backend: str) -> None:  # type: ignore[no-untyped-def]
    """--rcheck/--hitcount/--set/--remove/--rdest and the 100-address LRU, without time."""
    ports = range(7000, 7200)
    rules = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:H1 - [0:0]\n:H2 - [0:0]\n"
             "-A OUTPUT -p udp -m udp --dport 7000:7999 -m recent --rcheck --hitcount 2 --name R --rdest -j H1\n"
             "-A OUTPUT -d 127.0.9.0/24 -p udp -m udp --dport 7000:7999 -m recent --remove --name R --rdest -j H2\n"
             "-A OUTPUT -p udp -m udp --dport 7000:7999 -m recent --set --name R --rdest\n"
             + hit_chain("H1", ports) + hit_chain("H2", ports) + "COMMIT\n")
    dsts = (["127.0.0.2"] * 3 + ["127.0.9.1", "127.0.9.1", "127.0.0.2"]
            + [f"127.0.1.{i}" for i in range(1, 121)] + ["127.0.1.1", "127.0.1.1", "127.0.1.120", "127.0.1.120",
                                                        "127.0.0.2", "127.0.0.2", "127.0.0.2"])
    packets = list(zip(dsts, ports))
    kernel = kernel_hits(netns, backend, rules, packets, ["H1", "H2"])
    assert kernel["H1"] and kernel["H2"]
    assert engine_hits(rules, packets, ["H1", "H2"]) == kernel, kernel
