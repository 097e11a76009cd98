"""The runner in this process against DynamoDB Local: slices stream back to back, and a run
that ends hands back what it claimed ahead."""

from __future__ import annotations

import gc
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from bulkwrites.models import Item, ItemStatus, Job, JobStatus, Slice, SliceRun
from bulkwrites.services import create, dispatch, running, work
from faultproxy import FaultProxy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=os.environ["AWS_ENDPOINT_URL_DYNAMODB"], seed=11) as fault_proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", fault_proxy.url)
        yield fault_proxy


def staged_job(table: str, rows: int, **settings: Any) -> Job:
    source = "pk,n:N\n" + "".join(f"k{i:04d},{i}\n" for i in range(rows))
    job = create.job_create_from_file(
        upload=io.BytesIO(source.encode()), file_name="rows.csv", table_name=table, **settings
    )
    assert work.job_stage(job)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)  # as job_start would, without RQ
    return job


def test_a_run_ends_at_its_budget_and_hands_back_the_slice_it_read_ahead(
    proxy: FaultProxy, make_table: Any, scan: Any
) -> None:
    table = make_table()
    job = staged_job(table, 500, slice_size=100, concurrency=1)
    proxy.configure(latency_ms=150)  # 4 calls a slice: the first slice outlasts the budget

    report = running.job_run(job.pk, worker="w-budget", budget_seconds=0.3)

    assert (report.stopped_by, report.slices, report.items) == ("budget", 1, 100)
    slices = list(Slice.objects.filter(job=job).order_by("first_position"))
    assert [s.done for s in slices] == [True, False, False, False, False]
    # The next slice was claimed and read while the first was written; it must not stay leased.
    assert [(s.leased_by, s.lease_expires_at) for s in slices] == [("", None)] * 5
    assert len(scan(table)) == 100

    proxy.configure(latency_ms=0)
    report = running.job_run(job.pk, worker="w-rest")

    assert report.finished
    assert report.items == 400
    job.refresh_from_db()
    assert (job.status, job.succeeded_items, job.failed_items) == (JobStatus.SUCCEEDED, 500, 0)
    assert not Item.objects.filter(job=job).exclude(status=ItemStatus.SUCCEEDED).exists()
    assert len(scan(table)) == 500
    runs = list(SliceRun.objects.filter(job=job).order_by("slice__first_position"))
    assert [(r.items_sent, r.succeeded, r.stopped_by) for r in runs] == [(100, 100, "")] * 5
    assert [r.worker for r in runs] == ["w-budget"] + ["w-rest"] * 4


def test_slices_are_written_back_to_back_with_every_outcome_recorded_once(make_table: Any, scan: Any) -> None:
    table = make_table()
    job = staged_job(table, 2000, slice_size=160, concurrency=6, batch_size=20)

    report = running.job_run(job.pk, worker="w-stream")

    assert report.finished
    assert (report.slices, report.items) == (13, 2000)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == (JobStatus.SUCCEEDED, 2000)
    assert job.calls == sum(r.calls for r in SliceRun.objects.filter(job=job)) == 100  # 20 a call, none resent
    assert Item.objects.filter(job=job, status=ItemStatus.SUCCEEDED, attempts=1).count() == 2000
    assert not Slice.objects.filter(job=job, done=False).exists()
    assert {item["pk"]["S"] for item in scan(table)} == {f"k{i:04d}" for i in range(2000)}


def test_a_slice_is_read_with_its_keys_and_stored_json_as_staged(make_table: Any) -> None:
    table = make_table()
    job = staged_job(table, 5, slice_size=5)
    job_slice = Slice.objects.get(job=job)

    requests = running._pending_requests(job, job_slice)

    assert [r.key for r in requests] == [{"pk": {"S": f"k{i:04d}"}} for i in range(5)]
    assert [r.identity for r in requests] == [(("pk", ("S", f"k{i:04d}")),) for i in range(5)]
    items = Item.objects.filter(job=job).with_payload().order_by("position")
    stored = list(items.values_list("id", "payload_json", "size", "wire_bytes"))  # type: ignore[misc]  # annotated by with_payload()
    assert [(r.ref, json.loads(r.item_json or ""), r.size, r.wire_bytes) for r in requests] == stored


@pytest.mark.parametrize(
    ("stored", "key"),
    [
        ('{"pk": {"S": "a"}, "sk": {"N": "1.5"}}', {"pk": {"S": "a"}, "sk": {"N": "1.5"}}),
        (' {"pk": {"S": "padded"}} ', {"pk": {"S": "padded"}}),  # not jsonb's text: json.loads
        ({"pk": {"S": "a dict already"}}, {"pk": {"S": "a dict already"}}),  # a driver that parses jsonb
    ],
)
def test_a_stored_key_reads_as_the_dict_it_was(stored: Any, key: dict[str, Any]) -> None:
    assert running._key_from_db(stored) == key


def test_a_stored_key_that_is_not_json_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="Extra data"):
        running._key_from_db('{"pk": {"S": "a"}} trailing')


def test_the_heap_is_frozen_during_a_run_only() -> None:
    before = gc.get_freeze_count()  # CPython freezes a few hundred objects of its own at start
    with running.heap_frozen():
        assert gc.get_freeze_count() > before + 1000  # what existed before the run is left out
    assert gc.get_freeze_count() == 0


def test_a_recorder_that_fell_behind_records_its_backlog_in_one_statement() -> None:
    """While one statement is slow, what queues behind it goes out in one, not in many of 250."""
    from bulkwrites.dynamo.writer import CallStats, Outcome

    statements: list[int] = []
    slow = threading.Event()
    closed_after: list[int] = []

    def record(outcomes: list[Outcome], stats: CallStats) -> None:
        statements.append(len(outcomes))
        slow.wait(10)

    recorder: running.OutcomeRecorder[Outcome, CallStats] = running.OutcomeRecorder(
        record=record,
        renew=lambda: None,
        close_range=lambda closing: closed_after.append(sum(statements)),
        new_stats=CallStats,
    )
    batch = [Outcome(ref, True, 1) for ref in range(25)]
    for _ in range(10):
        recorder.add(batch, CallStats(calls=1))
    deadline = time.monotonic() + 10
    while not statements and time.monotonic() < deadline:
        time.sleep(0.01)
    assert statements == [250]  # the first flush, held up

    for _ in range(100):
        recorder.add(batch, CallStats(calls=1))
    recorder.close_slice(object(), stopped_by="")
    slow.set()
    recorder.close()

    assert statements == [250, 2500]
    assert closed_after == [2750]  # the slice closed once all its outcomes were recorded


def test_a_slice_taken_from_a_dead_holder_says_whose_it_was(make_table: Any) -> None:
    job = staged_job(make_table(), 300, slice_size=100)
    lease = running.lease_duration()
    first = Slice.objects.claim(job.pk, worker="w-alive", lease=lease)
    second = Slice.objects.claim(job.pk, worker="w-dead", lease=lease)
    assert first is not None
    assert second is not None
    assert (first.taken_over_from, second.taken_over_from) == ("", "")  # nobody held them
    Slice.objects.filter(pk=second.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    taken = Slice.objects.claim(job.pk, worker="w-alive", lease=lease)

    assert taken is not None
    assert taken.pk == second.pk
    assert taken.taken_over_from == "w-dead"
    # A run's own lease that ran out (PostgreSQL away for a whole lease) names nobody.
    Slice.objects.filter(pk=second.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    again = Slice.objects.claim(job.pk, worker="w-alive", lease=lease)
    assert again is not None
    assert (again.pk, again.taken_over_from) == (second.pk, "")
    assert Slice.objects.holders(job.pk, other_than="w-other") == 1
    assert Slice.objects.holders(job.pk, other_than="w-alive") == 0
    assert Slice.objects.claim(job.pk, worker="w-alive", lease=lease) is not None  # one read ahead
    assert Slice.objects.filter(job=job, leased_by="w-alive").count() == 3
    assert Slice.objects.holders(job.pk, other_than="w-other") == 1  # runs, not slices


def test_a_run_that_finds_the_job_staffed_stops_before_claiming_anything(make_table: Any, scan: Any) -> None:
    table = make_table()
    job = staged_job(table, 300, slice_size=100, workers=2)
    lease = running.lease_duration()
    for worker in ("w-one", "w-two"):
        assert Slice.objects.claim(job.pk, worker=worker, lease=lease) is not None

    report = running.job_run(job.pk, worker="w-third")

    assert (report.stopped_by, report.slices, report.items) == (running.STAFFED, 0, 0)
    assert not Slice.objects.filter(job=job, leased_by="w-third").exists()
    assert scan(table) == []
    # One of the two gone (its slice handed back): the next run works.
    Slice.objects.release(job.pk, worker="w-two")
    report = running.job_run(job.pk, worker="w-third")
    assert (report.slices, report.items) == (2, 200)


def test_the_sweeper_re_enqueues_at_once_a_job_whose_runs_all_died(make_table: Any, rq_queue: Any) -> None:
    dead = staged_job(make_table(), 200, slice_size=100, workers=2)
    alive = staged_job(make_table(), 200, slice_size=100)
    lease = running.lease_duration()
    for job, worker in ((dead, "w-dead"), (alive, "w-alive")):
        assert Slice.objects.claim(job.pk, worker=worker, lease=lease) is not None
    Slice.objects.filter(leased_by="w-dead").update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    Job.objects.filter(pk__in=[dead.pk, alive.pk]).update(queue=dispatch.current_queue())  # as job_start does

    # Both made progress a moment ago: the stall time (45 s) has not passed for either.
    assert work.recover_stalled_jobs() == [dead.pk]
    assert len(rq_queue.get_job_ids()) == 2  # the job's two runs
    # Once taken over, nothing is left to recover; a job with a live lease never was.
    assert Slice.objects.claim(dead.pk, worker="w-next", lease=lease) is not None
    assert work.recover_stalled_jobs() == []


def test_the_sweeper_enqueues_the_runs_a_job_is_short_of_once_redis_lost_them(make_table: Any, rq_queue: Any) -> None:
    # A run hands over by enqueueing its successor; a Redis flushed (or back empty) loses it, and
    # the job went on with a run fewer to its end. The sweeper counts the job's runs on both sides,
    # live leases in PostgreSQL and queued or started RQ jobs, and enqueues what is missing.
    short = staged_job(make_table(), 400, slice_size=100, workers=2)
    held = staged_job(make_table(), 100, slice_size=100)  # its one range held: nothing waits
    paused = staged_job(make_table(), 200, slice_size=100)
    Job.objects.filter(pk__in=[short.pk, held.pk]).update(status=JobStatus.RUNNING, queue=dispatch.current_queue())
    Job.objects.filter(pk=paused.pk).update(status=JobStatus.PAUSED, queue=dispatch.current_queue())
    lease = running.lease_duration()
    # The run of `short` that survived the flush: its RQ job is gone from Redis, its lease is not.
    assert Slice.objects.claim(short.pk, worker="host:1:bulkwrites-run_job-0-survivor", lease=lease) is not None
    assert Slice.objects.claim(held.pk, worker="host:1:bulkwrites-run_job-0-other", lease=lease) is not None

    assert work.restaff_jobs() == [short.pk]
    assert list(dispatch.queued_runs()) == [short.pk]
    assert len(dispatch.queued_runs()[short.pk]) == 1  # two runs again
    assert work.restaff_jobs() == []  # the queued one counts

    rq_queue.empty()  # Redis flushed again
    assert work.restaff_jobs() == [short.pk]
    # A run seen on both sides (queued or started in RQ, and holding a lease) is one run.
    (queued,) = dispatch.queued_runs()[short.pk]
    Slice.objects.release(short.pk, worker="host:1:bulkwrites-run_job-0-survivor")
    assert Slice.objects.claim(short.pk, worker=f"host:2:{queued}", lease=lease) is not None
    assert work.restaff_jobs() == [short.pk]
    assert len(dispatch.queued_runs()[short.pk]) == 2


def test_a_dead_runs_two_slices_taken_over_bring_back_one_run(make_table: Any, rq_queue: Any) -> None:
    job = staged_job(make_table(), 600, slice_size=100, workers=2)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, queue=dispatch.current_queue())
    lease = running.lease_duration()
    dead, live = f"host:1:bulkwrites-run_job-{job.pk}-dead", f"host:2:bulkwrites-run_job-{job.pk}-live"
    for worker in (dead, dead, live):  # the dead run read one slice ahead
        assert Slice.objects.claim(job.pk, worker=worker, lease=lease) is not None
    Slice.objects.filter(leased_by=dead).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    taken = [running.claim_slice(job, worker=live) for _ in range(2)]

    assert [s.taken_over_from for s in taken if s is not None] == [dead, dead]
    # One run in place of the dead one; each takeover used to enqueue its own.
    assert len(dispatch.queued_runs()[job.pk]) == 1
