"""Jobs ride out their dependencies and their workers: the chaos fault mix, Redis stopped or
flushed, PostgreSQL restarted, a worker stopped mid-job.

Real services and a real ``manage.py rqworker`` process (it forks a work horse per RQ job, like
production). Redis and PostgreSQL are this test run's own local servers, restarted through
``scripts/services.sh restart-redis`` / ``restart-postgres``: the test process loses its own
connections too and opens new ones afterwards. Time bounds are generous on purpose (the numbers
are in the bench): each says "without an operator", not "fast".
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis as redis_lib
from django.db import connection

from bulkwrites.dependencies import DATABASE_DOWN
from bulkwrites.dynamo.ratelimit import JobKeys, get_rate_cap
from bulkwrites.models import (
    CheckSlice,
    Item,
    ItemStatus,
    Job,
    JobStatus,
    Slice,
    SliceRun,
    Verification,
    VerificationStatus,
)
from bulkwrites.services import dispatch, verifying
from faultproxy import FaultProxy
from tests.conftest import ROOT, child_pids, sigkill_worker, test_redis_url, wait_for
from tests.integration.test_failures import new_job, rows_of, table_state

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHAOS: dict[str, Any] = {
    "unprocessed_share": 0.3,
    "server_error_share": 0.05,
    "throttle_share": 0.05,
    "throttle_code": "ThrottlingException",
    "drop_after_write_share": 0.02,
}


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy(upstream=os.environ["AWS_ENDPOINT_URL_DYNAMODB"], seed=11) as fault_proxy:
        yield fault_proxy


def services(*args: str) -> None:
    """``scripts/services.sh ARGS`` on this run's own servers (ports taken from their URLs)."""
    env = dict(os.environ)
    env["REDIS_PORT"] = str(urlsplit(os.environ["REDIS_URL"]).port)
    env["PG_PORT"] = str(connection.settings_dict["PORT"])
    subprocess.run([str(ROOT / "scripts" / "services.sh"), *args], env=env, check=True, timeout=120)


def job_row(job: Job) -> dict[str, Any] | None:
    """The job's status and counts, or None while PostgreSQL does not answer."""
    try:
        return dict(Job.objects.filter(pk=job.pk).values("status", "succeeded_items", "failed_items").get())
    except DATABASE_DOWN:
        connection.close()
        return None


def succeeded(job: Job) -> int:
    row = job_row(job)
    return int(row["succeeded_items"]) if row is not None else -1


def finished(job: Job) -> bool:
    row = job_row(job)
    return row is not None and row["status"] in JobStatus.finished()


def assert_all_written(job: Job, rows: list[tuple[str, int]], scan: Any, table: str) -> None:
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, (job.error_code, job.error_message)
    assert (job.succeeded_items, job.failed_items) == (len(rows), 0)  # nothing counted twice
    assert Item.objects.filter(job=job, status=ItemStatus.SUCCEEDED).count() == len(rows)
    assert table_state(scan, table) == dict(rows)


def test_the_chaos_fault_mix_finishes_with_every_item_in_the_table(
    proxy: FaultProxy, make_table: Any, scan: Any, worker_process: Any
) -> None:
    # Before the rate controller learnt to tell faults from capacity, 5,000 items under this mix
    # took ~35 minutes (the rate fell to ~3 WCU/s); now seconds. The bound here is loose.
    table = make_table()
    rows = rows_of(2000)
    proxy.configure(seed=5, **CHAOS)
    worker = worker_process(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
    job = new_job(table, rows)
    wait_for(lambda: finished(job), timeout=180, interval=0.5, what="the job under the fault mix")
    assert_all_written(job, rows, scan, table)
    stats = proxy.stats()
    assert stats["unprocessed_items_returned"] > 300
    assert stats["server_errors"] > 0
    assert stats["throttled_calls"] > 0
    assert worker.process.poll() is None


def slow_job_under_way(
    proxy: FaultProxy, make_table: Any, worker_process: Any, *, done: int = 500, **settings: Any
) -> tuple[str, list[tuple[str, int]], Any, Job]:
    """A worker writing a 3,000-item job slowly, ``done`` items in: (table, rows, worker, job)."""
    table = make_table()
    rows = rows_of(3000)
    worker = worker_process(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
    proxy.configure(latency_ms=25)  # one call in flight, ~25 ms each: long enough to pull a plug mid-job
    job = new_job(table, rows, concurrency=1, **settings)
    wait_for(lambda: succeeded(job) >= done, timeout=120, what="the job to get going")
    return table, rows, worker, job


def test_a_redis_restart_mid_job_neither_stops_the_worker_nor_the_job(
    proxy: FaultProxy, make_table: Any, scan: Any, worker_process: Any
) -> None:
    table, rows, worker, job = slow_job_under_way(proxy, make_table, worker_process)

    services("restart-redis", "3")  # down 3 s, back empty (no persistence)
    back_at = succeeded(job)

    wait_for(lambda: succeeded(job) > back_at, timeout=30, what="the job to move again after Redis came back")
    assert worker.process.poll() is None, worker.log_path.read_text()[-3000:]
    wait_for(lambda: finished(job), timeout=240, interval=0.5, what="the job to finish")
    assert_all_written(job, rows, scan, table)
    assert worker.process.poll() is None, "the worker quit because Redis blinked"
    # A Redis restarted empty forgot the worker: it registered again, so `--wait` still sees it.
    wait_for(lambda: dispatch.live_worker_count() >= 1, timeout=60, what="the worker to register again")


def test_a_postgresql_restart_mid_job_is_ridden_out(
    proxy: FaultProxy, make_table: Any, scan: Any, worker_process: Any
) -> None:
    table, rows, worker, job = slow_job_under_way(proxy, make_table, worker_process)

    services("restart-postgres", "3")
    connection.close()  # this test's own session was cut too
    back_at = succeeded(job)
    began = time.monotonic()

    # Before: the recorder's error failed the RQ job, and the sweeper picked the job up after its
    # lease and stall time (61 s measured). Now the job's threads retry and go on.
    wait_for(lambda: succeeded(job) > back_at, timeout=30, what="the job to move again after PostgreSQL came back")
    resumed_after = time.monotonic() - began
    wait_for(lambda: finished(job), timeout=240, interval=0.5, what="the job to finish")
    assert_all_written(job, rows, scan, table)
    assert worker.process.poll() is None
    print(f"\nresumed {resumed_after:.1f} s after PostgreSQL was back")


def test_a_flushed_redis_mid_job_loses_nothing_and_gets_the_cap_back(
    proxy: FaultProxy, make_table: Any, scan: Any, worker_process: Any
) -> None:
    # 1 WCU an item: ~15 s at the cap
    table, rows, worker, job = slow_job_under_way(proxy, make_table, worker_process, rate_limit_wcu=200)
    scope = dispatch.rate_scope(job.pk)
    client = redis_lib.Redis.from_url(test_redis_url())
    assert get_rate_cap(client, scope) == 200

    client.flushdb()  # the queue, RQ's registries, the worker's registration and the job's rate state
    assert not client.exists(JobKeys.for_job(scope).cap)

    wait_for(lambda: get_rate_cap(client, scope) == 200, timeout=30, what="the ledger's cap written back")
    wait_for(lambda: finished(job), timeout=240, interval=0.5, what="the job to finish")
    assert_all_written(job, rows, scan, table)
    assert worker.process.poll() is None
    client.close()


@pytest.mark.parametrize(
    "signalled",
    [
        pytest.param("worker and horse", id="systemd"),  # KillMode=control-group: every process
        pytest.param("worker", id="container"),  # docker stop, Kubernetes: the main process only
    ],
)
def test_a_worker_asked_to_stop_hands_its_job_over_at_once(
    proxy: FaultProxy, make_table: Any, scan: Any, worker_process: Any, signalled: str
) -> None:
    # Before: a horse signalled too died (RQ's default), and its job waited for its slice lease
    # and the sweeper (30-45 s and more); a worker signalled alone waited for its horse to
    # finish a 60 s time slice. Now the run stops as for a pause and enqueues its successor.
    table, rows, first, job = slow_job_under_way(proxy, make_table, worker_process, done=300)
    horses = child_pids(first.process.pid)
    assert len(horses) == 1, horses

    first.process.send_signal(signal.SIGTERM)
    if signalled == "worker and horse":
        os.kill(horses[0], signal.SIGTERM)
    first.process.wait(timeout=15)  # the horse handed over: the worker's warm shutdown is over
    log = first.log_path.read_text()
    assert "Work-horse terminated unexpectedly" not in log, log[-3000:]
    stopped_at = succeeded(job)
    assert stopped_at < len(rows), "the job finished before the worker was stopped: nothing tested"

    worker_process(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
    wait_for(lambda: succeeded(job) > stopped_at, timeout=20, what="the next worker to take the job over")
    wait_for(lambda: finished(job), timeout=240, interval=0.5, what="the job to finish")
    assert_all_written(job, rows, scan, table)
    assert SliceRun.objects.filter(job=job, stopped_by="shutdown").exists()


def test_every_outage_at_once_on_one_job_loses_nothing(
    proxy: FaultProxy, make_table: Any, scan: Any, worker_process: Any
) -> None:
    # The rows above one at a time, here one after the other on a job two workers share, under
    # the chaos mix (a fifth of each call unprocessed, calls throttled, failing and dropped after
    # the write): a worker killed outright (its leased slices wait out their lease), Redis back
    # empty (rate state, queue and registrations gone), PostgreSQL restarted, the other worker
    # asked to stop, and two new workers. Every item lands once, and the ledger says so. Before
    # the workers gave back the background share Redis forgot, a third of such runs crawled for
    # 3-5 minutes after the outage (README, "The rate control after an outage").
    table = make_table()
    rows = rows_of(10_000)
    killed = worker_process(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
    stopped = worker_process(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
    proxy.configure(latency_ms=15, **{**CHAOS, "unprocessed_share": 0.2}, seed=2)
    job = new_job(table, rows, concurrency=4, workers=2)
    wait_for(lambda: succeeded(job) >= 1000, timeout=120, what="the job to get going")

    sigkill_worker(killed.process)
    services("restart-redis", "3")
    services("restart-postgres", "3")
    connection.close()
    stopped.process.send_signal(signal.SIGTERM)
    stopped.process.wait(timeout=30)
    assert succeeded(job) < len(rows), "the job finished before the outages: nothing tested"

    worker_process(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
    worker_process(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
    wait_for(lambda: finished(job), timeout=300, interval=1, what="the job to finish")
    assert_all_written(job, rows, scan, table)


def live_runs(job: Job) -> set[str]:
    """The runs holding a live lease on the job's slices (a worker's name: host:pid:RQ job)."""
    return set(Slice.objects.under_live_lease().filter(job=job).values_list("leased_by", flat=True))


def test_a_job_gets_back_a_run_that_redis_lost_from_the_queue(
    proxy: FaultProxy, make_table: Any, scan: Any, worker_process: Any, rq_queue: Any
) -> None:
    # A job of two workers on a deployment with one free worker: its second run waits in the
    # queue, and a Redis flushed (here, the queue emptied) loses it. Before, the run was gone for
    # good: the job went on with one run to its end while a worker started later stood by. Now
    # that worker's sweeper counts the job's runs (a live lease, nothing queued) and enqueues one.
    table = make_table()
    rows = rows_of(4000)
    env = {"AWS_ENDPOINT_URL_DYNAMODB": proxy.url, "BULKWRITES_SWEEP_SECONDS": "2"}
    worker_process(**env)
    proxy.configure(latency_ms=200)  # one call in flight a run: 125 items/s each
    job = new_job(table, rows, concurrency=1, workers=2, slice_size=100)
    wait_for(lambda: len(live_runs(job)) == 1 and rq_queue.count > 0, timeout=60, what="one run, the other queued")

    rq_queue.empty()
    worker_process(**env)
    wait_for(lambda: len(live_runs(job)) == 2, timeout=30, what="two runs on the job again")
    assert succeeded(job) < len(rows), "the job finished first: nothing tested"
    wait_for(lambda: finished(job), timeout=240, interval=0.5, what="the job to finish")
    assert_all_written(job, rows, scan, table)


def test_a_verification_gets_back_a_run_that_redis_lost_from_the_queue(
    proxy: FaultProxy, make_table: Any, worker_process: Any, run_worker: Any, rq_queue: Any
) -> None:
    # One worker shared by a write job and a verification, runs of 1 s: while the worker writes,
    # the verification's next run waits in the queue, and a Redis flushed (here, the queue
    # emptied) loses it. Before, the verification waited out the stall time (45 s); now the
    # sweeper finds it running with nobody on it and nothing queued, and enqueues its run.
    verified = new_job(make_table(), rows_of(5000), concurrency=1, slice_size=500)
    run_worker()  # written straight to DynamoDB Local, before the proxy slows anything
    verified.refresh_from_db()
    assert verified.status == JobStatus.SUCCEEDED
    env = {"AWS_ENDPOINT_URL_DYNAMODB": proxy.url, "BULKWRITES_SWEEP_SECONDS": "2", "BULKWRITES_RUN_SLICE_SECONDS": "1"}
    worker_process(**env)
    proxy.configure(latency_ms=200)  # one call in flight: 125 items/s written, 500 read back
    writing = new_job(make_table(), rows_of(4000), concurrency=1, slice_size=100)
    verification = verifying.verification_create(job=verified)

    def waiting_for_its_next_run() -> bool:
        return (
            Verification.objects.filter(pk=verification.pk, status=VerificationStatus.RUNNING).exists()
            and not CheckSlice.objects.holding(verification.pk)
            and verification.pk in dispatch.queued_runs("run_verification")
            and bool(live_runs(writing))
        )

    wait_for(waiting_for_its_next_run, timeout=60, interval=0.05, what="the verification's next run queued")
    rq_queue.empty()

    def has_a_run() -> bool:
        return bool(CheckSlice.objects.holding(verification.pk)) or (
            verification.pk in dispatch.queued_runs("run_verification")
        )

    wait_for(has_a_run, timeout=20, what="the verification to have a run again (the stall time is 45 s)")
    wait_for(
        lambda: not Verification.objects.filter(pk=verification.pk, status__in=VerificationStatus.active()).exists(),
        timeout=120,
        interval=0.5,
        what="the verification to finish",
    )
    verification.refresh_from_db()
    assert verification.status == VerificationStatus.FINISHED
    assert (verification.total_items, verification.verified_items) == (5000, 5000)


def test_a_job_gets_back_the_run_of_a_worker_that_was_killed(
    proxy: FaultProxy, make_table: Any, scan: Any, worker_process: Any
) -> None:
    # Before: a run killed outright handed over nothing, and a job of two workers went on with
    # one to its end (the sweeper steps in only once nobody works on a job); an idle worker
    # stood by. Now the run that takes over the dead run's slice enqueues one in its place.
    table = make_table()
    rows = rows_of(4000)
    env = {"AWS_ENDPOINT_URL_DYNAMODB": proxy.url, "BULKWRITES_LEASE_SECONDS": "5"}
    killed = worker_process(**env)
    worker_process(**env)
    proxy.configure(latency_ms=200)  # one call in flight a run: 125 items/s each
    job = new_job(table, rows, concurrency=1, workers=2, slice_size=100)
    wait_for(lambda: len(live_runs(job)) == 2, timeout=60, what="both workers on the job")

    pids = set(sigkill_worker(killed.process))
    dead = {name for name in live_runs(job) if int(name.split(":")[1]) in pids}
    assert len(dead) == 1, (dead, pids)
    worker_process(**env)  # stands by, as a supervisor restarts a worker

    wait_for(lambda: len(live_runs(job) - dead) == 2, timeout=60, what="two runs on the job again")
    assert succeeded(job) < len(rows), "the job finished first: nothing tested"
    wait_for(lambda: finished(job), timeout=240, interval=0.5, what="the job to finish")
    assert_all_written(job, rows, scan, table)
