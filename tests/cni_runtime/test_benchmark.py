"""The speed benchmark runs end to end (tiny size) and leaves nothing; the numbers live in the report."""

from __future__ import annotations

import pytest

from benchmarks import cni_speed
from dataplane.cni.runtime import pluginhost

pytestmark = pytest.mark.requires("root", "veth", "bridge", "reference-plugins")


def test_cni_speed_benchmark_smoke():
    for name in ("bridge", "host-local"):
        if pluginhost.available(name):
            pytest.skip(f"our {name} plugin is not importable")
    report = cni_speed.run(2)
    assert set(report["series"]) == {"go", "ours"}
    for series in report["series"].values():
        assert series["n"] == 2 and 0 < series["min_ms"] <= series["p50_ms"] <= series["max_ms"]
    assert report["ratio_p50_ours_vs_go"] > 0
    assert "ratio ours/go at p50" in cni_speed.format_report(report)
