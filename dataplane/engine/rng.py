"""The engine's random stream: SplitMix64, identical in pure Python and in numba.

Probabilistic matches (iptables `statistic --mode random`, nft `numgen random`) draw from it, so
the readable reference evaluator and the numba batch evaluator make the same choices under the
same seed. `SplitMixRandom` is a `random.Random`, so code written against the standard interface
(`getrandbits`, `random`, `randrange`) uses this stream unchanged.
"""

from __future__ import annotations

import random

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
GOLDEN = 0x9E37_79B9_7F4A_7C15


def splitmix64_next(state: int) -> tuple[int, int]:
    """One step: (new state, 64-bit output). Steele, Lea & Flood, "Fast splittable PRNGs" (2014)."""
    state = (state + GOLDEN) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & MASK64
    return state, z ^ (z >> 31)


class SplitMixRandom(random.Random):
    """random.Random driven by SplitMix64; `state` can be handed to numba kernels and back."""

    def __init__(self, seed: int = 0) -> None:
        self.state = seed & MASK64
        super().__init__(seed)

    def seed(self, a: object = None, version: int = 2) -> None:  # noqa: D102 - random.Random API
        self.state = (hash(a) if a is not None and not isinstance(a, int) else int(a or 0)) & MASK64

    def getstate(self) -> object:
        return self.state

    def setstate(self, state: object) -> None:
        self.state = int(state)  # type: ignore[call-overload]

    def next_u64(self) -> int:
        self.state, out = splitmix64_next(self.state)
        return out

    def u32(self) -> int:
        """The analogue of the kernel's get_random_u32(): the high half of one 64-bit output."""
        return self.next_u64() >> 32

    def getrandbits(self, k: int) -> int:
        if k <= 32:
            return self.u32() >> (32 - k) if k else 0
        out, bits = 0, 0
        while bits < k:
            out = (out << 32) | self.u32()
            bits += 32
        return out >> (bits - k)

    def random(self) -> float:
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))
