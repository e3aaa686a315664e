"""Exponential backoff with jitter: the one schedule every retry loop of the mesh uses (the CA
client's refresh, the discovery client's reconnects, the lab's restarts).

Attempt n (0-based) waits ``min(cap, initial * multiplier**n)``, scaled by a random factor in
``[1 - jitter, 1]`` so that clients that failed together spread out. A loop keeps its own attempt
count and resets it to 0 after a success.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    cap: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5  # 0: no randomness (the lab's restarts, tests)
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.cap or self.cap <= 0 or self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"backoff needs 0 <= initial <= cap, cap > 0, multiplier >= 1, 0 <= jitter < 1: {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0 for the first retry)."""
        base = min(self.cap, self.initial * self.multiplier ** min(max(attempt, 0), 64))
        return base * self.uniform(1 - self.jitter, 1) if self.jitter else base
