"""Stateful matches: xt_recent lists (session affinity) and ipsets."""

from __future__ import annotations

import random

import pytest

from dataplane.engine.iptables_eval import HostAddresses, IptablesEvaluator, MatchContext
from dataplane.engine.ipset import IpsetError, IpsetStore
from dataplane.engine.recent import RecentTables
from dataplane.engine.types import Hook, PacketMeta, Verdict
from dataplane.proxy.iptables.parser import parse


class Clock:
    def __init__(self) -> None:
        self.now = 0.0


def evaluator(*rules: str, ipsets: IpsetStore | None = None, recent: RecentTables | None = None) -> IptablesEvaluator:
    text = "*filter\n:INPUT ACCEPT [0:0]\n:X - [0:0]\n" + "".join(r + "\n" for r in rules) + "COMMIT\n"
    return IptablesEvaluator(parse(text), ipsets=ipsets, recent=recent)


def run(ev: IptablesEvaluator, src: str, now: float, dst: str = "10.96.0.10", **kw: object) -> Verdict:
    ctx = MatchContext(HostAddresses(), now=now, rng=random.Random(0))
    return ev.evaluate("filter", Hook.INPUT, PacketMeta.make(src, dst, "udp", 1000, 53, **kw), ctx).verdict


# ---------------------------------------------------------------- recent

def test_rcheck_sees_set_within_seconds() -> None:
    ev = evaluator("-A INPUT -m recent --rcheck --seconds 10 --name L -j DROP", "-A INPUT -m recent --set --name L")
    assert run(ev, "10.0.0.1", 0) is Verdict.ACCEPT  # first: not seen yet, then --set
    assert run(ev, "10.0.0.1", 5) is Verdict.DROP
    assert run(ev, "10.0.0.2", 5) is Verdict.ACCEPT
    assert run(ev, "10.0.0.1", 16) is Verdict.ACCEPT  # the --set at 5 s is older than 10 s... no: 16-10=6 > 5
    assert run(ev, "10.0.0.1", 16.5) is Verdict.DROP  # ...but the --set at 16 s is fresh


def test_update_refreshes_only_on_a_hit_and_hitcount() -> None:
    ev = evaluator("-A INPUT -m recent --update --seconds 60 --hitcount 3 --name L -j DROP",
                   "-A INPUT -m recent --set --name L")
    # --set adds one stamp per packet while the hitcount is not reached
    assert [run(ev, "10.0.0.1", t) for t in (0, 1, 2, 3)] == [Verdict.ACCEPT, Verdict.ACCEPT, Verdict.ACCEPT,
                                                               Verdict.DROP]
    # at 62.5 only the stamp of 3 s is within 60 s; each miss falls through to --set, adding a stamp
    assert [run(ev, "10.0.0.1", t) for t in (62.5, 62.6, 62.7)] == [Verdict.ACCEPT, Verdict.ACCEPT, Verdict.DROP]

def test_remove_and_rdest_and_mask() -> None:
    ev = evaluator("-A INPUT -m recent --set --name D --rdest --mask 255.255.255.0",
                   "-A INPUT -s 10.9.9.9 -m recent --remove --name D --rdest -j DROP",
                   "-A INPUT -m recent --rcheck --name D --rdest -j X", "-A X -j REJECT")
    t = RecentTables()
    assert run(ev, "10.0.0.1", 0, dst="10.96.0.10") is Verdict.REJECT
    assert ev.recent.addresses("D") == [int(PacketMeta.make("1.1.1.1", "10.96.0.0", "udp").dst)]
    assert run(ev, "10.9.9.9", 1, dst="10.96.0.77") is Verdict.DROP  # same /24: the entry is removed
    assert ev.recent.addresses("D") == [] and t.lists == {}


def test_lru_keeps_100_addresses() -> None:
    ev = evaluator("-A INPUT -m recent --set --name L")
    for i in range(101):
        run(ev, f"10.0.{i // 256}.{i % 256}", i)
    addrs = ev.recent.addresses("L")
    assert len(addrs) == 100 and int(PacketMeta.make("10.0.0.0", "1.1.1.1", "udp").src) not in addrs


def test_reap_drops_the_oldest_stale_entry() -> None:
    ev = evaluator("-A INPUT -s 10.0.0.2 -m recent --rcheck --seconds 10 --reap --name L -j DROP",
                   "-A INPUT -s 10.0.0.0/24 -m recent --set --name L")
    run(ev, "10.0.0.1", 0)
    run(ev, "10.0.0.2", 8)
    assert len(ev.recent.addresses("L")) == 2
    # the kernel reaps only when the checked address is in the list: the LRU head (10.0.0.1, last
    # seen at 0 < 11 - 10) goes, the hit (10.0.0.2) stays
    assert run(ev, "10.0.0.2", 11) is Verdict.DROP
    assert ev.recent.addresses("L") == [int(PacketMeta.make("10.0.0.2", "1.1.1.1", "udp").src)]


def test_rttl_requires_the_same_ttl() -> None:
    ev = evaluator("-A INPUT -m recent --rcheck --rttl --name L -j DROP", "-A INPUT -m recent --set --name L")
    run(ev, "10.0.0.1", 0, ttl=64)
    assert run(ev, "10.0.0.1", 1, ttl=63) is Verdict.ACCEPT  # ...and --set (no --rttl) stores TTL 63
    assert run(ev, "10.0.0.1", 2, ttl=64) is Verdict.ACCEPT
    assert run(ev, "10.0.0.1", 3, ttl=64) is Verdict.DROP


SESSION_AFFINITY = """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SEP-2 - [0:0]
-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-1 --mask 255.255.255.255 --rsource -j KUBE-SEP-1
-A KUBE-SVC-A -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-2 --mask 255.255.255.255 --rsource -j KUBE-SEP-2
-A KUBE-SVC-A -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-1
-A KUBE-SVC-A -j KUBE-SEP-2
-A KUBE-SEP-1 -p tcp -m tcp -m recent --set --name KUBE-SEP-1 --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SEP-2 -p tcp -m tcp -m recent --set --name KUBE-SEP-2 --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.2.7:8080
COMMIT
"""


def test_session_affinity_sticks_within_timeout_and_moves_on_after() -> None:
    ev = IptablesEvaluator(parse(SESSION_AFFINITY))
    rng = random.Random(5)

    def endpoint(t: float) -> str:
        ctx = MatchContext(HostAddresses(), now=t, rng=rng)
        d = ev.evaluate("nat", Hook.PREROUTING, PacketMeta.make("10.244.9.9", "10.96.0.10", "tcp", 1, 80), ctx)
        return str(d.nat.addr)

    first = endpoint(0)
    assert all(endpoint(t) == first for t in range(1, 10800, 997))
    later = {endpoint(30000 + 20000 * i) for i in range(20)}  # each pick expires before the next
    assert later == {"10.244.1.5", "10.244.2.7"}


# ---------------------------------------------------------------- ipset

@pytest.fixture
def sets() -> IpsetStore:
    return IpsetStore.from_save("""create IPS hash:ip family inet hashsize 1024 maxelem 65536
add IPS 10.0.0.1
create NETS hash:net family inet hashsize 1024 maxelem 65536
add NETS 10.0.0.0/8
add NETS 10.1.0.0/16 nomatch
add NETS 10.1.2.0/24
create SVC hash:ip,port family inet hashsize 1024 maxelem 65536
add SVC 10.96.0.10,udp:53
add SVC 10.96.0.10,tcp:53
""")


@pytest.mark.parametrize("rule, src, dst, hit", [
    ("-m set --match-set IPS src", "10.0.0.1", "10.96.0.10", True),
    ("-m set --match-set IPS dst", "10.0.0.1", "10.96.0.10", False),
    ("-m set ! --match-set IPS src", "10.0.0.2", "10.96.0.10", True),
    ("-m set --match-set NETS src", "10.200.0.1", "10.96.0.10", True),
    ("-m set --match-set NETS src", "10.1.9.9", "10.96.0.10", False),  # nomatch /16 is more specific
    ("-m set --match-set NETS src", "10.1.2.3", "10.96.0.10", True),  # ...than /8, less than /24
    ("-m set --match-set NETS src", "11.0.0.1", "10.96.0.10", False),
    ("-m set --match-set SVC dst,dst", "10.0.0.1", "10.96.0.10", True),
    ("-m set --match-set SVC dst,src", "10.0.0.1", "10.96.0.10", False),  # sport 1000
    ("-m set --match-set SVC dst", "10.0.0.1", "10.96.0.10", False),  # too few dimensions
])
def test_set_match(sets: IpsetStore, rule: str, src: str, dst: str, hit: bool) -> None:
    ev = evaluator(f"-A INPUT {rule} -j DROP", ipsets=sets)
    assert run(ev, src, 0, dst=dst) is (Verdict.DROP if hit else Verdict.ACCEPT)


def test_hash_ip_port_compares_the_protocol(sets: IpsetStore) -> None:
    sets.get("SVC").ip_ports.discard((int(PacketMeta.make("10.96.0.10", "1.1.1.1", "udp").src), 17, 53))
    ev = evaluator("-A INPUT -m set --match-set SVC dst,dst -j DROP", ipsets=sets)
    assert run(ev, "10.0.0.1", 0) is Verdict.ACCEPT  # udp:53 removed; tcp:53 does not match udp


def test_set_errors() -> None:
    ev = evaluator("-A INPUT -m set --match-set NOPE src -j DROP")
    with pytest.raises(IpsetError, match="NOPE"):
        run(ev, "10.0.0.1", 0)
    with pytest.raises(IpsetError, match="line 2"):
        IpsetStore.from_save("create A hash:ip\nadd A not-an-ip\n")
    with pytest.raises(IpsetError, match="unsupported create options"):
        IpsetStore.from_save("create A bitmap:port range 0-100\n")
