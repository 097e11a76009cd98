"""The rate-control Lua against a real Redis, with the time passed in: exact and instant.

``take.lua`` and ``report.lua`` accept ``now`` in place of the server's TIME, so each rule is
driven step by step here: pacing under a cap, tickets, evidence weighed by share and decided
once per round, the floor, the CUBIC probe, faults told from capacity, the uncapped start and
release. ``tests/ratesim.py`` then runs a worker model through the same scripts for whole
scenarios (a capacity limit, the chaos fault mix), in simulated time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis as redis_lib

from bulkwrites.dynamo.ratelimit import (
    GRANTED,
    UNLIMITED,
    WAIT,
    JobKeys,
    JobRateLimiter,
    Outcomes,
    RatePolicy,
    Scripts,
    delete_rate_state,
    explain,
    set_rate_cap,
)
from tests import ratesim

REDIS_DB = 13
POLICY = RatePolicy()
T0 = 1_000_000.0


@pytest.fixture(scope="module")
def client() -> Iterator[redis_lib.Redis]:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail('REDIS_URL is not set: run `eval "$(make -s services)"` first', pytrace=False)
    connection = redis_lib.Redis.from_url(urlsplit(url)._replace(path=f"/{REDIS_DB}").geturl())
    yield connection
    connection.close()


class Job:
    """One job's keys and the two scripts, the clock in the test's hands."""

    def __init__(self, client: redis_lib.Redis, cap: float | None = None, policy: RatePolicy = POLICY) -> None:
        self.client = client
        self.scope = f"lua-{uuid.uuid4().hex[:10]}"
        self.keys = JobKeys.for_job(self.scope)
        self.scripts = Scripts(client, policy)
        self.policy = policy
        set_rate_cap(client, self.scope, cap)

    def take(self, units: float, now: float, ticket: float | None = None) -> Any:
        return self.scripts.take(self.keys, units, ticket, now=now)

    def calls(
        self,
        now: float,
        *,
        n: int = 8,
        units: float = 25,
        refused: float = 0,
        span: float = 0.0,
        acquired_at: float | None = None,
        consumed: float | None = None,
    ) -> Any:
        """``n`` calls of ``units`` each, ``refused`` of each refused, reported at ``now``."""
        share = refused / units
        outcome = Outcomes(
            calls=n,
            units=n * units,
            refused=n * refused,
            share_sum=n * share,
            share_sq=n * share * share,
            consumed=n * (units - refused) if consumed is None else consumed,
            span=span,
            latency=n * 0.01,
            refused_calls=n if refused > 0 else 0,
        )
        return self.scripts.report(self.keys, outcome, acquired_at=acquired_at, now=now)

    def rate(self, now: float) -> float | None:
        return self.scripts.report(self.keys, now=now).rate

    def climb_past(self, now: float, above: float) -> float:
        """Rounds of 0.25 s at the allowed rate, nothing refused, until the rate is past ``above``."""
        while (rate := self.rate(now)) is not None and rate <= above:
            n = max(POLICY.min_calls, round(rate * 0.25 / 25))
            assert self.calls(now + 0.25, n=n, acquired_at=now + 0.01).event == ""
            now += 0.25
        return now

    def control(self) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.control)  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}

    def delete(self) -> None:
        delete_rate_state(self.client, self.scope)


@pytest.fixture
def make_job(client: redis_lib.Redis) -> Iterator[Callable[..., Job]]:
    made: list[Job] = []

    def make(cap: float | None = None, policy: RatePolicy = POLICY) -> Job:
        made.append(Job(client, cap, policy))
        return made[-1]

    yield make
    for job in made:
        job.delete()


# --- the bucket -----------------------------------------------------------------------------------


def test_a_cap_is_paced_so_that_no_10_second_window_gets_more_than_the_cap(make_job: Any) -> None:
    job = make_job(cap=100.0)
    grants: list[float] = []
    now, ticket = T0, None
    while now < T0 + 40:
        got = job.take(5, now, ticket)
        if got.status == GRANTED:
            grants.append(now)
            ticket = None
        else:
            ticket = got.ticket
        now += 0.01
    assert job.rate(now) == pytest.approx(POLICY.paced_cap(100.0))
    for i, first in enumerate(grants):  # every 10 s window, from every grant
        in_window = sum(1 for t in grants[i:] if t < first + 10.0)
        assert in_window * 5 <= 100.0 * 10.0
    assert len(grants) * 5 >= 0.95 * 100.0 * 40  # and the cap is used


def test_tickets_serve_callers_first_come_first_served_and_a_big_one_is_not_starved(make_job: Any) -> None:
    job = make_job(cap=100.0)
    depth = POLICY.paced_cap(100.0) * POLICY.burst_seconds
    first = job.take(depth, T0)
    assert first.status == GRANTED
    big = job.take(200, T0)  # larger than the whole bucket: goes once the bucket is full again
    assert big.status == WAIT
    small = job.take(1, T0 + 0.01)
    assert small.status == WAIT
    assert small.ticket > big.ticket
    later = T0 + big.wait + 0.001
    assert job.take(200, later, big.ticket).status == GRANTED
    assert job.take(1, later, small.ticket).status == WAIT  # the big one left the bucket in debt


def test_an_unlimited_job_is_told_so(make_job: Any) -> None:
    assert make_job().take(25, T0).status == UNLIMITED


# --- evidence, rounds and cuts ------------------------------------------------------------------------


def test_one_unlucky_call_in_a_round_is_not_a_cut(make_job: Any) -> None:
    job = make_job(cap=1000.0)
    job.calls(T0, n=7, refused=0, span=0.0)
    limits = job.calls(T0 + 0.3, n=1, refused=1)  # 1 of 25 in one call of eight
    assert limits.event == ""
    assert limits.rate == pytest.approx(POLICY.paced_cap(1000.0))


def test_refusals_are_weighed_by_their_share(make_job: Any) -> None:
    light, heavy = make_job(cap=1000.0), make_job(cap=1000.0)
    for job, refused in ((light, 2), (heavy, 20)):
        job.calls(T0, n=1, span=0.0)  # the round starts
        limits = job.calls(T0 + 0.3, n=11, refused=refused)
        assert limits.event == "cut"
    current = min(POLICY.paced_cap(1000.0), 12 * 25 / 0.3)  # the rate sent, or the cap's pace if lower
    # Cut to what the table took (1 - the round's share, or what it consumed in the round if
    # more) less 5 % headroom ...
    took = max(current * (1 - 11 * 2 / 12 / 25), (25 + 11 * 23) / 0.3)
    assert light.rate(T0 + 0.3) == pytest.approx(took * 0.95, rel=1e-6)
    # ... also below half the rate when what the table consumed bears the share out (a round's
    # take alone, an estimate, halves at most: see test_a_cut_goes_straight_to_the_take_...).
    heavy_took = max(current * (1 - 11 * 20 / 12 / 25), (25 + 11 * 5) / 0.3)
    assert heavy_took * 0.95 < current / 2
    assert heavy.rate(T0 + 0.3) == pytest.approx(heavy_took * 0.95, rel=1e-6)


def test_a_round_decides_once_and_calls_admitted_before_a_cut_do_not_count(make_job: Any) -> None:
    job = make_job(cap=1000.0)
    job.calls(T0, n=1)
    assert job.calls(T0 + 0.3, n=10, refused=25).event == "cut"
    after_cut = job.rate(T0 + 0.3)
    # The calls that were in flight come back refused too: admitted before the cut, they describe
    # the old rate and change nothing, however many.
    for k in range(20):
        limits = job.calls(T0 + 0.31 + k * 0.02, n=8, refused=25, acquired_at=T0 + 0.29)
        assert limits.event == ""
    assert job.rate(T0 + 0.7) < 1.1 * after_cut  # only the probe moved it, a little


def test_a_cut_never_goes_below_the_floor_of_what_the_table_delivered(make_job: Any) -> None:
    job = make_job(cap=5000.0)
    for second in range(13):  # 3,000 WCU/s delivered for 13 s without refusals
        job.calls(T0 + second, n=120, consumed=3000, span=1.0 if second == 0 else 0.0)
    limits = job.calls(T0 + 12.3, n=64, refused=25, consumed=0)  # then a whole round refused
    assert limits.event == "cut"
    assert POLICY.floor_fraction * 3000 > POLICY.paced_cap(5000.0) / 2  # the floor binds, not the halving
    assert limits.rate == pytest.approx(POLICY.floor_fraction * 3000, rel=1e-6)
    assert "floor" in explain(job.control(), cap=5000.0, allowed=limits.rate, policy=POLICY)


def test_the_probe_climbs_back_to_the_last_good_rate_then_above_it(make_job: Any) -> None:
    job = make_job()
    job.calls(T0, n=1, span=0.3)
    limits = job.calls(T0 + 0.3, n=40, refused=5)  # unlimited until now; 20 % refused
    assert limits.event == "cut"
    control = job.control()
    w_max, k = float(control["w_max"]), float(control["k"])
    assert limits.rate == pytest.approx(w_max * 0.95, rel=1e-6)
    assert k > 0
    assert job.rate(T0 + 0.3 + k / 2) < w_max
    assert job.rate(T0 + 0.3 + k) == pytest.approx(w_max, rel=1e-6)
    assert job.rate(T0 + 0.3 + 2 * k) > w_max
    # Above w_max, linear for a while: a table's burst capacity hides an overshoot until it is
    # spent. Then CUBIC's convex growth adds to it: a w_max the table did not really take is left.
    for d in (1.0, 4.0, POLICY.linear_for):
        assert job.rate(T0 + 0.3 + k + d) == pytest.approx(w_max * (1 + POLICY.probe_linear * d), rel=1e-6)
    d = POLICY.linear_for + 3
    assert job.rate(T0 + 0.3 + k + d) == pytest.approx(
        w_max * (1 + POLICY.probe_linear * d + POLICY.cubic_c * 3**3), rel=1e-6
    )


def test_a_probe_above_the_last_good_rate_ends_at_its_first_refused_item(make_job: Any) -> None:
    job = make_job()
    # Unlimited for a second: 2,000 units/s sent, the table took 80 %: cut to 95 % of that.
    assert job.calls(T0, n=80, refused=5, span=1.0).event == "cut"
    k = float(job.control()["k"])
    w_max = float(job.control()["w_max"])
    assert k > 1

    def round_at(now: float, *, refused: bool = False) -> str:
        """A round of 0.25 s sent at the allowed rate; one call of it with one item refused."""
        rate = job.rate(now)
        n = max(POLICY.min_calls, round(rate * 0.25 / 25))
        first = job.calls(now + 0.05, n=1, refused=1 if refused else 0, acquired_at=now + 0.01).event
        return str(first or job.calls(now + 0.25, n=n - 1, acquired_at=now + 0.01).event)

    now = T0 + 0.25
    assert round_at(now) == ""  # the cut's own test round: nothing refused below the take
    # Climbing back to the last good rate: one item of 25 refused in a round is not enough there
    # (a burst tail, a hot key): below w_max a round must stand out of its noise.
    while now < T0 + k / 2:
        now += 0.25
        assert round_at(now) == ""
    assert job.rate(now) < w_max
    assert round_at(now + 0.25, refused=True) == ""
    now += 0.25
    # Above it, the same single refused item is the probe's answer: the table's limit is below.
    # Before, a rate 1-2 % above the table's went on refusing an item in some calls for seconds.
    while job.rate(now) <= 1.01 * w_max:
        now += 0.25
        assert round_at(now) == ""
    assert round_at(now + 0.25, refused=True) == "cut"


def test_a_probes_answer_cuts_at_once_and_by_at_least_the_probe_cut(make_job: Any) -> None:
    job = make_job()
    assert job.calls(T0, n=80, refused=5, span=1.0).event == "cut"
    w_max = float(job.control()["w_max"])
    now = job.climb_past(T0 + 0.25, 1.01 * w_max)
    sending = job.rate(now)
    # The first call of the next round comes back with one item of 25 refused: the table's burst
    # has just run out under the probe. The round decides on it (before, it waited for eight
    # calls, every one of them sent into a table already refusing: about half of the partly
    # refused calls of a 20 s job at 1,000 WCU/s) ...
    limits = job.calls(now + 0.05, n=1, refused=1, acquired_at=now + 0.01)
    assert limits.event == "cut"
    # ... and one call shows only the start of the overshoot (4 % here): the cut is TCP's
    # multiplicative decrease at least, less the headroom, not 4 %.
    floor = (1 - POLICY.probe_cut) * (1 - POLICY.headroom)
    assert limits.rate <= floor * sending * 1.01
    assert limits.rate >= 0.5 * sending


def test_probes_that_find_the_table_where_the_last_cut_did_come_less_often(make_job: Any) -> None:
    job = make_job()
    # Unlimited for a second: 2,000 units/s sent, the table took 80 %.
    assert job.calls(T0, n=80, refused=5, span=1.0).event == "cut"

    def round_at(now: float, refused: float = 0) -> str:
        """A round of 0.25 s sent at the allowed rate, ``refused`` of each call refused."""
        n = max(POLICY.min_calls, round(job.rate(now) * 0.25 / 25))
        return str(job.calls(now + 0.25, n=n, refused=refused, acquired_at=now + 0.01).event)

    def probe(now: float, refused: float) -> tuple[float, float]:
        """Rounds with nothing refused until the rate is past w_max, then one that refuses."""
        while job.rate(now) <= 1.01 * float(job.control()["w_max"]):
            assert round_at(now) == ""
            now += 0.25
        assert round_at(now, refused) == "cut"
        return now + 0.25, float(job.control()["hold"])

    now, hold = probe(T0 + 0.25, refused=1)  # the table takes 96 % of the probe: ~its last take
    assert hold == POLICY.hold_first
    after_cut = job.rate(now)
    # Held at the cut's rate, then climbing back as before.
    assert job.rate(now + 0.99 * hold) == pytest.approx(after_cut, rel=1e-9)
    assert job.rate(now + hold + 0.5) > after_cut
    cut_at = now
    now, hold = probe(now, refused=1)
    assert hold == 2 * POLICY.hold_first
    k = float(job.control()["k"])
    assert now - cut_at >= POLICY.hold_first + k  # the probe came that much later
    for expected in (4.0, 8.0, 8.0):
        now, hold = probe(now, refused=1)
        assert hold == min(POLICY.hold_max, expected)
    # A probe that finds the table elsewhere (40 % refused: it gives less now) starts again.
    now, hold = probe(now, refused=10)
    assert hold == 0


def test_an_uncapped_job_starts_from_what_it_sent_over_a_round_with_an_empty_bucket(make_job: Any) -> None:
    job = make_job()
    # Before: the first throttle took its base from the consumption seen so far (~0 this early),
    # fell back to 25 WCU/s and crawled. Now: the rate sent over a whole round.
    job.calls(T0 + 0.05, n=2, span=0.05)  # unlimited, reported in bulk: went into the table's burst
    # The first refusals start a round of their own (the calls before say nothing about the
    # limit), decided within two round trips: the rate those calls were sent at, halved at most.
    limits = job.calls(T0 + 0.3, n=48, refused=5, span=0.0)
    assert limits.event == "cut"
    sent = 48 * 25 / 0.01  # sent within their round trip (10 ms each)
    assert limits.rate == pytest.approx(sent * (1 - 5 / 25) * 0.95, rel=1e-6)
    assert limits.rate > 1000
    assert job.take(25, T0 + 0.3).status == WAIT  # the bucket starts empty: the table's burst is spent


def test_faults_that_answer_a_cut_the_same_way_become_background_and_the_cut_is_undone(
    make_job: Any,
) -> None:
    job = make_job()
    # Unlimited for a second: 3,000 units/s sent, 8 of every 25 refused (a third, at random).
    first = job.calls(T0, n=120, refused=8, span=1.0)
    assert first.event == "cut"
    assert first.background == 0
    before = float(job.control()["pre"])
    # At the lower rate (below what the table delivered), a third is still refused: a capacity
    # limit would refuse nothing there. Once could still be a table whose burst ran out during
    # the cut round (its take overstated): the job cuts again, and tests again.
    assert job.calls(T0 + 0.3, n=20, refused=8, acquired_at=T0 + 0.01).event == "cut"
    undo = job.calls(T0 + 0.6, n=12, refused=8, acquired_at=T0 + 0.31)  # at the second cut's rate
    assert undo.event == "undo"
    control = job.control()
    assert float(control["bg"]) == pytest.approx(8 / 25, rel=0.01)
    assert undo.background == pytest.approx(8 / 25, rel=0.01)  # what the writer is told (its backoff)
    assert job.rate(T0 + 0.3) == pytest.approx(before, rel=0.01)
    # The same share from now on is background: no more cuts.
    for k in range(10):
        assert job.calls(T0 + 0.9 + 0.3 * k, n=20, refused=8).event == ""
    reason = explain(control, cap=None, allowed=job.rate(T0 + 4), policy=POLICY)
    assert "whatever the rate" in reason


def test_a_fault_is_learnt_even_when_a_short_round_measures_a_burst_above_the_cut(make_job: Any) -> None:
    job = make_job()
    # Unlimited at 3,000 units/s, 30 % of every call refused whatever the rate (a fault).
    assert job.calls(T0, n=120, refused=7.5, span=1.0).event == "cut"
    # Each test round lasts 0.1 s and starts with the bucket's burst: the rate it measures
    # (2,250 and 2,000/s) is above the cut round's take, while the rate allowed is below it.
    # Judged on the rate measured, neither round was "below" the take, the chain of cuts that
    # finds a fault never grew, and the job was cut round after round (to 2-5 WCU/s under the
    # chaos mix through the fault proxy).
    assert job.calls(T0 + 0.1001, n=9, refused=7.5, acquired_at=T0 + 0.001).event == "cut"
    undo = job.calls(T0 + 0.2002, n=8, refused=7.5, acquired_at=T0 + 0.101)
    assert undo.event == "undo"
    assert float(job.control()["bg"]) == pytest.approx(0.3, rel=0.01)


def test_a_round_noisier_than_the_last_cut_does_not_break_the_chain_that_finds_a_fault(make_job: Any) -> None:
    job = make_job()
    # The chaos mix: ~30 % of every call refused whatever the rate, and a throttled call (all of
    # its units refused) now and then, so a round of eight calls refuses 25-50 %.
    assert job.calls(T0, n=120, refused=7.5, span=1.0).event == "cut"  # 0.30
    assert job.calls(T0 + 0.1001, n=9, refused=6.25, acquired_at=T0 + 0.001).event == "cut"  # 0.25
    # 0.51: over twice the last cut's 0.25, but not twice what the chain found (0.275). Judged
    # against the last cut alone, this round restarted the chain, and under the chaos mix the
    # chain restarted again and again: the job was cut to 10 WCU/s for 86 s (tests/ratesim.py).
    assert job.calls(T0 + 0.2002, n=8, refused=12.75, acquired_at=T0 + 0.101).event == "cut"
    undo = job.calls(T0 + 0.3003, n=8, refused=7.5, acquired_at=T0 + 0.201)  # 0.30
    assert undo.event == "undo"
    # What is learnt is the chain's share, not the last round's alone.
    assert undo.background == pytest.approx((0.30 + 0.25 + 0.51 + 0.30) / 4, abs=0.005)


def test_a_round_that_finds_the_fault_again_without_a_cut_keeps_the_test_going(make_job: Any) -> None:
    job = make_job()
    assert job.calls(T0, n=120, refused=7.5, span=1.0).event == "cut"  # 30 % refused at 3,000/s
    # Below the cut, 30 % again, but calls sent before the cut came back in this round and the
    # table consumed more than the rate sent: there is nothing to cut. The test goes on.
    quiet = job.calls(T0 + 0.1001, n=9, refused=7.5, acquired_at=T0 + 0.001, consumed=2500 * 0.1)
    assert quiet.event == ""
    # The next round finds it once more: a fault, learnt, and the cut undone. Before, the test
    # ended with the quiet round, this round started a new chain with a cut, and with 30 ms of
    # answer jitter the chain rarely grew long enough: jobs cut to 3 WCU/s for ten minutes.
    undo = job.calls(T0 + 0.2002, n=8, refused=7.5, acquired_at=T0 + 0.101)
    assert undo.event == "undo"
    assert undo.background == pytest.approx(0.3, abs=0.005)


def test_a_share_refused_in_most_rounds_below_the_tables_take_becomes_background(make_job: Any) -> None:
    job = make_job()
    # Unlimited at 3,000 units/s, 1 of every 25 refused: cut.
    assert job.calls(T0, n=120, refused=1, span=1.0).event == "cut"
    # Below the take, every round refuses again, 1 or 3 of every 25 by turns (a small share, noisy
    # the way whole calls throttled now and then make it). Each round is significant and cuts; no
    # two in a row are alike, so no chain of cut tests ever finds the fault, and before this rule
    # the job was cut round after round (tests/ratesim.py: not done in 200 s on a table at its
    # limit). Eight rounds below the take, most of them refusing, are the evidence instead.
    now, outcome = T0, None
    for k in range(POLICY.seen_rounds):
        assert job.control().get("mode") == "ctl"
        outcome = job.calls(now + 0.3, n=8, refused=1 if k % 2 else 3, acquired_at=now + 0.001)
        now += 0.3
    assert outcome is not None
    assert outcome.event == "undo"
    assert outcome.background == pytest.approx(1 / 25, rel=0.01)  # the seen_rank-th lowest share
    assert job.rate(now) is None  # back to unlimited: only a share beyond the background cuts now
    assert "whatever the rate" in explain(job.control(), cap=None, allowed=None, policy=POLICY)
    assert job.calls(now + 0.3, n=8, refused=1, acquired_at=now + 0.001).event == ""


def test_a_background_share_read_from_the_rounds_fades_once_rounds_refuse_nothing_at_any_rate(
    make_job: Any,
) -> None:
    job = make_job()
    assert job.calls(T0, n=120, refused=1, span=1.0).event == "cut"
    now = T0
    for k in range(POLICY.seen_rounds):  # as above: found in the rounds below the take
        job.calls(now + 0.3, n=8, refused=1 if k % 2 else 3, acquired_at=now + 0.001)
        now += 0.3
    assert float(job.control()["bq"]) == pytest.approx(1 / 25, rel=0.01)
    take = float(job.control()["a0"])
    # The fault is gone; the job, unlimited again, sends far above the last take and nothing is
    # refused. Rounds there did not count, and the share stayed: a table's refusals up to 4 %
    # would have gone uncut for as long as the job ran.
    for _ in range(POLICY.seen_rank):
        n = round(2 * take * 0.3 / 25)
        assert job.calls(now + 0.3, n=n, span=0.3, acquired_at=now + 0.001).event == ""
        now += 0.3
    assert float(job.control()["bq"]) == 0


def test_a_background_share_a_worker_heard_comes_back_when_redis_loses_the_jobs_state(
    client: redis_lib.Redis, make_job: Any
) -> None:
    job = make_job()
    assert job.calls(T0, n=120, refused=1, span=1.0).event == "cut"
    now = T0
    for k in range(POLICY.seen_rounds):  # found in the rounds below the take, as above
        job.calls(now + 0.3, n=8, refused=1 if k % 2 else 3, acquired_at=now + 0.001)
        now += 0.3
    clock = [now]
    limiter = JobRateLimiter(client, job.scope, server_clock=lambda: clock[0], policy=POLICY)
    assert limiter.current_rate() is None  # unlimited again, and the worker heard the share
    assert limiter.background_share() == pytest.approx(1 / 25, rel=0.01)

    # Redis restarts empty (or is flushed): the job's state is gone, the worker remembers.
    client.delete(job.keys.control, job.keys.bucket, job.keys.consumed)
    clock[0] += 0.3
    assert limiter.current_rate() is None
    control = job.control()
    assert control["ev"] == "restore"
    assert float(control["bg"]) == pytest.approx(1 / 25, rel=0.01)
    assert "lost the job's rate state" in explain(control, cap=None, allowed=None, policy=POLICY)
    # So the share refused whatever the rate does not cut the job again. Learnt anew, it took
    # a chain of cut tests or eight rounds below a take; after an outage those rounds came at a
    # few calls a second, and the job crawled for minutes (README).
    assert job.calls(clock[0] + 1.0, n=120, refused=1, span=1.0).event == ""

    # A share heard is put back only where the state is gone, never over a job's state.
    job.scripts.report(job.keys, now=clock[0] + 1.1, heard_background=0.5)
    assert float(job.control()["bg"]) == pytest.approx(1 / 25, rel=0.2)
    # And a job whose workers heard no share starts from nothing, as before.
    fresh = make_job()
    assert fresh.scripts.report(fresh.keys, now=T0, heard_background=0.0).background == 0
    assert fresh.control() == {}


def test_an_undo_goes_back_to_where_a_run_of_cuts_began(make_job: Any) -> None:
    job = make_job()
    assert job.calls(T0, n=120, refused=7.5, span=1.0).event == "cut"  # 30 % refused at 3,000/s
    # A round below the cut that happens to refuse nothing ends its test: capacity, it seems.
    assert job.calls(T0 + 0.1001, n=9, refused=0, acquired_at=T0 + 0.001).event == ""
    # The share comes back: a new chain of cuts finds it below two cuts in a row.
    assert job.calls(T0 + 0.2002, n=8, refused=7.5, acquired_at=T0 + 0.101).event == "cut"
    assert job.calls(T0 + 0.3003, n=8, refused=7.5, acquired_at=T0 + 0.201).event == "cut"
    undo = job.calls(T0 + 0.4004, n=8, refused=7.5, acquired_at=T0 + 0.301)
    assert undo.event == "undo"
    # Back to the rate before the first cut of the run, not to where the last chain began
    # (under the chaos mix: back to 449 WCU/s where the job had run at 3,390, 20 s to climb).
    assert float(job.control()["ev_to"]) == pytest.approx(3000, rel=0.01)


def test_a_run_of_cuts_lasts_at_most_twice_the_floor_window(make_job: Any) -> None:
    job = make_job()
    assert job.calls(T0, n=120, refused=7.5, span=1.0).event == "cut"  # from 3,000/s
    pres = []
    for t in (9, 18, 27):  # each cut tested by a quiet round, the next cut 9 s after the last
        assert job.calls(T0 + t - 0.3, n=8, refused=0, acquired_at=T0 + t - 0.35).event == ""
        assert job.calls(T0 + t, n=8, refused=8, acquired_at=T0 + t - 0.1).event == "cut"
        pres.append(float(job.control()["pre"]))
    # Within 20 s of the run's first cut an undo would go back to 3,000/s; later the run starts
    # again where it is: a job held at a table's limit for an hour cuts every few seconds, and
    # the rate it started at is no rate to go back to.
    assert pres[:2] == [pytest.approx(3000, rel=0.01)] * 2
    assert pres[2] == pytest.approx(float(job.control()["ev_from"]), rel=1e-6)
    assert pres[2] < 2000


def test_a_capacity_limit_is_not_mistaken_for_background(make_job: Any) -> None:
    job = make_job()
    # Unlimited for a second: 2,000 units/s sent, the table took half.
    assert job.calls(T0, n=80, refused=12.5, span=1.0).event == "cut"
    # Below what the table took, the refusals end: the cut stands.
    assert job.calls(T0 + 0.3, n=9, refused=0, acquired_at=T0 + 0.01).event == ""
    assert float(job.control().get("bg", 0)) == 0
    # An unlimited job's first cut goes to the take less headroom: the rate it sent was the
    # machine's, not one the table took, and halving it would take another round of refusals.
    assert job.rate(T0) == pytest.approx(2000 * 0.5 * 0.95, rel=1e-6)


def test_a_table_whose_burst_ran_out_in_the_cut_round_is_not_taken_for_background(make_job: Any) -> None:
    job = make_job()
    # Unlimited for a second at 5,000 units/s: the table's burst absorbed most of the round, so
    # only 22 % was refused and the round's take (3,900/s) overstates the table's.
    assert job.calls(T0, n=200, refused=5.5, span=1.0).event == "cut"
    # Sending far below that take, a larger share is refused: a capacity limit, not a fault that
    # ignores the rate (that one would refuse the same share). Before, this undid the cut and
    # learnt 32 % as background, and the job ran into the table for the rest of its life.
    limits = job.calls(T0 + 0.3, n=20, refused=8, acquired_at=T0 + 0.01)
    assert limits.event == "cut"
    assert float(job.control().get("bg", 0)) == 0


def test_a_large_share_found_again_below_one_cut_is_not_yet_background(make_job: Any) -> None:
    job = make_job()
    # Unlimited at 5,000 units/s: the table's burst ran out during the round, 32 % refused.
    assert job.calls(T0, n=200, refused=8, span=1.0).event == "cut"
    # Below that round's take a third is still refused: the burst overstated the take. Before,
    # this one test undid the cut and learnt a third as background, and the job ran into the
    # table from then on (tests/ratesim.py, 30 ms jitter: 36-39 % of calls partly refused).
    assert job.calls(T0 + 0.3, n=20, refused=8, acquired_at=T0 + 0.01).event == "cut"
    # At the second cut's rate nothing is refused: a capacity limit, and no background.
    assert job.calls(T0 + 0.6, n=20, refused=0, acquired_at=T0 + 0.31).event == ""
    assert float(job.control().get("bg", 0)) == 0


def test_a_share_that_shrinks_as_a_capacity_limit_predicts_is_not_background(make_job: Any) -> None:
    job = make_job()
    # Unlimited at 2,500 units/s, the table's burst running out: 29 % refused.
    assert job.calls(T0, n=100, refused=7.25, span=1.0).event == "cut"
    # Below that round's take, at 1,500/s, as much is refused again (the burst overstated the
    # take): the job cuts again. The calls still coming back from before the cut were consumed,
    # so this round's take is what the table consumed: 1,241/s, where 1,500 x 0.71 is 1,068.
    second = job.calls(T0 + 0.3, n=18, refused=7.2, acquired_at=T0 + 0.01, consumed=1241 * 0.3)
    assert second.event == "cut"
    # At 1,167/s, 15 % is refused: 1,000 taken, as at 1,500/s. A capacity limit predicts 8.5 %
    # here, a fault that ignores the rate 29 %; 15 % is nearer the capacity limit. Before, a
    # share within half of the cut round's was "the same", this second test in a row learnt it
    # as background, the cut was undone and the job sent 2,500/s into the table again (bench:
    # 49 % of calls partly refused).
    third = job.calls(T0 + 0.6, n=14, refused=3.8, acquired_at=T0 + 0.31)
    assert third.event == "cut"
    assert float(job.control().get("bg", 0)) == 0
    assert third.rate is not None
    assert third.rate < 1100


def test_an_overshoot_too_small_for_one_round_is_cut_on_the_evidence_of_several(make_job: Any) -> None:
    job = make_job(cap=1000.0)
    # Every round of eight calls (0.2 s) has three with one to three items refused: mean share
    # 3 %, within the noise of eight calls (2.5 standard errors is 3.9 %). Before, each round was
    # judged alone and the job went on refusing for as long as it ran.
    shares = [1, 2, 0, 0, 3, 0, 0, 0]
    event, now = "", T0
    while now < T0 + POLICY.evidence_window and event != "cut":
        for refused in shares:
            now += 0.025
            event = job.calls(now, n=1, refused=refused, acquired_at=now - 0.01).event or event
    assert event == "cut"
    assert now - T0 <= POLICY.evidence_window


def test_a_cut_goes_no_lower_than_what_the_table_consumed_in_the_round(make_job: Any) -> None:
    job = make_job(cap=2000.0)
    job.calls(T0, n=1, acquired_at=T0)  # the round starts
    # Calls admitted before the round, still in flight, come back whole: the table spent 100
    # units on them while the round's own calls arrived ...
    job.calls(T0 + 0.1, n=4, consumed=100, acquired_at=T0 - 0.1)
    # ... and refused the round's calls 55 % for it.
    limits = job.calls(T0 + 0.2, n=8, refused=13.75, acquired_at=T0 + 0.05)
    assert limits.event == "cut"
    consumed = 25 + 100 + 8 * 11.25
    # Cut to what the table consumed in the round, less headroom. Before, to half the rate sent
    # (the round's own calls' take, 45 % of it, was lower still): 965 -> 482 WCU/s on a 1,000
    # WCU/s table in a bench run.
    assert limits.rate == pytest.approx(consumed / 0.2 * 0.95, rel=1e-6)


@pytest.mark.parametrize("agree", [True, False])
def test_a_cut_goes_straight_to_the_take_when_two_measures_of_it_agree(make_job: Any, agree: bool) -> None:
    job = make_job(cap=8000.0)
    # A round at 7,250 units/s of which 80 % is refused: the rate sent less its share says the
    # table took 1,450 units/s; so does what it consumed (reported with the calls), or not.
    consumed = 50 + 8 * 30 if agree else 50 + 8 * 10
    job.calls(T0, n=1, units=250, refused=200, consumed=50, acquired_at=T0)
    limits = job.calls(T0 + 0.2, n=8, units=150, refused=120, consumed=consumed - 50, acquired_at=T0)
    assert limits.event == "cut"
    if agree:
        # Cut once to the take less headroom. Halving first (to 3,625) left two or three more
        # rounds of refused calls above the table (bench: 6,180 -> 3,090 -> 1,548 -> 991 WCU/s).
        assert limits.rate == pytest.approx(1450 * 0.95, rel=1e-6)
    else:
        # The measures disagree (the table consumed far less than the share says it took): the
        # round's take is an estimate, and a cut halves at most.
        assert limits.rate == pytest.approx(7250 * 0.5, rel=1e-6)


def burst_runs_out(job: Job, *, refused: Callable[[int], float], spacing: float) -> tuple[str, float]:
    """Unlimited for a second at 4,000 units/s (a report per quarter second), then the table's
    burst runs out: eight calls come back one by one from T0 + 1.01, ``spacing`` s apart, call
    ``k`` with ``refused(k)`` of its 25 units refused. The last event, and when it was reported."""
    for k in range(4):
        job.calls(T0 + 0.25 * (k + 1), n=40, span=0.25)
    event, now = "", T0
    for k in range(8):
        now = T0 + 1.01 + k * spacing
        event = job.calls(now, n=1, refused=refused(k)).event or event
    return event, now


def test_an_unlimited_jobs_first_cut_goes_to_what_the_table_consumed_and_aims_back_up(make_job: Any) -> None:
    job = make_job()
    # The burst runs out: eight calls that were in flight together come back refused over 0.1 s
    # (their own rate, 1,800 units/s, is a fraction of the 4,000 sent).
    event, now = burst_runs_out(job, refused=lambda k: 18, spacing=0.0143)
    assert event == "cut"
    # The take: what the table consumed in the round (56 units in 0.11 s), but no less than half
    # of the rate sent before less the round's share (4,000 x 7/25 = 1,120). Cut to it less
    # headroom; the curve aims back at twice the take, at most half the rate sent before.
    took = max(56 / 0.11, 4000 * 7 / 25 / 2)
    control = job.control()
    assert job.rate(now) == pytest.approx(took * 0.95, rel=0.02)
    assert float(control["w_max"]) == pytest.approx(min(4000 / 2, 2 * took), rel=0.02)
    # Most of the way back to that aim within 2 s (CUBIC's concave climb). Before: cut to half of
    # the 1,800 the round saw, aimed no higher, and from there a linear probe: bench runs cut to
    # 0.35-0.6 of the table that way and took 10-12 s to find it.
    assert job.rate(now + 2) >= 0.85 * float(control["w_max"])
    assert job.rate(now + float(control["k"])) == pytest.approx(float(control["w_max"]), rel=1e-6)


def test_an_unlimited_jobs_first_cut_is_measured_on_the_calls_the_table_refused(make_job: Any) -> None:
    job = make_job()
    # The burst runs out. Calls come back in turn: those sent into the empty table refused 88 %
    # (it gives each what refilled since the last), and between them calls the burst's last units
    # served whole, which were in flight together with them.
    event, now = burst_runs_out(job, refused=lambda k: 0 if k % 2 else 22, spacing=0.005)
    assert event == "cut"
    sent = 8 * 25 / (now - (T0 + 1.0))  # the round began a round trip (10 ms) before the first refusal
    # The table's rate: what the rate sent leaves of the refused calls' share (12 %). Before, the
    # round's mean share (44 %) and its consumption, both diluted by the calls served whole, put
    # it at ~2,500 units/s: in bench runs first cuts landed at 1.1-6.7x the table's rate, and each
    # further round there sent 7-30 more calls into the empty table.
    assert job.rate(now) == pytest.approx(sent * (1 - 22 / 25) * (1 - POLICY.headroom), rel=1e-6)
    consumed = 4 * 3 + 4 * 25
    diluted = max(consumed / (now - (T0 + 1.0)), sent * (1 - 4 * 22 / 25 / 8) / 2)
    # The curve aims where those estimates put the table (they overstate it; below, a job whose
    # rate sent was measured low climbed for 10 s at two thirds of its table).
    assert float(job.control()["w_max"]) == pytest.approx(max(diluted, min(sent / 2, 2 * diluted)), rel=1e-6)
    assert job.rate(now + 2) > 3 * job.rate(now)


def test_the_first_cuts_test_weighs_the_next_round_against_the_refused_calls_share(make_job: Any) -> None:
    job = make_job()
    event, now = burst_runs_out(job, refused=lambda k: 0 if k % 2 else 22, spacing=0.005)  # as above
    assert event == "cut"
    # The round below the cut's take (as its rate sent is measured: in the run, still above the
    # table) refuses 36 %: near the first round's diluted share (44 %), far from the refused
    # calls' (88 %). Weighed against the diluted share, it looked like a fault that ignores the
    # rate (the chain of tests that learns one went on); a capacity run learnt its limit as
    # background that way, and 49.8 % of its calls came back partly refused.
    start = now + 0.01
    n = POLICY.min_calls
    job.calls(start + 0.5, n=n, refused=9, acquired_at=start)  # 400 units/s: below the cut's take
    assert job.control()["chain"] == "0"


def test_a_round_the_table_refused_throughout_is_cut_to_what_the_refused_calls_consumed(make_job: Any) -> None:
    job = make_job(cap=8000.0)
    # Twelve calls, sent 10 ms apart into an empty table: the first still had the burst's last 20
    # units, every later one gets the 5 units that refilled since the one before: 500 units/s.
    event, now = "", T0
    for k in range(12):
        now = T0 + 0.01 * (k + 1)
        refused = 5 if k == 0 else 20
        event = job.calls(now, n=1, refused=refused, acquired_at=now - 0.01).event or event
    assert event == "cut"
    # The rate sent less the round's share, and its consumption, agree on ~680 units/s (the first
    # call's 20 units in both): before, the cut went there, above the table, and took another
    # round of refused calls. What the refused calls after the first consumed over the time they
    # were sent is the table's rate.
    assert job.rate(now) == pytest.approx(11 * 5 / 0.11 * (1 - POLICY.headroom), rel=1e-6)


def test_a_probe_answered_far_above_the_last_measured_take_goes_back_to_it(make_job: Any) -> None:
    job = make_job(cap=8000.0)
    # A full round measures the table: 1,450 units/s, by the share and by the consumption.
    job.calls(T0, n=1, units=250, refused=200, consumed=50, acquired_at=T0)
    assert job.calls(T0 + 0.2, n=8, units=150, refused=120, consumed=240, acquired_at=T0).event == "cut"
    took = float(job.control()["a0"])
    assert took == pytest.approx(1450, rel=1e-6)
    # The table's burst hides the probe until it has run out, when the probe is far above the
    # table (a 1 s burst at the linear pace: ~20 % after 10 s).
    now = job.climb_past(T0 + 0.25, 1.3 * took)
    sending = job.rate(now)
    limits = job.calls(now + 0.05, n=1, refused=1, acquired_at=now + 0.01)
    assert limits.event == "cut"
    # Back to the last measured take, held there as a cut that found the table where the last one
    # did. Before: cut by the probe cut (10 %), still ~17 % above, and a second round of refused
    # calls cut again (7-25 calls per probe in runs of scripts/capacity_runs.py).
    assert limits.rate == pytest.approx(took * (1 - POLICY.headroom), rel=1e-6)
    assert limits.rate < (1 - POLICY.probe_cut) * (1 - POLICY.headroom) * sending / 1.1
    assert float(job.control()["hold"]) == POLICY.hold_first


def test_calls_sent_before_a_cut_hold_its_test_until_they_are_back(make_job: Any) -> None:
    job = make_job()
    # Unlimited for a second at 3,000 units/s, a third refused: cut.
    assert job.calls(T0, n=120, refused=8, span=1.0).event == "cut"
    # Calls still in flight from the unlimited rate come back (unstamped, refused too): the
    # table was spending its capacity on them while the first calls at the new rate arrived.
    assert job.calls(T0 + 0.2, n=16, refused=8).event == ""
    # Those first calls were refused for it. Before, they tested the cut: the same share below
    # it, so the cut was undone and a third of every call learnt as background.
    assert job.calls(T0 + 0.3, n=20, refused=8, acquired_at=T0 + 0.01).event == ""
    # Calls sent once the old ones are back decide: nothing refused below the take, the cut stands.
    assert job.calls(T0 + 0.45, n=20, refused=0, acquired_at=T0 + 0.25).event == ""
    assert float(job.control().get("bg", 0)) == 0
    assert float(job.control()["chk"]) == 0
    assert job.rate(T0 + 0.45) < 3000 * (1 - 8 / 25)


def test_a_small_refused_share_is_never_taken_for_background(make_job: Any) -> None:
    job = make_job()
    # 10 % refused, and still 10 % after the cut: it could be a burst running out mid-round.
    assert job.calls(T0, n=120, refused=2.5, span=1.0).event == "cut"
    assert job.calls(T0 + 0.3, n=20, refused=2.5, acquired_at=T0 + 0.01).event == "cut"
    assert float(job.control().get("bg", 0)) == 0


def test_an_uncapped_job_without_cuts_goes_back_to_unlimited(make_job: Any) -> None:
    job = make_job()
    job.calls(T0, n=1, span=0.3)
    assert job.calls(T0 + 0.3, n=40, refused=10).event == "cut"
    now, event = T0 + 0.3, ""
    while now < T0 + 60 and event != "open":
        now += 0.3
        event = job.calls(now, n=10, acquired_at=now - 0.2).event  # sends little, nothing is refused
    assert event == "open"
    assert job.rate(now) is None
    assert "unlimited again" in explain(job.control(), cap=None, allowed=None, policy=POLICY)


# --- whole scenarios in simulated time (tests/ratesim.py) ----------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_under_a_capacity_limit_the_table_is_kept_busy_and_rarely_refuses(client: redis_lib.Redis, seed: int) -> None:
    result = ratesim.simulate(client, ratesim.CapacityTable(1000.0), items=20_000, seed=seed)
    assert result.wcu_per_s >= 0.9 * 1000  # the bench measures the real figure (>= 0.95)
    assert result.throttled_calls <= 0.05 * result.calls
    # Calls with some items refused too. The first-cut rule before left 3.5-4.1 % with these
    # seeds: in this simulator the first round's own rate is right, and halving it was a lucky
    # cut. The first cut now aims back up at up to twice the table's consumption (in bench runs
    # the round's own rate was a fraction of the one sent, and cuts to 0.35-0.6 of the table left
    # 81-90 % of it delivered): here that costs a second cut at the start, 5.4-6.2 %.
    assert result.calls_refused <= 0.07 * result.calls


def test_a_probe_hidden_by_the_burst_does_not_teach_the_capacity_limit_as_background(
    client: redis_lib.Redis,
) -> None:
    # Answers 30 ms late on average: a probe climbed far above the table while its burst hid it,
    # the cut round's take was overstated, the round below refused the same share, and the
    # limit was learnt as background: 33.6 % of calls partly refused with this seed, before.
    result = ratesim.simulate(client, ratesim.CapacityTable(1000.0), items=20_000, seed=0, jitter=0.03)
    assert result.wcu_per_s >= 0.9 * 1000
    assert result.calls_refused <= 0.1 * result.calls


@pytest.mark.parametrize("seed", [0, 1])
def test_a_steady_table_costs_few_partly_refused_calls_once_found(client: redis_lib.Redis, seed: int) -> None:
    # 100 s at 1,000 WCU/s, answers 10 ms late on average: what is left after the start is the
    # probes. Each one used to cost a round of eight calls sent into a table already refusing
    # (3.3 % of calls partly refused with these seeds); a probe's first refused item now cuts
    # (1.6-1.8 %).
    result = ratesim.simulate(client, ratesim.CapacityTable(1000.0), items=100_000, seed=seed, jitter=0.01)
    assert result.wcu_per_s >= 0.95 * 1000
    assert result.calls_refused <= 0.025 * result.calls


@pytest.mark.parametrize("seed", [0, 4])
def test_latency_that_varies_does_not_turn_a_capacity_limit_into_background(client: redis_lib.Redis, seed: int) -> None:
    # Answers heard 10 ms late on average (exponential): with these seeds the calls in flight at
    # the first cut made its test round refuse as much as the cut round, and 55-79 % of all
    # calls came back partly refused.
    result = ratesim.simulate(client, ratesim.CapacityTable(1000.0), items=20_000, seed=seed, jitter=0.01)
    assert result.wcu_per_s >= 0.9 * 1000
    assert result.calls_refused <= 0.1 * result.calls


def test_a_cut_on_an_unreliable_round_does_not_leave_the_job_crawling(client: redis_lib.Redis) -> None:
    # Answers 50 ms late on average: the first round's take (313 WCU/s) is far below the table's
    # 1,000, the cut is set by its halving bound, and from there a linear probe alone needed ~40 s
    # to find the table (76 % of it delivered). CUBIC's growth after 5 s of linear probing finds it.
    result = ratesim.simulate(client, ratesim.CapacityTable(1000.0), items=30_000, seed=0, jitter=0.05)
    assert result.wcu_per_s >= 0.85 * 1000


@pytest.mark.parametrize("seed", [0, 2])
def test_a_small_random_share_found_below_cut_after_cut_becomes_background(client: redis_lib.Redis, seed: int) -> None:
    # One item of every call refused at random, whatever the rate (4 %), and spare capacity:
    # each round's share was significant, each cut found it again below, and the rate ratcheted
    # down to the floor and on (the first finding, for a share too small to be tested
    # after one cut): 40,000 items were not done in 600 s of simulated time. Three cuts in a row
    # that find the same share are enough: the job goes back to unlimited with that background.
    faults = ratesim.simulate(client, ratesim.FaultMix(0.04, 0, 0, 0), items=40_000, seed=seed, limit_seconds=60)
    clean = ratesim.simulate(client, ratesim.FaultMix(0, 0, 0, 0), items=40_000, seed=seed)
    assert faults.seconds <= 3 * clean.seconds


@pytest.mark.parametrize("seed", [0, 3])
def test_a_small_random_share_with_calls_throttled_now_and_then_keeps_the_job_near_full_speed(
    client: redis_lib.Redis, seed: int
) -> None:
    # 1 or 2 items of every call refused, and 2 % of calls throttled whole: a round's share goes
    # from 0.04 to 0.3, too noisy for a chain of cut tests, and each round cut again: 24 s (seed 0)
    # and 71 s (seed 3) against 4 s without faults. The rounds below the take find it (~6 s).
    faults = ratesim.simulate(client, ratesim.small_share(), items=20_000, seed=seed)
    clean = ratesim.simulate(client, ratesim.FaultMix(0, 0, 0, 0), items=20_000, seed=seed)
    assert faults.seconds <= 3 * clean.seconds


@pytest.mark.parametrize(("seed", "jitter"), [(0, 0.0), (1, 0.01)])
def test_a_table_at_its_limit_that_also_refuses_a_small_share_at_random_is_kept_busy(
    client: redis_lib.Redis, seed: int, jitter: float
) -> None:
    # The same small random share on a table at its limit (1,000 WCU/s): cut round after round to
    # 60-90 WCU/s, not done in 200 s. With the share known as background, only what goes beyond it
    # cuts, and the table's limit is found as without the faults.
    table = ratesim.FaultsAtCapacity(ratesim.CapacityTable(1000.0), ratesim.small_share())
    result = ratesim.simulate(client, table, items=20_000, seed=seed, jitter=jitter, limit_seconds=60)
    assert result.wcu_per_s >= 0.8 * 1000


def test_a_table_whose_capacity_falls_under_the_job_does_not_teach_its_refusals_as_background(
    client: redis_lib.Redis,
) -> None:
    # 1,000 then 400 WCU/s from 8 s on: the floor holds the job above the table for seconds, and
    # every round refuses. Only rounds at or below the last cut's take say what is refused
    # whatever the rate; counting every round made those refusals background, and the job went
    # on above the table (90 % of calls partly refused with this seed, 35 % either way without).
    table = ratesim.CapacityDrop(ratesim.CapacityTable(1000.0), 400.0, 8.0)
    result = ratesim.simulate(client, table, items=30_000, seed=0)
    assert result.calls_refused <= 0.5 * result.calls


@pytest.mark.parametrize("seed", [5, 8])
def test_a_fault_that_goes_away_leaves_no_background_behind_on_a_table_at_its_limit(
    client: redis_lib.Redis, seed: int
) -> None:
    # The mixed case until 10 s, then the table alone. The share read from the rounds faded only
    # through rounds at or below the last take; a job gone unlimited above it kept the share and
    # let the table refuse up to it uncut: 2,261 and 3,192 calls partly refused after 15 s with
    # these seeds, 4 and 12 now (the table's pace, 39 s, either way).
    capacity = ratesim.CapacityTable(1000.0)
    mixed = ratesim.FaultsAtCapacity(capacity, ratesim.small_share())
    result = ratesim.simulate(client, ratesim.FaultsThatStop(mixed, capacity, 10.0), items=40_000, seed=seed)
    late = [t for t in result.refused_at if t > 15]
    assert len(late) <= 100, f"{len(late)} calls partly refused after the fault stopped"


@pytest.mark.parametrize("seed", [2, 7])
def test_redis_back_empty_while_postgresql_holds_the_runs_does_not_leave_the_job_crawling(
    client: redis_lib.Redis, seed: int
) -> None:
    # Under the chaos mix with a fifth of each call unprocessed, Redis loses the job's state 6 s
    # in while the runs are held until 10 s (PostgreSQL away). The state was learnt again from
    # the held rounds' few calls: these seeds took 156 and 168 s, where the same outage with
    # Redis kept takes 11. The share the workers last heard now comes back with their reports.
    mix = ratesim.FaultMix(0.2, 0.05, 0.05, 0.02)

    def run(forget_at: float | None) -> float:
        return ratesim.simulate(
            client,
            mix,
            items=10_000,
            seed=seed,
            concurrency=8,
            jitter=0.015,
            limit_seconds=120,
            forget_at=forget_at,
            stalled=(6.0, 10.0),
        ).seconds

    held, outage = run(None), run(6.0)
    assert outage <= 2 * held, f"{outage:.1f} s, {held:.1f} s with Redis kept"


@pytest.mark.parametrize("seed", [1, 2])
def test_under_the_chaos_fault_mix_the_job_keeps_going_near_full_speed(client: redis_lib.Redis, seed: int) -> None:
    chaos = ratesim.simulate(client, ratesim.FaultMix(), items=5_000, seed=seed)
    clean = ratesim.simulate(client, ratesim.FaultMix(0, 0, 0, 0), items=5_000, seed=seed)
    # A third of every call refused and retried costs time; a rate that collapsed would cost minutes.
    assert chaos.seconds <= 5 * clean.seconds


@pytest.mark.parametrize(("seed", "jitter"), [(18, 0.01), (7, 0.03)])
def test_under_the_chaos_fault_mix_with_late_answers_the_fault_is_found_and_the_job_keeps_going(
    client: redis_lib.Redis, seed: int, jitter: float
) -> None:
    # With answers 10-30 ms late on average, the rounds that test each cut broke the chain that
    # finds a fault (a noisy round, or one with nothing to cut) and the job was cut round after
    # round: 93 s for seed 18, not done in 600 s for seed 7, against 1.1-1.2 s without faults.
    chaos = ratesim.simulate(client, ratesim.FaultMix(), items=5_000, seed=seed, jitter=jitter)
    clean = ratesim.simulate(client, ratesim.FaultMix(0, 0, 0, 0), items=5_000, seed=seed, jitter=jitter)
    assert chaos.seconds <= 5 * clean.seconds
