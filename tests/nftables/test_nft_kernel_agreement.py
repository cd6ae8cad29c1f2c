"""The evaluator against the kernel, packet by packet: rules loaded with the real `nft -f` into the
lab's node namespace, real packets sent through it; the engine pipeline with the same (listed)
rules must agree on every deterministic verdict and translation, and numgen's endpoint spread must
match the kernel's (chi-square)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dataplane.engine.nft_eval import NftRuleset
from dataplane.engine.pipeline import Pipeline
from dataplane.k8s import load_objects
from dataplane.proxy.model import NodeContext, build_state
from dataplane.proxy.nftables.generator import NftOptions, generate
from dataplane.testing.netfilter_lab import Flow, NetfilterLab, differences, engine_observation

pytestmark = pytest.mark.requires("root", "nft", "veth", "conntrack")

CLIENT, NODE = "192.168.100.2", "192.168.100.1"
MULTI = [f"10.244.1.{i}" for i in (12, 13, 14, 15)]


def _svc(name, ip, port, proto="TCP", endpoints=(), target=8080, **spec):
    status = spec.pop("status", {})
    p = {"name": "p", "port": port, "protocol": proto, **({"nodePort": spec.pop("nodePort")} if "nodePort" in spec else {})}
    objs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "lab", "name": name},
             "spec": {"type": spec.pop("type", "ClusterIP"), "clusterIP": ip, "ports": [p], **spec},
             "status": status}]
    if endpoints:
        objs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"namespace": "lab", "name": f"{name}-1",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": "IPv4", "endpoints": [{"addresses": [e]} for e in endpoints],
                     "ports": [{"name": "p", "port": target, "protocol": proto}]})
    return objs


def lab_rules() -> str:
    objs = (_svc("web", "10.96.0.10", 80, endpoints=["10.244.1.10"])
            + _svc("dns", "10.96.0.11", 53, "UDP", endpoints=["10.244.1.11"], target=5353)
            + _svc("multi", "10.96.0.12", 80, endpoints=MULTI)
            + _svc("np", "10.96.0.13", 80, endpoints=["10.244.1.16"], type="NodePort", nodePort=30080)
            + _svc("empty", "10.96.0.14", 80)
            + _svc("lb", "10.96.0.15", 80, endpoints=["10.244.1.17"], type="LoadBalancer", nodePort=30081,
                   loadBalancerSourceRanges=["203.0.113.0/24"],
                   status={"loadBalancer": {"ingress": [{"ip": "172.16.0.5"}]}}))
    ctx = NodeContext("lab-node", (NODE,), ("10.244.0.0/16",))
    return generate(build_state(load_objects(objs), ctx), NftOptions(service_cidrs=("10.96.0.0/16",)))


def deterministic_flows(n_each: int) -> list[Flow]:
    rng = random.Random(1)
    kinds = [("10.96.0.10", "tcp", 80), ("10.96.0.11", "udp", 53), (NODE, "tcp", 30080), ("10.96.0.14", "tcp", 80),
             ("10.96.0.14", "udp", 80), ("10.96.0.99", "tcp", 80), ("10.96.0.10", "tcp", 81), ("172.16.0.5", "tcp", 80),
             ("10.96.0.10", "udp", 80), ("10.244.1.10", "tcp", 8080)]
    flows = []
    for i in range(n_each):
        for dst, proto, dport in kinds:
            flows.append(Flow(CLIENT, dst, proto, sport=20000 + rng.randrange(40000), dport=dport))
    return flows


@pytest.fixture
def lab(sandbox):
    lab = NetfilterLab.create(sandbox)
    lab.load_nft(lab_rules())
    return lab


def engine_for(lab: NetfilterLab, seed: int = 0) -> Pipeline:
    listed = lab.node.run(["nft", "list", "ruleset"]).stdout  # the kernel's own listing, parsed
    pipeline = Pipeline(lab.node_model(), seed=seed)
    pipeline.ruleset = NftRuleset.from_text(listed, clock=pipeline.clock.now)
    return pipeline


def test_engine_agrees_with_the_kernel_on_every_deterministic_packet(lab):
    flows = deterministic_flows(220)  # 2,200 packets
    kernel = lab.send(flows)
    pipeline = engine_for(lab)
    engine = [engine_observation(f, pipeline.receive(lab.probe_packet(f, i), "eth0")) for i, f in enumerate(flows)]
    assert differences(kernel, engine, ignore=("sport",)) == []  # masquerade is fully-random
    outcomes = Counter((k.flow.dst, k.flow.proto, k.flow.dport, k.outcome, k.endpoint) for k in kernel)
    assert outcomes[("10.96.0.10", "tcp", 80, "delivered", "10.244.1.10:8080")] == 220
    assert outcomes[("10.96.0.11", "udp", 53, "delivered", "10.244.1.11:5353")] == 220
    assert outcomes[(NODE, "tcp", 30080, "delivered", "10.244.1.16:8080")] == 220
    assert outcomes[("10.96.0.14", "tcp", 80, "rejected", None)] == 220  # no endpoints
    assert outcomes[("10.96.0.99", "tcp", 80, "dropped", None)] == 220  # unallocated ClusterIP
    assert outcomes[("10.96.0.10", "tcp", 81, "rejected", None)] == 220  # wrong port of a ClusterIP
    assert outcomes[("172.16.0.5", "tcp", 80, "dropped", None)] == 220  # outside loadBalancerSourceRanges
    assert {k.src for k in kernel if k.outcome == "delivered" and k.flow.dst.startswith("10.96")} == {"10.244.1.1"}


def test_numgen_spread_matches_the_kernel(lab):
    """10,000 new flows to a 4-endpoint service: kernel and engine counts are both uniform and
    indistinguishable from each other (chi-square, p = 0.001)."""
    rng = random.Random(2)
    ports = rng.sample(range(1024, 65536), 10_000)
    flows = [Flow(CLIENT, "10.96.0.12", "tcp", sport=p, dport=80) for p in ports]
    kernel = lab.send(flows)
    # the engine side: the evaluator alone at prerouting (the pipeline adds nothing to the choice)
    from dataplane.engine.nft_eval import NftEvaluator
    from dataplane.engine.types import Hook, PacketMeta
    from dataplane.proxy.nftables.parser import parse_text

    seeded = random.Random(3)
    ev = NftEvaluator(parse_text(lab.node.run(["nft", "list", "ruleset"]).stdout), trace=False,
                      rng=lambda: seeded.getrandbits(32), local_addresses=[NODE])
    engine = [ev.evaluate(PacketMeta.make(f.src, f.dst, f.proto, f.sport, f.dport), Hook.PREROUTING) for f in flows]
    k_counts = Counter(o.dst for o in kernel)
    e_counts = Counter(str(d.nat.addr) for d in engine)
    assert set(k_counts) == set(e_counts) == set(MULTI), (k_counts, e_counts)
    for counts in (k_counts, e_counts):
        chi2 = sum((counts[d] - 2500) ** 2 / 2500 for d in MULTI)
        assert chi2 < 16.27, counts  # df 3, p = 0.001
    total = {d: k_counts[d] + e_counts[d] for d in MULTI}
    homogeneity = sum((c[d] - total[d] / 2) ** 2 / (total[d] / 2) for c in (k_counts, e_counts) for d in MULTI)
    assert homogeneity < 16.27, (k_counts, e_counts)


def _pipeline_honours_port_ranges() -> bool:
    from dataplane.engine.nat import NatRange
    from dataplane.engine.types import NatAction, NatKind

    return NatRange.from_action(NatAction(NatKind.SNAT, None, 1, port_max=2)).max_port == 2


# NAT port ranges are only compared once the pipeline's NatRange reads NatAction.port_max
PORT_RANGES = _pipeline_honours_port_ranges()


def random_ruleset(rng: random.Random) -> str:
    """A random rule set from the supported subset: matches, sets, verdict maps, jumps/gotos, marks,
    counters, DNAT/SNAT/masquerade, drop/reject, in several base chains of two tables."""
    vips = [f"10.96.1.{i}" for i in range(1, 9)]
    backends = [f"10.244.1.{i}" for i in range(10, 26)]

    def match() -> str:
        return rng.choice([
            f"ip daddr {rng.choice(vips)}", f"ip daddr != {rng.choice(vips)}", "ip daddr 10.96.1.0/29",
            f"tcp dport {rng.choice([80, 443, 8080])}", f"udp dport {rng.choice([53, 80])}",
            f"th dport {{ {rng.choice([80, 53])}, 443 }}", f"th dport {rng.randint(1, 100)}-{rng.randint(100, 60000)}",
            "meta l4proto tcp", "meta l4proto { udp, icmp }", "ip saddr 192.168.100.0/24", "ip saddr != 192.168.100.2",
            f"ip daddr . th dport {{ {rng.choice(vips)} . 80, {rng.choice(vips)} . 53 }}", "ct state new",
            f"meta mark 0x{rng.choice([1, 2]):08x}", "meta mark & 0x00000002 == 0x00000002", 'iifname "eth0"',
            'oifname "eth1"', "ip daddr @vips", "ip daddr . meta l4proto . th dport @svc", "fib daddr type local",
        ])

    def rules(chain_kind: str, regular: list[str]) -> list[str]:
        out = []
        for _ in range(rng.randint(2, 6)):
            ms = " ".join(match() for _ in range(rng.randint(0, 2)))
            if chain_kind == "nat-pre":
                action = rng.choice([f"meta l4proto tcp dnat to {rng.choice(backends)}:{rng.choice([8080, 80])}",
                                     f"dnat to {rng.choice(backends)}", f"jump {rng.choice(regular)}",
                                     f"goto {rng.choice(regular)}", "meta mark set meta mark | 0x00000002",
                                     "ip daddr . meta l4proto . th dport vmap @dispatch", "accept", "counter"])
            elif chain_kind == "nat-post":
                action = rng.choice(["masquerade", "snat to 10.244.1.1", "return", "counter",
                                     "meta l4proto tcp masquerade to :40000-40100" if PORT_RANGES else "masquerade"])
            elif chain_kind == "filter":
                action = rng.choice(["drop", "reject", "reject with tcp reset" if "tcp" in ms else "reject",
                                     "reject with icmp host-unreachable", "accept", "counter",
                                     "meta mark set 0x00000001", f"jump {rng.choice(regular)}",
                                     "numgen inc mod 2 vmap { 0 : accept, 1 : drop }"])
            else:  # regular chain under nat prerouting
                action = rng.choice([f"meta l4proto tcp dnat to {rng.choice(backends)}:8080", "return",
                                     "meta mark set 0x00000001", f"dnat to {rng.choice(backends)}", "continue"])
            out.append(f"{ms} {action}".strip())
        return out

    regular = ["r1", "r2"]
    svc = ", ".join(f"{rng.choice(vips)} . {rng.choice(['tcp', 'udp'])} . {rng.choice([80, 53])}" for _ in range(3))
    dispatch = ", ".join(f"{v} . tcp . 80 : {rng.choice(['goto r1', 'jump r2', 'drop', 'accept'])}"
                         for v in rng.sample(vips, 3))

    def chain(name: str, head: str, body: list[str]) -> str:
        return f"\tchain {name} {{\n" + (f"\t\t{head}\n" if head else "") + "".join(f"\t\t{r}\n" for r in body) + "\t}\n"

    text = "table ip rnd {\n"
    text += f"\tset vips {{\n\t\ttype ipv4_addr\n\t\telements = {{ {', '.join(rng.sample(vips, 4))} }}\n\t}}\n"
    text += f"\tset svc {{\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\telements = {{ {svc} }}\n\t}}\n"
    text += ("\tmap dispatch {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n"
             f"\t\telements = {{ {dispatch} }}\n\t}}\n")
    text += chain("r1", "", rules("regular", regular)) + chain("r2", "", rules("regular", regular))
    text += chain("pre", "type nat hook prerouting priority dstnat; policy accept;", rules("nat-pre", regular))
    text += chain("pre2", "type nat hook prerouting priority dstnat + 5; policy accept;", rules("nat-pre", regular))
    text += chain("post", "type nat hook postrouting priority srcnat; policy accept;", rules("nat-post", regular))
    text += "}\ntable ip rnd2 {\n"
    text += chain("fr", "", ["meta mark set 0x00000002", "return"])
    text += chain("forward1", f"type filter hook forward priority {rng.choice([-10, 0, 10])}; policy "
                         f"{rng.choice(['accept', 'accept', 'drop'])};", rules("filter", ["fr"]))
    text += chain("forward2", "type filter hook forward priority 5; policy accept;", rules("filter", ["fr"]))
    text += chain("pre", "type filter hook prerouting priority -150; policy accept;",
                  ["ip daddr 10.96.1.8 drop", "meta mark set 0x00000001"])
    return text + "}\n"


def test_engine_agrees_with_the_kernel_on_random_rulesets(lab):
    """Random rule sets: when our parser refuses one, the kernel must refuse it too; the ones both
    accept are traced packet by packet."""
    from dataplane.proxy.nftables.errors import NftParseError
    from dataplane.proxy.nftables.parser import parse_text
    from dataplane.testing.netfilter_lab import LabError

    rng = random.Random(11)
    disagreements: list[str] = []
    sent = refused = loaded = 0
    while loaded < 8:
        text = random_ruleset(rng)
        lab.flush_rules()
        lab.flush_conntrack()
        try:
            parse_text(text)
        except NftParseError as exc:
            refused += 1
            with pytest.raises(LabError):
                lab.load_nft(text)  # the kernel's nft refuses it as well
            assert refused < 30, f"the random generator makes too many invalid rule sets: {exc}"
            continue
        lab.load_nft(text)
        loaded += 1
        flows = [Flow(CLIENT, rng.choice([f"10.96.1.{i}" for i in range(1, 9)] + ["10.244.1.20", "10.244.1.21"]),
                      rng.choice(["tcp", "udp"]), sport=rng.randrange(1024, 65536),
                      dport=rng.choice([80, 53, 443, 8080, 30000])) for _ in range(150)]
        kernel = lab.send(flows)
        pipeline = engine_for(lab, seed=loaded)
        engine = [engine_observation(f, pipeline.receive(lab.probe_packet(f, i), "eth0")) for i, f in enumerate(flows)]
        sent += len(flows)
        found = differences(kernel, engine, ignore=("sport",))
        if found:
            disagreements = [text] + found
            break
    assert not disagreements, "\n".join(disagreements)
    assert sent == 1200


def _with_counters(text: str) -> str:
    """A `counter` at the head of every rule: it then counts the packets that reached the rule."""
    out = []
    for line in text.splitlines():
        body = line.strip()
        if line.startswith("\t\t") and not body.startswith(("type ", "elements", "flags", "policy")):
            line = "\t\tcounter " + body
        out.append(line)
    return "\n".join(out) + "\n"


def test_every_rule_sees_the_same_packets_in_the_kernel_and_the_engine(lab):
    """Rule by rule: per-rule packet counters of the kernel equal the evaluator's, so the engine walks
    the same path (jumps, gotos, returns, verdict maps, base-chain order), not just to the same end.
    postrouting is left out: there the kernel also sees its own ICMP errors, which the pipeline does
    not send."""
    from dataplane.proxy.nftables.errors import NftParseError
    from dataplane.proxy.nftables.parser import parse_text

    rng = random.Random(5)
    checked = loaded = 0
    while loaded < 3:
        text = random_ruleset(rng)
        try:
            parse_text(text)
        except NftParseError:
            continue
        text = _with_counters(text)
        lab.flush_rules()
        lab.flush_conntrack()
        lab.load_nft(text)
        loaded += 1
        flows = [Flow(CLIENT, rng.choice([f"10.96.1.{i}" for i in range(1, 9)] + ["10.244.1.20"]),
                      rng.choice(["tcp", "udp"]), sport=rng.randrange(1024, 65536),
                      dport=rng.choice([80, 53, 443, 8080])) for _ in range(120)]
        pipeline = engine_for(lab, seed=loaded)  # listed before the traffic: its counters start at 0
        lab.send(flows)
        for i, f in enumerate(flows):
            pipeline.receive(lab.probe_packet(f, i), "eth0")
        engine_counts = pipeline.ruleset.evaluator.counters
        kernel = parse_text(lab.node.run(["nft", "list", "ruleset"]).stdout)
        for table in kernel.tables:
            for chain in table.chains.values():
                if chain.name == "post":
                    continue
                for pos, rule in enumerate(chain.rules):
                    seen = rule.statements[0].packets
                    ours = engine_counts.get((table.family, table.name, chain.name, pos, 0), [0])[0]
                    assert seen == ours, f"{table.name} {chain.name} rule {pos + 1} `{rule.statements[1:]}`: " \
                                         f"kernel {seen} packets, engine {ours}\n{text}"
                    checked += 1
    assert checked > 40
