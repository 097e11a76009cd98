"""Never lose an item: each DynamoDB failure shape, injected, and what really lands in the table.

DynamoDB Local never throttles; the fault proxy (``faultproxy``) in front of it does. Every
test compares a scan of the table with the source, not only with the ledger.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest

from bulkwrites.models import Item, ItemStatus, Job, JobStatus
from bulkwrites.services import control, create
from faultproxy import FaultProxy
from tests.conftest import ROOT, TEST_QUEUE, sigkill_worker, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


class Backoff(TypedDict):
    """Quick retries, as job settings; typed so that ``**FAST_BACKOFF`` cannot fill ``start``."""

    backoff_base: float
    backoff_cap: float


FAST_BACKOFF: Backoff = {"backoff_base": 0.002, "backoff_cap": 0.05}


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """Writers in this process go through the proxy; table reads (DescribeTable) go direct."""
    upstream = os.environ["AWS_ENDPOINT_URL_DYNAMODB"]
    with FaultProxy(upstream=upstream, seed=7) as fault_proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", fault_proxy.url)
        yield fault_proxy


def source_csv(rows: list[tuple[str, int]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["pk", "n:N", "body"])
    for pk, n in rows:
        writer.writerow([pk, n, f"payload {pk} " + "x" * 200])
    return out.getvalue().encode()


def new_job(table: str, rows: list[tuple[str, int]], *, start: bool = True, **settings: Any) -> Job:
    job = create.job_create_from_file(
        upload=io.BytesIO(source_csv(rows)), file_name="rows.csv", table_name=table, **settings
    )
    if start:
        control.job_start(job=job)
    return job


def table_state(scan: Any, table: str) -> dict[str, int]:
    return {item["pk"]["S"]: int(item["n"]["N"]) for item in scan(table)}


def rows_of(count: int, prefix: str = "k") -> list[tuple[str, int]]:
    return [(f"{prefix}{i:05d}", i) for i in range(count)]


def test_partial_throttling_retries_only_unprocessed_and_every_item_lands(
    proxy: FaultProxy, make_table: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table()
    rows = rows_of(400)
    job = new_job(table, rows, concurrency=4, **FAST_BACKOFF)
    proxy.configure(unprocessed_share=0.4, seed=1)
    run_worker()
    job.refresh_from_db()
    stats = proxy.stats()
    assert job.status == JobStatus.SUCCEEDED
    assert table_state(scan, table) == dict(rows)
    assert stats["unprocessed_items_returned"] > 100
    assert job.unprocessed_returned == stats["unprocessed_items_returned"]
    # Only what came back unprocessed was sent again: 400 first sends + the resends.
    assert stats["items_forwarded"] == 400
    attempts = list(Item.objects.filter(job=job).values_list("attempts", flat=True))
    assert sum(attempts) == 400 + stats["unprocessed_items_returned"]
    assert max(attempts) > 1


@pytest.mark.parametrize(
    "faults",
    [
        {"throttle_share": 0.3},
        {"throttle_share": 0.3, "throttle_code": "ThrottlingException"},
        {"server_error_share": 0.3, "server_error_status": 500},
        {"server_error_share": 0.3, "server_error_status": 503},
        {"drop_after_write_share": 0.3},
        {"latency_ms": 20, "latency_jitter_ms": 20, "unprocessed_share": 0.1, "throttle_share": 0.1},
    ],
    ids=["pte", "throttling", "500", "503", "dropped-after-write", "mixed"],
)
def test_whole_call_failures_are_retried_until_every_item_lands(
    proxy: FaultProxy, make_table: Any, scan: Any, run_worker: Any, faults: dict[str, Any]
) -> None:
    table = make_table()
    rows = rows_of(250)
    job = new_job(table, rows, concurrency=3, **FAST_BACKOFF)
    proxy.configure(seed=3, **faults)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    assert (job.succeeded_items, job.failed_items) == (250, 0)
    assert table_state(scan, table) == dict(rows)
    stats = proxy.stats()
    assert (
        stats["throttled_calls"] + stats["server_errors"] + stats["dropped"] + stats["unprocessed_items_returned"] > 0
    )
    assert Item.objects.filter(job=job, attempts__gt=1).exists()


def test_throttled_items_give_up_bounded_then_retry_failed_writes_them(
    proxy: FaultProxy, make_table: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table()
    rows = rows_of(60)
    job = new_job(table, rows, max_attempts=3, **FAST_BACKOFF)
    proxy.configure(unprocessed_share=1.0)  # the table takes nothing
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED_WITH_FAILURES
    assert job.failed_items == 60
    item = Item.objects.filter(job=job).first()
    assert item is not None
    assert item.status == ItemStatus.FAILED
    assert item.error_code == "UnprocessedItems"
    assert item.error_message.startswith("throttled: gave up after 3 attempts over ")
    assert scan(table) == []

    proxy.configure()  # capacity is back
    assert control.job_retry_failed(job=job) == 60
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert (job.succeeded_items, job.failed_items) == (60, 0)
    assert table_state(scan, table) == dict(rows)
    item.refresh_from_db()
    assert item.attempts == 4
    assert item.history[0]["error_code"] == "UnprocessedItems"  # the first attempt's outcome stays


def test_a_poisoned_batch_writes_the_24_good_items(make_table: Any, scan: Any, run_worker: Any, dynamodb: Any) -> None:
    # A GSI keyed on `region` (S): DynamoDB rejects an item whose `region` is a number, and
    # names no item when it rejects the call. bulkwrites does not know GSIs: DynamoDB decides.
    table = make_table()
    dynamodb.delete_table(TableName=table)
    dynamodb.create_table(
        TableName=table,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "region", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-region",
                "KeySchema": [{"AttributeName": "region", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    lines = [json.dumps({"pk": f"p{i:02d}", "region": 7 if i == 13 else "eu"}) for i in range(25)]
    job = create.job_create_from_file(
        upload=io.BytesIO("\n".join(lines).encode()), file_name="poison.jsonl", table_name=table, **FAST_BACKOFF
    )
    control.job_start(job=job)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED_WITH_FAILURES
    assert (job.succeeded_items, job.failed_items) == (24, 1)
    (bad,) = Item.objects.filter(job=job, status=ItemStatus.FAILED)
    assert bad.key == {"pk": {"S": "p13"}}
    assert bad.error_code == "ValidationException"
    assert "index" in bad.error_message.lower() or "type" in bad.error_message.lower()
    assert sorted(item["pk"]["S"] for item in scan(table)) == [f"p{i:02d}" for i in range(25) if i != 13]


def test_missing_table_fails_the_job_fast_then_resume_finishes_it(
    make_table: Any, scan: Any, run_worker: Any, dynamodb: Any
) -> None:
    table = make_table()
    rows = rows_of(300)
    job = new_job(table, rows, **FAST_BACKOFF)
    dynamodb.delete_table(TableName=table)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_code == "ResourceNotFoundException"
    assert table in job.error_message
    assert "does not exist" in job.error_message
    assert job.calls <= job.concurrency  # the calls in flight, no retry burnt on a job-level error
    assert Item.objects.filter(job=job, status=ItemStatus.PENDING).count() == 300

    dynamodb.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    control.job_resume(job=job)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert table_state(scan, table) == dict(rows)


def test_unreachable_endpoint_stops_the_job_with_items_pending(
    monkeypatch: pytest.MonkeyPatch, make_table: Any, run_worker: Any
) -> None:
    table = make_table()
    job = new_job(table, rows_of(30), max_attempts=2, **FAST_BACKOFF)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")  # nothing listens there
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_code == "EndpointUnreachable"
    assert "127.0.0.1:9" in job.error_message
    assert Item.objects.filter(job=job, status=ItemStatus.PENDING).count() == 30


def test_an_endpoint_answering_only_server_errors_stops_the_job_with_items_pending(
    proxy: FaultProxy, make_table: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table()
    rows = rows_of(200)
    job = new_job(table, rows, max_attempts=3, backoff_base=0.002, backoff_cap=0.05)
    proxy.outage(120.0, code="InternalServerError")  # every call, for longer than the test
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_code == "EndpointFailing"
    assert "every call with a server error" in job.error_message
    assert "InternalServerError" in job.error_message
    # Nothing failed one retry budget at a time: every item waits for the endpoint to come back.
    assert Item.objects.filter(job=job, status=ItemStatus.PENDING).count() == 200
    assert job.failed_items == 0

    proxy.configure(outage_until=None)  # DynamoDB answers again
    control.job_resume(job=job)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert table_state(scan, table) == dict(rows)


@pytest.mark.parametrize(
    ("policy", "expected_value", "expected_counts"),
    [("last", 3, (2, 0, 2)), ("first", 1, (2, 0, 2)), ("reject", None, (1, 3, 0))],
)
def test_duplicate_key_policies(
    make_table: Any,
    scan: Any,
    run_worker: Any,
    policy: str,
    expected_value: int | None,
    expected_counts: tuple[int, int, int],
) -> None:
    table = make_table()
    rows = [("dup", 1), ("solo", 5), ("dup", 2), ("dup", 3)]
    job = new_job(table, rows, duplicate_policy=policy, **FAST_BACKOFF)
    run_worker()
    job.refresh_from_db()
    assert (job.succeeded_items, job.failed_items, job.skipped_items) == expected_counts
    assert job.total_items == 4
    state = table_state(scan, table)
    assert state.get("dup") == expected_value
    assert state["solo"] == 5
    if policy != "reject":
        skipped = Item.objects.filter(job=job, status=ItemStatus.SKIPPED)
        assert all(i.error_code == "Superseded" and "superseded by row" in i.error_message for i in skipped)


def test_cancel_stops_a_running_job_within_a_call(
    proxy: FaultProxy, make_table: Any, scan: Any, worker_process: Any
) -> None:
    table = make_table()
    job = new_job(table, rows_of(3000), concurrency=1, **FAST_BACKOFF)
    proxy.configure(latency_ms=30)
    worker_process(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
    wait_for(lambda: Job.objects.get(pk=job.pk).succeeded_items >= 100, timeout=60, what="the job to get going")
    control.job_cancel(job=job)
    calls_at_cancel = proxy.stats()["batch_write_calls"]
    time.sleep(2.0)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    # The call in flight finishes; no new call starts once the 0.1 s control poll sees the cancel.
    assert proxy.stats()["batch_write_calls"] - calls_at_cancel <= 6
    pending = Item.objects.filter(job=job, status=ItemStatus.PENDING).count()
    assert pending > 1000
    in_table = len(scan(table))
    # Whatever the ledger says succeeded is in the table; outcomes not yet recorded may add a few.
    assert job.succeeded_items <= in_table <= job.succeeded_items + 25


@pytest.mark.slow
def test_a_sigkilled_worker_is_replaced_and_nothing_is_lost_or_counted_twice(
    proxy: FaultProxy, make_table: Any, scan: Any, worker_process: Any, tmp_path: Any
) -> None:
    table = make_table()
    rows = rows_of(2500)
    job = new_job(table, rows, concurrency=1, **FAST_BACKOFF)
    proxy.configure(latency_ms=15)
    fast_recovery = {
        "AWS_ENDPOINT_URL_DYNAMODB": proxy.url,
        "BULKWRITES_LEASE_SECONDS": "5",
        "BULKWRITES_STALL_SECONDS": "5",
        "BULKWRITES_SWEEP_SECONDS": "3",
    }
    victim = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", TEST_QUEUE],
        cwd=ROOT,
        env=worker_env(**fast_recovery),
        stdout=(tmp_path / "victim.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGKILL reaches the forked work horse too
    )
    try:
        wait_for(lambda: Job.objects.get(pk=job.pk).succeeded_items >= 300, timeout=60, what="the first worker")
        # The worker and its work horse (which RQ puts in a process group of its own: killing the
        # worker's group alone left the horse writing the job to its end).
        assert len(sigkill_worker(victim)) == 2
        killed_at = time.monotonic()
        job.refresh_from_db()
        assert job.status == JobStatus.RUNNING
        assert job.pending_items > 0
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)

    worker_process(**fast_recovery)
    wait_for(
        lambda: Job.objects.get(pk=job.pk).is_finished,
        timeout=120,
        interval=0.5,
        what="the job to finish after the kill",
    )
    recovery_seconds = time.monotonic() - killed_at
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert (job.total_items, job.succeeded_items, job.failed_items) == (2500, 2500, 0)  # not counted twice
    assert Item.objects.filter(job=job, status=ItemStatus.SUCCEEDED).count() == 2500
    assert table_state(scan, table) == dict(rows)
    assert recovery_seconds < 120


def test_a_job_lost_from_redis_is_recovered_from_postgresql(
    make_table: Any, scan: Any, rq_queue: Any, worker_process: Any
) -> None:
    table = make_table()
    rows = rows_of(200)
    job = new_job(table, rows, **FAST_BACKOFF)
    assert rq_queue.count == 1
    rq_queue.empty()  # what a flushed or restarted Redis leaves: the job is only in PostgreSQL
    assert rq_queue.count == 0
    worker_process(BULKWRITES_STALL_SECONDS="3", BULKWRITES_SWEEP_SECONDS="2")
    wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, timeout=60, what="the sweeper to recover the job")
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert table_state(scan, table) == dict(rows)
