"""The numba batch evaluator (nft_batch / nft_numba) against the reference NftEvaluator: same seed,
same decisions, numgen choices, rule counts, counters and random stream, on the kube-proxy
sample, real-world rulesets, generated kube-proxy layouts and random rulesets of the supported
subset; packets that reach an uncompiled construct are handed over whole; the numgen mapping is
the kernel's reciprocal_scale; the work per first packet does not grow with the number of services."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA
from dataplane.engine.nft_batch import BatchNftEvaluator
from dataplane.engine.nft_eval import NftEvaluator
from dataplane.engine.rng import SplitMixRandom
from dataplane.engine.types import CtState, Hook, NatKind, PacketMeta, Verdict
from dataplane.k8s.synthetic import synthetic_cluster
from dataplane.proxy.model import NodeContext, build_state
from dataplane.proxy.nftables.generator import NftOptions, generate
from dataplane.proxy.nftables.errors import NftParseError
from dataplane.proxy.nftables.parser import parse_text

NODE_IP = "192.168.0.2"
LOCAL = [NODE_IP, "10.96.1.1"]


def pair(text: str, seed: int = 1, clock=None):
    """(batch, reference, reference stream) built on the same text and seed."""
    kw = {"clock": clock} if clock else {}
    ruleset = parse_text(text)
    batch = BatchNftEvaluator(ruleset, rng=SplitMixRandom(seed), local_addresses=LOCAL, **kw)
    stream = SplitMixRandom(seed)
    ref = NftEvaluator(parse_text(text), rng=lambda: stream.getrandbits(32), local_addresses=LOCAL, trace=False,
                       **kw)
    return batch, ref, stream


def assert_agree(text: str, packets: list[PacketMeta], hooks=tuple(Hook), seed: int = 1) -> BatchNftEvaluator:
    batch, ref, stream = pair(text, seed)
    for hook in hooks:
        got = batch.evaluate_many(packets, hook)
        want = [ref.evaluate(p, hook) for p in packets]
        for p, g, w in zip(packets, got, want):
            assert g == w, f"{hook.value} {p}:\n batch     {g}\n reference {w}"
        assert batch.rng.state == stream.state, "the random streams diverged"
    assert batch.counters == ref.counters
    return batch


def packet_pool(rng: random.Random, n: int, dsts: list[str], srcs: list[str]) -> list[PacketMeta]:
    out = []
    for _ in range(n):
        proto = rng.choice(["tcp", "tcp", "udp", "icmp"])
        kw: dict = {"mark": rng.choice([0, 0, 1, 2, 3, 0x4000]), "length": rng.choice([60, 1000, 1001, 1500]),
                    "ct_state": rng.choice([CtState.NEW, CtState.NEW, CtState.ESTABLISHED, CtState.INVALID,
                                            CtState.UNTRACKED]),
                    "ct_direction": rng.choice(["ORIGINAL", "ORIGINAL", "REPLY"]),
                    "ct_mark": rng.choice([0, 1, 7]), "iif": rng.choice(["eth0", "eth1", "veth7", None]),
                    "oif": rng.choice(["eth0", "eth1", None])}
        if proto == "icmp":
            kw.update(icmp_type=rng.choice([0, 3, 8]), icmp_code=0)
            out.append(PacketMeta.make(rng.choice(srcs), rng.choice(dsts), proto, **kw))
        else:
            kw["tcp_flags"] = rng.choice([0x02, 0x10, 0x12]) if proto == "tcp" else 0
            sport = rng.choice([1024, 29999, 30000, rng.randint(1024, 65535)])  # boundaries of the rules' ranges
            dport = rng.choice([53, 80, 443, 8080, 3001, 3003, 79, 1023, 1024, rng.randint(1, 65535)])
            out.append(PacketMeta.make(rng.choice(srcs), rng.choice(dsts), proto, sport, dport, **kw))
    return out


# ---------------------------------------------------------------- real layouts

KUBE_DSTS = ["172.30.0.41", "172.30.0.42", "172.30.0.43", "172.30.0.44", "172.30.0.45", "172.30.0.46",
             "172.30.0.99", "192.168.0.2", "192.168.99.22", "192.168.99.33", "1.2.3.4", "5.6.7.8", "10.180.0.1"]
KUBE_SRCS = ["10.0.1.5", "192.168.0.100", "10.180.0.1", "10.180.0.3", "203.0.113.7", "192.168.0.2"]


def test_kube_proxy_sample_agrees_on_every_hook_and_hands_affinity_to_the_reference():
    packets = packet_pool(random.Random(3), 400, KUBE_DSTS, KUBE_SRCS)
    packets += [PacketMeta.make(src, dst, "tcp", 40000 + i, 80, tcp_flags=0x02)  # svc5, with affinity
                for i, (src, dst) in enumerate([("10.0.1.5", "172.30.0.45"), ("203.0.113.7", "5.6.7.8"),
                                                ("10.0.1.5", "172.30.0.45"), ("192.168.0.100", "5.6.7.8")])]
    batch = assert_agree((DATA / "kube_proxy.nft").read_text(), packets)
    # svc5's affinity set is dynamic (`update @affinity...`): those packets went to the reference
    assert batch.compiled.fallback_reasons and 0 < batch.fallback_packets < len(packets)


@pytest.mark.parametrize("name", ["varied.nft", "cni_plugins.nft"])
def test_other_real_rulesets_agree(name):
    dsts = ["10.96.0.10", "10.88.0.5", "10.244.1.10", "192.168.0.2", "8.8.8.8", "10.96.1.1"]
    srcs = ["10.88.0.7", "10.244.1.2", "192.168.1.10", "172.16.0.9", "10.96.1.1"]
    assert_agree((DATA / name).read_text(), packet_pool(random.Random(4), 300, dsts, srcs))


def kube_layout(n_services: int, n_endpoints: int, **kw) -> str:
    ctx = NodeContext("node", (NODE_IP,), ("10.244.0.0/16",))
    return generate(build_state(synthetic_cluster(n_services, n_endpoints, **kw), ctx),
                    NftOptions(service_cidrs=("10.0.0.0/8",)))


@pytest.mark.parametrize("kind", [dict(), dict(svc_type="NodePort"), dict(svc_type="LoadBalancer", lb=True)])
def test_generated_kube_proxy_layouts_agree_including_numgen_choices(kind):
    n = 12
    text = kube_layout(n, 3, **kind)
    rng = random.Random(5)
    packets = []
    for _ in range(300):
        i = rng.randrange(n + 2)  # two addresses that are not services
        dst = rng.choice([str(IPv4Address(int(IPv4Address("10.0.0.1")) + i)), NODE_IP, "1.2.3.4"])
        port = rng.choice([80 + i, 30000 + i, 80])
        src = rng.choice(["10.244.1.5", "172.16.0.2", "192.168.0.50", "1.2.3.5"])
        packets.append(PacketMeta.make(src, dst, "tcp", rng.randint(1024, 65535), port, tcp_flags=0x02,
                                       mark=rng.choice([0, 0x4000])))
    batch, ref, stream = pair(text, seed=9)
    got = batch.evaluate_many(packets, Hook.PREROUTING)
    want = [ref.evaluate(p, Hook.PREROUTING) for p in packets]
    assert got == want
    assert batch.fallback_packets == 0  # the whole layout compiles
    endpoints = {d.nat.addr for d in got if d.nat is not None and d.nat.kind is NatKind.DNAT}
    assert endpoints == {IPv4Address("172.16.0.1"), IPv4Address("172.16.0.2"), IPv4Address("172.16.0.3")}
    assert_agree(text, packets[:100], hooks=(Hook.OUTPUT, Hook.POSTROUTING, Hook.FORWARD, Hook.INPUT))


# ---------------------------------------------------------------- random rulesets of the supported subset

def random_ruleset(rng: random.Random) -> str:
    """Matches, anonymous/named/interval/concatenated sets, verdict maps, numgen random, jumps,
    gotos, returns, marks, counters, NAT, drop/reject in base chains of two tables, plus a few
    constructs the kernel does not compile (numgen inc, a dynamic set, a NAT port range)."""
    vips = [f"10.96.1.{i}" for i in range(1, 7)]
    backends = [f"10.244.1.{i}" for i in range(10, 16)]

    def match() -> str:
        return rng.choice([
            f"ip daddr {rng.choice(vips)}", f"ip daddr != {rng.choice(vips)}", "ip daddr 10.96.1.0/29",
            f"ip saddr {rng.choice(backends)}", "ip saddr != 10.244.0.0/16", "ip saddr 192.168.100.0/24",
            f"tcp dport {rng.choice([80, 443, 8080])}", f"udp dport {rng.choice([53, 80])}",
            f"th dport {{ {rng.choice([80, 53])}, 443 }}", f"th dport {rng.randint(1, 100)}-{rng.randint(100, 9000)}",
            "th dport != 53", "tcp dport < 1024", "tcp sport >= 30000", "meta l4proto tcp",
            "meta l4proto { udp, icmp }", "ip protocol udp", "icmp type echo-request",
            f"ip daddr . th dport {{ {rng.choice(vips)} . 80, {rng.choice(vips)} . 53 }}",
            "ct state new", "ct state established,related", "ct state != new", "ct state invalid",
            "ct mark 0x00000001", "ct direction reply",
            f"meta mark 0x{rng.choice([1, 2]):08x}", "meta mark & 0x00000002 == 0x00000002",
            "meta mark & 0x00004000 == 0", 'iifname "eth0"', 'oifname != "eth1"', 'iifname { "eth0", "veth7" }',
            "ip daddr @vips", "ip saddr @nets", "ip daddr . meta l4proto . th dport @svc", "fib daddr type local",
            "fib saddr type local", "tcp flags syn", "tcp flags syn / syn,ack", "meta length > 1000",
            "meta nfproto ipv4",
        ])

    def action(kind: str, regular: list[str]) -> str:
        jumps = [f"jump {rng.choice(regular)}", f"goto {rng.choice(regular)}"] if regular else []
        common = ["counter", *jumps,
                  "meta mark set meta mark | 0x00004000", "meta mark set 0x00000001", "ct mark set meta mark",
                  "numgen random mod 3 vmap { 0 : accept, 1 : drop, 2 : continue }",
                  *([f"numgen random mod 2 vmap {{ 0 : jump {regular[0]}, 1 : goto {regular[1]} }}"]
                    if regular else []),
                  "ip daddr . meta l4proto . th dport vmap @dispatch", "th dport vmap @ports", "log prefix \"x\""]
        if kind == "nat-pre":
            extra = [f"meta l4proto tcp dnat to {rng.choice(backends)}:{rng.choice([8080, 80])}",
                     f"dnat to {rng.choice(backends)}", "accept", "numgen inc mod 2 vmap { 0 : accept, 1 : drop }"]
        elif kind == "nat-post":
            extra = ["masquerade", "masquerade fully-random", "snat to 10.244.1.1", "return",
                     "meta l4proto tcp masquerade to :40000-40100"]
        elif kind == "filter":
            extra = ["drop", "reject", "reject with icmp host-unreachable", "accept",
                     "update @seen { ip saddr }", "ip saddr @seen counter"]
        elif kind == "regular":
            extra = [f"meta l4proto tcp dnat to {rng.choice(backends)}:8080", "return", "continue", "accept"]
        else:  # a regular chain that filter chains reach: no NAT
            extra = ["return", "continue", "accept", "drop", "meta mark set 0x00000003"]
        options = extra + common if rng.random() < 0.6 else common + extra[:1]
        if kind == "q":  # no loops: q1 -> q2 only, and the named maps jump to q1/q2
            options = [o for o in options if "@dispatch" not in o and "@ports" not in o]
            if not regular:
                options = [o for o in options if "jump" not in o and "goto" not in o]
        return rng.choice(options)

    def rules(kind: str, regular: list[str]) -> list[str]:
        out = []
        for _ in range(rng.randint(1, 6)):
            ms = " ".join(match() for _ in range(rng.randint(0, 3)))
            out.append(f"{ms} {action(kind, regular)}".strip())
        return out

    def chain(name: str, head: str, body: list[str]) -> str:
        head_line = f"\t\t{head}\n" if head else ""
        return f"\tchain {name} {{\n" + head_line + "".join(f"\t\t{r}\n" for r in body) + "\t}\n"

    svc = ", ".join(f"{rng.choice(vips)} . {rng.choice(['tcp', 'udp'])} . {rng.choice([80, 53])}" for _ in range(3))
    dispatch = ", ".join(f"{v} . tcp . 80 : {rng.choice(['goto q1', 'jump q2', 'drop', 'accept', 'continue'])}"
                         for v in rng.sample(vips, 3))
    sets = (f"\tset vips {{\n\t\ttype ipv4_addr\n\t\telements = {{ {', '.join(rng.sample(vips, 3))} }}\n\t}}\n"
            "\tset nets {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
            "\t\telements = { 10.244.1.8/29, 192.168.100.0/30, 10.96.1.4-10.96.1.5 }\n\t}\n"
            f"\tset svc {{\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\telements = {{ {svc} }}\n\t}}\n"
            "\tset seen {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 1h\n\t}\n"
            "\tmap dispatch {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n"
            f"\t\telements = {{ {dispatch} }}\n\t}}\n"
            "\tmap ports {\n\t\ttype inet_service : verdict\n\t\tflags interval\n"
            f"\t\telements = {{ 1-79 : accept, 80 : {rng.choice(['drop', 'jump q1'])}, 443-8080 : goto q2 }}\n\t}}\n")
    text = "table ip rnd {\n" + sets
    text += chain("r1", "", rules("regular", ["r2", "r3"])) + chain("r2", "", rules("regular", ["r3", "r3"]))
    text += chain("r3", "", rules("regular", []))
    text += chain("q1", "", rules("q", ["q2", "q2"])) + chain("q2", "", rules("q", []))
    text += chain("pre", "type nat hook prerouting priority dstnat; policy accept;", rules("nat-pre", ["r1", "r2"]))
    text += chain("pre2", "type nat hook prerouting priority dstnat + 5; policy accept;",
                  rules("nat-pre", ["r1", "r2"]))
    text += chain("out", "type nat hook output priority -100; policy accept;", rules("nat-pre", ["r1", "r2"]))
    text += chain("post", "type nat hook postrouting priority srcnat; policy accept;", rules("nat-post", ["r1", "r2"]))
    for hook in ("prerouting", "forward", "input", "output", "postrouting"):
        text += chain(f"f-{hook}", f"type filter hook {hook} priority {rng.choice([-10, 0, 10])}; policy "
                                  f"{rng.choice(['accept', 'accept', 'drop'])};", rules("filter", ["q1", "q2"]))
    text += "}\ntable inet rnd2 {\n" + sets
    text += chain("fr", "", ["meta mark set 0x00000002", "return"])
    text += chain("q1", "", ["return"]) + chain("q2", "", ["ip daddr 10.96.1.3 drop"])
    text += chain("forward1", f"type filter hook forward priority {rng.choice([-10, 0, 10])}; policy "
                              f"{rng.choice(['accept', 'drop'])};", rules("filter", ["fr", "q2"]))
    text += chain("pre", "type filter hook prerouting priority -150; policy accept;", rules("filter", ["fr", "q2"]))
    return text + "}\n"


def valid_random_ruleset(rng: random.Random) -> str:
    """A random ruleset that nft's own checks accept (random matches can conflict: `tcp ... udp ...`)."""
    for _ in range(200):
        text = random_ruleset(rng)
        try:
            parse_text(text)
        except NftParseError:
            continue
        return text
    raise AssertionError("the random ruleset generator makes too many invalid rulesets")


RANDOM_DSTS = [f"10.96.1.{i}" for i in range(1, 8)] + ["10.244.1.12", NODE_IP, "8.8.8.8"]
RANDOM_SRCS = ["10.244.1.10", "10.244.1.13", "192.168.100.2", "192.168.100.7", "10.96.1.1", "172.16.5.5"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_rulesets_agree_with_the_reference(seed):
    rng = random.Random(seed)
    text = valid_random_ruleset(rng)
    assert_agree(text, packet_pool(rng, 60, RANDOM_DSTS, RANDOM_SRCS), seed=seed)


def test_random_rulesets_exercise_both_paths():
    """The generator is worth something only if most rules compile and some packets fall back."""
    compiled = fallen = total = 0
    for seed in range(15):
        rng = random.Random(seed)
        batch, _, _ = pair(valid_random_ruleset(rng), seed)
        packets = packet_pool(rng, 60, RANDOM_DSTS, RANDOM_SRCS)
        for hook in Hook:
            batch.evaluate_many(packets, hook)
            total += len(packets)
        fallen += batch.fallback_packets
        compiled += batch.compiled.ops.shape[0] - batch.compiled.fallback_ops
    assert 0 < fallen < total / 2 and compiled > 0


# ---------------------------------------------------------------- numgen and the hand-over

def test_numgen_random_is_the_kernels_reciprocal_scale_of_the_shared_stream():
    text = ("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n"
            "\t\tnumgen random mod 3 offset 5 vmap { 5 : accept, 6 : drop, 7 : jump j }\n\t}\n"
            "\tchain j {\n\t\treject\n\t}\n}\n")
    batch = BatchNftEvaluator(parse_text(text), rng=SplitMixRandom(42))
    got = [d.verdict for d in batch.evaluate_many([PacketMeta.make("1.1.1.1", "2.2.2.2", "udp", 1, 2)] * 3000,
                                                  Hook.INPUT)]
    stream = SplitMixRandom(42)
    by_index = [Verdict.ACCEPT, Verdict.DROP, Verdict.REJECT]
    want = [by_index[(stream.u32() * 3) >> 32] for _ in range(3000)]  # nft_numgen.c: reciprocal_scale
    assert got == want
    assert all(900 < got.count(v) < 1100 for v in by_index)


def test_fallback_packets_hand_the_stream_and_counters_over_in_both_directions():
    """Packets alternate between the kernel (numgen random, counters) and the reference (numgen inc
    is not compiled): decisions, counters and the final stream state match a reference-only run."""
    text = ("table ip t {\n\tchain c {\n\t\ttype filter hook forward priority 0; policy accept;\n"
            "\t\tcounter\n"
            "\t\tnumgen random mod 4 vmap { 0 : continue, 1 : continue, 2 : jump a, 3 : continue }\n"
            "\t\tudp dport 53 numgen inc mod 2 vmap { 0 : drop, 1 : continue }\n"
            "\t\tcounter numgen random mod 2 vmap { 0 : accept, 1 : drop }\n\t}\n"
            "\tchain a {\n\t\tcounter meta mark set 0x00000007\n\t}\n}\n")
    protos = random.Random(1).choices(["tcp", "udp"], k=500)
    packets = [PacketMeta.make("10.0.0.1", "10.0.0.2", proto, 1000 + i, 53 if proto == "udp" else 80, length=100 + i)
               for i, proto in enumerate(protos)]
    batch = assert_agree(text, packets, hooks=(Hook.FORWARD,), seed=77)
    assert 100 < batch.fallback_packets < 400
    assert sum(v[0] for v in batch.counters.values()) > 500


def test_ipv6_packets_are_evaluated_by_the_reference():
    text = ("table inet t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n"
            "\t\tip6 daddr ::1 drop\n\t\tip daddr 127.0.0.1 reject\n\t}\n}\n")
    packets = [PacketMeta.make("::2", "::1", "tcp", 1, 80), PacketMeta.make("127.0.0.2", "127.0.0.1", "tcp", 1, 80),
               PacketMeta.make("::2", "::3", "udp", 1, 53)]
    batch = assert_agree(text, packets, hooks=(Hook.INPUT,))
    assert batch.fallback_packets == 2


def test_element_timeouts_fall_back_so_expiry_follows_the_clock():
    now = [100.0]
    text = ("table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\tflags timeout\n"
            "\t\telements = { 10.0.0.1 timeout 10s }\n\t}\n"
            "\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tip saddr @s drop\n\t}\n}\n")
    batch, ref, _ = pair(text, clock=lambda: now[0])
    p = PacketMeta.make("10.0.0.1", "10.0.0.2", "tcp", 1, 80)
    assert batch.evaluate(p, Hook.INPUT).verdict is Verdict.DROP
    now[0] = 111.0
    assert batch.evaluate(p, Hook.INPUT) == ref.evaluate(p, Hook.INPUT)
    assert batch.evaluate(p, Hook.INPUT).verdict is Verdict.ACCEPT


def test_unknown_hook_is_a_clear_error():
    batch = BatchNftEvaluator(parse_text((DATA / "kube_proxy.nft").read_text()))
    with pytest.raises(ValueError, match="unknown hook 'ingress'"):
        batch.evaluate_many([PacketMeta.make("1.1.1.1", "2.2.2.2", "tcp", 1, 2)], "ingress")


# ---------------------------------------------------------------- O(1) shape

def test_first_packet_work_does_not_grow_with_the_number_of_services():
    """The same rules run and one hash table answers, whatever the number of services: the count of
    rules evaluated per first packet is identical at 10 and 3,000 services, the hash tables stay at
    most half full (bounded probe lengths), and numgen's maps are direct tables."""
    counts = {}
    for n in (10, 3000):
        batch = BatchNftEvaluator(parse_text(kube_layout(n, 2)), rng=SplitMixRandom(3),
                                  local_addresses=[NODE_IP])
        rng = random.Random(n)
        picks = [rng.randrange(n) for _ in range(200)]
        packets = [PacketMeta.make("10.244.1.5", str(IPv4Address(int(IPv4Address("10.0.0.1")) + i)), "tcp",
                                   40000, 80 + i, tcp_flags=0x02) for i in picks]
        decisions = batch.evaluate_many(packets, Hook.PREROUTING)
        assert all(d.nat is not None and d.nat.kind is NatKind.DNAT for d in decisions)
        counts[n] = {d.rules_evaluated for d in decisions}
        meta = batch.compiled.set_meta
        hashed = meta[meta[:, 6] == 0]  # not the direct tables of numgen's small keys
        assert (hashed[:, 1] >= 2 * hashed[:, 5]).all() and int(hashed[:, 5].max()) >= n  # load factor <= 1/2
        dense = meta[meta[:, 6] == 1]
        assert len(dense) == n and (dense[:, 1] == 2).all()  # one `numgen random mod 2` map per service
    assert counts[10] == counts[3000] and len(counts[10]) == 1
