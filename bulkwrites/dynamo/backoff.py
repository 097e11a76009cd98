"""Capped exponential backoff with full jitter.

"Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter"): the delay before
retry *n* is uniform in ``[0, min(cap, base * 2**n)]``. It spreads retries of many writers
apart, which is what a throttled table needs; the randomness is injected for tests.
"""

from __future__ import annotations

import math
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
        # ldexp with a bounded exponent: no OverflowError however long the outage; a product
        # past the float range is inf, and min() turns it into the cap.
        return min(self.cap, self.base * math.ldexp(1.0, min(retry, 1023)))

    def delay(self, retry: int) -> float:
        return self.random() * self.ceiling(retry)
