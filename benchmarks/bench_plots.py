"""PNG plots of a run (matplotlib, Agg): cost, rule walk, rules evaluated, cores and sync time vs N."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_markdown import Index
from benchmarks.bench_stats import Record

Series = dict[str, list[tuple[int, float]]]


def write_plots(out: Path, records: list[Record]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ix = Index(records)
    made: list[Path] = []

    def plot(name: str, title: str, ylabel: str, series: Series) -> None:
        series = {k: v for k, v in series.items() if v}
        if not series:
            return
        fig, ax = plt.subplots(figsize=(7.5, 5))
        colors = plt.get_cmap("tab10" if len(series) <= 10 else "tab20").colors  # type: ignore[attr-defined]
        for i, (label, pts) in enumerate(sorted(series.items())):
            xs, ys = zip(*sorted(pts))
            style = "--" if label.startswith("kernel") else "-"  # kernel dashed, emulator solid
            ax.plot(xs, ys, style, marker="o", label=label, color=colors[i % len(colors)])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("services (N), 10 endpoints each")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        made.append(out / name)

    def pts(backend: str, pos: str | None, metric: str) -> list[tuple[int, float]]:
        return [(n, v) for n in ix.ns(backend, metric) if (v := ix.value(backend, n, pos, metric)) and v > 0]

    plot("cost_vs_n.png", "New-connection cost, last service", "ns per new connection",
         {b: pts(b, "last", "new_conn_ns") for b in ix.backends("new_conn_ns")})
    # iptables only: a verdict map's last - first is noise around zero (see report.md)
    walk = {b: pts(b, "last", "last_minus_first_ns") for b in ix.backends("last_minus_first_ns") if "iptables" in b}
    for b in ("emulated-iptables-classic", "emulated-iptables-modern"):
        walk[b] = [(n, la - f) for n in ix.ns(b, "new_conn_ns")
                   if (la := ix.value(b, n, "last", "new_conn_ns")) and (f := ix.value(b, n, "first", "new_conn_ns"))
                   and la > f]
    plot("rule_walk_vs_n.png", "Rule-walk cost: last service minus first", "ns per new connection", walk)
    plot("rules_vs_n.png", "Rules evaluated per new connection, last service", "rules",
         {b: pts(b, "last", "rules_evaluated") for b in ix.backends("rules_evaluated")})
    plot("cores_vs_n.png", "Cores at 1,000 new connections/s (random target)", "cores",
         {b: pts(b, "random", "cores_at_1000cps") for b in ix.backends("cores_at_1000cps")})
    sync: Series = {}
    for b in sorted({r.backend for r in records if r.metric in ("sync_full_s", "sync_partial_s")}):
        sync[f"{b} full"] = pts(b, None, "sync_full_s")
        sync[f"{b} partial"] = pts(b, None, "sync_partial_s")
    plot("sync_vs_n.png", "Rule update for one added service", "seconds", sync)
    return made
