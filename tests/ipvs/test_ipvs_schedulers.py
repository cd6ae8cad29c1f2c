"""Each scheduler against sequences worked out by hand from the kernel's C code.

The expected values below were derived on paper from the cited functions, not by running the
implementation; each test's docstring shows the derivation.
"""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from dataplane.proxy.ipvs.hashing import hash_32, hsiphash, hsiphash_u32
from dataplane.proxy.ipvs.sched import make_scheduler
from dataplane.proxy.ipvs.sched.base import SVC_F_SCHED1, SVC_F_SCHED2, Flow
from dataplane.proxy.ipvs.sched.maglev import HASH1, HASH2, Maglev
from dataplane.proxy.ipvs.service import ServiceTable, VirtualService


def svc_with(sched: str, *weights: int, flags: int = 0) -> VirtualService:
    """A service whose destination list, in kernel order, is 10.244.0.1, .2, ... with `weights`."""
    svc = VirtualService(6, ip_address("10.96.0.10"), 80, sched, flags)
    for i, w in enumerate(weights, 1):
        svc.add_dest(f"10.244.0.{i}", 8080, w)
    svc.destinations.reverse()  # add_dest inserts at the head; put them back in 1, 2, 3 order
    svc.scheduler.init_service(svc)
    return svc


def picks(svc: VirtualService, n: int, src: str = "10.0.0.1", sport: int = 40000) -> str:
    """Letters A, B, C ... for the destinations chosen by `n` schedules (- for none)."""
    out = []
    for _ in range(n):
        d = svc.scheduler.schedule(svc, Flow(ip_address(src), svc.addr, sport, svc.port, svc.proto))
        out.append("-" if d is None else "ABCDEFGH"[int(str(d.addr).rsplit(".", 1)[1]) - 1])
    return "".join(out)


# ---- rr: ip_vs_rr.c ip_vs_rr_schedule / ip_vs_rr_del_dest ---------------------------------
def test_rr_rotates_in_list_order_skipping_weight_zero_and_overloaded() -> None:
    """Pointer starts at the head: A, B, C, A ...; weight 0 (quiesced) and OVERLOAD are skipped."""
    svc = svc_with("rr", 1, 1, 1)
    assert picks(svc, 7) == "ABCABCA"
    svc.destinations[1].weight = 0
    assert picks(svc, 4) == "CACA"  # pointer was at A: next usable after A is C
    svc.destinations[2].overloaded = True
    assert picks(svc, 3) == "AAA"  # the last chosen dest itself is checked last
    svc.destinations[0].overloaded = True
    assert picks(svc, 1) == "-"
    assert svc.scheduler.last_error == "no destination available"


def test_rr_list_head_insertion_and_delete_moves_pointer_to_predecessor() -> None:
    """__ip_vs_update_dest uses list_add_rcu (head insert): adding 1, 2, 3 gives the list 3, 2, 1,
    so rr starts with the newest. Deleting the pointed-to dest sets the pointer to its predecessor
    (ip_vs_rr_del_dest: p->next->prev), so the rotation goes on with the following one."""
    svc = VirtualService(6, ip_address("10.96.0.10"), 80, "rr")
    for i in (1, 2, 3):
        svc.add_dest(f"10.244.0.{i}", 8080)
    assert [str(d.addr) for d in svc.destinations] == ["10.244.0.3", "10.244.0.2", "10.244.0.1"]
    assert picks(svc, 2) == "CB"  # pointer now at B (10.244.0.2), list C, B, A
    svc.del_dest("10.244.0.2", 8080)  # pointer -> C (the predecessor)
    assert picks(svc, 3) == "ACA"


# ---- wrr: ip_vs_wrr.c ip_vs_wrr_schedule -------------------------------------------------
def test_wrr_weights_4_3_2_kernel_order() -> None:
    """List A4, B3, C2: di = gcd = 1, mw = 4 - (1 - 1) = 4, cw = 4, cl = head.
    cw=4: A.  wrap -> cw=3: A, B.  wrap -> cw=2: A, B, C.  wrap -> cw=1: A, B, C.
    wrap -> cw=0 <= 0 -> cw = mw = 4 (restarted): A ...  Period 9: A A B A B C A B C."""
    svc = svc_with("wrr", 4, 3, 2)
    assert picks(svc, 18) == "AABABCABC" * 2


def test_wrr_add_order_reverses_the_list() -> None:
    """Adding A4, B3, C2 with ipvsadm -a gives the list C2, B3, A4 (head insertion), and each add
    runs ip_vs_wrr_dest_changed(): the empty service had cw = mw = 0; adding A4 gives di 4, mw 1 and
    `!cw` -> cw = 1; adding B3 and C2 makes di 1, mw 4, and cw (1) is kept.  So the first pass is
    at cw=1: C, B, A.  wrap -> cw=0 -> 4: A.  cw=3: B, A.  cw=2: C, B, A.  -> C B A A B A C B A."""
    svc = VirtualService(6, ip_address("10.96.0.10"), 80, "wrr")
    for i, w in ((1, 4), (2, 3), (3, 2)):
        svc.add_dest(f"10.244.0.{i}", 8080, w)
    assert picks(svc, 9) == "CBAABACBA"


def test_wrr_gcd_step_down() -> None:
    """A4, B2: di = 2, mw = 4 - (2 - 1) = 3, cw = 3.  cw=3: A.  wrap: cw=1 (last pass): A, B.
    wrap: cw=-1 -> 3: A.  -> A A B A A B (4:2)."""
    svc = svc_with("wrr", 4, 2)
    assert picks(svc, 6) == "AABAAB"
    assert svc.scheduler.state()["di"] == 2 and svc.scheduler.state()["mw"] == 3


def test_wrr_weight_zero_and_all_overloaded() -> None:
    """A1, B0: B never reaches cw >= 1. All overloaded: the bounded passes end in 'no destination'."""
    svc = svc_with("wrr", 1, 0)
    assert picks(svc, 3) == "AAA"
    svc.destinations[0].overloaded = True
    assert picks(svc, 1) == "-"
    assert "overloaded" in (svc.scheduler.last_error or "")
    all_zero = svc_with("wrr", 0, 0)
    assert picks(all_zero, 1) == "-"  # mw = 0: no destination available


# ---- lc / wlc: ip_vs_lc.c, ip_vs_wlc.c ----------------------------------------------------
def test_lc_overhead_is_active_times_256_plus_inactive_first_wins_ties() -> None:
    """A (1 active, 0 inactive) = 256, B (0, 300) = 300, C (0, 256) = 256: A and C tie at 256,
    strict '<' keeps the first: A.  A quiesced (weight 0): C."""
    svc = svc_with("lc", 1, 1, 1)
    a, b, c = svc.destinations
    a.activeconns, b.inactconns, c.inactconns = 1, 300, 256
    assert picks(svc, 1) == "A"
    a.weight = 0
    assert picks(svc, 1) == "C"


def test_wlc_cross_multiplication() -> None:
    """A w1 (1, 0) = 256, B w2 (1, 10) = 266, C w1 (0, 200) = 200.
    least = A, loh 256.  B: 256*2 = 512 > 266*1 -> least = B, loh 266.  C: 266*1 = 266 > 200*2 = 400?
    no -> B (266/2 = 133 is the least load)."""
    svc = svc_with("wlc", 1, 2, 1)
    a, b, c = svc.destinations
    a.activeconns, b.activeconns, b.inactconns, c.inactconns = 1, 1, 10, 200
    assert picks(svc, 1) == "B"


def test_wlc_tie_keeps_the_earlier_and_weight_zero_never_wins() -> None:
    """A w1 overhead 256, B w2 overhead 512: 256*2 > 512*1 is false -> A.
    B w0 with no connections: the first usable seeds least; 256*0 > 0*w is false -> A."""
    svc = svc_with("wlc", 1, 2)
    a, b = svc.destinations
    a.activeconns, b.activeconns = 1, 2
    assert picks(svc, 1) == "A"
    b.activeconns, b.weight = 0, 0
    assert picks(svc, 1) == "A"


# ---- sed / nq: ip_vs_sed.c, ip_vs_nq.c -----------------------------------------------------
def test_sed_counts_the_incoming_job() -> None:
    """overhead = activeconns + 1, inactive ignored. A w1 active 0 -> 1; B w3 active 2 -> 3:
    1*3 > 3*1 false -> A (tie).  B w4: 1*4 > 3*1 -> B."""
    svc = svc_with("sed", 1, 3)
    a, b = svc.destinations
    b.activeconns, a.inactconns = 2, 1000
    assert picks(svc, 1) == "A"
    b.weight = 4
    assert picks(svc, 1) == "B"


def test_nq_takes_an_idle_server_first_then_sed() -> None:
    """A w1 a1, B w5 a3, C w1 a0: C is idle -> C immediately.  C busy (a1): A doh 2, B doh 4:
    2*5 = 10 > 4*1 -> B; C doh 2: 4*1 > 2*5? no -> B."""
    svc = svc_with("nq", 1, 5, 1)
    a, b, c = svc.destinations
    a.activeconns, b.activeconns = 1, 3
    assert picks(svc, 1) == "C"
    c.activeconns = 1
    assert picks(svc, 1) == "B"


# ---- sh / dh: ip_vs_sh.c, ip_vs_dh.c, include/linux/hash.h ---------------------------------
def test_hash_32_by_hand() -> None:
    """hash_32(v, 8) = (u32)(v * 0x61C88647) >> 24.
    10.0.0.1 = 0x0A000001: 0x61C88647 * 0x0A000000 mod 2^32 = 0xC6000000 (only the low byte of
    0x61C88647 * 0x0A = 0x3D1D53EC6 survives the << 24); + 0x61C88647 = 0x127C88647 -> 0x27C88647 -> 0x27 = 39.
    10.0.0.2: 0xC6000000 + 0xC3910C8E = 0x189910C8E -> 0x89 = 137.
    10.0.0.5: 0xC6000000 + 0x1E8E9A163 = 0x2AEE9A163 -> 0xAE = 174."""
    assert hash_32(0x0A000001, 8) == 39
    assert hash_32(0x0A000002, 8) == 137
    assert hash_32(0x0A000005, 8) == 174


def test_sh_buckets_follow_weights_and_source_address() -> None:
    """Buckets filled round robin, each dest `weight` times: [A,B,C] w1 -> bucket i holds i % 3;
    [A w2, B w1] -> A A B repeating.  10.0.0.1 -> bucket 39 (39 % 3 = 0), 10.0.0.2 -> 137 (% 3 = 2)."""
    svc = svc_with("sh", 1, 1, 1)
    assert picks(svc, 3, src="10.0.0.1") == "AAA"
    assert picks(svc, 1, src="10.0.0.2") == "C"
    weighted = svc_with("sh", 2, 1)
    assert picks(weighted, 1, src="10.0.0.1") == "A"
    assert picks(weighted, 1, src="10.0.0.2") == "B"


def test_sh_port_flag_adds_the_source_port() -> None:
    """With sh-port the key is ntohs(sport) + ntohl(saddr): 10.0.0.1 port 1 == 10.0.0.2 port 0 -> 137 -> C."""
    svc = svc_with("sh", 1, 1, 1, flags=SVC_F_SCHED2)
    assert picks(svc, 1, src="10.0.0.1", sport=1) == "C"
    assert picks(svc, 1, src="10.0.0.1", sport=0) == "A"


def test_sh_weight_zero_keeps_one_bucket_and_fallback_probes() -> None:
    """[A w0, B w1]: `++d_count >= weight` moves on after one bucket, so A, B alternate.
    10.0.0.5 -> bucket 174 (even) = A, unavailable -> no dest.  With sh-fallback: offset 0:
    roffset 174, rehash (174 + 174) & 255 = 92 (A again); offset 1: (175 + 174) & 255 = 93 -> B."""
    svc = svc_with("sh", 0, 1)
    assert svc.scheduler.buckets[:4] == [svc.destinations[0], svc.destinations[1]] * 2
    assert picks(svc, 1, src="10.0.0.5") == "-"
    fb = svc_with("sh", 0, 1, flags=SVC_F_SCHED1)
    assert picks(fb, 1, src="10.0.0.5") == "B"


def test_dh_hashes_the_destination_address_and_ignores_weights() -> None:
    """dh buckets: dest i % n for bucket i, weights ignored. Keyed on daddr: the VIP 10.0.0.1 ->
    bucket 39 -> A (39 % 3 = 0); VIP 10.0.0.2 -> 137 -> C; C quiesced -> none."""
    for vip, expect in (("10.0.0.1", "A"), ("10.0.0.2", "C")):
        svc = VirtualService(6, ip_address(vip), 80, "dh")
        for i in (3, 2, 1):
            svc.add_dest(f"10.244.0.{i}", 8080, 5 if i == 1 else 1)
        assert picks(svc, 1, src="192.0.2.77") == expect
    svc.destinations[2].weight = 0
    assert picks(svc, 1) == "-"


# ---- mh: ip_vs_mh.c, lib/siphash.c ---------------------------------------------------------
KUNIT_HSIPHASH_64 = [0x050FC4DC, 0x7D57CA93, 0x4DC7D44D, 0xE7DDF7FB, 0x88D38328, 0x49533B67, 0xC59F22A7,
                     0x9BB11140, 0x8D299A8E, 0x6C063DE4, 0x92FF097F, 0xF94DC352, 0x57B4D9A2, 0x1229FFA7,
                     0xC0F95D34, 0x2A519956, 0x7D908B66]


def test_hsiphash_matches_the_kernels_kunit_vectors() -> None:
    """lib/tests/siphash_kunit.c, BITS_PER_LONG == 64: hsiphash(bytes 0..n-1, key 00..0f)."""
    key = (0x0706050403020100, 0x0F0E0D0C0B0A0908)
    assert [hsiphash(bytes(range(n)), key) for n in range(len(KUNIT_HSIPHASH_64))] == KUNIT_HSIPHASH_64
    assert hsiphash_u32(0x03020100, key) == KUNIT_HSIPHASH_64[4]  # hsiphash_1u32 vector


def _mh(*weights: int, tab_index: int = 8, flags: int = 0) -> VirtualService:
    svc = VirtualService(6, ip_address("10.96.0.10"), 80, "rr", flags)
    for i, w in enumerate(weights, 1):
        svc.add_dest(f"10.244.0.{i}", 8080, w)
    svc.destinations.reverse()
    svc.scheduler = Maglev(tab_index)
    svc.scheduler_name = "mh"
    svc.scheduler.init_service(svc)
    return svc


def _count(svc: VirtualService) -> list[int]:
    table = svc.scheduler.lookup_table  # type: ignore[attr-defined]
    return [sum(1 for d in table if d is dest) for dest in svc.destinations]


def test_mh_default_table_is_4093_and_index_8_is_251() -> None:
    """primes[CONFIG_IP_VS_MH_TAB_INDEX - 8], default index 12 -> 4093."""
    assert make_scheduler("mh").size == 4093  # type: ignore[attr-defined]
    assert Maglev(8).size == 251 and Maglev(17).size == 131071


def test_mh_population_turns_and_first_slot() -> None:
    """Equal weights: one slot per turn, round robin: 251 = 3*83 + 2 -> A 84, B 84, C 83.
    The first dest claims its own offset (an empty table): offset = hsiphash(port + addr, hash1) % 251."""
    svc = _mh(1, 1, 1)
    assert _count(svc) == [84, 84, 83]
    a = svc.destinations[0]
    offset_a = hsiphash_u32(8080 + int(a.addr), HASH1) % 251
    assert svc.scheduler.lookup_table[offset_a] is a  # type: ignore[attr-defined]


def test_mh_weights_gcd_and_rshift() -> None:
    """Weights 2:1 -> turns 2, 1: rounds A A B; 251 = 83*3 + 2 -> A 168, B 83.
    Weights 100:1 with index 8 (IP_VS_MH_TAB_BITS = 4): fls(100) = 7 -> rshift 3; turns 100>>3 = 12
    and (1>>3 = 0) ?: (1 != 0) = 1: rounds of 13, 251 = 19*13 + 4 -> A 19*12 + 4 = 232, B 19."""
    assert _count(_mh(2, 1)) == [168, 83]
    svc = _mh(100, 1)
    assert svc.scheduler.rshift == 3  # type: ignore[attr-defined]
    assert _count(svc) == [232, 19]


def test_mh_lookup_quiesce_and_fallback() -> None:
    """The client's slot is hsiphash(ntohl(saddr), hash1) % M (port 0 without mh-port).
    A weight-0 dest keeps its slots (last_weight), lookups landing there fail; mh-fallback rehashes
    with offsets (i + ihash) % M until a usable dest."""
    svc = _mh(1, 1, 1)
    client = ip_address("10.0.0.1")
    slot = hsiphash_u32(int(client), HASH1) % 251
    owner = svc.scheduler.lookup_table[slot]  # type: ignore[attr-defined]
    assert svc.scheduler.schedule(svc, Flow(client, svc.addr, 40000, 80)) is owner
    svc.edit_dest(owner.addr, owner.port, 0)
    assert owner.last_weight == 1 and _count(svc) == [84, 84, 83]
    assert svc.scheduler.schedule(svc, Flow(client, svc.addr, 40000, 80)) is None
    svc.flags |= SVC_F_SCHED1
    other = svc.scheduler.schedule(svc, Flow(client, svc.addr, 40000, 80))
    assert other is not None and other is not owner
    with_port = hsiphash_u32(int(client) + 40000, HASH1) % 251
    svc.flags = SVC_F_SCHED2
    svc.edit_dest(owner.addr, owner.port, 1)
    assert svc.scheduler.schedule(svc, Flow(client, svc.addr, 40000, 80)) is \
        svc.scheduler.lookup_table[with_port]  # type: ignore[attr-defined]
    assert HASH2 != HASH1


def test_unknown_scheduler_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="twos.*not modelled"):
        make_scheduler("twos")
    with pytest.raises(ValueError, match="unknown IPVS scheduler 'bogus'"):
        ServiceTable().add_service("tcp", "10.96.0.1", 80, "bogus")


# ---- lblc / lblcr: ip_vs_lblc.c, ip_vs_lblcr.c -------------------------------------------------
def _to(svc: VirtualService, daddr: str, now: float) -> str:
    d = svc.scheduler.schedule(svc, Flow(ip_address("10.0.0.1"), ip_address(daddr), 1, 80, 6, now))
    return "-" if d is None else "ABC"[int(str(d.addr).rsplit(".", 1)[1]) - 1]


def test_lblc_keeps_locality_until_overloaded() -> None:
    """[A w1, B w1]. D1: no entry, WLC seeds with A (tie) -> cache D1->A.  A gets 1 active (256):
    D2 -> WLC 256*1 > 0*1 -> B, cached.  D1 again -> cached A (A.active 1 is not > weight 1).
    A.active 2 > 1 and B.active*2 = 0 < 1 -> is_overloaded -> WLC -> B, entry replaced.
    Both busy (A 2, B 1: nobody under half) -> not overloaded, D1 stays on B."""
    svc = svc_with("lblc", 1, 1)
    a, b = svc.destinations
    assert _to(svc, "192.0.2.1", 0) == "A"
    a.activeconns = 1
    assert _to(svc, "192.0.2.2", 1) == "B"
    assert _to(svc, "192.0.2.1", 2) == "A"
    a.activeconns = 2
    assert _to(svc, "192.0.2.1", 3) == "B"
    b.activeconns = 1
    a.activeconns = 0
    assert _to(svc, "192.0.2.1", 4) == "B"  # cached B: active 1 is not > weight 1


def test_lblc_full_expiration_runs_on_every_30th_timer_tick() -> None:
    """Timer every 60 s from the first packet (t=0): ticks at 60 .. 1740 count 1 -> 30, the tick at
    1800 does the full check and drops entries with lastuse + lblc_expiration <= 1800."""
    svc = svc_with("lblc", 1, 1)
    svc.scheduler.expiration = 100  # type: ignore[attr-defined]  # sysctl lblc_expiration
    _to(svc, "192.0.2.1", 0)
    _to(svc, "192.0.2.3", 1799)
    sched = svc.scheduler
    assert sched.get(ip_address("192.0.2.1")) is not None and sched.counter == 30  # type: ignore[attr-defined]
    _to(svc, "192.0.2.3", 1800)
    assert sched.get(ip_address("192.0.2.1")) is None and sched.get(ip_address("192.0.2.3")) is not None  # type: ignore[attr-defined]


def test_lblcr_grows_the_set_when_overloaded_and_sheds_the_busiest_after_expiration() -> None:
    """D1 -> WLC A, set [A].  A overloaded (2 active, B idle) -> WLC B, set [B, A] (head insert),
    lastmod = t.  Idle again: set_min over [B, A] keeps the first of equals: B.  After
    lblcr_expiration without change, with A at 3 active: set_max picks A (0*1 < 768*1) and erases it."""
    svc = svc_with("lblcr", 1, 1)
    a, b = svc.destinations
    assert _to(svc, "192.0.2.1", 0) == "A"
    a.activeconns = 2
    assert _to(svc, "192.0.2.1", 10) == "B"
    entry = svc.scheduler.get(ip_address("192.0.2.1"))  # type: ignore[attr-defined]
    assert entry.dests == [b, a] and entry.lastmod == 10
    a.activeconns = 0
    assert _to(svc, "192.0.2.1", 20) == "B"
    svc.scheduler.expiration = 100  # type: ignore[attr-defined]
    a.activeconns = 3
    assert _to(svc, "192.0.2.1", 111) == "B" and entry.dests == [b]


def test_ipv6_address_fold() -> None:
    """addr_fold = ip6[0] ^ ip6[1] ^ ip6[2] ^ ip6[3]: fd00::1 -> 0xfd000000 ^ 0 ^ 0 ^ 1 = 0xfd000001;
    fd00:0:0:1::1 -> 0xfd000000 ^ 0x00000001 ^ 0 ^ 1 = 0xfd000000.  sh on fd00::1 then uses
    hash_32(0xfd000001, 8): 0x61C88647 * 0xfd000000 mod 2^32 keeps the low byte of 0x47 * 0xfd
    = 0x462B -> 0x2B000000; + 0x61C88647 = 0x8CC88647 -> bucket 0x8C = 140 -> dest 140 % 3 = 2."""
    from dataplane.proxy.ipvs.hashing import addr_fold

    assert addr_fold(ip_address("fd00::1")) == 0xFD000001
    assert addr_fold(ip_address("fd00:0:0:1::1")) == 0xFD000000
    assert hash_32(0xFD000001, 8) == 140
    svc = VirtualService(6, ip_address("fd00:96::a"), 80, "sh")
    for i in (3, 2, 1):
        svc.add_dest(f"fd00:244::{i}", 8080)
    d = svc.scheduler.schedule(svc, Flow(ip_address("fd00::1"), svc.addr, 1, 80))
    assert d is svc.destinations[2]


@pytest.mark.parametrize("seed", range(5))
def test_wrr_cycle_gives_each_dest_weight_over_gcd_picks(seed: int) -> None:
    """Static weights: a wrr cycle makes max/di passes with cw = mw, mw - di, ... > 0 and a dest
    of weight w (a multiple of di) qualifies in exactly w/di of them, so every sum(w)/di picks
    contain w/di of each dest - whatever the weights and the list order."""
    import random
    from math import gcd

    rng = random.Random(seed)
    weights = [rng.randint(1, 6) * rng.choice([1, 2, 3]) for _ in range(rng.randint(2, 5))]
    svc = svc_with("wrr", *weights)
    g = 0
    for w in weights:
        g = gcd(g, w)
    cycle = sum(weights) // g
    for _ in range(3):
        seq = picks(svc, cycle)
        assert [seq.count("ABCDEFGH"[i]) for i in range(len(weights))] == [w // g for w in weights]
