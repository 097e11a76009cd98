"""Staging while writing: slices released as their chunks commit, each duplicate policy kept,
a staging killed mid-way resumed without losing or doubling a row.

Real services: PostgreSQL, Redis, DynamoDB Local. Every test reads the table back.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Sum

from bulkwrites.dynamo.errors import CODE_INVALID_ROW, CODE_SUPERSEDED
from bulkwrites.dynamo.items import KeySchema
from bulkwrites.dynamo.records import RecordConverter
from bulkwrites.models import Item, ItemStatus, Job, JobStatus, Slice, SliceRun
from bulkwrites.services import control, create, staging
from tests.conftest import ROOT, TEST_QUEUE, sigkill_worker, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


def csv_bytes(rows: list[tuple[str, str]], *, body: str = "") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["pk", "v:N", "body"])
    for pk, value in rows:
        writer.writerow([pk, value, body])
    return out.getvalue().encode()


def new_job(table: str, rows: list[tuple[str, str]], *, start: bool = True, **settings: Any) -> Job:
    job = create.job_create_from_file(
        upload=io.BytesIO(csv_bytes(rows)), file_name="rows.csv", table_name=table, **settings
    )
    if start:
        control.job_start(job=job)
    return job


def table_state(scan: Any, table: str) -> dict[str, str]:
    return {item["pk"]["S"]: item["v"]["N"] for item in scan(table)}


def check_counters(job: Job, *, rows: int) -> None:
    """The job's counters are those of its items, and every source row is one item."""
    job.refresh_from_db()
    by_status = dict(Item.objects.filter(job=job).values_list("status").annotate(n=Sum(1)).values_list("status", "n"))
    assert job.total_items == rows == sum(by_status.values())
    assert job.succeeded_items == by_status.get(ItemStatus.SUCCEEDED, 0)
    assert job.failed_items == by_status.get(ItemStatus.FAILED, 0)
    assert job.skipped_items == by_status.get(ItemStatus.SKIPPED, 0)
    assert list(Item.objects.filter(job=job).order_by("position").values_list("position", flat=True)) == list(
        range(1, rows + 1)
    )


# Keys repeated within a chunk and across chunks (chunks of 4 rows), and invalid copies ("x" is
# not a number) that never count as a copy of their key.
DUPLICATES = [
    ("a", "1"), ("b", "1"), ("a", "2"), ("c", "1"),  # chunk 1: a twice
    ("b", "2"), ("d", "1"), ("a", "x"), ("e", "1"),  # chunk 2: b again, an invalid a
    ("a", "3"), ("b", "3"), ("c", "2"), ("a", "4"),  # chunk 3: a twice more, b, c again
    ("f", "1"), ("f", "2"), ("c", "x"), ("g", "1"),  # chunk 4: f twice, an invalid c
]  # fmt: skip
LAST = {"a": "4", "b": "3", "c": "2", "d": "1", "e": "1", "f": "2", "g": "1"}
FIRST = {"a": "1", "b": "1", "c": "1", "d": "1", "e": "1", "f": "1", "g": "1"}


@pytest.mark.parametrize("policy", ["last", "first"])
def test_each_chunked_policy_lands_the_right_copy_and_the_ledger_accounts_for_every_row(
    make_table: Any, scan: Any, run_worker: Any, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    monkeypatch.setattr(staging, "COPY_CHUNK_ROWS", 4)
    table = make_table()
    job = new_job(table, DUPLICATES, duplicate_policy=policy, slice_size=2, concurrency=2)
    assert staging.stages_while_writing(job)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED_WITH_FAILURES  # the two invalid rows
    assert table_state(scan, table) == (LAST if policy == "last" else FIRST)
    check_counters(job, rows=len(DUPLICATES))
    invalid = Item.objects.filter(job=job, status=ItemStatus.FAILED)
    assert sorted(invalid.values_list("position", flat=True)) == [7, 15]
    assert set(invalid.values_list("error_code", flat=True)) == {CODE_INVALID_ROW}
    items = {i.position: i for i in Item.objects.filter(job=job)}
    winners = {
        pk: max(p for p, (k, v) in enumerate(DUPLICATES, 1) if k == pk and v != "x")
        if policy == "last"
        else min(p for p, (k, v) in enumerate(DUPLICATES, 1) if k == pk and v != "x")
        for pk in LAST
    }
    for pk, position in winners.items():
        assert items[position].status == ItemStatus.SUCCEEDED, pk
    for item in items.values():
        if item.status == ItemStatus.SKIPPED:
            assert item.error_code == CODE_SUPERSEDED
            assert f"({policy} row wins)" in item.error_message
    if policy == "first":
        # Nothing but the first copy is ever sent: every later valid copy is skipped.
        assert job.skipped_items == len(DUPLICATES) - 2 - len(FIRST)
    else:
        # An earlier copy is skipped unless it was written before its later copy was read; either
        # way the later copy was held until every slice before it was done.
        assert job.succeeded_items + job.skipped_items == len(DUPLICATES) - 2
        assert Slice.objects.filter(job=job, held=True).exists()


def test_reject_is_staged_whole_before_the_first_write(make_table: Any, scan: Any, run_worker: Any) -> None:
    table = make_table()
    job = new_job(table, DUPLICATES, duplicate_policy="reject", slice_size=2)
    assert not staging.stages_while_writing(job)
    run_worker()
    job.refresh_from_db()
    assert table_state(scan, table) == {"d": "1", "e": "1", "g": "1"}
    check_counters(job, rows=len(DUPLICATES))
    assert job.succeeded_items == 3
    runs = SliceRun.objects.filter(job=job)
    assert job.staged_at is not None
    assert all(run.started_at >= job.staged_at for run in runs)


def test_writing_starts_while_staging_is_still_reading(
    make_table: Any, scan: Any, run_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(staging, "COPY_CHUNK_ROWS", 500)
    table = make_table()
    rows = [(f"k{i:05d}", str(i)) for i in range(6000)]
    job = new_job(table, rows, slice_size=250)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert table_state(scan, table) == dict(rows)
    check_counters(job, rows=6000)
    assert job.succeeded_items == 6000
    assert job.staged_at is not None
    first_write = SliceRun.objects.filter(job=job).order_by("started_at").first()
    assert first_write is not None
    assert first_write.started_at < job.staged_at
    assert not Slice.objects.filter(job=job, held=True).exists()  # no key repeats: nothing held back


def test_a_later_copy_waits_for_every_earlier_slice_and_an_unsent_earlier_copy_is_superseded() -> None:
    """The policy's decisions for one chunk against a ledger whose earlier chunk is half written."""
    job = Job.objects.create(table_name="t", key_schema=[{"name": "pk", "type": "S", "role": "HASH"}])
    rows = [("a", "1"), ("b", "1"), ("c", "1"), ("a", "2"), ("b", "2"), ("d", "1")]
    with transaction.atomic():
        staging_result = staging.StagingResult()
        records = RecordConverter(
            KeySchema.from_json(job.key_schema), delete=False, dynamodb_json=False, processes=0
        ).convert(((p, {"pk": k, "v:N": v}, None), None) for p, (k, v) in enumerate(rows, 1))
        chunk = list(records)
        staging._commit_chunk(job, chunk[:3], [], code=CODE_SUPERSEDED, result=staging_result)  # type: ignore[arg-type]
    # The first chunk's "a" was written already; its "b" is still pending (never claimed).
    Item.objects.filter(job=job, position=1).update(status=ItemStatus.SUCCEEDED)
    seen = [record.key_hash for record, _ in chunk[3:5]]
    staging._commit_chunk(job, chunk[3:], seen, code=CODE_SUPERSEDED, result=staging_result)  # type: ignore[arg-type]
    statuses = dict(Item.objects.filter(job=job).values_list("position", "status"))
    assert statuses == {1: "succeeded", 2: "skipped", 3: "pending", 4: "pending", 5: "pending", 6: "pending"}
    message = Item.objects.get(job=job, position=2).error_message
    assert message == "superseded by row 5 with the same key (last row wins)"
    held = list(Slice.objects.filter(job=job, held=True).values_list("first_position", "last_position"))
    assert held == [(4, 6)]  # one slice of 1,000 per chunk here: the chunk's slice ends at its last row
    # Held while the first chunk's slice is open (its "c" not written yet); claimable once it is done.
    assert [s.first_position for s in Slice.objects.filter(job=job, done=False).claimable()] == [1]
    Slice.objects.filter(job=job).exclude(held=True).update(done=True)
    assert [s.first_position for s in Slice.objects.filter(job=job, done=False).claimable()] == [4]
    job.refresh_from_db()
    assert (job.total_items, job.failed_items, job.skipped_items) == (6, 0, 1)


def test_cancel_during_staging_stops_it_and_resume_finishes_the_rows_left(
    make_table: Any, scan: Any, run_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(staging, "COPY_CHUNK_ROWS", 100)
    table = make_table()
    rows = [(f"k{i:04d}", str(i)) for i in range(1000)]
    job = new_job(table, rows, slice_size=100)
    real_commit = staging._commit_chunk

    def cancel_after_three_chunks(job_: Job, chunk: Any, *args: Any, **kwargs: Any) -> None:
        real_commit(job_, chunk, *args, **kwargs)
        if chunk[-1][0].position == 300:
            control.job_cancel(job=Job.objects.get(pk=job_.pk))

    monkeypatch.setattr(staging, "_commit_chunk", cancel_after_three_chunks)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert job.staged_at is None
    assert job.total_items == 300  # the chunks committed before the cancel, nothing more
    control.job_resume(job=job)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert table_state(scan, table) == dict(rows)
    check_counters(job, rows=1000)


@pytest.mark.slow
def test_a_worker_killed_mid_staging_is_resumed_and_no_row_is_lost_or_doubled(
    make_table: Any, scan: Any, worker_process: Any, tmp_path: Any
) -> None:
    table = make_table()
    count = 50_000
    rows = [(f"k{i:06d}", str(i)) for i in range(count)]
    job = new_job(table, rows)
    fast_recovery = {"BULKWRITES_LEASE_SECONDS": "5", "BULKWRITES_STALL_SECONDS": "5", "BULKWRITES_SWEEP_SECONDS": "3"}
    victim = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", TEST_QUEUE],
        cwd=ROOT,
        env=worker_env(**fast_recovery),
        stdout=(tmp_path / "victim.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGKILL reaches the forked work horse too
    )
    try:
        wait_for(lambda: Job.objects.get(pk=job.pk).total_items >= 5_000, timeout=120, interval=0.05, what="staging")
        sigkill_worker(victim)
        job.refresh_from_db()
        assert job.staged_at is None, "staging ended before the kill: the test needs a larger file"
        staged_before_kill = job.total_items
        assert 0 < staged_before_kill < count
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    started = time.monotonic()
    worker_process(**fast_recovery)
    wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, timeout=240, interval=0.5, what="the job to finish")
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    check_counters(job, rows=count)
    assert job.succeeded_items == count
    assert table_state(scan, table) == dict(rows)
    log = "".join(path.read_text() for path in tmp_path.glob("worker-*.log"))
    assert "staging resumes after position" in log
    assert time.monotonic() - started < 240
