"""The markdown report of a run: one function per section, each a table over the records."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from benchmarks.bench_stats import Record

PUBLISHED = ("2019 measurement (1,000 req/s, 10 pods per service): at 10,000 services iptables mode "
             "added about 0.35 core without keepalive, IPVS about 8%; about 20,000 rules walked per new "
             "connection.")
O1_BACKENDS = ("emulated-ipvs-rr", "emulated-ipvs-sh", "emulated-nftables", "kernel-nft-vmap")
POSITIONS = ("first", "last", "random")


class Index:
    """Records by (backend, services, position, metric)."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.records = list(records)
        self.by = {(r.backend, r.services, r.position, r.metric): r for r in self.records}

    def get(self, backend: str, n: int, position: str | None, metric: str) -> Record | None:
        return self.by.get((backend, n, position, metric))

    def value(self, backend: str, n: int, position: str | None, metric: str) -> float | None:
        r = self.by.get((backend, n, position, metric))
        return r.value if r else None

    def ns(self, backend: str | None = None, metric: str | None = None) -> list[int]:
        return sorted({r.services for r in self.records
                       if (backend is None or r.backend == backend) and (metric is None or r.metric == metric)})

    def backends(self, metric: str) -> list[str]:
        return sorted({r.backend for r in self.records if r.metric == metric})


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def cell(r: Record | None) -> str:
    """median (min–max), '> x' for a timed-out lower bound."""
    if r is None:
        return "–"
    s = fmt(r.value)
    if r.min is not None and r.max is not None and r.rounds > 1:
        s += f" ({fmt(r.min)}–{fmt(r.max)})"
    if r.extra.get("timed_out"):
        s = "> " + s
    return s


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _section(title: str, body: list[str]) -> list[str]:
    return [f"## {title}", ""] + [x for b in body for x in (b, "")]


# ---------------------------------------------------------------- sections

def header(meta: dict[str, Any]) -> list[str]:
    m = meta.get("machine", {})
    lines = [f"# dataplane bench — {meta.get('preset', '')} run, {meta.get('started', '')}", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs, kernel {m.get('kernel', '?')}; "
             f"{meta.get('versions', {})}. Run time {meta.get('duration_s', 0):.0f} s. Values are medians of "
             "rounds (min–max in brackets); emulator costs are thread CPU time; kernel costs are per SYN "
             f"with the sender pinned, measured as {meta.get('kernel_clock', 'wall time')} (wall time kept "
             "as new_conn_wall_ns).", ""]
    if meta.get("skipped"):
        lines += ["Skipped: " + "; ".join(meta["skipped"]), ""]
    return lines


def new_connection_cost(ix: Index) -> list[str]:
    backends, ns, out = ix.backends("new_conn_ns"), ix.ns(metric="new_conn_ns"), []
    for pos in POSITIONS:
        rows = [[str(n)] + [cell(ix.get(b, n, pos, "new_conn_ns")) for b in backends] for n in ns]
        if any(c != "–" for row in rows for c in row[1:]):
            out += _section(f"New-connection decision cost, target service {pos} (ns)",
                            [table(["N"] + backends, rows)])
    return out


def established_cost(ix: Index) -> list[str]:
    eb = ix.backends("established_ns")
    cols = [(b, p) for b in eb for p in POSITIONS if any(ix.get(b, n, p, "established_ns") for n in ix.ns(b))]
    if not cols:
        return []
    rows = [[str(n)] + [cell(ix.get(b, n, p, "established_ns")) for b, p in cols]
            for n in ix.ns(metric="established_ns")]
    return _section("Established packet (conntrack hit) cost (ns)", [
        "The nat rules are not consulted for an established connection: flat in N for every backend.",
        table(["N"] + [f"{b} ({p})" for b, p in cols], rows)])


def rules_evaluated(ix: Index) -> list[str]:
    rb = ix.backends("rules_evaluated")
    rows = [[str(n)] + [f"{fmt(v, 5)} ({v / n:.2f} N)" if (v := ix.value(b, n, "last", "rules_evaluated")) else "–"
                        for b in rb] for n in ix.ns(metric="rules_evaluated")]
    return _section("Rules evaluated per new connection, last service", [
        "Expected: about 2N for the classic layout, N for the modern one, constant for nftables.",
        table(["N"] + rb, rows)])


def per_rule(ix: Index) -> list[str]:
    pb = ix.backends("ns_per_rule")
    if not pb:
        return []
    rows = [[str(n)] + [cell(ix.get(b, n, "last", "ns_per_rule")) for b in pb] for n in ix.ns(metric="ns_per_rule")]
    ratios = []
    for k in ("kernel-iptables-legacy", "kernel-iptables-nft"):
        for e in ("emulated-iptables-classic", "emulated-iptables-modern"):
            common = [n for n in ix.ns(k, "ns_per_rule") if ix.get(e, n, "last", "ns_per_rule") and n >= 100]
            if common:
                n = max(common)
                kv, ev = ix.value(k, n, "last", "ns_per_rule"), ix.value(e, n, "last", "ns_per_rule")
                if kv and ev:
                    ratios.append(f"- {k} / {e} at N={n}: {kv:.2f} / {ev:.2f} ns = **{kv / ev:.1f}×**")
    return _section("Cost per rule skipped (ns): emulator against kernel",
                    [table(["N"] + pb, rows)] + (["\n".join(ratios)] if ratios else []))


def _flat_row(ix: Index, b: str, label: str, pos: str, metric: str) -> list[str] | None:
    bn = ix.ns(b, metric)
    if len(bn) < 2:
        return None
    lo, hi = ix.value(b, bn[0], pos, metric), ix.value(b, bn[-1], pos, metric)
    if not (lo and hi):
        return None
    ratio = hi / lo
    within = "yes" if abs(ratio - 1) <= 0.2 else "no"
    return [label, pos, f"{bn[0]} → {bn[-1]}", fmt(lo), fmt(hi), f"{ratio:.2f}", within]


def flatness(ix: Index) -> list[str]:
    rows = [row for b in ix.backends("new_conn_ns") if b in O1_BACKENDS for pos in POSITIONS
            if (row := _flat_row(ix, b, b, pos, "new_conn_ns"))]
    rows += [row for b in ix.backends("established_ns") for pos in ("last", "random")
             if (row := _flat_row(ix, b, f"{b} (established)", pos, "established_ns"))]
    probes = [f"N={n:,}: {v:.2f}" for n in ix.ns("emulated-ipvs-rr", "slots_probed")
              if (v := ix.value("emulated-ipvs-rr", n, "random", "slots_probed"))]
    return _section("O(1) flatness (cost at the largest N / at the smallest)", [
        "A fixed target (first, last) measures the algorithm; a uniformly random target over N services also "
        "touches memory that grows with N (an IPVS table of 32 B x 4N..8N slots, Python dicts), so its cost "
        "rises with cache misses while the work per lookup stays the same (see the slots probed per lookup).",
        table(["backend", "position", "N", "ns small N", "ns large N", "ratio", "within ±20%"], rows),
        "emulated-ipvs-rr slots probed per lookup: " + ("; ".join(probes) or "–")])


def cores(ix: Index) -> list[str]:
    cb = ix.backends("cores_at_1000cps")
    rows = [[str(n)] + [fmt(ix.value(b, n, "random", "cores_at_1000cps")) for b in cb]
            for n in ix.ns(metric="cores_at_1000cps")]
    return _section("Cores consumed at 1,000 new connections/s (cost × rate, random target)", [
        "The seed's model: decision cost × 1,000/s. Kernel rows use (first + last) / 2 as the random-target "
        f"cost.\nPublished: {PUBLISHED}", table(["N"] + cb, rows)])


def keepalive(ix: Index) -> list[str]:
    rows, cost_rows = [], []
    for b in ix.backends("rules_per_request_k1"):
        for n in ix.ns(b, "rules_per_request_k1"):
            k1 = ix.value(b, n, "random", "rules_per_request_k1")
            k100 = ix.value(b, n, "random", "rules_per_request_k100")
            if k1 and k100:
                rows.append([b, str(n), fmt(k1, 5), fmt(k100, 4), f"{k1 / k100:.0f}×"])
    for b in ix.backends("ns_per_request_k1"):
        for n in ix.ns(b, "ns_per_request_k1"):
            k1, k100 = ix.value(b, n, "random", "ns_per_request_k1"), ix.value(b, n, "random", "ns_per_request_k100")
            if k1 and k100:
                cost_rows.append([b, str(n), fmt(k1), fmt(k100)])
    return _section("Keepalive: 1 vs 100 requests per connection", [
        "Rules walked per request:", table(["backend", "N", "k=1", "k=100", "reduction"], rows),
        "Cost per request (ns) = (new connection + (k − 1) × established packet) / k:",
        table(["backend", "N", "k=1", "k=100"], cost_rows)])


def updates(ix: Index) -> list[str]:
    metrics = ("load_s", "sync_full_s", "sync_partial_s")
    rows = []
    for b in sorted({r.backend for r in ix.records if r.metric in metrics}):
        for n in ix.ns(b):
            cells = [cell(ix.get(b, n, None, m)) for m in metrics]
            if any(c != "–" for c in cells):
                rows.append([b, str(n)] + cells)
    return _section("Rule updates (s): initial load, +1 service full sync, +1 service partial/incremental", [
        "Emulated: CPU time to generate the update; kernel: wall time of the loader.",
        table(["backend", "N", "initial load", "full sync", "partial sync"], rows)])


def memory(ix: Index) -> list[str]:
    rows = []
    for b in sorted({r.backend for r in ix.records if r.metric.endswith("_per_service")}):
        for n in ix.ns(b):
            m1 = ix.value(b, n, None, "memory_bytes_per_service")
            m2 = ix.value(b, n, None, "rules_text_bytes_per_service")
            if m1 or m2:
                rows.append([b, str(n), fmt(m1), fmt(m2)])
    return _section("Memory per service (bytes)", [table(["backend", "N", "compiled structures", "rule text"], rows)])


SECTIONS = (new_connection_cost, established_cost, rules_evaluated, per_rule, flatness, cores, keepalive,
            updates, memory)


def markdown(meta: dict[str, Any], records: list[Record], plots: list[str]) -> str:
    ix = Index(records)
    parts = header(meta)
    for section in SECTIONS:
        parts += section(ix)
    parts += _section("Plots", ["\n".join(f"![{p}]({p})" for p in plots)])
    return "\n".join(parts)


# ---------------------------------------------------------------- the README table

SUMMARY_COLUMNS = (
    ("iptables classic, last (ns)", "emulated-iptables-classic", "last", "new_conn_ns"),
    ("rules", "emulated-iptables-classic", "last", "rules_evaluated"),
    ("iptables modern, last (ns)", "emulated-iptables-modern", "last", "new_conn_ns"),
    ("rules", "emulated-iptables-modern", "last", "rules_evaluated"),
    ("ipvs rr (ns)", "emulated-ipvs-rr", "random", "new_conn_ns"),
    ("nftables (ns)", "emulated-nftables", "random", "new_conn_ns"),
    ("kernel legacy, first / last (µs)", "kernel-iptables-legacy", None, "new_conn_ns"),
    ("kernel iptables-nft, first / last (µs)", "kernel-iptables-nft", None, "new_conn_ns"),
    ("kernel nft vmap, first / last (µs)", "kernel-nft-vmap", None, "new_conn_ns"),
)


def summary(meta: dict[str, Any], records: list[Record]) -> str:
    """One compact table for the README: emulator and kernel side by side, medians."""
    ix = Index(records)
    rows = []
    for n in ix.ns(metric="new_conn_ns"):
        row = [f"{n:,}"]
        for _, b, pos, metric in SUMMARY_COLUMNS:
            if pos is None:
                f, la = ix.value(b, n, "first", metric), ix.value(b, n, "last", metric)
                row.append(f"{f / 1000:.1f} / {la / 1000:.1f}" if f and la else "–")
            else:
                v = ix.value(b, n, pos, metric)
                row.append(fmt(v, 3 if metric != "rules_evaluated" else 5))
        rows.append(row)
    slopes = []
    for b in ("kernel-iptables-legacy", "kernel-iptables-nft", "emulated-iptables-classic", "emulated-iptables-modern"):
        vals = [(n, v) for n in ix.ns(b, "ns_per_rule") if n >= 100 and (v := ix.value(b, n, "last", "ns_per_rule"))]
        if vals:
            slopes.append(f"{b}: " + ", ".join(f"{v:.1f} at N={n:,}" for n, v in vals))
    m = meta.get("machine", {})
    preset = "" if meta.get("preset") == "full" else f" --{meta.get('preset')}"
    return "\n".join([f"Run: `dataplane bench{preset}`, {meta.get('started')}, {m.get('cpus')} CPUs, "
                      f"kernel {m.get('kernel')}, {meta.get('duration_s')} s.", "",
                      table(["N"] + [c[0] for c in SUMMARY_COLUMNS], rows), "",
                      "ns per rule skipped: " + ("; ".join(slopes) or "–")])
