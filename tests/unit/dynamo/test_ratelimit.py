"""Tests of bulkwrites.dynamo.ratelimit without a server: the arithmetic, and the limiter on a model of Redis.

``ModelRedis`` runs the two scripts' semantics with the module's pure functions (the integration
tests hold the Lua scripts to those same functions), with the fake clock as the server's TIME.
"""

from __future__ import annotations

import heapq
import math
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from bulkwrites.dynamo.ratelimit import (
    GRANTED,
    MIN_SLEEP,
    TAKE_LUA,
    UNLIMITED,
    WAIT,
    AimdPolicy,
    AimdState,
    BucketState,
    JobKeys,
    JobRateLimiter,
    aimd_on_success,
    aimd_on_throttle,
    charge_delta,
    charge_tokens,
    effective_rate,
    get_rate_cap,
    observed_from,
    refill,
    set_rate_cap,
    take_tokens,
)

POLICY = AimdPolicy()


class FakeClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


class ModelRedis:
    """The scripts' semantics over plain attributes; counts calls like a server would see them."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.strings: dict[str, str] = {}
        self.aimd: AimdState | None = None
        self.bucket: BucketState | None = None
        self.consumed: dict[str, float] = {}
        self.calls: list[tuple[str, list[Any]]] = []
        self.cap_key = ""

    # plain commands used by set_rate_cap / get_rate_cap
    def set(self, key: str, value: str) -> None:
        self.strings[key] = value

    def get(self, key: str) -> str | None:
        return self.strings.get(key)

    def delete(self, *keys: str) -> None:
        for key in keys:
            self.strings.pop(key, None)

    def register_script(self, source: str) -> Callable[..., list[str]]:
        script = self._take if source is TAKE_LUA else self._report

        def call(*, keys: list[str], args: list[Any]) -> list[str]:
            self.cap_key = keys[0]
            self.calls.append((script.__name__, args))
            return script([str(a) for a in args])

        return call

    def _cap(self) -> float | None:
        value = self.strings.get(self.cap_key)
        return float(value) if value and float(value) > 0 else None

    def _now(self, forced: str) -> float:
        return float(forced) if forced else self.clock()

    def _take(self, args: list[str]) -> list[str]:
        n, burst, ticket, now = float(args[0]), float(args[1]), args[2], self._now(args[3])
        rate = effective_rate(self._cap(), self.aimd.rate if self.aimd else None)
        if rate is None:
            return [UNLIMITED, "0", "", "", repr(now)]
        self.bucket, take = take_tokens(
            self.bucket, n, rate=rate, burst=burst, now=now, ticket=float(ticket) if ticket else None
        )
        return [take.status, repr(take.wait), repr(take.ticket), repr(rate), repr(now)]

    def _report(self, args: list[str]) -> list[str]:
        observe, span, delta, event = float(args[0]), float(args[1]), float(args[2]), args[3]
        acquired, burst, now = args[4], float(args[5]), self._now(args[6])
        cap = self._cap()
        if observe > 0:
            second = str(math.floor(now))
            self.consumed[second] = self.consumed.get(second, 0.0) + observe
            self.consumed.setdefault("first", now - span)
        rate = effective_rate(cap, self.aimd.rate if self.aimd else None)
        if delta and rate is not None:
            self.bucket = charge_tokens(self.bucket, delta, rate=rate, burst=burst, now=now)
        if event == "throttled":
            first = self.aimd is None
            self.aimd = aimd_on_throttle(
                self.aimd,
                cap=cap,
                observed=observed_from(self.consumed, now, POLICY.start_window),
                now=now,
                acquired_at=float(acquired) if acquired else None,
                policy=POLICY,
            )
            if first and cap is None and self.bucket is None:
                self.bucket = BucketState(0.0, 0.0, now)  # as REPORT_LUA: nothing left to burst with
        elif event == "success":
            self.aimd = aimd_on_success(self.aimd, cap=cap, now=now, policy=POLICY)
        return [repr(cap) if cap else "", repr(self.aimd.rate) if self.aimd else "", repr(now)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis(clock: FakeClock) -> ModelRedis:
    return ModelRedis(clock)


def make_limiter(redis: ModelRedis, clock: FakeClock, job: str = "job", **kwargs: Any) -> JobRateLimiter:
    return JobRateLimiter(redis, job, clock=clock, sleep=clock.sleep, **kwargs)


# --- the bucket -----------------------------------------------------------------------------


def test_effective_rate_is_the_lower_of_cap_and_adaptive() -> None:
    assert effective_rate(None, None) is None
    assert effective_rate(100.0, None) == 100.0
    assert effective_rate(None, 70.0) == 70.0
    assert effective_rate(100.0, 70.0) == 70.0
    assert effective_rate(50.0, 70.0) == 50.0


def test_new_bucket_starts_full_and_refills_up_to_capacity() -> None:
    state = refill(None, rate=10, burst=1, now=5.0)
    assert state == BucketState(10.0, 0.0, 5.0)
    drained = BucketState(-4.0, 14.0, 5.0)
    assert refill(drained, rate=10, burst=1, now=5.5).tokens == pytest.approx(1.0)
    assert refill(drained, rate=10, burst=1, now=100.0).tokens == 10.0
    assert refill(drained, rate=10, burst=2.5, now=100.0).tokens == 25.0


def test_refill_ignores_a_clock_stepping_back_and_clamps_to_a_lower_rate() -> None:
    state = BucketState(3.0, 7.0, 10.0)
    back = refill(state, rate=10, burst=1, now=9.0)
    assert back == state  # no refill, and the last refill time is kept: no interval is counted twice
    assert refill(BucketState(50.0, 0.0, 10.0), rate=10, burst=1, now=10.0).tokens == 10.0


def test_take_grants_while_tokens_last_then_computes_the_wait() -> None:
    state, take = take_tokens(None, 4, rate=10, burst=1, now=0.0)
    assert take.status == GRANTED
    assert take.ticket == 0.0
    state, take = take_tokens(state, 6, rate=10, burst=1, now=0.0)
    assert take.status == GRANTED
    assert state.tokens == 0.0
    state, take = take_tokens(state, 5, rate=10, burst=1, now=0.0)
    assert take.status == WAIT
    assert take.wait == pytest.approx(0.5)  # 5 tokens at 10/s
    assert take.ticket == 10.0


def test_tickets_queue_callers_first_come_first_served() -> None:
    state = BucketState(0.0, 100.0, 0.0)
    state, first = take_tokens(state, 8, rate=10, burst=1, now=0.0)
    state, second = take_tokens(state, 2, rate=10, burst=1, now=0.0)
    assert first.wait == pytest.approx(0.8)
    assert second.wait == pytest.approx(1.0)  # behind the first caller's 8, though it asks for less
    # Polling with the ticket books nothing more.
    polled, early = take_tokens(state, 8, rate=10, burst=1, now=0.3, ticket=first.ticket)
    assert early.status == WAIT
    assert early.wait == pytest.approx(0.5)
    assert polled.issued == state.issued
    state, due = take_tokens(polled, 8, rate=10, burst=1, now=0.8, ticket=first.ticket)
    assert due.status == GRANTED
    state, due = take_tokens(state, 2, rate=10, burst=1, now=1.0, ticket=second.ticket)
    assert due.status == GRANTED


def test_a_waiting_ticket_is_recomputed_at_the_new_rate() -> None:
    state = BucketState(0.0, 0.0, 0.0)
    state, take = take_tokens(state, 10, rate=10, burst=1, now=0.0)
    assert take.wait == pytest.approx(1.0)
    _, faster = take_tokens(state, 10, rate=100, burst=1, now=0.05, ticket=take.ticket)
    assert faster.wait == pytest.approx((10 - 0.05 * 100) / 100)
    _, slower = take_tokens(state, 10, rate=2, burst=1, now=0.05, ticket=take.ticket)
    # The bucket of a 2 WCU/s rate holds 2: the request goes when it is full (in debt), 0.95 s later.
    assert slower.wait == pytest.approx((2 - 0.05 * 2) / 2)


def test_a_request_larger_than_the_bucket_goes_when_full_and_leaves_debt() -> None:
    state, take = take_tokens(None, 25, rate=10, burst=1, now=0.0)
    assert take.status == GRANTED
    assert state.tokens == -15.0
    state, after = take_tokens(state, 1, rate=10, burst=1, now=0.0)
    assert after.wait == pytest.approx(1.6)  # the debt of 15, then its own 1
    # When the bucket is not full, the big one waits until it is: it is not starved by later small ones.
    state = BucketState(4.0, 0.0, 0.0)
    state, big = take_tokens(state, 25, rate=10, burst=1, now=0.0)
    assert big.wait == pytest.approx(0.6)
    state, small = take_tokens(state, 1, rate=10, burst=1, now=0.1)
    assert small.status == WAIT
    assert small.wait > big.wait


def test_a_ticket_of_a_deleted_bucket_is_booked_again() -> None:
    state, take = take_tokens(None, 5, rate=10, burst=1, now=0.0, ticket=1234.0)
    assert take.status == GRANTED
    assert take.ticket == 0.0
    assert state.issued == 5.0


def test_charging_takes_the_difference_or_gives_it_back_up_to_capacity() -> None:
    state = BucketState(2.0, 10.0, 0.0)
    assert charge_tokens(state, 5.0, rate=10, burst=1, now=0.0).tokens == -3.0
    assert charge_tokens(state, -3.0, rate=10, burst=1, now=0.0).tokens == 5.0
    assert charge_tokens(state, -30.0, rate=10, burst=1, now=0.0).tokens == 10.0
    assert charge_tokens(state, 0.0, rate=10, burst=1, now=0.5).tokens == 7.0  # refilled first


@pytest.mark.parametrize(
    ("estimate", "consumed", "delta"),
    [(10, 10.0, 0.0), (10, 4.0, -6.0), (10, 12.5, 2.5), (10, 0.0, 0.0), (0, 3.0, 3.0)],
)
def test_charge_delta_prefers_what_dynamodb_reported(estimate: float, consumed: float, delta: float) -> None:
    assert charge_delta(estimate, consumed) == delta


@pytest.mark.parametrize(
    ("estimate", "consumed", "delta"),
    [(25, 10.0, 0.0), (25, 0.0, 0.0), (25, 30.0, 5.0)],
)
def test_a_throttled_call_is_not_refunded_what_dynamodb_refused(estimate: float, consumed: float, delta: float) -> None:
    # The refused items are retried: refunding them would let the retries skip the rate.
    assert charge_delta(estimate, consumed, throttled=True) == delta


def _simulate(
    *, rate: float, callers: int, seconds: float, sizes: Callable[[random.Random], float], seed: int = 7
) -> list[tuple[float, float]]:
    """Callers that take, or sleep the wait (<= 0.5 s, waking up to 2 ms late); the admissions."""
    rng = random.Random(seed)
    state: BucketState | None = None
    events = [(rng.random() * 0.01, i, sizes(rng), None) for i in range(callers)]
    heapq.heapify(events)
    admitted: list[tuple[float, float]] = []
    while events:
        now, caller, n, ticket = heapq.heappop(events)
        if now > seconds:
            break
        state, take = take_tokens(state, n, rate=rate, burst=1.0, now=now, ticket=ticket)
        if take.status == GRANTED:
            admitted.append((now, n))
            heapq.heappush(events, (now + rng.random() * 0.003, caller, sizes(rng), None))
        else:
            late = rng.random() * 0.002
            heapq.heappush(events, (now + min(0.5, max(MIN_SLEEP, take.wait)) + late, caller, n, take.ticket))
    return admitted


def _max_in_window(admitted: list[tuple[float, float]], window: float) -> float:
    best = 0.0
    total = 0.0
    start = 0
    for end in range(len(admitted)):
        total += admitted[end][1]
        while admitted[end][0] - admitted[start][0] >= window:
            total -= admitted[start][1]
            start += 1
        best = max(best, total)
    return best


@pytest.mark.parametrize(("callers", "sizes"), [(16, lambda rng: 1.0), (12, lambda rng: float(rng.randint(1, 25)))])
def test_never_more_than_1_1_times_the_rate_in_any_10_second_window(
    callers: int, sizes: Callable[[random.Random], float]
) -> None:
    rate = 100.0
    admitted = _simulate(rate=rate, callers=callers, seconds=60.0, sizes=sizes)
    most = _max_in_window(admitted, 10.0)
    assert most <= 1.1 * rate * 10 + rate * 0.002 + 1e-6  # + what a 2 ms late wake-up can shift in
    assert most >= 0.99 * rate * 10  # and the callers are not starved
    total = sum(n for _, n in admitted)
    assert total >= 0.98 * rate * 60


# --- AIMD -------------------------------------------------------------------------------------


def test_first_throttle_under_a_cap_starts_at_0_7_of_the_cap() -> None:
    state = aimd_on_throttle(None, cap=200.0, observed=0.0, now=10.0, acquired_at=9.9, policy=POLICY)
    assert state == AimdState(rate=140.0, base=200.0, updated=10.0, decreased=10.0)


def test_decrease_is_multiplicative_at_most_once_per_200_ms_and_only_for_calls_after_it() -> None:
    state = aimd_on_throttle(None, cap=200.0, observed=0.0, now=10.0, acquired_at=9.9, policy=POLICY)
    burst = state
    for now in (10.01, 10.05, 10.19):  # concurrent throttled calls: one decrease
        burst = aimd_on_throttle(burst, cap=200.0, observed=0.0, now=now, acquired_at=10.001, policy=POLICY)
    assert burst.rate == 140.0
    assert burst.updated == 10.19
    # A call admitted before the decrease reports the old rate, however late it comes back.
    late = aimd_on_throttle(state, cap=200.0, observed=0.0, now=11.0, acquired_at=9.95, policy=POLICY)
    assert late.rate == 140.0
    unknown = aimd_on_throttle(state, cap=200.0, observed=0.0, now=11.0, acquired_at=None, policy=POLICY)
    assert unknown.rate == 140.0
    again = aimd_on_throttle(state, cap=200.0, observed=0.0, now=10.3, acquired_at=10.25, policy=POLICY)
    assert again.rate == pytest.approx(98.0)
    assert again.decreased == 10.3


def test_decrease_stops_at_the_floor() -> None:
    state = None
    now = 0.0
    for _ in range(40):
        now += 0.3
        state = aimd_on_throttle(state, cap=200.0, observed=0.0, now=now, acquired_at=now - 0.01, policy=POLICY)
    assert state is not None
    assert state.rate == 4.0
    low = None
    for _ in range(40):
        now += 0.3
        low = aimd_on_throttle(low, cap=20.0, observed=0.0, now=now, acquired_at=now - 0.01, policy=POLICY)
    assert low is not None
    assert low.rate == 1.0


def test_a_lowered_cap_is_where_the_next_decrease_starts() -> None:
    state = AimdState(rate=140.0, base=200.0, updated=0.0, decreased=0.0)
    lower = aimd_on_throttle(state, cap=50.0, observed=0.0, now=1.0, acquired_at=0.5, policy=POLICY)
    assert lower.rate == pytest.approx(35.0)


def test_success_increases_additively_by_5_percent_of_the_cap_per_second() -> None:
    state = AimdState(rate=98.0, base=200.0, updated=10.0, decreased=10.0)
    state = aimd_on_success(state, cap=200.0, now=11.0, policy=POLICY)
    assert state is not None
    assert state.rate == pytest.approx(108.0)
    state = aimd_on_success(state, cap=200.0, now=11.5, policy=POLICY)
    assert state is not None
    assert state.rate == pytest.approx(113.0)
    assert state.updated == 11.5
    assert aimd_on_success(state, cap=200.0, now=11.5, policy=POLICY) == state  # no time, no increase
    assert aimd_on_success(state, cap=200.0, now=11.0, policy=POLICY) == state  # clock behind: nothing
    assert aimd_on_success(state, cap=200.0, now=11.5 + 17.4, policy=POLICY) is None  # back at the cap
    assert aimd_on_success(None, cap=200.0, now=20.0, policy=POLICY) is None


def test_without_a_cap_aimd_starts_from_the_observed_rate_and_releases_at_twice_it() -> None:
    state = aimd_on_throttle(None, cap=None, observed=1000.0, now=5.0, acquired_at=None, policy=POLICY)
    assert state == AimdState(rate=700.0, base=1000.0, updated=5.0, decreased=5.0)
    grown = aimd_on_success(state, cap=None, now=7.0, policy=POLICY)
    assert grown is not None
    assert grown.rate == pytest.approx(800.0)
    assert aimd_on_success(state, cap=None, now=5.0 + 25.9, policy=POLICY) is not None
    assert aimd_on_success(state, cap=None, now=5.0 + 26.0, policy=POLICY) is None  # 2000: unlimited again
    nothing_seen = aimd_on_throttle(None, cap=None, observed=0.0, now=5.0, acquired_at=None, policy=POLICY)
    assert nothing_seen.rate == pytest.approx(17.5)
    assert nothing_seen.base == 25.0


def test_observed_rate_sums_the_last_seconds() -> None:
    fields = {b"100": b"50", b"101": b"100", b"105": b"30", b"109": b"20", b"110": b"10", b"first": b"90.0"}
    # window [101, 110]: 100 + 30 + 20 + 10 = 160 over 9.5 s
    assert observed_from(fields, 110.5, 10) == pytest.approx(160 / 9.5)
    assert observed_from({b"110": b"30", b"first": b"108.0"}, 110.5, 10) == pytest.approx(30 / 2.5)
    assert observed_from({b"110": b"30", b"first": b"110.4"}, 110.5, 10) == pytest.approx(30.0)  # at least 1 s
    assert observed_from({}, 110.5, 10) == 0.0


# --- the limiter on the model -------------------------------------------------------------------


def test_cap_helpers(redis: ModelRedis) -> None:
    assert get_rate_cap(redis, 7) is None
    set_rate_cap(redis, 7, 250)
    assert redis.strings[JobKeys.for_job(7).cap] == "250.0"
    assert get_rate_cap(redis, 7) == 250.0
    set_rate_cap(redis, 7, None)
    assert get_rate_cap(redis, 7) is None
    set_rate_cap(redis, 7, 5)
    set_rate_cap(redis, 7, 0)
    assert get_rate_cap(redis, 7) is None
    for bad in (-1, math.inf, math.nan):
        with pytest.raises(ValueError, match="rate cap"):
            set_rate_cap(redis, 7, bad)


def test_keys_share_a_cluster_slot() -> None:
    keys = JobKeys.for_job(42)
    assert keys.all() == (
        "bulkwrites:rate:{42}:cap",
        "bulkwrites:rate:{42}:aimd",
        "bulkwrites:rate:{42}:bucket",
        "bulkwrites:rate:{42}:consumed",
    )


def test_capped_acquire_sleeps_in_slices_and_keeps_its_ticket(redis: ModelRedis, clock: FakeClock) -> None:
    set_rate_cap(redis, "job", 10)
    limiter = make_limiter(redis, clock)
    limiter.acquire(10)  # the full bucket
    assert clock.sleeps == []
    limiter.record(consumed=10.0, throttled=False)
    limiter.acquire(10)
    assert clock.sleeps == pytest.approx([0.5, 0.5])  # 1 s to wait, slept in slices of at most 0.5 s
    assert redis.bucket is not None
    assert redis.bucket.issued == 20.0
    takes = [args for name, args in redis.calls if name == "_take"]
    assert takes[1][2] == ""
    assert takes[2][2] == takes[3][2] == "10.0"


def test_capped_throughput_follows_the_cap(redis: ModelRedis, clock: FakeClock) -> None:
    set_rate_cap(redis, "job", 200)
    limiter = make_limiter(redis, clock)
    start = clock.now
    acquired = 0
    while clock.now - start < 30.0:
        limiter.acquire(5)
        limiter.record(consumed=5.0, throttled=False)
        acquired += 5
    elapsed = clock.now - start
    assert acquired <= 200 * elapsed + 200 + 5
    assert acquired >= 0.99 * 200 * elapsed


def test_record_charges_what_dynamodb_reported(redis: ModelRedis, clock: FakeClock) -> None:
    set_rate_cap(redis, "job", 1000)  # the fake clock stands still: no refill, no waiting
    limiter = make_limiter(redis, clock)
    limiter.acquire(30)
    assert redis.bucket is not None
    assert redis.bucket.tokens == 970.0
    limiter.record(consumed=12.0, throttled=False)  # 18 back
    assert redis.bucket.tokens == 988.0
    limiter.acquire(30)
    limiter.record(consumed=0.0, throttled=False)  # not reported: the estimate stands
    assert redis.bucket.tokens == 958.0
    limiter.acquire(30)
    limiter.record(consumed=45.0, throttled=False)  # more than estimated: 15 more
    assert redis.bucket.tokens == 913.0
    limiter.acquire(30)
    limiter.record(consumed=0.0, throttled=True)  # a throttled call keeps its charge
    assert redis.bucket.tokens == 883.0
    assert limiter.current_rate() == 700.0  # and AIMD backed off: the bucket now holds at most 700
    limiter.acquire(30)
    assert redis.bucket.tokens == 670.0
    limiter.record(consumed=20.0, throttled=True)  # UnprocessedItems: the refused 10 stay charged (retried)
    assert redis.bucket.tokens == 670.0
    assert redis.consumed[str(math.floor(clock.now))] == 12.0 + 30.0 + 45.0 + 20.0


def test_unlimited_job_touches_redis_once_per_second(redis: ModelRedis, clock: FakeClock) -> None:
    limiter = make_limiter(redis, clock)
    for _ in range(3000):
        limiter.acquire(25)
        limiter.record(consumed=25.0, throttled=False)
        clock.now += 0.001
    assert len(redis.calls) <= 4  # one take to learn it is unlimited, then one check per second
    assert clock.sleeps == []
    assert limiter.current_rate() is None
    flushed = sum(v for k, v in redis.consumed.items() if k != "first")
    assert 2000 * 25 <= flushed <= 3000 * 25  # what was recorded, flushed at the checks
    limiter.flush()
    assert sum(v for k, v in redis.consumed.items() if k != "first") == 3000 * 25


def test_a_cap_set_while_unlimited_is_seen_within_the_recheck(redis: ModelRedis, clock: FakeClock) -> None:
    limiter = make_limiter(redis, clock)
    limiter.acquire(1)
    set_rate_cap(redis, "job", 50)
    start = clock.now
    while redis.bucket is None:
        limiter.acquire(1)
        limiter.record(consumed=1.0, throttled=False)
        clock.now += 0.01
    assert clock.now - start <= 1.0 + 0.02
    assert limiter.current_rate() == 50.0


def test_throttle_of_an_unlimited_job_starts_aimd_from_what_it_consumed(redis: ModelRedis, clock: FakeClock) -> None:
    limiter = make_limiter(redis, clock)
    for _ in range(20):  # 20 x 25 WCU in 2 s: 250 WCU/s
        limiter.acquire(25)
        limiter.record(consumed=25.0, throttled=False)
        clock.now += 0.1
    limiter.acquire(25)
    calls = len(redis.calls)
    limiter.record(consumed=0.0, throttled=True)
    assert len(redis.calls) == calls + 1  # sent at once
    assert limiter.current_rate() == pytest.approx(0.7 * 500 / 2.0)
    # From now on calls go through the bucket, at the adaptive rate.
    limiter.acquire(25)
    assert redis.calls[-1][0] == "_take"


def test_throttles_and_successes_move_the_rate(redis: ModelRedis, clock: FakeClock) -> None:
    set_rate_cap(redis, "job", 200)
    limiter = make_limiter(redis, clock)
    limiter.acquire(1)
    limiter.record(consumed=0.0, throttled=True)
    assert limiter.current_rate() == pytest.approx(140.0)
    for _ in range(5):  # calls admitted before the decrease come back throttled too: no further decrease
        limiter.record(consumed=0.0, throttled=True)
    clock.now += 0.25
    limiter.acquire(1)
    limiter.record(consumed=0.0, throttled=True)
    assert limiter.current_rate() == pytest.approx(98.0)
    clock.now += 1.0
    limiter.acquire(1)
    limiter.record(consumed=1.0, throttled=False)
    assert limiter.current_rate() == pytest.approx(108.0, abs=0.1)
    clock.now += 30.0
    limiter.acquire(1)
    limiter.record(consumed=1.0, throttled=False)
    assert limiter.current_rate() == 200.0
    assert redis.aimd is None


def test_zero_units_need_nothing(redis: ModelRedis, clock: FakeClock) -> None:
    set_rate_cap(redis, "job", 1)
    limiter = make_limiter(redis, clock)
    limiter.acquire(0)
    limiter.record(consumed=0.0, throttled=False)
    assert redis.calls == []


def test_record_without_acquire_only_counts_consumption(redis: ModelRedis, clock: FakeClock) -> None:
    limiter = make_limiter(redis, clock)
    limiter.record(consumed=3.0, throttled=False)
    limiter.flush()
    assert redis.consumed[str(math.floor(clock.now))] == 3.0
    assert redis.aimd is None
    assert redis.bucket is None


def test_a_throttle_is_reported_after_the_consumption_another_thread_is_sending(clock: FakeClock) -> None:
    # Thread A flushes the consumption of unlimited calls; thread B reports the first throttle
    # meanwhile. If B's report reached Redis first, the uncapped job's first rate would be
    # computed from a fraction of what it consumed.
    redis = ModelRedis(clock)
    limiter = make_limiter(redis, clock)
    limiter.acquire(25)
    limiter.record(consumed=1200.0, throttled=False)  # unlimited: kept until the next report
    assert redis.calls == [("_take", redis.calls[0][1])]
    entered, release = threading.Event(), threading.Event()
    report = limiter._report_script

    def slow_first_report(**kwargs: Any) -> Any:
        if not entered.is_set():
            entered.set()
            assert release.wait(5)
        return report(**kwargs)

    limiter._report_script = slow_first_report
    flusher = threading.Thread(target=limiter.flush)
    flusher.start()
    assert entered.wait(5)
    thrower = threading.Thread(target=lambda: limiter.record(consumed=0.0, throttled=True))
    thrower.start()
    thrower.join(0.2)
    assert thrower.is_alive()  # waits for the flush in flight
    release.set()
    flusher.join(5)
    thrower.join(5)
    reports = [args for name, args in redis.calls if name == "_report"]
    assert [(float(a[0]), a[3]) for a in reports] == [(1200.0, "none"), (0.0, "throttled")]
    assert redis.aimd is not None
    assert redis.aimd.base == pytest.approx(1200.0 / max(1.0, 0.0))
