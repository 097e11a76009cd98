"""bulkwrites.dynamo.ratelimit against a real Redis: the Lua scripts, threads and processes sharing a job.

Uses database 13 of ``REDIS_URL`` (``eval "$(make -s services)"``) and fails without it. Every job
id is unique and its keys are deleted afterwards.

Wall clock: these tests run real threads and processes for a few seconds. What they assert is a
property (totals bounded by the cap over the whole run, nobody starved, who was served), never
how many grants fit in a fraction of a second: a slow or loaded machine makes them slower, not
red. The rules themselves are tested with the time passed explicitly in ``test_ratelimit_lua.py``.
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
    JobRateLimiter,
    RatePolicy,
    delete_rate_state,
    get_rate_cap,
    set_rate_cap,
)
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 13
CAP = 200.0
PACED = RatePolicy().paced_cap(CAP)  # the rate a cap is paced at
BURST = PACED * RatePolicy().burst_seconds


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
    # Never above the paced cap plus one bucket over the run (what the server granted; the
    # callers' own stamps only ever come later).
    assert total <= PACED * elapsed + BURST + 8
    # Lower bound: not starved. Loose on purpose: a loaded 2-core CI box slows the callers, not the limiter.
    assert total >= 0.6 * CAP * elapsed


CHILD = r"""
import json, sys, threading, time
import redis
from bulkwrites.dynamo.ratelimit import JobRateLimiter

url, job = sys.argv[1], sys.argv[2]
start_at, seconds, threads = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
limiter = JobRateLimiter(redis.Redis.from_url(url), job)
limiter.current_rate()  # connect and load the scripts before the start
stamps, lock = [], threading.Lock()
assert time.time() < start_at, "started too late to take part"

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
    start_at = time.time() + 3.0  # both processes up and connected by then (a loaded box is slow to start them)
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
    assert total <= PACED * elapsed + BURST + 8
    # Lower bound: not starved. Loose on purpose: a loaded 2-core CI box slows the callers, not the limiter.
    assert total >= 0.6 * CAP * elapsed
    assert min(counts) >= 0.2 * total  # first come, first served: neither process is starved


# --- (c) the operator changes the rate -----------------------------------------------------------


def test_rate_changes_reach_running_acquirers(client: redis_lib.Redis, job: str) -> None:
    """The operator changes the cap while four threads acquire: they follow without restarting.

    Phases follow events, not a timetable (a loaded CI machine can be late by a second): a
    change is taken as reached once a caller has had to wait after it (or, raised, once callers
    stopped waiting); what is counted after that is bounded by the limiter, whatever the load.
    """
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(time.monotonic())
        time.sleep(seconds)

    limiter = JobRateLimiter(client, job, sleep=sleep)  # unlimited to begin with
    stamps: list[float] = []  # list.append is atomic: the callers share it
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            limiter.acquire(1)
            stamps.append(time.monotonic())

    callers = [threading.Thread(target=caller) for _ in range(4)]
    for thread in callers:
        thread.start()
    burst = RatePolicy().burst_seconds
    try:
        wait_for(lambda: len(stamps) >= 2000, timeout=30, what="unlimited grants")
        assert not waits  # unlimited: nobody waited

        capped = time.monotonic()
        set_rate_cap(client, job, 50.0)
        wait_for(lambda: any(w > capped for w in waits), timeout=10, what="callers to wait at the cap")
        reached = min(w for w in waits if w > capped)
        time.sleep(2.0)
        slow = _count(stamps, reached, reached + 2.0)
        # At most the cap over the window, plus the bucket and the calls in flight at its start.
        assert slow <= 50 * 2.0 + 50 * burst + 4, slow

        raised = time.monotonic()
        set_rate_cap(client, job, 400.0)
        time.sleep(2.0)
        fast = _count(stamps, raised + 1.0, raised + 2.0)
        assert fast > 2 * slow / 2.0, (fast, slow)  # clearly more per second than at 50

        lowered = time.monotonic()
        set_rate_cap(client, job, 25.0)
        wait_for(lambda: any(w > lowered for w in waits), timeout=10, what="callers to wait at the new cap")
        time.sleep(2.0)
        after = _count(stamps, lowered + 1.0, lowered + 2.0)
        # What is left of the faster bucket, then 25/s.
        assert after <= 400 * burst + 25 * 1.0 + 4, after
        assert after < fast
    finally:
        stop.set()
        for thread in callers:
            thread.join()
    assert get_rate_cap(client, job) == 25.0


# --- (d) unlimited costs one Redis call per round, not one per call ------------------------------------------


class CountingRedis(redis_lib.Redis):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        # redis-py (8.1) leaves Redis.execute_command unannotated; the override above is typed.
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def test_unlimited_acquire_reports_once_per_round(redis_url: str, job: str) -> None:
    counting = CountingRedis.from_url(redis_url)
    assert isinstance(counting, CountingRedis)  # from_url builds a cls; redis-py annotates it as Redis
    limiter = JobRateLimiter(counting, job)
    start = time.monotonic()
    calls = 0
    while time.monotonic() - start < 1.2:
        limiter.acquire(25)
        limiter.record(consumed=25.0)
        calls += 1
    assert calls > 1000
    # One report per recheck (0.25 s), however many calls: a count, not a speed.
    assert len(counting.commands) <= calls / 100, counting.commands
    assert set(counting.commands) <= {"EVALSHA", "SCRIPT LOAD", "EVAL"}
    counting.close()


def test_a_refusal_is_reported_apart_from_the_whole_calls_before_it(client: redis_lib.Redis, job: str) -> None:
    limiter = JobRateLimiter(client, job, recheck_seconds=60.0)
    for _ in range(30):  # unlimited: whole calls gathered for the next report
        limiter.acquire(25)
        limiter.record(consumed=25.0)
    limiter.acquire(25)
    limiter.record(consumed=5.0, refused=20.0)
    control = {k.decode(): v.decode() for k, v in client.hgetall(limiter.keys.control).items()}  # type: ignore[union-attr]
    # The round restarted with the refusal alone. Before, the thirty whole calls came in the same
    # report and diluted the first refusals with the table's burst: a first cut measured on a
    # rate the table no longer gave.
    assert (control["rn"], control["rr"]) == ("1", "20")
