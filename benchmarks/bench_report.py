"""Writes a benchmark run: results.json, results.csv, report.md, summary.md and the PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from benchmarks.bench_markdown import markdown, summary
from benchmarks.bench_plots import write_plots
from benchmarks.bench_stats import Record

CSV_FIELDS = ("backend", "services", "position", "metric", "value", "unit", "min", "max", "rounds", "note")


def write_all(out: Path, meta: dict[str, Any], records: list[Record]) -> list[Path]:
    """Every output file of one run; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    results, table, report, short = (out / "results.json", out / "results.csv", out / "report.md",
                                     out / "summary.md")
    results.write_text(json.dumps({"meta": meta, "results": [r.as_dict() for r in records]}, indent=1) + "\n")
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r.as_dict())
    plots = write_plots(out, records)
    report.write_text(markdown(meta, records, [p.name for p in plots]))
    short.write_text(summary(meta, records) + "\n")
    return [results, table, report, short, *plots]


def load(path: Path) -> tuple[dict[str, Any], list[Record]]:
    """A results.json back as (meta, records), to redraw the report and plots of an earlier run."""
    data = json.loads(path.read_text())
    return data["meta"], [Record(**r) for r in data["results"]]
