"""The writer's rate limiter for one job: the bucket, the adaptive rate and consumption, through Redis.

Every thread and process writing for a job shares its state in Redis (``scripts.py``). While a
job is unlimited (no cap, and DynamoDB never refused anything), calls skip Redis: their outcomes
are summed here and sent once per ``recheck_seconds``, or at once when DynamoDB refused some.

Redis going away (a restart, a failover, a network blip) does not fail the job: each Redis call
is retried with capped exponential backoff for up to ``outage_seconds``; meanwhile the calls that
need the bucket wait, so a capped job never runs above its cap for want of Redis.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .keys import JobKeys, set_rate_cap
from .policy import RatePolicy, charge_delta, refused_share
from .scripts import UNLIMITED, WAIT, Limits, Outcomes, Scripts, Take

logger = logging.getLogger(__name__)

MAX_SLEEP = 0.5  # seconds a waiting caller sleeps at most before polling again (and re-reading the rate)
MIN_SLEEP = 0.001  # never poll again sooner than this: no busy spinning
RECHECK_SECONDS = 0.25  # an unlimited job reports to Redis once per this many seconds (one round)
OUTAGE_SECONDS = 600.0  # how long a Redis call is retried before the error reaches the job
RETRY_FIRST, RETRY_CAP = 0.05, 2.0  # backoff between Redis attempts, seconds
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)
OBSERVED_WINDOW = 10  # seconds of consumption behind observed_rate()


@dataclass
class _Call:
    estimate: float
    acquired_at: float | None  # server time the bucket granted the call; None when it went unlimited
    charged: bool  # the estimate was booked in the bucket
    started: float  # clock() when the call was let go (its round trip is measured from here)


def _add(a: Outcomes, b: Outcomes) -> Outcomes:
    return Outcomes(
        a.calls + b.calls,
        a.units + b.units,
        a.refused + b.refused,
        a.share_sum + b.share_sum,
        a.share_sq + b.share_sq,
        a.consumed + b.consumed,
        0.0,
        a.latency + b.latency,
        a.refused_calls + b.refused_calls,
    )


class JobRateLimiter:
    """The writer's ``RateLimiter`` for one job (see ``bulkwrites.dynamo.writer``).

    Thread-safe: a call's ``acquire`` and ``record`` must come from the same thread (the writer's
    do). ``clock`` measures round trips and paces the unlimited reports; ``sleep`` waits for
    tokens and between Redis retries; ``server_clock`` (tests) replaces Redis' TIME.
    """

    def __init__(
        self,
        redis: Any,
        job_id: object,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        *,
        policy: RatePolicy | None = None,
        max_sleep: float = MAX_SLEEP,
        recheck_seconds: float = RECHECK_SECONDS,
        outage_seconds: float = OUTAGE_SECONDS,
        server_clock: Callable[[], float] | None = None,
    ) -> None:
        self.redis = redis
        self.job_id = job_id
        self.keys = JobKeys.for_job(job_id)
        self.policy = policy or RatePolicy()
        self.scripts = Scripts(redis, self.policy)
        self.clock = clock
        self.sleep = sleep
        self.max_sleep = max_sleep
        self.recheck_seconds = recheck_seconds
        self.outage_seconds = outage_seconds
        self.server_clock = server_clock
        self._lock = threading.Lock()
        # One report at a time per limiter: a refusal reported while another thread was still
        # sending the consumption it had just taken would see a fraction of what was consumed.
        self._send_lock = threading.Lock()
        self._local = threading.local()
        self._unlimited = False  # last seen state; while True (and not due) calls skip Redis
        self._recheck_at = -math.inf
        self._pending = Outcomes()  # outcomes recorded while unlimited, not yet in Redis
        self._pending_since: float | None = None  # clock() of the first of those
        self._cap: float | None = None
        self._cap_known = False
        # The background share in the last report's answer. Each report carries it, so that a
        # Redis that lost the job's state (restarted empty, flushed) gets it back (report.lua).
        self._background = 0.0

    # --- the writer's protocol ----------------------------------------------------------------

    def acquire(self, write_units: float) -> None:
        self._local.call = None
        if write_units <= 0:
            return
        if self._skip_redis():
            self._local.call = _Call(write_units, None, charged=False, started=self.clock())
            return
        result = self._wait_for(write_units)
        if result.status == UNLIMITED:
            self._set_unlimited(True)
            self._local.call = _Call(write_units, None, charged=False, started=self.clock())
            return
        self._set_unlimited(False)
        self._local.call = _Call(write_units, result.now, charged=True, started=self.clock())

    def record(self, *, consumed: float, refused: float = 0.0, fault: bool = False) -> None:
        """How the call answered: units consumed (0: not reported), units refused, or a fault.

        ``refused`` is what DynamoDB turned away for capacity: the unprocessed items' units, or
        every unit of a call that failed with a throttling error. A *fault* (5xx, a dropped
        connection, a timeout) says nothing about capacity: it is not a round's evidence, and
        its estimate stays charged.
        """
        call: _Call | None = getattr(self._local, "call", None)
        self._local.call = None
        if fault or call is None:
            return
        estimate = call.estimate
        share = refused_share(estimate, refused)
        observed = consumed if consumed > 0 else max(0.0, estimate - refused)
        outcome = Outcomes(
            calls=1,
            units=estimate,
            refused=min(refused, estimate),
            share_sum=share,
            share_sq=share * share,
            consumed=observed,
            latency=max(0.0, self.clock() - call.started),
            refused_calls=1 if refused > 0 else 0,
        )
        if call.charged:
            delta = charge_delta(estimate, consumed, throttled=refused > 0)
            self._send(outcome, acquired_at=call.acquired_at, delta=delta)
            return
        if refused > 0:
            # DynamoDB refused some: the round hears of it now, after the calls that went out
            # before it and were taken whole. Sent in one report, they diluted the refusal (the
            # round restarts with it in report.lua) with a quarter second of the table's burst,
            # and the first cut was measured on a rate the table no longer gives.
            self._send(Outcomes())
            self._send(outcome)
            return
        with self._lock:
            self._pending = _add(self._pending, outcome)
            if self._pending_since is None:
                self._pending_since = call.started
        self._skip_redis()  # sends the outcomes once per recheck interval

    def background_share(self) -> float:
        """The share of each call DynamoDB refuses whatever the rate, as of the last report (an
        unlimited job reports once per ``recheck_seconds``, or at once when refused)."""
        return self._background

    # --- the operator's cap, the job page ---------------------------------------------------------

    def ensure_cap(self, wcu_per_second: float | None) -> None:
        """Make Redis hold the ledger's cap (after a flushed or restarted Redis, it holds none)."""
        self._cap, self._cap_known = wcu_per_second, True
        self._retrying(lambda: set_rate_cap(self.redis, self.job_id, wcu_per_second))

    def current_rate(self) -> float | None:
        """WCU/s calls may use now (cap and adaptive rate together); None = unlimited."""
        limits = self._retrying(
            lambda: self.scripts.report(self.keys, now=self._now(), heard_background=self._background)
        )
        self._background = limits.background
        return limits.rate

    def observed_rate(self) -> float:
        """WCU/s consumed over the last ~10 s, by all workers (each unlimited one lags up to a round)."""
        from .status import observed_from

        def read() -> tuple[Any, Any]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.time()
            pipe.hgetall(self.keys.consumed)
            return tuple(pipe.execute())

        (seconds, micros), fields = self._retrying(read)
        now = self._now() or int(seconds) + int(micros) / 1_000_000
        return observed_from(fields, now, OBSERVED_WINDOW)

    def flush(self) -> None:
        """Send the outcomes recorded while unlimited (at the end of a run, for an exact page)."""
        self._send(Outcomes())

    # --- internals ---------------------------------------------------------------------------------

    def _now(self) -> float | None:
        return self.server_clock() if self.server_clock is not None else None

    def _wait_for(self, units: float) -> Take:
        ticket: float | None = None
        while True:
            result = self._retrying(
                lambda ticket=ticket: self.scripts.take(self.keys, units, ticket, now=self._now())  # type: ignore[misc]
            )
            if result.status != WAIT:
                return result
            ticket = result.ticket
            self.sleep(min(self.max_sleep, max(MIN_SLEEP, result.wait)))

    def _skip_redis(self) -> bool:
        """True while the job is known unlimited; once per interval one caller refreshes that."""
        now = self.clock()
        with self._lock:
            if not self._unlimited:
                return False
            if now < self._recheck_at:
                return True
            self._recheck_at = now + self.recheck_seconds  # this caller checks; the others go on
        return self._send(Outcomes()).rate is None

    def _set_unlimited(self, unlimited: bool) -> None:
        with self._lock:
            if unlimited and not self._unlimited:
                self._recheck_at = self.clock() + self.recheck_seconds
            self._unlimited = unlimited

    def _send(self, outcome: Outcomes, *, acquired_at: float | None = None, delta: float = 0.0) -> Limits:
        with self._send_lock:
            with self._lock:
                pending, self._pending = self._pending, Outcomes()
                since, self._pending_since = self._pending_since, None
            if pending.calls or pending.consumed:
                span = self.clock() - since if since is not None else 0.0
                # Pending outcomes went out unlimited (no grant): they join the round whatever its start.
                merged = replace(_add(pending, outcome), span=span)
                if outcome.calls:
                    acquired_at = None
            else:
                merged = outcome
            try:
                limits = self._retrying(
                    lambda: self.scripts.report(
                        self.keys,
                        merged,
                        acquired_at=acquired_at,
                        delta=delta,
                        now=self._now(),
                        heard_background=self._background,
                    )
                )
            except Exception:
                with self._lock:  # not lost: the next report carries them
                    self._pending = _add(self._pending, pending)
                    if since is not None:
                        self._pending_since = since if self._pending_since is None else min(since, self._pending_since)
                raise
        self._set_unlimited(limits.rate is None)
        self._background = limits.background
        if limits.event:
            logger.info("rate of %s: %s, now %s WCU/s", self.keys.control, limits.event, limits.rate)
        return limits

    def _retrying[T](self, attempt: Callable[[], T]) -> T:
        """Run a Redis call, waiting out an outage with capped exponential backoff."""
        delay = RETRY_FIRST
        down_since: float | None = None
        while True:
            try:
                result = attempt()
            except REDIS_DOWN as exc:
                now = self.clock()
                if down_since is None:
                    down_since = now
                    logger.warning("Redis unreachable (%s); the job's rate limiter retries", exc)
                elif now - down_since > self.outage_seconds:
                    raise
                self.sleep(delay)
                delay = min(RETRY_CAP, delay * 2)
                continue
            if down_since is not None:
                logger.warning("Redis answers again after %.1f s", self.clock() - down_since)
                if self._cap_known:  # a restarted Redis forgot the cap
                    cap = self._cap
                    set_rate_cap(self.redis, self.job_id, cap)
            return result
