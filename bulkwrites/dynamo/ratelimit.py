"""Write-capacity rate control shared by every worker of a job, kept in Redis.

Every process and thread writing for one job shares one budget, so the state lives in Redis
under ``bulkwrites:rate:{<job_id>}:*`` (the braces are a Redis Cluster hash tag: a job's keys
share a slot, as the scripts need) and is changed only by two Lua scripts, atomically:

``cap``
    The operator's ceiling in WCU/s (:func:`set_rate_cap`); absent means unlimited.
``aimd``
    The adaptive rate below the cap (:class:`AdaptiveRate`); absent means "at the ceiling".
``bucket``
    The token bucket (:class:`RedisTokenBucket`).
``consumed``
    Capacity consumed per second of Redis server time, for :meth:`JobRateLimiter.observed_rate`.

The rate a call may use is ``min(cap, aimd)``; both are read by the scripts on every call, so an
operator's change reaches every waiting worker at its next poll (at most ``max_sleep`` later).
All times in the scripts are the Redis server's ``TIME``: the machines' clocks never meet.

Token bucket with tickets
    The bucket holds at most ``rate * burst_seconds`` tokens and refills at ``rate`` per second.
    ``take(n)`` always books the tokens (the bucket may go negative: a queue, or debt) and hands
    out a *ticket*, the position of the booking; the caller may go once the bucket, counted
    from its ticket, holds ``min(n, capacity)``, so a request larger than the whole bucket goes
    when the bucket is full and leaves it in debt (as ``faultproxy`` does). A caller that must
    wait sleeps at most ``max_sleep`` and polls again with its ticket; the wait is recomputed
    at the rate of that moment. Tickets make waiting callers first come, first served: a large
    request is never starved by a stream of small ones, and waiters do not stampede.

Guarantee
    Calls admitted in any window of ``T`` seconds cost at most ``rate * (T + burst_seconds)``
    (plus, once, the excess of a single request larger than the bucket): with the default burst
    of 1 s, 1.1 x the cap in any 10-second window, across threads and processes. Waking up a few
    milliseconds late only moves a call within its slot. Reported consumption above the
    estimate is charged after the call, so it shows up as debt that slows the next calls.

Charging
    ``acquire(units)`` books the estimate (item sizes). ``record(consumed=...)`` replaces the
    estimate by what DynamoDB reported: the difference is taken from the bucket (debt) or given
    back (never above the capacity). A reported 0 means "not reported, or the call failed"
    (a write always consumes >= 1 WCU): the estimate stays charged, also for a throttled or
    failed call, which is the conservative reading of a busy table.

AIMD (:class:`AimdPolicy`)
    A throttled call (an exception or ``UnprocessedItems``) multiplies the adaptive rate by 0.7,
    at most once per 200 ms and only for calls admitted after the last decrease (the calls that
    were in flight when it happened describe the old rate), never below max(1 WCU/s, 2 % of the
    cap). Success adds 5 % of the cap per second since the last change; at the cap the adaptive
    rate is dropped. A job without a cap starts unlimited; its first throttle starts AIMD at
    0.7 x the consumption observed over the last seconds (the base), it grows by 5 % of the base
    per second and goes back to unlimited at twice the base.

Unlimited jobs
    ``acquire`` makes no Redis call while unlimited, except one check per ``recheck_seconds``
    (1 s) that also flushes the consumption recorded meanwhile; a throttle is sent at once.

This module is plain Python (no Django): it takes a ``redis.Redis`` client, a clock and a sleep.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

KEY_PREFIX = "bulkwrites:rate"
DEFAULT_BURST_SECONDS = 1.0
MAX_SLEEP = 0.5  # seconds a waiting caller sleeps at most before polling again (and re-reading the rate)
MIN_SLEEP = 0.001  # never poll again sooner than this: no busy spinning
RECHECK_SECONDS = 1.0  # an unlimited job looks at Redis once per this many seconds
STATE_TTL_MS = 3_600_000  # bucket and adaptive state of a job idle for an hour are forgotten
OBSERVED_TTL_MS = 60_000
OBSERVED_WINDOW = 10  # seconds of consumption behind observed_rate()

UNLIMITED = "unlimited"
GRANTED = "granted"
WAIT = "wait"


# --- keys and the operator's cap ------------------------------------------------------------


@dataclass(frozen=True)
class JobKeys:
    cap: str
    adaptive: str
    bucket: str
    consumed: str

    @classmethod
    def for_job(cls, job_id: object) -> JobKeys:
        base = f"{KEY_PREFIX}:{{{job_id}}}"
        return cls(f"{base}:cap", f"{base}:aimd", f"{base}:bucket", f"{base}:consumed")

    def all(self) -> tuple[str, str, str, str]:
        return (self.cap, self.adaptive, self.bucket, self.consumed)


def set_rate_cap(redis: Any, job_id: object, wcu_per_second: float | None) -> None:
    """Set the job's ceiling in WCU/s; None or 0 makes it unlimited. Every worker sees it within ~1 s."""
    key = JobKeys.for_job(job_id).cap
    if wcu_per_second is None or wcu_per_second == 0:
        redis.delete(key)
        return
    rate = float(wcu_per_second)
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"a rate cap must be a positive number of WCU/s or None, not {wcu_per_second!r}")
    redis.set(key, repr(rate))


def get_rate_cap(redis: Any, job_id: object) -> float | None:
    return _positive(redis.get(JobKeys.for_job(job_id).cap))


def delete_rate_state(redis: Any, job_id: object) -> None:
    """Forget everything about a job's rate, its cap included (for a deleted job)."""
    redis.delete(*JobKeys.for_job(job_id).all())


# --- pure arithmetic (mirrored by the Lua scripts below; tests hold them to each other) -------


def effective_rate(cap: float | None, adaptive: float | None) -> float | None:
    """The rate a call may use: the lower of the cap and the adaptive rate; None is unlimited."""
    if cap is None:
        return adaptive
    if adaptive is None:
        return cap
    return min(cap, adaptive)


@dataclass(frozen=True)
class BucketState:
    tokens: float  # at most rate * burst; negative while tickets queue or after debt
    issued: float  # units booked since the bucket was created: tickets are positions on this line
    ts: float  # server time of the last refill


@dataclass(frozen=True)
class Take:
    status: str  # GRANTED, WAIT or UNLIMITED
    wait: float = 0.0  # seconds until the ticket is due (WAIT only), at the current rate
    ticket: float | None = None
    rate: float | None = None
    now: float = 0.0  # server time of the decision


def refill(state: BucketState | None, *, rate: float, burst: float, now: float) -> BucketState:
    capacity = rate * burst
    if state is None:
        return BucketState(capacity, 0.0, now)  # a new bucket starts full
    tokens, ts = state.tokens, state.ts
    if now > ts:  # a server clock stepping back refills nothing (and never twice)
        tokens += (now - ts) * rate
        ts = now
    return BucketState(min(capacity, tokens), state.issued, ts)


def take_tokens(
    state: BucketState | None, n: float, *, rate: float, burst: float, now: float, ticket: float | None = None
) -> tuple[BucketState, Take]:
    """Book ``n`` tokens (or poll an earlier booking, ``ticket``): granted now, or the wait."""
    state = refill(state, rate=rate, burst=burst, now=now)
    tokens, issued = state.tokens, state.issued
    if ticket is None or ticket >= issued:  # a new caller, or a ticket of a bucket since deleted
        ticket = issued
        issued += n
        tokens -= n
    short = ticket + min(n, rate * burst) - (issued + tokens)
    state = BucketState(tokens, issued, state.ts)
    if short <= 0:
        return state, Take(GRANTED, 0.0, ticket, rate, now)
    return state, Take(WAIT, short / rate, ticket, rate, now)


def charge_tokens(state: BucketState | None, delta: float, *, rate: float, burst: float, now: float) -> BucketState:
    """Charge ``delta`` more units (debt if need be), or give ``-delta`` back (up to the capacity)."""
    state = refill(state, rate=rate, burst=burst, now=now)
    return replace(state, tokens=min(rate * burst, state.tokens - delta))


def charge_delta(estimate: float, consumed: float, *, throttled: bool = False) -> float:
    """What to add to a call's charge once DynamoDB answered: reported minus estimated, or 0 if unreported.

    A throttled call gets nothing back for the items DynamoDB refused: they are sent again, and
    refunding them let those retries go out at once, above the rate the job was held to (measured
    at a 1,000 WCU/s cap: 2,200-3,200 WCU/s of attempts while the limiter allowed 400-900, and
    a quarter of all calls throttled). Charging attempts while throttled keeps retries paced;
    what is consumed never exceeds what is charged, so the cap still holds.
    """
    if consumed <= 0:
        return 0.0
    delta = consumed - estimate
    return max(0.0, delta) if throttled else delta


@dataclass(frozen=True)
class AimdPolicy:
    decrease_factor: float = 0.7
    min_decrease_interval: float = 0.2  # seconds between two decreases, whatever the number of throttles
    increase_per_second: float = 0.05  # of the cap (or of the base without a cap), per second of success
    floor_fraction: float = 0.02  # the adaptive rate never drops below this share of the cap (or base) ...
    floor_min: float = 1.0  # ... nor below this many WCU/s
    release_factor: float = 2.0  # without a cap: back to unlimited at this multiple of the base
    start_window: int = 3  # without a cap: seconds of observed consumption the first throttle starts from
    fallback_start: float = 25.0  # without a cap and nothing observed: the base, WCU/s (one call of small items)

    def floor(self, reference: float) -> float:
        return max(self.floor_min, self.floor_fraction * reference)

    def args(self) -> list[float]:
        return [
            self.decrease_factor,
            self.min_decrease_interval,
            self.increase_per_second,
            self.floor_fraction,
            self.floor_min,
            self.release_factor,
            self.start_window,
            self.fallback_start,
        ]


@dataclass(frozen=True)
class AimdState:
    rate: float  # WCU/s now allowed (the cap may still be lower)
    base: float  # the cap when AIMD started, or the observed rate for a job without a cap
    updated: float  # server time of the last change (additive increase counts from here)
    decreased: float  # server time of the last decrease


def aimd_on_throttle(
    state: AimdState | None,
    *,
    cap: float | None,
    observed: float,
    now: float,
    acquired_at: float | None,
    policy: AimdPolicy,
) -> AimdState:
    if state is not None:
        if now - state.decreased < policy.min_decrease_interval or acquired_at is None or acquired_at < state.decreased:
            # Already reacted to this congestion; the time it lasts earns no increase either.
            return replace(state, updated=max(state.updated, now))
        current = state.rate if cap is None else min(cap, state.rate)
        rate = max(policy.floor(cap if cap is not None else state.base), current * policy.decrease_factor)
        return AimdState(rate, state.base, now, now)
    base = cap if cap is not None else (observed if observed > 0 else policy.fallback_start)
    return AimdState(max(policy.floor(base), base * policy.decrease_factor), base, now, now)


def aimd_on_success(state: AimdState | None, *, cap: float | None, now: float, policy: AimdPolicy) -> AimdState | None:
    """Additive increase; None once the adaptive rate reaches the cap (or, without one, the release point)."""
    if state is None:
        return None
    reference = cap if cap is not None else state.base
    ceiling = cap if cap is not None else state.base * policy.release_factor
    rate = state.rate + policy.increase_per_second * reference * max(0.0, now - state.updated)
    if rate >= ceiling:
        return None
    return replace(state, rate=rate, updated=max(state.updated, now))


def observed_from(fields: Mapping[Any, Any], now: float, window: int) -> float:
    """WCU/s consumed over the last ``window`` seconds, from the per-second sums of the ``consumed`` hash."""
    values = {_text(k): float(v) for k, v in fields.items()}
    second = math.floor(now)
    total = sum(values.get(str(s), 0.0) for s in range(second - window + 1, second + 1))
    span = window - 1 + (now - second)
    first = values.get("first")
    if first is not None:
        span = min(span, now - first)  # a job that began 2 s ago has not been idle for 8
    return total / max(1.0, span)


# --- the scripts ------------------------------------------------------------------------------

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function fmt(x) return string.format('%.17g', x) end
local function clock(forced)
  local t = tonumber(forced)
  if t then return t end
  local now = redis.call('TIME')
  return tonumber(now[1]) + tonumber(now[2]) / 1000000
end
local function positive(value)
  local x = tonumber(value)
  if x and x > 0 then return x end
  return nil
end
local function limits(cap_key, aimd_key)
  local cap = positive(redis.call('GET', cap_key))
  local adaptive = positive(redis.call('HGET', aimd_key, 'rate'))
  local rate = cap
  if adaptive and (not rate or adaptive < rate) then rate = adaptive end
  return cap, adaptive, rate
end
local function refill(key, rate, burst, now)
  local capacity = rate * burst
  local s = redis.call('HMGET', key, 'tokens', 'issued', 'ts')
  local tokens = tonumber(s[1])
  if not tokens then return capacity, 0, now, capacity end
  local issued, ts = tonumber(s[2]) or 0, tonumber(s[3]) or now
  if now > ts then
    tokens = tokens + (now - ts) * rate
    ts = now
  end
  if tokens > capacity then tokens = capacity end
  return tokens, issued, ts, capacity
end
local function save(key, tokens, issued, ts, ttl)
  redis.call('HSET', key, 'tokens', fmt(tokens), 'issued', fmt(issued), 'ts', fmt(ts))
  redis.call('PEXPIRE', key, ttl)
end
"""

# KEYS: cap, aimd, bucket. ARGV: n, burst, ticket or '', now or '' (tests), ttl ms.
# Returns {status, wait, ticket, rate, now}, numbers as strings.
TAKE_LUA = (
    _PRELUDE
    + """
local now = clock(ARGV[4])
local cap, adaptive, rate = limits(KEYS[1], KEYS[2])
if not rate then return {'unlimited', '0', '', '', fmt(now)} end
local n = tonumber(ARGV[1])
local tokens, issued, ts, capacity = refill(KEYS[3], rate, tonumber(ARGV[2]), now)
local ticket = tonumber(ARGV[3])
if not ticket or ticket >= issued then
  ticket = issued
  issued = issued + n
  tokens = tokens - n
end
save(KEYS[3], tokens, issued, ts, ARGV[5])
local short = ticket + math.min(n, capacity) - (issued + tokens)
if short <= 0 then return {'granted', '0', fmt(ticket), fmt(rate), fmt(now)} end
return {'wait', fmt(short / rate), fmt(ticket), fmt(rate), fmt(now)}
"""
)

# KEYS: cap, aimd, bucket, consumed.
# ARGV: observe, the seconds it took (0: just now), delta, event ('throttled' | 'success' | 'none'),
#       acquired_at or '', burst, now or '', state ttl ms, observed ttl ms, then AimdPolicy.args().
# Returns {cap or '', adaptive rate or '', now}.
REPORT_LUA = (
    _PRELUDE
    + """
local now = clock(ARGV[7])
local observe, observe_span, delta, event = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local acquired_at, burst = tonumber(ARGV[5]), tonumber(ARGV[6])
local state_ttl, observed_ttl = ARGV[8], ARGV[9]
local factor, interval, increase = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local floor_fraction, floor_min, release = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local window, fallback = tonumber(ARGV[16]), tonumber(ARGV[17])
local cap, adaptive, rate = limits(KEYS[1], KEYS[2])

if observe > 0 then
  local second = math.floor(now)
  redis.call('HINCRBYFLOAT', KEYS[4], string.format('%d', second), fmt(observe))
  redis.call('HSETNX', KEYS[4], 'first', fmt(now - observe_span))
  if redis.call('HLEN', KEYS[4]) > 24 then
    for _, field in ipairs(redis.call('HKEYS', KEYS[4])) do
      local s = tonumber(field)
      if field ~= 'first' and s and s < second - 20 then redis.call('HDEL', KEYS[4], field) end
    end
  end
  redis.call('PEXPIRE', KEYS[4], observed_ttl)
end

if delta ~= 0 and rate then
  local tokens, issued, ts, capacity = refill(KEYS[3], rate, burst, now)
  tokens = math.min(capacity, tokens - delta)
  save(KEYS[3], tokens, issued, ts, state_ttl)
end

local function observed(key)
  local second = math.floor(now)
  local total = 0
  for s = second - window + 1, second do
    total = total + (tonumber(redis.call('HGET', key, string.format('%d', s))) or 0)
  end
  local span = window - 1 + (now - second)
  local first = tonumber(redis.call('HGET', key, 'first'))
  if first and now - first < span then span = now - first end
  return total / math.max(1, span)
end

local function floor_for(reference) return math.max(floor_min, floor_fraction * reference) end

if event == 'throttled' then
  local s = redis.call('HMGET', KEYS[2], 'rate', 'base', 'updated', 'decreased')
  local current, base = tonumber(s[1]), tonumber(s[2])
  local updated, decreased = tonumber(s[3]), tonumber(s[4])
  if current then
    if now - decreased < interval or not acquired_at or acquired_at < decreased then
      if now > updated then redis.call('HSET', KEYS[2], 'updated', fmt(now)) end
    else
      if cap and cap < current then current = cap end
      adaptive = math.max(floor_for(cap or base), current * factor)
      redis.call('HSET', KEYS[2], 'rate', fmt(adaptive), 'updated', fmt(now), 'decreased', fmt(now))
    end
  else
    base = cap
    if not base then
      base = observed(KEYS[4])
      if base <= 0 then base = fallback end
    end
    adaptive = math.max(floor_for(base), base * factor)
    redis.call('HSET', KEYS[2], 'rate', fmt(adaptive), 'base', fmt(base), 'updated', fmt(now), 'decreased', fmt(now))
    -- A job without a cap ran unlimited until now: the throttle says DynamoDB's capacity (and
    -- its burst) is used up, so its new bucket starts empty instead of full. Starting full
    -- sent a second's worth at once into the exhausted table: ~1,000 of the ~1,200 unprocessed
    -- items of a run at a 1,000 WCU/s cap came back in its first two seconds.
    if not cap and redis.call('EXISTS', KEYS[3]) == 0 then
      save(KEYS[3], 0, 0, now, state_ttl)
    end
  end
  redis.call('PEXPIRE', KEYS[2], state_ttl)
elseif event == 'success' then
  local s = redis.call('HMGET', KEYS[2], 'rate', 'base', 'updated')
  local current, base, updated = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
  if current then
    local reference, ceiling = cap, cap
    if not cap then reference, ceiling = base, base * release end
    local grown = current + increase * reference * math.max(0, now - updated)
    if grown >= ceiling then
      redis.call('DEL', KEYS[2])
      adaptive = nil
    else
      if now > updated then updated = now end
      redis.call('HSET', KEYS[2], 'rate', fmt(grown), 'updated', fmt(updated))
      redis.call('PEXPIRE', KEYS[2], state_ttl)
      adaptive = grown
    end
  end
end

local cap_text, adaptive_text = '', ''
if cap then cap_text = fmt(cap) end
if adaptive then adaptive_text = fmt(adaptive) end
return {cap_text, adaptive_text, fmt(now)}
"""
)


@dataclass(frozen=True)
class Limits:
    cap: float | None
    adaptive: float | None
    now: float

    @property
    def rate(self) -> float | None:
        return effective_rate(self.cap, self.adaptive)


# --- Redis-backed parts -------------------------------------------------------------------------


def _keys(job: object) -> JobKeys:
    return job if isinstance(job, JobKeys) else JobKeys.for_job(job)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _positive(value: Any) -> float | None:
    if value is None or value in ("", b""):
        return None
    number = float(value)
    return number if number > 0 else None


def _arg(value: float | None) -> str:
    return "" if value is None else repr(float(value))


class RedisTokenBucket:
    """The job's token bucket; its rate is ``min(cap, adaptive rate)`` read from Redis on every take."""

    def __init__(
        self,
        redis: Any,
        job: object,
        *,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        max_sleep: float = MAX_SLEEP,
    ) -> None:
        if burst_seconds <= 0:
            raise ValueError("burst_seconds must be positive")
        self.keys = _keys(job)
        self.burst_seconds = burst_seconds
        self.sleep = sleep
        self.max_sleep = max_sleep
        self._take = redis.register_script(TAKE_LUA)
        self._report = redis.register_script(REPORT_LUA)

    def take(self, n: float, ticket: float | None = None, *, now: float | None = None) -> Take:
        """One atomic attempt; ``now`` overrides the server time (tests only)."""
        status, wait, ticket_text, rate, server_now = self._take(
            keys=[self.keys.cap, self.keys.adaptive, self.keys.bucket],
            args=[repr(float(n)), repr(float(self.burst_seconds)), _arg(ticket), _arg(now), STATE_TTL_MS],
        )
        return Take(
            _text(status),
            float(wait),
            float(ticket_text) if _text(ticket_text) else None,
            _positive(rate),
            float(server_now),
        )

    def acquire(self, n: float) -> Take:
        """Block until ``n`` tokens are granted (or the job is unlimited); the granting decision."""
        ticket: float | None = None
        while True:
            result = self.take(n, ticket)
            if result.status != WAIT:
                return result
            ticket = result.ticket
            self.sleep(min(self.max_sleep, max(MIN_SLEEP, result.wait)))

    def charge(self, delta: float, *, now: float | None = None) -> None:
        """Take ``delta`` more tokens (into debt if need be) or give ``-delta`` back."""
        if delta:
            report(self._report, self.keys, delta=delta, burst=self.burst_seconds, now=now)


class AdaptiveRate:
    """AIMD below the cap, shared by all the job's workers through Redis (see :class:`AimdPolicy`)."""

    def __init__(self, redis: Any, job: object, *, policy: AimdPolicy | None = None) -> None:
        self.keys = _keys(job)
        self.policy = policy or AimdPolicy()
        self._report = redis.register_script(REPORT_LUA)

    def on_throttle(self, *, acquired_at: float | None = None, now: float | None = None) -> Limits:
        return report(self._report, self.keys, event="throttled", acquired_at=acquired_at, policy=self.policy, now=now)

    def on_success(self, *, now: float | None = None) -> Limits:
        return report(self._report, self.keys, event="success", policy=self.policy, now=now)

    def limits(self) -> Limits:
        return report(self._report, self.keys, event="none", policy=self.policy)


def report(
    script: Any,
    keys: JobKeys,
    *,
    observe: float = 0.0,
    observe_span: float = 0.0,
    delta: float = 0.0,
    event: str = "none",
    acquired_at: float | None = None,
    burst: float = DEFAULT_BURST_SECONDS,
    policy: AimdPolicy | None = None,
    now: float | None = None,
) -> Limits:
    """One run of ``REPORT_LUA`` (registered as ``script``): record consumption, charge, apply an AIMD event.

    ``observe`` WCU were consumed over the last ``observe_span`` seconds; ``delta`` is charged to
    the bucket; ``event`` is ``"throttled"``, ``"success"`` or ``"none"``. ``now`` overrides the
    server time (tests only). Returns the limits after the change.
    """
    cap, adaptive, server_now = script(
        keys=list(keys.all()),
        args=[
            repr(float(observe)),
            repr(max(0.0, float(observe_span))),
            repr(float(delta)),
            event,
            _arg(acquired_at),
            repr(float(burst)),
            _arg(now),
            STATE_TTL_MS,
            OBSERVED_TTL_MS,
            *(policy or AimdPolicy()).args(),
        ],
    )
    return Limits(_positive(cap), _positive(adaptive), float(server_now))


@dataclass
class _Call:
    estimate: float
    acquired_at: float | None  # server time the bucket granted the call; None when it went unlimited
    charged: bool  # the estimate was booked in the bucket


class JobRateLimiter:
    """The writer's ``RateLimiter`` for one job: bucket + AIMD + consumption, shared through Redis.

    Thread-safe: a call's ``acquire`` and ``record`` must come from the same thread (the writer's
    do). ``clock`` paces the unlimited-mode checks; ``sleep`` is used while waiting for tokens.
    """

    def __init__(
        self,
        redis: Any,
        job_id: object,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        *,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        policy: AimdPolicy | None = None,
        max_sleep: float = MAX_SLEEP,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.redis = redis
        self.keys = JobKeys.for_job(job_id)
        self.clock = clock
        self.bucket = RedisTokenBucket(redis, self.keys, burst_seconds=burst_seconds, sleep=sleep, max_sleep=max_sleep)
        self.adaptive = AdaptiveRate(redis, self.keys, policy=policy)
        self.recheck_seconds = recheck_seconds
        self._report_script = redis.register_script(REPORT_LUA)
        self._lock = threading.Lock()
        # One report at a time per limiter: a throttle reported while another thread was still
        # sending the consumption it had just taken made the uncapped start see a fraction of what
        # was consumed (its first rate came out tiny, and the job crawled for ~25 s).
        self._send_lock = threading.Lock()
        self._local = threading.local()
        self._unlimited = False  # last seen state; while True (and not due) calls skip Redis
        self._recheck_at = -math.inf
        self._pending = 0.0  # consumption recorded while unlimited, not yet in Redis
        self._pending_since: float | None = None  # clock() of the first of those records

    # --- the writer's protocol ----------------------------------------------------------------

    def acquire(self, write_units: float) -> None:
        self._local.call = None
        if write_units <= 0:
            return
        if self._skip_redis():
            self._local.call = _Call(write_units, None, charged=False)
            return
        result = self.bucket.acquire(write_units)
        if result.status == UNLIMITED:
            self._set_unlimited(True)
            self._local.call = _Call(write_units, None, charged=False)
            return
        self._set_unlimited(False)
        self._local.call = _Call(write_units, result.now, charged=True)

    def record(self, *, consumed: float, throttled: bool) -> None:
        call: _Call | None = getattr(self._local, "call", None)
        self._local.call = None
        estimate = call.estimate if call else 0.0
        # Consumption for the job page and the uncapped AIMD start: reported, else the estimate of a
        # call that went through; a throttled call without a report wrote nothing.
        observe = consumed if consumed > 0 else (0.0 if throttled else estimate)
        if call is not None and call.charged:
            self._send(
                observe=observe,
                delta=charge_delta(estimate, consumed, throttled=throttled),
                event="throttled" if throttled else "success",
                acquired_at=call.acquired_at,
            )
            return
        with self._lock:
            self._pending += observe
            if self._pending_since is None:
                self._pending_since = self.clock()
        if throttled:
            self._send(event="throttled")
        else:
            self._skip_redis()  # flushes the consumption once per recheck interval

    # --- for the job page and the operator ---------------------------------------------------------

    def current_rate(self) -> float | None:
        """WCU/s calls may use now (cap and AIMD together); None = unlimited."""
        return self.adaptive.limits().rate

    def observed_rate(self) -> float:
        """WCU/s consumed over the last ~10 s, by all workers (each unlimited one lags up to 1 s)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self.keys.consumed)
        (seconds, micros), fields = pipe.execute()
        return observed_from(fields, int(seconds) + int(micros) / 1_000_000, OBSERVED_WINDOW)

    def flush(self) -> None:
        """Send the consumption recorded while unlimited (at the end of a job, for an exact page)."""
        self._send(event="none")

    # --- internals ---------------------------------------------------------------------------------

    def _skip_redis(self) -> bool:
        """True while the job is known unlimited; once per interval one caller refreshes that."""
        now = self.clock()
        with self._lock:
            if not self._unlimited:
                return False
            if now < self._recheck_at:
                return True
            self._recheck_at = now + self.recheck_seconds  # this caller checks; the others go on
        return self._send(event="none").rate is None

    def _set_unlimited(self, unlimited: bool) -> None:
        with self._lock:
            if unlimited and not self._unlimited:
                self._recheck_at = self.clock() + self.recheck_seconds
            self._unlimited = unlimited

    def _send(
        self, *, observe: float = 0.0, delta: float = 0.0, event: str, acquired_at: float | None = None
    ) -> Limits:
        with self._send_lock:
            return self._send_locked(observe=observe, delta=delta, event=event, acquired_at=acquired_at)

    def _send_locked(self, *, observe: float, delta: float, event: str, acquired_at: float | None) -> Limits:
        with self._lock:
            pending, self._pending = self._pending, 0.0
            since, self._pending_since = self._pending_since, None
        span = self.clock() - since if since is not None and pending else 0.0
        try:
            limits = report(
                self._report_script,
                self.keys,
                observe=observe + pending,
                observe_span=span,
                delta=delta,
                event=event,
                acquired_at=acquired_at,
                burst=self.bucket.burst_seconds,
                policy=self.adaptive.policy,
            )
        except Exception:
            with self._lock:
                self._pending += pending
                if since is not None:
                    self._pending_since = since if self._pending_since is None else min(since, self._pending_since)
            raise
        self._set_unlimited(limits.rate is None)
        return limits
