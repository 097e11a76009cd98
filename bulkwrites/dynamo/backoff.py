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


@dataclass
class Stall:
    """One batch's calls in a row that made no progress, and the pause before its next call.

    Shared by the writer and the reader. The pause grows only while calls make no progress: a
    call that wrote (or read) some of its requests says the table is serving them (how fast is
    the rate limiter's business), so the rest go again after a base-sized jittered pause.
    Growing it on every call left the last items of a batch waiting seconds under a steady 30 %
    of unprocessed items. Nor does it grow for a refusal the rate limiter explains as its
    background share (see :meth:`refused`).
    """

    backoff: Backoff
    calls: int = 0  # calls in a row without progress: giving up counts these
    growth: int = 0  # those of them that lengthen the pause

    def pause(self) -> float:
        """Seconds to wait before the next call of the batch (after its first)."""
        return self.backoff.delay(max(0, self.growth - 1))

    def progressed(self) -> None:
        self.calls = self.growth = 0

    def refused(self, *, background: bool) -> None:
        """A call refused for capacity (all unprocessed, or a throttling error).

        ``background``: the job's rate limiter has learnt that DynamoDB refuses a share of every
        call whatever the rate (random faults; a share beyond it still cuts the rate). A request
        refused again and again is then that share's bad luck, and the limiter already paces
        what the table is sent: the pause stays at its base. Doubling it left a batch's last
        item, alone in its call, waiting up to the 10 s cap after seven unlucky calls in a row
        while the table took everything else (bench chaos runs of 10-25 s among runs of 3-5 s).
        Without a limiter, or with no background share learnt, refusals are capacity's.
        """
        self.calls += 1
        self.growth += 0 if background else 1

    def failed(self) -> None:
        """A call that failed for another reason (5xx, a dropped connection): back off."""
        self.calls += 1
        self.growth += 1
