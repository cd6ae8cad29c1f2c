"""Clocks the engine reads time from, so conntrack expiry and `recent` can be tested without waiting.

Everything in the engine that needs "now" takes a `Clock`; tests pass a `ManualClock` and advance it.
Times are seconds as floats (the kernel counts jiffies; a second granularity is all timeouts need).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since an arbitrary, fixed origin; never goes backwards."""
        ...


class MonotonicClock:
    """The real clock (time.monotonic), for live use."""

    def now(self) -> float:
        return time.monotonic()


@dataclass
class ManualClock:
    """A clock that only moves when told to: `advance(seconds)` or `set(t)`."""

    t: float = 0.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance by {seconds})")
        self.t += seconds
        return self.t

    def set(self, t: float) -> None:
        if t < self.t:
            raise ValueError(f"a clock cannot go backwards (from {self.t} to {t})")
        self.t = t
