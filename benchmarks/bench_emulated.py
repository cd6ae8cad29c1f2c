"""Emulated backends: per-new-connection decision cost, rules evaluated, conntrack hits, sync, memory.

All costs are this thread's CPU time (time.thread_time) of the emulator's own code, so other
processes on the shared 2-core VM do not count; the target positions of one configuration are
measured in ABBA order and summarised as median (min/max) of the rounds.

Backends and the code they time:
- emulated-iptables-{classic,modern}: the numba iptables evaluator (dataplane.engine.iptables_numba)
  on the nat table generated for N services x 10 endpoints, from PREROUTING, one batch per round;
- emulated-ipvs-rr: the numba O(1) service lookup + round-robin pick (dataplane.proxy.ipvs.lookup);
- emulated-ipvs-sh: the reference IPVS model (dataplane.proxy.ipvs.core) with the source-hash
  scheduler, one ip_vs_in() per new connection;
- emulated-nftables: the numba nftables evaluator (dataplane.engine.nft_batch) on kube-proxy's
  nftables layout, at the prerouting hook;
- emulated-conntrack: the batch conntrack-hit path (dataplane.engine.conntrack_batch), which every
  emulated netfilter backend shares (an established packet never reaches the nat rules).
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

import numpy as np

from benchmarks.bench_stats import Record, derived, run_abba, summarize
from dataplane.k8s.synthetic import synthetic_cluster
from dataplane.proxy.model import NodeContext, ProxyState, build_state

CONTEXT = NodeContext("bench-node", ("192.168.100.1",), ("10.244.0.0/16",))
CLIENT = "192.168.100.2"
ENDPOINTS = 10
POSITIONS = ("first", "last", "random")
RATE = 1000.0  # new connections per second, the published setup


@dataclass(frozen=True)
class EmulatedPlan:
    """What to measure. `*_max`: the largest N for the slow-to-build or slow-to-run parts."""

    services: tuple[int, ...]
    rounds: int = 7
    batch_ns: float = 40e6  # CPU time aimed at per numba batch
    python_packets: int = 300  # per round for the pure-Python evaluators
    sync_rounds: int = 3
    sync_max: int = 10_000
    nft_max: int = 2_000
    ipvs_sh_max: int = 50_000
    conntrack_connections: int = 1_000  # established connections in the flow cache
    seed: int = 1


def state_for(n: int) -> ProxyState:
    return build_state(synthetic_cluster(n, ENDPOINTS), CONTEXT)


def _cpu(fn: Callable[[], object]) -> float:
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def _targets(ordered: list[tuple[str, int]], m: int, rng: random.Random) -> dict[str, list[tuple[str, int]]]:
    """Per position, m (ClusterIP, port) targets: all the first service, all the last, or uniform."""
    return {"first": [ordered[0]] * m, "last": [ordered[-1]] * m,
            "random": [ordered[rng.randrange(len(ordered))] for _ in range(m)]}


# ---------------------------------------------------------------- iptables (numba)

def iptables_point(n: int, layout: str, state: ProxyState, plan: EmulatedPlan,
                   state_plus: ProxyState | None) -> list[Record]:
    from dataplane.engine import iptables_numba as K
    from dataplane.engine.packet import metas_to_batch
    from dataplane.engine.types import PacketMeta
    from dataplane.proxy.iptables.generator import GeneratorOptions, generate, ordered_service_ports
    from dataplane.proxy.iptables.parser import parse

    backend = f"emulated-iptables-{layout}"
    opts = GeneratorOptions(layout=layout, jump_rules=True)
    text = generate(state, opts).text()
    compiled = K.compile_table(parse(text).table("nat"))
    ordered = [(s.cluster_ip, s.port) for s in ordered_service_ports(state, opts)]
    per_service = 2 if layout == "classic" else 1
    m = int(min(20_000, max(200, plan.batch_ns / (1.3 * per_service * n + 300))))
    rng = random.Random(plan.seed)
    batches = {}
    for pos, tg in _targets(ordered, m, rng).items():
        metas = [PacketMeta.make(CLIENT, vip, "tcp", 1024 + i % 60000, port, tcp_flags=0x02, iif="eth0")
                 for i, (vip, port) in enumerate(tg)]
        batches[pos] = K.prepare(compiled, metas_to_batch(metas), [K.PacketContext(iif="eth0", dst_type=2)] * m)
    state_rng = np.array([plan.seed], np.uint64)
    rules: dict[str, float] = {}
    for pos, b in batches.items():  # warm-up (JIT on first use) and the rule counts
        out, stop = K.evaluate(compiled, "PREROUTING", b, state_rng)
        if stop != len(b):
            raise RuntimeError(f"{backend} N={n}: packet {stop} needed the reference fallback")
        rules[pos] = float(out["rules"].mean())
    measure = {pos: (lambda b=b: _cpu(lambda: K.evaluate(compiled, "PREROUTING", b, state_rng)) / len(b) * 1e9)
               for pos, b in batches.items()}
    samples = run_abba(measure, plan.rounds)
    recs = [summarize(backend, n, pos, "new_conn_ns", samples[pos], "ns", f"{m} packets per round")
            for pos in POSITIONS]
    recs += [derived(backend, n, pos, "rules_evaluated", rules[pos], "rules") for pos in POSITIONS]
    diff = [b - a for a, b in zip(samples["first"], samples["last"])]
    if rules["last"] > rules["first"]:
        span = rules["last"] - rules["first"]
        recs.append(summarize(backend, n, "last", "ns_per_rule", [d / span for d in diff], "ns",
                              "paired (last - first) / extra rules evaluated"))
    arrays = (compiled.rules, compiled.quick, compiled.quick_value, compiled.quick_mask, compiled.chain_start,
              compiled.chain_end, compiled.chain_policy, compiled.multiport, compiled.stat_counters)
    recs.append(derived(backend, n, None, "memory_bytes_per_service", sum(a.nbytes for a in arrays) / n, "B",
                        "compiled nat table arrays"))
    recs.append(derived(backend, n, None, "rules_text_bytes_per_service", len(text) / n, "B",
                        "iptables-restore input"))
    if state_plus is not None:
        recs += _iptables_sync(n, layout, opts, state, state_plus, plan)
    return recs


def _iptables_sync(n: int, layout: str, opts, state: ProxyState, state_plus: ProxyState,  # type: ignore[no-untyped-def]
                   plan: EmulatedPlan) -> list[Record]:
    from dataplane.proxy.iptables.generator import generate
    from dataplane.proxy.iptables.sync import Syncer

    backend = f"emulated-iptables-{layout}"
    full, partial = [], []
    syncer = Syncer(opts)
    syncer.sync(state)
    for i in range(plan.sync_rounds):  # ABBA-ish: full and partial alternate, +1 then -1 service
        gc.collect()
        target = state_plus if i % 2 == 0 else state
        full.append(_cpu(lambda: generate(target, opts).text()))
        gc.collect()
        partial.append(_cpu(lambda: syncer.sync(target).text()))
    recs = [summarize(backend, n, None, "sync_full_s", full, "s",
                      "CPU time: full regeneration + text, one service added")]
    if layout == "modern":
        recs.append(summarize(backend, n, None, "sync_partial_s", partial, "s",
                              "CPU time: partial sync (changed service only) + text"))
    return recs


# ---------------------------------------------------------------- IPVS

def ipvs_rr_point(n: int, state: ProxyState, plan: EmulatedPlan) -> list[Record]:
    from dataplane.proxy.ipvs.lookup import ServiceIndex, probe_lengths

    backend = "emulated-ipvs-rr"
    services = sorted(state.service_ports.values(), key=lambda s: (s.cluster_ip, s.port))
    keys = [(6, IPv4Address(s.cluster_ip), s.port) for s in services]
    index = ServiceIndex(keys, [ENDPOINTS] * n)
    all_q = index.queries(keys)
    m = 200_000
    rng = np.random.default_rng(plan.seed)
    picks = {"first": np.zeros(m, np.int64), "last": np.full(m, n - 1, np.int64), "random": rng.integers(0, n, m)}
    batches = {pos: np.ascontiguousarray(all_q[p]) for pos, p in picks.items()}
    for pos, q in batches.items():
        svc, _ = index.decide(q)
        if not (svc == picks[pos]).all():
            raise RuntimeError(f"{backend} N={n}: lookup returned the wrong service")
    measure = {pos: (lambda q=q: _cpu(lambda: index.decide(q)) / len(q) * 1e9) for pos, q in batches.items()}
    samples = run_abba(measure, plan.rounds)
    recs = [summarize(backend, n, pos, "new_conn_ns", samples[pos], "ns", f"{m} lookups per round")
            for pos in POSITIONS]
    recs.append(derived(backend, n, "random", "slots_probed", probe_lengths(index.table, all_q), "slots"))
    recs.append(derived(backend, n, None, "memory_bytes_per_service", index.table.nbytes / n, "B",
                        "open-addressing service table"))
    if n <= plan.sync_max:
        keys_plus = keys + [(6, IPv4Address("10.255.255.1"), 80)]
        full = [_cpu(lambda: ServiceIndex(keys_plus, [ENDPOINTS] * (n + 1))) for _ in range(plan.sync_rounds)]
        recs.append(summarize(backend, n, None, "sync_full_s", full, "s", "CPU time: rebuild the service table"))
    return recs


def _ipvs_model(state: ProxyState, scheduler: str):  # type: ignore[no-untyped-def]
    from dataplane.proxy.ipvs.core import Ipvs

    ipvs = Ipvs()
    ordered = []
    for s in sorted(state.service_ports.values(), key=lambda s: (s.cluster_ip, s.port)):
        vs = ipvs.services.add_service("tcp", s.cluster_ip, s.port, scheduler)
        for j in range(ENDPOINTS):
            vs.add_dest(f"172.16.0.{j + 1}", 8080)
        ordered.append((s.cluster_ip, s.port))
    return ipvs, ordered


def ipvs_sh_point(n: int, state: ProxyState, plan: EmulatedPlan) -> list[Record]:
    """Service lookup (ip_vs_service_find) + the sh scheduler's pick, in the reference model.

    ip_vs_in() itself is not timed: it also renders the scheduler's whole state into trace notes
    for every new connection (milliseconds at 10 endpoints), which is not the kernel's work."""
    from dataplane.proxy.ipvs.sched.base import Flow

    backend = "emulated-ipvs-sh"
    ipvs, ordered = _ipvs_model(state, "sh")
    m = plan.python_packets * 10
    rng = random.Random(plan.seed)
    flows = {pos: [Flow(IPv4Address(f"192.168.{i >> 8 & 255}.{i & 255}"), IPv4Address(vip), 1024 + i, port)
                   for i, (vip, port) in enumerate(tg)] for pos, tg in _targets(ordered, m, rng).items()}
    find = ipvs.services.find
    for pos, fs in flows.items():
        svc = find(6, fs[0].daddr, fs[0].dport)
        if svc is None or svc.scheduler.schedule(svc, fs[0]) is None:
            raise RuntimeError(f"{backend} N={n}: no destination for {fs[0]}")

    def run(fs: list[Flow]) -> float:
        t0 = time.thread_time()
        for f in fs:
            svc = find(6, f.daddr, f.dport)
            svc.scheduler.schedule(svc, f)  # type: ignore[union-attr]
        return (time.thread_time() - t0) / len(fs) * 1e9

    samples = run_abba({pos: (lambda fs=fs: run(fs)) for pos, fs in flows.items()}, plan.rounds)
    recs = [summarize(backend, n, pos, "new_conn_ns", samples[pos], "ns",
                      f"{m} decisions per round, Python reference model (lookup + sh)") for pos in POSITIONS]
    if n <= plan.sync_max:
        def add_one() -> None:
            vs = ipvs.services.add_service("tcp", "10.255.255.1", 80, "sh")
            for j in range(ENDPOINTS):
                vs.add_dest(f"172.16.0.{j + 1}", 8080)
            ipvs.services.remove(vs)

        inc = [_cpu(add_one) for _ in range(plan.sync_rounds)]
        recs.append(summarize(backend, n, None, "sync_partial_s", inc, "s",
                              "CPU time: add one virtual service + 10 real servers (and remove it)"))
    return recs


# ---------------------------------------------------------------- nftables

def nftables_point(n: int, state: ProxyState, plan: EmulatedPlan, state_plus: ProxyState | None) -> list[Record]:
    from dataplane.engine.nft_batch import BatchNftEvaluator
    from dataplane.engine.rng import SplitMixRandom
    from dataplane.engine.types import PacketMeta
    from dataplane.proxy.nftables.generator import changes, generate
    from dataplane.proxy.nftables.parser import parse

    backend = "emulated-nftables"
    text = generate(state)
    ev = BatchNftEvaluator(parse(text), rng=SplitMixRandom(plan.seed), local_addresses=CONTEXT.node_ips)
    in_map_order = sorted(state.service_ports.values(), key=lambda s: (str(s.name), s.protocol))
    ordered = [(s.cluster_ip, s.port) for s in in_map_order]
    m = plan.python_packets * 10
    rng = random.Random(plan.seed)
    packets = {pos: [PacketMeta.make(CLIENT, vip, "tcp", 1024 + i % 60000, port, tcp_flags=0x02, iif="eth0")
                     for i, (vip, port) in enumerate(tg)] for pos, tg in _targets(ordered, m, rng).items()}
    rows = {pos: ev.prepare(ps) for pos, ps in packets.items()}
    rules = {}
    for pos, ps in packets.items():
        decisions = ev.evaluate_many(ps, "prerouting")
        if any(d.nat is None for d in decisions):
            raise RuntimeError(f"{backend} N={n}: a packet to a service was not DNATed")
        rules[pos] = sum(d.rules_evaluated for d in decisions) / len(decisions)
    if ev.fallback_packets:
        raise RuntimeError(f"{backend} N={n}: {ev.fallback_packets} packets left the numba path")

    def run(pos: str) -> float:
        ps, rs = packets[pos], rows[pos]
        t0 = time.thread_time()
        ev.run(rs, "prerouting", ps)
        return (time.thread_time() - t0) / len(ps) * 1e9

    samples = run_abba({pos: (lambda pos=pos: run(pos)) for pos in packets}, plan.rounds)
    recs = [summarize(backend, n, pos, "new_conn_ns", samples[pos], "ns",
                      f"{m} packets per round, numba batch evaluator (nft_batch), thread CPU time")
            for pos in POSITIONS]
    recs += [derived(backend, n, pos, "rules_evaluated", rules[pos], "rules") for pos in POSITIONS]
    arrays = [v for v in vars(ev.compiled).values() if isinstance(v, np.ndarray)]
    recs.append(derived(backend, n, None, "memory_bytes_per_service", sum(a.nbytes for a in arrays) / n, "B",
                        "the compiled ruleset's arrays (rules, chains, hash tables, numgen maps)"))
    recs.append(derived(backend, n, None, "rules_text_bytes_per_service", len(text) / n, "B", "nft -f input"))
    if state_plus is not None:
        full, part = [], []
        for i in range(plan.sync_rounds):
            a, b = (state, state_plus) if i % 2 == 0 else (state_plus, state)
            full.append(_cpu(lambda: generate(b)))
            part.append(_cpu(lambda: changes(a, b)))
        recs.append(summarize(backend, n, None, "sync_full_s", full, "s", "CPU time: full transaction text"))
        recs.append(summarize(backend, n, None, "sync_partial_s", part, "s",
                              "CPU time: one-service change transaction (diff of both states)"))
    return recs


# ---------------------------------------------------------------- conntrack hits

_FLOWS: dict[tuple[int, int], object] = {}


def conntrack_point(n: int, plan: EmulatedPlan) -> list[Record] | None:
    """Established-packet cost with N services configured.

    The emulator's established path (as the kernel's) never reads the nat rules, so the connection
    table is the same at every N (conntrack_connections connections): the figure is flat by construction and
    is here as the per-request cost of keepalive; the kernel anchors are the real check."""
    try:
        from benchmarks.conntrack_hit import batch_columns, connections
        from dataplane.engine.conntrack_batch import HIT, FlowCache
    except ImportError:
        return None
    key = (plan.conntrack_connections, plan.seed)
    if key not in _FLOWS:
        table = connections(plan.conntrack_connections, plan.seed)
        _FLOWS[key] = (FlowCache.build(table), batch_columns(table, 200_000, plan.seed))
    cache, cols = _FLOWS[key]  # type: ignore[misc]
    res = cache.lookup_columns(cols, 1.0)
    if not (res.status == HIT).all():
        raise RuntimeError(f"emulated-conntrack N={n}: established packets missed the flow cache")
    samples = [_cpu(lambda: cache.lookup_columns(cols, 1.0)) / 200_000 * 1e9 for _ in range(plan.rounds)]
    return [summarize("emulated-conntrack", n, "random", "established_ns", samples, "ns",
                      f"{plan.conntrack_connections} established connections, lookup + NAT rewrite")]


# ---------------------------------------------------------------- derived (the seed's model)

def derive(records: list[Record]) -> list[Record]:
    """Cores at 1,000 new connections/s (= cost x rate) and keepalive's effect, from the measurements."""
    out: list[Record] = []
    by = {(r.backend, r.services, r.position, r.metric): r for r in records}
    hit = {r.services: r.value for r in records
           if r.metric == "established_ns" and r.backend == "emulated-conntrack"}
    backends = sorted({r.backend for r in records if r.metric == "new_conn_ns"})
    for b in backends:
        ns = sorted({r.services for r in records if r.backend == b and r.metric == "new_conn_ns"})
        base = by.get((b, ns[0], "random", "new_conn_ns"))
        for n in ns:
            r = by.get((b, n, "random", "new_conn_ns"))
            if r is None:
                continue
            cores = r.value * 1e-9 * RATE
            out.append(derived(b, n, "random", "cores_at_1000cps", cores, "cores",
                               "new-connection decision cost x 1,000/s"))
            if base is not None:
                out.append(derived(b, n, "random", "extra_cores_at_1000cps", cores - base.value * 1e-9 * RATE,
                                   "cores", f"minus the same at N={ns[0]}"))
            rules = by.get((b, n, "random", "rules_evaluated"))
            h = hit.get(n) if hit else None
            if h is None and hit:
                h = hit[min(hit, key=lambda k: abs(k - n))]
            for k in (1, 100):
                if rules is not None:
                    out.append(derived(b, n, "random", f"rules_per_request_k{k}", rules.value / k, "rules",
                                       f"{k} requests per connection: only the first packet walks the rules"))
                if h is not None and not b.startswith("emulated-ipvs"):
                    out.append(derived(b, n, "random", f"ns_per_request_k{k}", (r.value + (k - 1) * h) / k, "ns",
                                       f"(new + {k - 1} x conntrack hit) / {k}"))
    return out
