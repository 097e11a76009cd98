"""Capped exponential backoff with full jitter.

"Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter"): the delay before
retry *n* is uniform in ``[0, min(cap, base * 2**n)]``. It spreads retries of many writers
apart, which is what a throttled table needs; the randomness is injected for tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    base: float = 0.05  # seconds
    cap: float = 10.0  # seconds
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def ceiling(self, retry: int) -> float:
        """The largest delay retry number ``retry`` (0-based) may wait."""
        # Cap the exponent before computing it, so a long outage cannot overflow a float.
        return min(self.cap, self.base * (2 ** min(retry, 62)))

    def delay(self, retry: int) -> float:
        return self.random() * self.ceiling(retry)
