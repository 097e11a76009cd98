"""Running a job: claim a slice, hand its pending items to the writer, record the outcomes.

Several workers can serve one job: each claims one slice at a time with a lease
(``SELECT ... FOR UPDATE SKIP LOCKED``). A worker killed mid-slice leaves its lease to
expire; the slice is then claimed again and its still-pending items are sent again (puts
and deletes are idempotent), while outcomes are recorded only for items still pending, so
nothing is counted twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo import ratelimit
from bulkwrites.dynamo.backoff import Backoff
from bulkwrites.dynamo.writer import BatchResult, BatchWriter, CallStats, Outcome, WriteRequest, WriterPolicy
from bulkwrites.models import ItemStatus, Job, JobStatus, Operation, Slice, SliceRun
from bulkwrites.services import dispatch

logger = logging.getLogger(__name__)

FLUSH_OUTCOMES = 250  # record at least this often (items), ...
FLUSH_SECONDS = 0.5  # ... or this often (seconds), whichever comes first
# Measured with make bench against a proxy capped at 1,000 WCU/s (one worker, one run each):
# the limiter's defaults (x0.7, +5 %/s) reached 80-88 % of the cap with 7.5 % of calls carrying
# unprocessed items; x0.8/+7 %/s ~90 % with 12 %; x0.85/+10 %/s 95-97 % with ~20 %, throttling
# exceptions at 0.2-0.3 % of calls in every case.
JOB_AIMD = ratelimit.AimdPolicy(decrease_factor=0.85, increase_per_second=0.1)
CONTROL_POLL_SECONDS = 0.1  # how often a running writer looks for cancel/pause (a PK lookup)


@dataclass
class RunReport:
    slices: int = 0
    items: int = 0
    stopped_by: str = ""  # "", "cancelled", "paused", "fatal", "budget"
    finished: bool = False


class JobControl:
    """Tells writer threads to stop when an operator cancels or pauses the job.

    Only the calling thread touches the database (``poll``); writer threads read a flag.
    """

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.stop_reason = ""
        self._stop = threading.Event()
        self._polled_at = 0.0

    def poll(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._polled_at < CONTROL_POLL_SECONDS:
            return
        self._polled_at = now
        status = Job.objects.filter(pk=self.job_id).values_list("status", flat=True).first()
        if status in (JobStatus.CANCELLED, JobStatus.PAUSED, JobStatus.FAILED, None):
            self.stop_reason = str(status or "deleted")
            self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set()


def job_run(
    job_id: int,
    *,
    worker: str,
    client: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    budget_seconds: float | None = None,
) -> RunReport:
    """Work on a job for up to ``budget_seconds``; the caller re-enqueues if it is not done."""
    report = RunReport()
    budget = settings.BULKWRITES["RUN_SLICE_SECONDS"] if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    started = Job.objects.filter(pk=job_id, status__in=JobStatus.active()).update(
        status=JobStatus.RUNNING, started_at=Coalesce(F("started_at"), timezone.now()), last_activity_at=timezone.now()
    )
    if not started:
        report.stopped_by = "inactive"
        return report
    job = Job.objects.get(pk=job_id)
    control = JobControl(job_id)
    redis = dispatch.redis_connection()
    # The cap lives in Redis so every worker on every machine shares it; the ledger is the truth.
    ratelimit.set_rate_cap(redis, dispatch.rate_scope(job_id), job.rate_limit_wcu)
    limiter = ratelimit.JobRateLimiter(redis, dispatch.rate_scope(job_id), sleep=sleep, policy=JOB_AIMD)
    if client is None:
        client = dynamo_client.make_client(for_writing=True, max_connections=job.concurrency)
    writer = BatchWriter(
        client,
        job.table_name,
        policy=WriterPolicy(max_attempts=job.max_attempts, backoff=Backoff(base=job.backoff_base, cap=job.backoff_cap)),
        sleep=sleep,
        should_stop=control.should_stop,
        limiter=limiter,
        endpoint=job.endpoint or dynamo_client.endpoint_label(),
    )
    while True:
        if time.monotonic() >= deadline:
            report.stopped_by = "budget"
            return report
        job_slice = claim_slice(job, worker=worker)
        if job_slice is None:
            break
        result = _run_slice(job, job_slice, writer, control, worker=worker)
        report.slices += 1
        report.items += len(result.outcomes)
        if result.fatal:
            report.stopped_by = "fatal"
            _fail_job(job, result.fatal.code, result.fatal.message)
            return report
        if result.stopped:
            report.stopped_by = control.stop_reason or "stopped"
            return report
    limiter.flush()
    report.finished = finish_if_done(job_id)
    return report


def claim_slice(job: Job, *, worker: str) -> Slice | None:
    """Lease the next open slice nobody holds (or whose holder's lease ran out)."""
    now = timezone.now()
    lease = timedelta(seconds=settings.BULKWRITES["LEASE_SECONDS"])
    with transaction.atomic():
        job_slice = (
            Slice.objects.select_for_update(skip_locked=True)
            .filter(job=job, done=False)
            .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
            .order_by("first_position")
            .first()
        )
        if job_slice is None:
            return None
        job_slice.leased_by = worker
        job_slice.lease_expires_at = now + lease
        job_slice.save(update_fields=["leased_by", "lease_expires_at"])
    return job_slice


def _run_slice(job: Job, job_slice: Slice, writer: BatchWriter, control: JobControl, *, worker: str) -> BatchResult:
    started_at = timezone.now()
    requests = _pending_requests(job, job_slice)
    recorder = OutcomeRecorder(job.pk, job_slice.pk, worker)

    def on_result(batch: BatchResult) -> None:
        recorder.add(batch.outcomes, batch.stats)
        control.poll()

    control.poll(force=True)
    try:
        result = writer.write_all(requests, concurrency=job.concurrency, batch_size=job.batch_size, on_result=on_result)
    finally:
        recorder.close()
    complete = not (result.fatal or result.stopped)
    Slice.objects.filter(pk=job_slice.pk).update(
        done=complete, leased_by="", lease_expires_at=None
    )  # released either way: a stopped slice is claimed again on resume
    succeeded = sum(1 for o in result.outcomes if o.succeeded)
    SliceRun.objects.create(
        job_id=job.pk,
        slice=job_slice,
        worker=worker[:255],
        started_at=started_at,
        finished_at=timezone.now(),
        items_sent=len(requests),
        succeeded=succeeded,
        failed=len(result.outcomes) - succeeded,
        calls=result.stats.calls,
        unprocessed=result.stats.unprocessed,
        throttled_calls=result.stats.throttled_calls,
        consumed_wcu=result.stats.consumed_wcu,
        latency_ms=result.stats.latency_seconds * 1000,
        error_codes=dict(result.stats.error_codes),
        stopped_by=(result.fatal.code if result.fatal else control.stop_reason if result.stopped else ""),
    )
    return result


def _pending_requests(job: Job, job_slice: Slice) -> list[WriteRequest]:
    rows = (
        job.items.pending()
        .in_positions(job_slice.first_position, job_slice.last_position)
        .order_by("position")
        .values_list("id", "key", "payload", "size", "wire_bytes")
    )
    is_put = job.operation == Operation.PUT
    return [
        WriteRequest(ref=pk, key=key, item=payload if is_put else None, size=size, wire_bytes=wire_bytes)
        for pk, key, payload, size, wire_bytes in rows
    ]


class OutcomeRecorder:
    """Records a slice's outcomes on its own thread and database connection.

    The dispatch loop only queues outcomes here: waiting ~30 ms for each UPDATE would leave
    the writer's calls idle (measured: a third of a job's time). Outcomes are recorded with
    one statement per flush, at least every 250 outcomes or 0.5 s, and the slice's lease is
    renewed with each flush. ``close()`` waits until everything queued is recorded.
    """

    def __init__(self, job_id: int, slice_id: int, worker: str) -> None:
        self.job_id = job_id
        self.slice_id = slice_id
        self.worker = worker
        self._queue: queue.SimpleQueue[tuple[list[Outcome], CallStats] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bulkwrites-recorder", daemon=True)
        self._thread.start()

    def add(self, outcomes: list[Outcome], stats: CallStats) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((outcomes, stats))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        outcomes: list[Outcome] = []
        stats = CallStats()
        flushed_at = time.monotonic()
        try:
            while True:
                try:
                    entry = self._queue.get(timeout=FLUSH_SECONDS)
                except queue.Empty:
                    entry = ([], CallStats())
                if entry is None:
                    break
                outcomes.extend(entry[0])
                stats.add(entry[1])
                if len(outcomes) >= FLUSH_OUTCOMES or time.monotonic() - flushed_at >= FLUSH_SECONDS:
                    self._flush(outcomes, stats)
                    outcomes, stats, flushed_at = [], CallStats(), time.monotonic()
            self._flush(outcomes, stats)
        except BaseException as exc:  # noqa: BLE001 - handed to the dispatching thread by add()/close()
            self._error = exc
        finally:
            connection.close()  # this thread's own connection

    def _flush(self, outcomes: list[Outcome], stats: CallStats) -> None:
        if not outcomes and not stats.calls:
            return
        record_outcomes(self.job_id, outcomes, stats)
        lease = timedelta(seconds=settings.BULKWRITES["LEASE_SECONDS"])
        Slice.objects.filter(pk=self.slice_id, leased_by=self.worker).update(lease_expires_at=timezone.now() + lease)


def record_outcomes(job_id: int, outcomes: list[Outcome], stats: CallStats) -> None:
    """One statement: update the items still pending, and add what changed to the job's counters.

    The ``status = 'pending'`` guard makes recording idempotent: an item re-sent after a
    crash, or recorded by two workers, is counted once.
    """
    if not outcomes and not stats.calls:
        return
    values_sql = ", ".join(["(%s::bigint, %s, %s::int, %s, %s)"] * len(outcomes)) or "(NULL::bigint, '', 0, '', '')"
    params: list[Any] = []
    for o in outcomes:
        params += [
            o.ref,
            ItemStatus.SUCCEEDED if o.succeeded else ItemStatus.FAILED,
            o.attempts,
            o.error_code or "",
            o.error_message or "",
        ]
    params += [stats.calls, stats.throttled_calls, stats.unprocessed, stats.consumed_wcu, job_id]
    sql = f"""
        WITH v(id, status, attempts, code, message) AS (VALUES {values_sql}),
        changed AS (
            UPDATE bulkwrites_item AS i
            SET status = v.status, attempts = i.attempts + v.attempts, error_code = v.code,
                error_message = v.message, updated_at = now()
            FROM v WHERE i.id = v.id AND i.status = 'pending'
            RETURNING i.status
        )
        UPDATE bulkwrites_job SET
            succeeded_items = succeeded_items + (SELECT count(*) FROM changed WHERE status = 'succeeded'),
            failed_items = failed_items + (SELECT count(*) FROM changed WHERE status = 'failed'),
            calls = calls + %s, throttled_calls = throttled_calls + %s,
            unprocessed_returned = unprocessed_returned + %s, consumed_wcu = consumed_wcu + %s,
            last_activity_at = now()
        WHERE id = %s
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def finish_if_done(job_id: int) -> bool:
    """Close the job when no slice is open; the conditional UPDATE makes one worker win."""
    if Slice.objects.filter(job_id=job_id, done=False).exists():
        return False
    now = timezone.now()
    for status, condition in (
        (JobStatus.SUCCEEDED, Q(failed_items=0)),
        (JobStatus.COMPLETED_WITH_FAILURES, Q(failed_items__gt=0)),
    ):
        if Job.objects.filter(condition, pk=job_id, status__in=JobStatus.active()).update(
            status=status, finished_at=now, last_activity_at=now
        ):
            logger.info("job %s finished: %s", job_id, status)
            return True
    return False


def _fail_job(job: Job, code: str, message: str) -> None:
    updated = Job.objects.filter(pk=job.pk, status__in=JobStatus.active()).update(
        status=JobStatus.FAILED,
        error_code=code[:128],
        error_message=message,
        finished_at=timezone.now(),
        last_activity_at=timezone.now(),
    )
    if updated:
        logger.warning("job %s failed: %s: %s", job.pk, code, message)
