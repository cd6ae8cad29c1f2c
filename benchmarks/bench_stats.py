"""Records and statistics shared by the `dataplane bench` measurements.

Every result is a `Record` (one measured quantity at one configuration) summarised from repeated
rounds: the median is the value, min and max show the spread. Configurations that are compared with
each other are measured in ABBA order so slow drift of this shared VM's speed cancels out.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

BACKENDS = ("emulated-iptables-classic", "emulated-iptables-modern", "emulated-ipvs-rr", "emulated-ipvs-sh",
            "emulated-nftables", "emulated-conntrack", "kernel-iptables-legacy", "kernel-iptables-nft",
            "kernel-nft-vmap")
POSITIONS = ("first", "last", "random")


@dataclass
class Record:
    """One measurement: `value` is the median of `rounds` samples (min/max their range)."""

    backend: str
    services: int
    position: str | None
    metric: str
    value: float
    unit: str
    min: float | None = None
    max: float | None = None
    rounds: int = 1
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["extra"]:
            d.pop("extra")
        return d


def summarize(backend: str, services: int, position: str | None, metric: str, samples: Sequence[float],
              unit: str, note: str = "") -> Record:
    """Median with min/max of repeated samples."""
    if not samples:
        raise ValueError(f"no samples for {backend} {metric} at N={services}")
    return Record(backend, services, position, metric, float(statistics.median(samples)), unit,
                  float(min(samples)), float(max(samples)), len(samples), note)


def derived(backend: str, services: int, position: str | None, metric: str, value: float, unit: str,
            note: str = "") -> Record:
    """A value computed from other records (no rounds of its own)."""
    return Record(backend, services, position, metric, float(value), unit, None, None, 0, note)


def abba(configs: Sequence[str], rounds: int) -> list[str]:
    """A B B A A B B A ... (for two configs; more configs: forward then reversed), `rounds` per config."""
    order: list[str] = []
    forward = True
    while len(order) < rounds * len(configs):
        order.extend(configs if forward else list(reversed(configs)))
        forward = not forward
    return order


def run_abba(measure: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each configuration's `measure()` `rounds` times in ABBA order; samples per configuration."""
    samples: dict[str, list[float]] = {k: [] for k in measure}
    for name in abba(list(measure), rounds):
        samples[name].append(measure[name]())
    return samples


def paired_differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """b - a per round (the rounds were adjacent in ABBA order, so drift mostly cancels)."""
    return [y - x for x, y in zip(a, b)]


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Slope of the least-squares line through (xs, ys)."""
    if len(xs) < 2:
        raise ValueError("a slope needs at least two points")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        raise ValueError("a slope needs two different x values")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den
