"""The rate controller's constants and the small pure rules around it (no Redis here).

The rules themselves run in Redis (``report.lua``, ``take.lua``) so that every worker of a job
shares one decision; :class:`RatePolicy` is what they are given, in ``args()`` order.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass


@dataclass(frozen=True)
class RatePolicy:
    """How the job's rate follows DynamoDB (see the package docstring for the design).

    The constants come from the standard designs, not from one run: CUBIC's growth constant
    and its window ("round") of one round trip, botocore's adaptive mode's clamp at twice the
    measured sending rate, and a significance test on each round's refused share.
    """

    burst_seconds: float = 0.25  # bucket depth: this many seconds of the rate may go at once
    cap_window: float = 10.0  # the operator's cap holds exactly over any window this long or longer
    cubic_c: float = 0.004  # CUBIC's growth, relative to w_max, per s^3: back to w_max in cbrt(cut/c) s
    max_over_sent: float = 2.0  # the adaptive rate never exceeds this multiple of the rate sent
    min_rate: float = 1.0  # WCU/s: the rate never falls below this
    min_round: float = 0.1  # seconds: a round lasts at least this, ...
    rtt_rounds: float = 2.0  # ... and this many smoothed round trips, ...
    min_calls: int = 8  # ... and holds at least this many calls (evidence, not one unlucky call)
    z: float = 2.5  # a round's refused share counts when it exceeds background by z standard errors
    headroom: float = 0.05  # after a cut, sit this share below what the table took
    floor_fraction: float = 0.9  # a cut never goes below this share of ...
    floor_window: int = 10  # ... the consumption of this many seconds (what the table delivered)
    release_after: float = 10.0  # seconds without a cut before an uncapped job may go back to unlimited
    background_weight: float = 0.1  # each round without evidence moves a learnt background share this far to its own
    min_excess: float = 0.01  # a round refusing less than this share beyond background is no evidence
    # Above w_max the probe grows at most this share of w_max per second. A table's burst capacity
    # hides an overshoot until it is spent, and every call sent meanwhile comes back partly
    # refused; tests/ratesim.py at 1,000 WCU/s: 0.05 left 5.2-6.0 % of calls partly refused, 0.03
    # 3.8-5.0 %, 0.02 2.8-3.7 %, 0.01 1.6-1.9 % but 98 % of the capacity delivered instead of 103 %
    # (a climb of 1 %/s from a deep cut is slow). 2 %/s still finds capacity that doubles in 50 s.
    probe_linear: float = 0.02
    min_background: float = 0.2  # only a cut after at least this share refused tests for a rate-independent fault
    linear_for: float = 5.0  # seconds above w_max at the linear pace before CUBIC's growth adds to it
    chain_cuts: int = 3  # a smaller share found the same below this many cuts in a row is background
    # A large share too must be found the same below this many cuts in a row. Found below one, it
    # was sometimes a table whose burst hid a probe far above it: the cut round's take included
    # the burst, the round below still refused as much, and the capacity limit was learnt as
    # background (tests/ratesim.py, 30 ms jitter: 39 % of calls partly refused for the rest of
    # the run). A rate-independent fault refuses the same share below the second cut as well.
    bg_cuts: int = 2
    evidence_window: float = 2.0  # seconds a round that refused some, not significantly, goes on gathering evidence
    # A cut that finds the table where the last one did (its take within `headroom` of the last)
    # holds the rate below it this long before climbing back, doubling cut after cut up to
    # hold_max; a cut elsewhere starts again from nothing. Each climb ends in a round of refused
    # calls at the table's limit: bench capacity runs spent 6-8 of them in 20 s, most of the
    # calls partly refused after the start. A capacity that grows is found hold_max s later.
    hold_first: float = 1.0
    hold_max: float = 8.0
    # A probe's first refused unit cuts at once (report.lua, `answered`), before a round's worth of
    # calls has measured the share: by at least this much, TCP's multiplicative decrease on a loss.
    # The call that answers is the first after the table's burst ran out and shows only part of
    # the overshoot.
    probe_cut: float = 0.1
    # The share refused whatever the rate, read from the rounds themselves (report.lua, `bq`): the
    # seen_rank-th lowest share of the last seen_rounds rounds run at or below the table's last
    # measured take, if 1 % (min_excess) or more. The median of 8: the 4th lowest of 16 was
    # below most rounds' share under a noisy fault, which went on cutting, and 16 rounds took
    # seconds to gather at a low rate (tests/ratesim.py: 4 % at random 25-31 s instead of 10).
    seen_rounds: int = 8
    seen_rank: int = 4

    def args(self) -> list[float]:
        return [float(x) for x in astuple(self)]

    def paced_cap(self, cap: float) -> float:
        """The rate a cap is paced at so that no window of ``cap_window`` s gets more (mirrors common.lua)."""
        if self.cap_window > self.burst_seconds:
            return cap * (1 - self.burst_seconds / self.cap_window)
        return cap


def charge_delta(estimate: float, consumed: float, *, throttled: bool = False) -> float:
    """What to add to a call's charge once DynamoDB answered: reported minus estimated, or 0 if unreported.

    A throttled call gets nothing back for the items DynamoDB refused: they are sent again, and
    refunding them let those retries go out at once, above the rate the job was held to (measured
    at a 1,000 WCU/s cap: 2,200-3,200 WCU/s of attempts while the limiter allowed 400-900).
    Charging attempts while throttled keeps retries paced; what is consumed never exceeds what is
    charged, so the cap still holds.
    """
    if consumed <= 0:
        return 0.0
    delta = consumed - estimate
    return max(0.0, delta) if throttled else delta


def refused_share(units: float, refused: float) -> float:
    """The share of a call's units DynamoDB refused: 1 for a throttling error, k/n for k of n unprocessed."""
    if units <= 0:
        return 0.0
    return min(1.0, max(0.0, refused / units))
