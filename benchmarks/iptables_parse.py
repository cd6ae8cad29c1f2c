"""Benchmark: parsing a kube-proxy-sized iptables-save dump, time and memory, side by side.

    .venv/bin/python benchmarks/iptables_parse.py [--services 10000] [--endpoints 10] [--json]

Measured in one run:
- a dump in iptables-save's canonical form (`dataplane.proxy.iptables.sample`, which a kernel
  test checks line for line against real iptables-save output): parse, render back;
- the same cluster from the kube-proxy generator (kube-proxy's own restore-input spellings), when
  the generator is importable;
- a floor to compare with: `str.split()` of every line, the least any tokenizing parser must do;
- peak Python heap during the parse (tracemalloc, a separate pass) and the heap the parsed model
  keeps, plus the process's max RSS.
CPU time of this process is reported next to wall time: on a shared machine wall time mostly
measures the neighbours. Target from issue 4: 320,000 rules "in a few seconds".
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataplane.proxy.iptables.parser import parse  # noqa: E402
from dataplane.proxy.iptables.sample import kube_proxy_dump  # noqa: E402


def cpu_timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    gc.collect()
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def generator_dump(services: int, endpoints: int) -> str | None:
    try:
        from dataplane.k8s.loader import load_objects
        from dataplane.k8s.synthetic import synthetic_objects
        from dataplane.proxy.iptables.generator import GeneratorOptions, generate
        from dataplane.proxy.model import NodeContext, build_state
    except ImportError:
        return None
    ctx = NodeContext("node-0", ("192.168.100.10",), ("10.244.0.0/16",))
    state = build_state(load_objects(synthetic_objects(services, endpoints)), ctx)
    return generate(state, GeneratorOptions()).text()


def measure(services: int, endpoints: int) -> dict[str, Any]:
    text = kube_proxy_dump(services, endpoints)
    lines = text.splitlines()
    floor_wall, floor_cpu, _ = cpu_timed(lambda: [line.split() for line in lines])
    wall, cpu, rs = cpu_timed(lambda: parse(text))
    rules = sum(t.rule_count() for t in rs.tables.values())
    render_wall, render_cpu, out = cpu_timed(rs.render)
    assert out == text, "the canonical dump must render back identically"
    del rs, out
    gc.collect()
    tracemalloc.start()
    kept = parse(text)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    result: dict[str, Any] = {
        "services": services, "endpoints": endpoints, "rules": rules, "lines": len(lines),
        "dump_mb": round(len(text) / 1e6, 1),
        "canonical": {"parse_wall_s": round(wall, 3), "parse_cpu_s": round(cpu, 3),
                      "us_per_rule_cpu": round(cpu / rules * 1e6, 2),
                      "render_wall_s": round(render_wall, 3), "render_cpu_s": round(render_cpu, 3)},
        "split_floor": {"wall_s": round(floor_wall, 3), "cpu_s": round(floor_cpu, 3),
                        "parse_over_split_cpu": round(cpu / floor_cpu, 2)},
        "memory": {"parse_peak_mb": round(peak / 1e6, 1), "model_kept_mb": round(current / 1e6, 1),
                   "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1)},
        "loadavg": os.getloadavg()[0],
    }
    del text, lines
    gen = generator_dump(services, endpoints)
    if gen is not None:
        gwall, gcpu, grs = cpu_timed(lambda: parse(gen))
        grules = sum(t.rule_count() for t in grs.tables.values())
        result["generator"] = {"rules": grules, "parse_wall_s": round(gwall, 3), "parse_cpu_s": round(gcpu, 3),
                               "us_per_rule_cpu": round(gcpu / grules * 1e6, 2)}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result = measure(args.services, args.endpoints)
    if args.json:
        print(json.dumps(result))
        return 0
    c, f, m = result["canonical"], result["split_floor"], result["memory"]
    print(f"{result['rules']} rules ({result['dump_mb']} MB), load average {result['loadavg']:.1f}")
    print(f"parse (iptables-save form): {c['parse_wall_s']} s wall, {c['parse_cpu_s']} s CPU "
          f"({c['us_per_rule_cpu']} us/rule); {f['parse_over_split_cpu']}x the split-every-line floor "
          f"({f['cpu_s']} s CPU)")
    print(f"render back: {c['render_wall_s']} s wall, {c['render_cpu_s']} s CPU")
    if "generator" in result:
        g = result["generator"]
        print(f"parse (generator output, {g['rules']} rules): {g['parse_wall_s']} s wall, {g['parse_cpu_s']} s CPU")
    print(f"memory: parse peak {m['parse_peak_mb']} MB, model keeps {m['model_kept_mb']} MB, max RSS {m['max_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
