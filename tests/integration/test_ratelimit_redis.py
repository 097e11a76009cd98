"""bulkwrites.dynamo.ratelimit against a real Redis: the Lua scripts, threads and processes sharing a job.

Uses database 13 of ``REDIS_URL`` (``eval "$(make -s services)"``) and fails without it. Every job
id is unique and its keys are deleted afterwards.

Wall clock: the throughput tests run real threads and processes for a few seconds. What they
assert is a property (the share of the cap the callers got, within generous bounds), not a
speed, so a slow or loaded machine makes them slower, not red. The Lua-versus-Python tests pass
the time explicitly and are exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis as redis_lib

from bulkwrites.dynamo.ratelimit import (
    REPORT_LUA,
    AimdPolicy,
    AimdState,
    BucketState,
    JobKeys,
    JobRateLimiter,
    RedisTokenBucket,
    aimd_on_success,
    aimd_on_throttle,
    charge_tokens,
    delete_rate_state,
    get_rate_cap,
    observed_from,
    report,
    set_rate_cap,
    take_tokens,
)

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 13
CAP = 200.0
BURST = CAP * 1.0  # the default burst of 1 s


@pytest.fixture(scope="module")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail('REDIS_URL is not set: run `eval "$(make -s services)"` first', pytrace=False)
    return urlsplit(url)._replace(path=f"/{REDIS_DB}").geturl()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis_lib.Redis]:
    connection = redis_lib.Redis.from_url(redis_url)
    connection.ping()
    yield connection
    connection.close()


@pytest.fixture
def new_job(client: redis_lib.Redis) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        made.append(f"test-{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield make
    for job in made:
        delete_rate_state(client, job)


@pytest.fixture
def job(new_job: Callable[[], str]) -> str:
    return new_job()


def _acquire_for(limiter: JobRateLimiter, threads: int, until: Callable[[], bool]) -> list[float]:
    """``threads`` threads acquiring 1 unit each until ``until()``; the monotonic time of every grant."""
    stamps: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        mine: list[float] = []
        while not until():
            limiter.acquire(1)
            mine.append(time.monotonic())
        with lock:
            stamps.extend(mine)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sorted(stamps)


def _count(stamps: list[float], start: float, end: float) -> int:
    return sum(1 for s in stamps if start <= s < end)


def _most_in_window(stamps: list[float], window: float) -> int:
    best, first = 0, 0
    for last in range(len(stamps)):
        while stamps[last] - stamps[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


# --- (a) threads, (b) processes --------------------------------------------------------------------


def test_threads_share_the_cap(client: redis_lib.Redis, job: str) -> None:
    set_rate_cap(client, job, CAP)
    limiter = JobRateLimiter(client, job)
    start = time.monotonic()
    stamps = _acquire_for(limiter, 8, lambda: time.monotonic() - start >= 2.0)
    elapsed = stamps[-1] - start
    total = len(stamps)
    share = (total - BURST) / (CAP * elapsed)
    print(f"\n(a) 8 threads: {total} units in {elapsed:.2f} s at a cap of {CAP:.0f}/s: {share:.3f} of the cap + burst")
    assert total <= 1.1 * CAP * elapsed + BURST
    # Lower bound: not starved. Loose on purpose: a loaded 2-core CI box slows the callers, not the limiter.
    assert total >= 0.6 * CAP * elapsed
    for window in (0.5, 1.0, 2.0):  # client-side stamps: a little slack for scheduling
        assert _most_in_window(stamps, window) <= CAP * window + BURST + 10


CHILD = r"""
import json, sys, threading, time
import redis
from bulkwrites.dynamo.ratelimit import JobRateLimiter

url, job = sys.argv[1], sys.argv[2]
start_at, seconds, threads = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
limiter = JobRateLimiter(redis.Redis.from_url(url), job)
limiter.current_rate()  # connect and load the scripts before the start
stamps, lock = [], threading.Lock()

def run():
    mine = []
    while time.time() < start_at + seconds:
        limiter.acquire(1)
        mine.append(time.time())
    with lock:
        stamps.extend(mine)

time.sleep(max(0.0, start_at - time.time()))
workers = [threading.Thread(target=run) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps(stamps))
"""


def test_processes_share_the_cap(client: redis_lib.Redis, job: str, redis_url: str) -> None:
    set_rate_cap(client, job, CAP)
    start_at = time.time() + 1.0  # both processes up and connected by then
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, redis_url, job, repr(start_at), "2.0", "4"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    per_process: list[list[float]] = []
    for child in children:
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        per_process.append(json.loads(out))
    stamps = sorted(s for got in per_process for s in got)
    assert stamps[0] >= start_at - 0.05, "a process started before the agreed time"
    elapsed = stamps[-1] - start_at
    total = len(stamps)
    share = (total - BURST) / (CAP * elapsed)
    counts = [len(got) for got in per_process]
    print(f"\n(b) 2 processes x 4 threads: {counts} = {total} units in {elapsed:.2f} s: {share:.3f} of the cap + burst")
    assert total <= 1.1 * CAP * elapsed + BURST
    # Lower bound: not starved. Loose on purpose: a loaded 2-core CI box slows the callers, not the limiter.
    assert total >= 0.6 * CAP * elapsed
    assert min(counts) >= 0.2 * total  # first come, first served: neither process is starved
    assert _most_in_window(stamps, 1.0) <= CAP + BURST + 10


# --- (c) the operator changes the rate -----------------------------------------------------------


def test_rate_changes_reach_running_acquirers_within_a_second(client: redis_lib.Redis, job: str) -> None:
    limiter = JobRateLimiter(client, job)  # unlimited to begin with
    start = time.monotonic()
    plan = [(0.3, 50.0), (1.8, 400.0), (2.7, 25.0)]
    end = 3.6

    def operator() -> None:
        for at, cap in plan:
            time.sleep(max(0.0, start + at - time.monotonic()))
            set_rate_cap(client, job, cap)

    thread = threading.Thread(target=operator)
    thread.start()
    stamps = _acquire_for(limiter, 4, lambda: time.monotonic() - start >= end)
    thread.join()

    def seen(a: float, b: float) -> int:
        return _count(stamps, start + a, start + b)

    assert seen(0.0, 0.3) > 1000  # unlimited: no waiting at all
    # Capped at 50 from 0.3 s: an unlimited worker looks again within 1 s (a bucket of 50 + 50/s).
    assert 1 <= seen(1.4, 1.8) <= 50 * 0.4 + 50 + 10
    # Raised to 400 at 1.8 s: waiting callers poll at the new rate at once.
    assert seen(2.0, 2.7) >= 0.5 * 400 * 0.7
    # Lowered to 25 at 2.7 s: at most the (smaller) bucket and 25/s.
    assert 1 <= seen(3.0, 3.6) <= 25 * 0.6 + 25 + 10
    assert get_rate_cap(client, job) == 25.0


# --- (d) AIMD ------------------------------------------------------------------------------------


def test_throttles_cut_the_rate_for_every_worker_and_successes_restore_it(client: redis_lib.Redis, job: str) -> None:
    set_rate_cap(client, job, CAP)
    one, other = JobRateLimiter(client, job), JobRateLimiter(client, job)  # two workers of the job
    assert one.current_rate() == CAP
    one.acquire(1)
    one.record(consumed=0.0, throttled=True)
    assert one.current_rate() == pytest.approx(140.0)
    assert other.current_rate() == pytest.approx(140.0)
    for _ in range(5):  # concurrent throttles within 200 ms: one decrease
        other.acquire(1)
        other.record(consumed=0.0, throttled=True)
    assert other.current_rate() == pytest.approx(140.0)
    time.sleep(0.25)
    other.acquire(1)
    other.record(consumed=0.0, throttled=True)
    assert one.current_rate() == pytest.approx(98.0)  # x 0.7 again

    time.sleep(1.0)
    one.acquire(1)
    one.record(consumed=1.0, throttled=False)
    after_one_second = one.current_rate()
    assert after_one_second is not None
    assert 98.0 + 10 * 0.9 <= after_one_second <= 98.0 + 10 * 1.6  # + 5 % of the cap per second
    time.sleep(0.5)
    other.acquire(1)
    other.record(consumed=1.0, throttled=False)
    later = other.current_rate()
    assert later is not None
    assert 10 * 0.45 <= later - after_one_second <= 10 * 0.9  # additive: the same step per second
    assert one.observed_rate() > 0

    # Seconds later (the server time passed explicitly) it is back at the cap and the state is gone.
    now = float(client.time()[0]) + 30
    assert one.adaptive.on_success(now=now).rate == CAP
    assert client.exists(JobKeys.for_job(job).adaptive) == 0


def test_an_unlimited_job_starts_aimd_from_its_observed_rate(client: redis_lib.Redis, job: str) -> None:
    limiter = JobRateLimiter(client, job)
    for _ in range(20):
        limiter.acquire(25)
        limiter.record(consumed=25.0, throttled=False)
    assert limiter.current_rate() is None
    limiter.acquire(25)
    limiter.record(consumed=0.0, throttled=True)
    rate = limiter.current_rate()
    # 500 WCU consumed within the last second (counted over at least 1 s), x 0.7.
    assert rate is not None
    assert 0.7 * 500 / 3 <= rate <= 0.7 * 500
    limiter.acquire(1)  # from now on through the bucket
    assert client.exists(JobKeys.for_job(job).bucket) == 1


# --- (e) unlimited costs about one Redis call per second ------------------------------------------


class CountingRedis(redis_lib.Redis):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        return super().execute_command(*args, **options)


def test_unlimited_acquire_makes_about_one_redis_call_per_second(redis_url: str, job: str) -> None:
    counting = CountingRedis.from_url(redis_url)
    limiter = JobRateLimiter(counting, job)
    start = time.monotonic()
    calls = 0
    while time.monotonic() - start < 1.2:
        limiter.acquire(25)
        limiter.record(consumed=25.0, throttled=False)
        calls += 1
    elapsed = time.monotonic() - start
    assert calls > 1000
    assert len(counting.commands) <= elapsed / 1.0 + 2, counting.commands
    assert set(counting.commands) <= {"EVALSHA", "SCRIPT LOAD", "EVAL"}
    counting.close()


# --- the Lua scripts compute what the pure functions compute ----------------------------------------


def _bucket_state(client: redis_lib.Redis, job: str) -> BucketState:
    raw = {k.decode(): float(v) for k, v in client.hgetall(JobKeys.for_job(job).bucket).items()}
    return BucketState(raw["tokens"], raw["issued"], raw["ts"])


def _aimd_state(client: redis_lib.Redis, job: str) -> AimdState | None:
    raw = {k.decode(): float(v) for k, v in client.hgetall(JobKeys.for_job(job).adaptive).items()}
    return AimdState(raw["rate"], raw["base"], raw["updated"], raw["decreased"]) if raw else None


def test_take_script_matches_the_pure_bucket(client: redis_lib.Redis, job: str) -> None:
    bucket = RedisTokenBucket(client, job)
    model: BucketState | None = None
    tickets: dict[str, float | None] = {}
    steps: list[tuple[str, float, str, float, float]] = [
        # (op, units, ticket name, now, cap)
        ("take", 4, "a", 100.0, 10.0),
        ("take", 8, "b", 100.0, 10.0),
        ("poll", 8, "b", 100.3, 10.0),
        ("take", 25, "big", 100.4, 10.0),
        ("poll", 8, "b", 100.5, 10.0),
        ("charge", 5, "", 100.6, 10.0),
        ("charge", -3, "", 100.7, 10.0),
        ("poll", 25, "big", 101.0, 4.0),  # the cap lowered while waiting
        ("poll", 25, "big", 104.0, 4.0),
        ("take", 1, "c", 104.0, 4.0),
        ("poll", 1, "c", 104.2, 4.0),
        ("take", 2, "d", 104.2, 1000.0),
        ("take", 3, "e", 99.0, 1000.0),  # the server clock stepped back
        ("poll", 1, "c", 110.0, 1000.0),
    ]
    for op, units, name, now, cap in steps:
        set_rate_cap(client, job, cap)
        if op == "charge":
            bucket.charge(units, now=now)
            model = charge_tokens(model, units, rate=cap, burst=1.0, now=now)
        else:
            got = bucket.take(units, tickets.get(name) if op == "poll" else None, now=now)
            model, want = take_tokens(
                model, units, rate=cap, burst=1.0, now=now, ticket=tickets.get(name) if op == "poll" else None
            )
            tickets[name] = want.ticket
            assert (got.status, got.ticket, got.rate, got.now) == (want.status, want.ticket, want.rate, want.now)
            assert got.wait == pytest.approx(want.wait, rel=1e-12, abs=1e-12), (op, name, now)
        stored = _bucket_state(client, job)
        assert model is not None
        assert stored.__dict__ == pytest.approx(model.__dict__, rel=1e-12, abs=1e-9), (op, name, now)


def test_report_script_matches_the_pure_aimd(client: redis_lib.Redis, new_job: Callable[[], str]) -> None:
    policy = AimdPolicy()
    job = new_job()
    keys = JobKeys.for_job(job)
    script = client.register_script(REPORT_LUA)
    model: AimdState | None = None
    cap: float | None = 200.0
    steps: list[tuple[str, float, float | None, float | None]] = [
        # (event, now, acquired_at, cap)
        ("throttled", 10.0, None, 200.0),
        ("throttled", 10.1, 10.05, 200.0),  # within 200 ms: ignored
        ("throttled", 10.5, 9.9, 200.0),  # admitted before the decrease: ignored
        ("throttled", 10.6, 10.55, 200.0),
        ("success", 11.6, None, 200.0),
        ("success", 11.0, None, 200.0),  # clock behind: no change
        ("throttled", 12.0, 11.9, 50.0),  # the cap lowered below the adaptive rate
        ("success", 12.5, None, None),  # the cap removed: 5 % of the base, released at twice it
        ("throttled", 13.0, 12.9, None),
        ("success", 14.0, None, None),
        ("success", 60.0, None, None),  # released: unlimited again
    ]
    for event, now, acquired_at, step_cap in steps:
        cap = step_cap
        set_rate_cap(client, job, cap)
        limits = report(script, keys, event=event, acquired_at=acquired_at, policy=policy, now=now)
        if event == "throttled":
            model = aimd_on_throttle(model, cap=cap, observed=0.0, now=now, acquired_at=acquired_at, policy=policy)
        else:
            model = aimd_on_success(model, cap=cap, now=now, policy=policy)
        stored = _aimd_state(client, job)
        if model is None:
            assert stored is None, (event, now)
            assert limits.adaptive is None
        else:
            assert stored is not None, (event, now)
            assert stored.__dict__ == pytest.approx(model.__dict__, rel=1e-12), (event, now)
            assert limits.adaptive == pytest.approx(model.rate, rel=1e-12)
        assert limits.cap == cap

    # Without a cap, the first throttle starts from the observed consumption.
    fresh = JobKeys.for_job(new_job())
    report(script, fresh, observe=300.0, observe_span=0.5, now=50.2)
    report(script, fresh, observe=100.0, now=51.1)
    limits = report(script, fresh, event="throttled", policy=policy, now=51.4)
    fields = client.hgetall(fresh.consumed)
    observed = observed_from(fields, 51.4, policy.start_window)
    assert observed == pytest.approx(400.0 / 1.7)  # since the first consumption, 49.7
    want = aimd_on_throttle(None, cap=None, observed=observed, now=51.4, acquired_at=None, policy=policy)
    assert limits.adaptive == pytest.approx(want.rate, rel=1e-12)
    assert limits.cap is None


def test_an_uncapped_job_throttled_for_the_first_time_starts_with_an_empty_bucket(
    client: redis_lib.Redis, new_job: Callable[[], str]
) -> None:
    # It ran unlimited until DynamoDB throttled it: a full bucket would send another second's
    # worth at once into the exhausted table. A capped job's bucket still starts full.
    script = client.register_script(REPORT_LUA)
    uncapped, capped = new_job(), new_job()
    set_rate_cap(client, capped, 1000.0)
    for job in (uncapped, capped):
        keys = JobKeys.for_job(job)
        report(script, keys, observe=1250.0, observe_span=1.0, now=30.0)
        limits = report(script, keys, event="throttled", policy=AimdPolicy(decrease_factor=0.8), now=30.0)
        assert limits.rate == pytest.approx(1000.0 if job == uncapped else 800.0)

    first = RedisTokenBucket(client, uncapped).take(25, now=30.0)
    assert first.status == "wait"
    assert first.wait == pytest.approx(25 / 1000.0)
    assert RedisTokenBucket(client, uncapped).take(25, first.ticket, now=30.03).status == "granted"
    assert RedisTokenBucket(client, capped).take(25, now=30.0).status == "granted"
