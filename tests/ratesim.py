"""A discrete-event model of one worker writing through the real rate-control Lua, in simulated time.

The scripts run in a real Redis with the simulated clock passed as their ``now``, so what is
tested is the Lua itself; only DynamoDB (a capacity bucket, or the random fault mix of the
chaos bench) and the worker (``concurrency`` calls in flight, a server that takes ~0.2 ms of
CPU per item, the writer's own backoff rule, ``backoff.Stall``) are modelled. Deterministic for a
seed. Run it to see a scenario::

    eval "$(make -s services)" && .venv/bin/python -m tests.ratesim capacity   # or chaos, cap, mixed, drop, fades
"""

from __future__ import annotations

import heapq
import math
import random
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from bulkwrites.dynamo.backoff import Backoff, Stall
from bulkwrites.dynamo.ratelimit import JobKeys, Outcomes, RatePolicy, Scripts, delete_rate_state, set_rate_cap
from bulkwrites.dynamo.ratelimit.policy import charge_delta, refused_share


@dataclass
class CapacityTable:
    """The fault proxy's capacity bucket: ``wcu`` per second, ``burst`` seconds deep, starts full."""

    wcu: float
    burst: float = 1.0
    tokens: float = -1.0
    at: float = 0.0

    def answer(self, now: float, units: list[int], rng: random.Random) -> tuple[str, int]:
        if self.tokens < 0:
            self.tokens, self.at = self.wcu * self.burst, now
        self.tokens = min(self.wcu * self.burst, self.tokens + (now - self.at) * self.wcu)
        self.at = now
        taken = 0
        for u in units:
            if self.tokens < u:
                break
            self.tokens -= u
            taken += 1
        if taken == 0:
            return "throttle", 0
        return "ok", taken


@dataclass
class FaultMix:
    """The chaos mix: a share of each call unprocessed, and whole-call faults."""

    unprocessed: float = 0.3
    server_error: float = 0.05
    throttle: float = 0.05
    drop: float = 0.02

    def answer(self, now: float, units: list[int], rng: random.Random) -> tuple[str, int]:
        if rng.random() < self.throttle:
            return "throttle", 0
        if rng.random() < self.server_error:
            return "fault", 0
        held = min(len(units), math.floor(self.unprocessed * len(units) + rng.random()))
        taken = len(units) - held
        if rng.random() < self.drop:
            return "drop", taken
        return "ok", taken


def small_share() -> FaultMix:
    """Issue 10's small random share: 5 % of each call's items unprocessed (1 or 2 of 25), 2 % of
    calls throttled whole, 2 % answered 5xx. Alone, or on a table at its limit (the mixed case)."""
    return FaultMix(0.05, 0.02, 0.02, 0.0)


@dataclass
class FaultsAtCapacity:
    """A capacity limit and a random fault mix together: the mix answers first, the table takes
    what the mix let through as far as its bucket allows."""

    table: CapacityTable
    faults: FaultMix

    def answer(self, now: float, units: list[int], rng: random.Random) -> tuple[str, int]:
        kind, taken = self.faults.answer(now, units, rng)
        if kind in ("fault", "throttle") or not taken:
            return kind, taken
        table_kind, table_taken = self.table.answer(now, units[:taken], rng)
        if table_kind == "throttle":
            return "throttle", 0
        return kind, table_taken


@dataclass
class CapacityDrop:
    """A table whose capacity falls (or grows) from ``table.wcu`` to ``to`` WCU/s ``after`` s into the job:
    another writer starts on it, or its provisioned capacity is changed."""

    table: CapacityTable
    to: float
    after: float
    start: float | None = None

    def answer(self, now: float, units: list[int], rng: random.Random) -> tuple[str, int]:
        if self.start is None:
            self.start = now
        if now - self.start > self.after and self.table.wcu != self.to:
            self.table.answer(now, [], rng)  # refilled at the old rate up to now
            self.table.wcu = self.to
            self.table.tokens = min(self.table.tokens, self.to * self.table.burst)
        return self.table.answer(now, units, rng)


@dataclass
class FaultsThatStop:
    """``faulty`` answers until ``after`` s into the job, ``then`` from then on: a fault that goes
    away (a hot partition cooled down, a bad node replaced) on a table that stays."""

    faulty: Any
    then: Any
    after: float
    start: float | None = None

    def answer(self, now: float, units: list[int], rng: random.Random) -> tuple[str, int]:
        if self.start is None:
            self.start = now
        if now - self.start < self.after:
            return cast(tuple[str, int], self.faulty.answer(now, units, rng))
        return cast(tuple[str, int], self.then.answer(now, units, rng))


@dataclass
class Result:
    seconds: float
    items: int
    calls: int
    calls_refused: int  # calls with a throttling error or some unprocessed items
    throttled_calls: int  # calls with a throttling error
    consumed: float
    rates: list[tuple[float, float | None]] = field(default_factory=list)  # (t, allowed) samples
    refused_at: list[float] = field(default_factory=list)  # when calls came back refused (some or all)

    @property
    def wcu_per_s(self) -> float:
        return self.consumed / self.seconds


def simulate(
    redis: Any,
    table: Any,
    *,
    items: int,
    concurrency: int = 16,
    cap: float | None = None,
    policy: RatePolicy | None = None,
    seed: int = 1,
    per_item_cpu: float = 0.0002,
    per_call_cpu: float = 0.0003,
    backoff_base: float = 0.05,
    backoff_cap: float = 10.0,
    recheck: float = 0.25,
    limit_seconds: float = 600.0,
    jitter: float = 0.0,
    on_sample: Callable[[float, float | None], None] | None = None,
    forget_at: float | None = None,
    stalled: tuple[float, float] | None = None,
) -> Result:
    rng = random.Random(seed)
    backoff = Backoff(backoff_base, backoff_cap, random=rng.random)
    scope = f"sim-{uuid.uuid4().hex[:10]}"
    keys = JobKeys.for_job(scope)
    scripts = Scripts(redis, policy or RatePolicy())
    if cap:
        set_rate_cap(redis, scope, cap)
    start = 1_000_000.0
    now = start
    events: list[tuple[float, int, str, Any]] = []
    seq = 0

    def at(t: float, kind: str, data: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, data))

    left = items
    server_free = start
    unlimited = True
    background = 0.0
    recheck_at = -math.inf
    pending = Outcomes()
    pending_since: float | None = None
    result = Result(0.0, items, 0, 0, 0, 0.0)
    done = 0

    def report(outcome: Outcomes, acquired_at: float | None = None, delta: float = 0.0) -> None:
        nonlocal unlimited, pending, pending_since, background
        merged, span = outcome, 0.0
        if pending.calls:
            span = now - (pending_since or now)
            merged = Outcomes(
                pending.calls + outcome.calls,
                pending.units + outcome.units,
                pending.refused + outcome.refused,
                pending.share_sum + outcome.share_sum,
                pending.share_sq + outcome.share_sq,
                pending.consumed + outcome.consumed,
                span,
                pending.latency + outcome.latency,
                pending.refused_calls + outcome.refused_calls,
            )
            acquired_at = None
            pending, pending_since = Outcomes(), None
        limits = scripts.report(
            keys, merged, acquired_at=acquired_at, delta=delta, now=now, heard_background=background
        )
        unlimited = limits.rate is None
        background = limits.background
        if on_sample:
            on_sample(now - start, limits.rate)
        result.rates.append((now - start, limits.rate))

    def next_batch(worker: int) -> None:
        nonlocal left
        if left <= 0:
            return
        n = min(25, left)
        left -= n
        at(now, "acquire", (worker, [1] * n, Stall(backoff), None))

    for w in range(concurrency):
        next_batch(w)
    if forget_at is not None:
        at(start + forget_at, "forget", None)

    while events:
        now, _, kind, data = heapq.heappop(events)
        if now - start > limit_seconds:
            break
        if kind == "acquire":
            worker, units, stall, ticket = data
            if unlimited and now < recheck_at:
                at(now, "send", (worker, units, stall, None))
                continue
            if unlimited:
                recheck_at = now + recheck
            take = scripts.take(keys, len(units), ticket, now=now)
            if take.status == "unlimited":
                unlimited = True
                at(now, "send", (worker, units, stall, None))
            elif take.status == "granted":
                unlimited = False
                at(now, "send", (worker, units, stall, take.now))
            else:
                at(now + min(0.5, max(0.001, take.wait)), "acquire", (worker, units, stall, take.ticket))
        elif kind == "send":
            worker, units, stall, acquired_at = data
            service = per_call_cpu + per_item_cpu * len(units)
            server_free = max(server_free, now) + service
            # A loaded machine: the answer is heard late, by a random delay (mean ``jitter`` s).
            heard = server_free + (rng.expovariate(1 / jitter) if jitter else 0.0)
            at(heard, "answer", (worker, units, stall, acquired_at, now))
        elif kind == "forget":
            # Redis back empty: the job's rate state is gone (the cap comes back from the ledger).
            delete_rate_state(redis, scope)
            if cap:
                set_rate_cap(redis, scope, cap)
        elif kind == "answer" and stalled and stalled[0] <= now - start < stalled[1]:
            # The runs are held (PostgreSQL away: nothing can be recorded or claimed) and hear
            # their calls' answers only when it is back.
            at(start + stalled[1], kind, data)
        elif kind == "answer":
            worker, units, stall, acquired_at, sent_at = data
            answer, taken = table.answer(now, units, rng)
            result.calls += 1
            consumed = float(sum(units[:taken]))
            result.consumed += consumed
            done += taken
            remaining = units[taken:]
            if answer == "throttle":
                result.throttled_calls += 1
            if answer == "throttle" or (answer == "ok" and remaining):
                result.calls_refused += 1
                result.refused_at.append(now - start)
            estimate = float(sum(units))
            latency = now - sent_at
            if answer in ("fault", "drop"):
                if answer == "drop":
                    remaining = units  # the client never heard: it sends them all again
            else:
                refused = float(sum(remaining)) if answer == "ok" else estimate
                share = refused_share(estimate, refused)
                outcome = Outcomes(1, estimate, refused, share, share * share, consumed, 0.0, latency, int(refused > 0))
                if acquired_at is not None:
                    report(outcome, acquired_at, charge_delta(estimate, consumed, throttled=refused > 0))
                elif refused > 0:
                    report(Outcomes())  # as JobRateLimiter.record: the calls before, then the refusal
                    recheck_at = now + recheck
                    report(outcome)
                else:
                    if not pending.calls:
                        pending_since = sent_at
                    pending = Outcomes(
                        pending.calls + 1,
                        pending.units + estimate,
                        pending.refused + refused,
                        pending.share_sum + share,
                        pending.share_sq + share * share,
                        pending.consumed + consumed,
                        0.0,
                        pending.latency + latency,
                        pending.refused_calls + int(refused > 0),
                    )
                    if now >= recheck_at:
                        recheck_at = now + recheck
                        report(Outcomes())
            if remaining:
                # The writer's own rule for the pause (backoff.Stall).
                if taken and answer != "drop":
                    stall.progressed()
                elif answer in ("fault", "drop"):
                    stall.failed()
                else:
                    stall.refused(background=background > 0)
                at(now + stall.pause(), "acquire", (worker, remaining, stall, None))
            else:
                next_batch(worker)
    result.seconds = now - start
    if done < items:
        result.seconds = math.inf
    delete_rate_state(redis, scope)
    return result


def main(argv: list[str]) -> None:
    import os

    import redis as redis_lib

    client = redis_lib.Redis.from_url(os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/13")
    what = argv[0] if argv else "capacity"
    seeds = range(int(argv[1]) if len(argv) > 1 else 3)
    for seed in seeds:
        if what == "capacity":
            r = simulate(client, CapacityTable(1000.0), items=30_000, seed=seed)
            print(
                f"capacity seed {seed}: {r.wcu_per_s:.0f} WCU/s in {r.seconds:.1f} s, {r.calls} calls, "
                f"{100 * r.calls_refused / r.calls:.1f}% refused some, "
                f"{100 * r.throttled_calls / r.calls:.1f}% throttled"
            )
        elif what == "chaos":
            r = simulate(client, FaultMix(), items=5_000, seed=seed)
            free = simulate(client, FaultMix(0, 0, 0, 0), items=5_000, seed=seed)
            print(
                f"chaos seed {seed}: {r.seconds:.2f} s ({5000 / r.seconds:.0f} items/s); no faults {free.seconds:.2f} s"
            )
        elif what == "mixed":
            # A small random share on a table at its limit (README, issue 10): before the rounds
            # below the take were read for background, most seeds were cut round after round to
            # 60-90 WCU/s and did not finish in 200 s; now ~20 s, the table's own pace.
            for jitter in (0.0, 0.01, 0.03):
                table = FaultsAtCapacity(CapacityTable(1000.0), small_share())
                r = simulate(client, table, items=20_000, seed=seed, jitter=jitter, limit_seconds=200)
                done = "not done in 200 s" if math.isinf(r.seconds) else f"{r.seconds:.1f} s"
                print(f"mixed seed {seed} jitter {jitter}: {done}, {r.consumed / min(r.seconds, 200):.0f} WCU/s")
        elif what == "drop":
            # The table's capacity falls from 1,000 to 400 WCU/s 8 s into the job. Found, left as it is
            # (README, issue 10): the floor (90 % of what the table delivered over 10 s) holds the
            # job above the table for ~8 s, and about a third of all calls (nearly all of them in those
            # seconds) come back partly refused.
            r = simulate(client, CapacityDrop(CapacityTable(1000.0), 400.0, 8.0), items=30_000, seed=seed)
            print(f"drop seed {seed}: {r.seconds:.1f} s, {100 * r.calls_refused / r.calls:.1f}% refused some")
        elif what == "fades":
            # The mixed case's faults stop 10 s into the job; the table (1,000 WCU/s) stays. The
            # share read from the rounds once faded only through rounds at or below the take: a
            # job gone unlimited above it kept it, and let the table's refusals up to it go uncut.
            for jitter in (0.0, 0.01):
                capacity = CapacityTable(1000.0)
                mixed = FaultsAtCapacity(capacity, small_share())
                r = simulate(client, FaultsThatStop(mixed, capacity, 10.0), items=40_000, seed=seed, jitter=jitter)
                late = sum(1 for t in r.refused_at if t > 15)
                print(f"fades seed {seed} jitter {jitter}: {r.seconds:.1f} s, {late} calls refused after 15 s")
        elif what == "outage":
            # README, "The rate control after an outage": under the chaos mix's 20 % share, Redis
            # back empty 4 s into the job, the runs held from 6 to 10 s (PostgreSQL away), or both.
            # Before the workers gave back the share Redis forgot, some seeds crawled for minutes.
            cases: list[tuple[str, dict[str, Any]]] = [
                ("none", {}),
                ("forget", {"forget_at": 4.0}),
                ("stall", {"stalled": (6.0, 10.0)}),
                ("forget+stall", {"forget_at": 6.0, "stalled": (6.0, 10.0)}),
            ]
            for name, outage in cases:
                mix = FaultMix(0.2, 0.05, 0.05, 0.02)
                r = simulate(
                    client, mix, items=10_000, seed=seed, concurrency=8, jitter=0.015, limit_seconds=400, **outage
                )
                done = "not done in 400 s" if math.isinf(r.seconds) else f"{r.seconds:.1f} s"
                print(f"outage seed {seed} {name}: {done}")
        elif what == "cap":
            r = simulate(client, FaultMix(0, 0, 0, 0), items=20_000, cap=500.0, seed=seed)
            print(f"cap 500 seed {seed}: {r.wcu_per_s:.0f} WCU/s in {r.seconds:.1f} s")
        if len(argv) > 2:
            step = max(1, len(r.rates) // 60)
            print(" ".join(f"{t:.1f}:{(v or 0):.0f}" for t, v in r.rates[::step]))


if __name__ == "__main__":
    main(sys.argv[1:])
