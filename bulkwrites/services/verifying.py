"""Read-back verification of a job, and repair of what it finds.

A verification reads the items a job wrote back from the table with ``BatchGetItem``
(:mod:`bulkwrites.dynamo.verify`) and records a verdict per item: ``verified``, ``missing``,
``different`` (with a diff) or ``error``. It runs on the workers exactly like a write job, never
in a web request: the first worker stages it (chooses the items, at random for a sample, and
records them as ``ItemCheck`` rows, so a restart checks the same ones) and cuts it into slices;
workers claim slices with leases (``SKIP LOCKED``), read them back through the job's own retry
settings and a read-capacity budget of its own in Redis, and record verdicts with one statement
per flush that counts each item once. A killed worker's slices are taken over when their lease
runs out; the sweeper re-enqueues a verification nobody works on.

Repair sends the items the latest verification found missing or different again, as a new
attempt of the same job (their earlier outcome appended to their history), and re-checks them
once the job has ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from django.db import connection, transaction
from django.db.models import OuterRef, Q, TextField, Value
from django.utils import timezone

from bulkwrites.conf import app_settings
from bulkwrites.dependencies import retry_database, retry_redis
from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo import ratelimit
from bulkwrites.dynamo.backoff import Backoff
from bulkwrites.dynamo.errors import ErrorInfo
from bulkwrites.dynamo.items import Item as DynamoItem
from bulkwrites.dynamo.verify import BatchReader, Check, ReadRequest, ReadResult, ReadStats, chunk_keys
from bulkwrites.dynamo.writer import WriterPolicy
from bulkwrites.models import (
    JOB_TRANSITIONS,
    CheckOutcome,
    CheckSlice,
    Item,
    ItemCheck,
    ItemStatus,
    Job,
    Operation,
    Slice,
    Verification,
    VerificationStatus,
    payload_of,
)
from bulkwrites.models.fields import clean_field_values
from bulkwrites.services import dispatch
from bulkwrites.services.errors import JobError
from bulkwrites.services.running import (
    JOB_RATE_POLICY,
    STAFFED,
    OutcomeRecorder,
    RunControl,
    RunReport,
    SliceClosing,
    SlicePrefetcher,
    lease_duration,
    live_runs,
    stream_slices,
)

logger = logging.getLogger(__name__)

_STAGING_LOCK = 0x6276  # first key of the advisory lock a verification is staged under (the second is its id)


# --- creating and controlling ------------------------------------------------------------


def checked_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Verification settings as given (None: not given), checked by the model fields' validators."""
    clean, errors = clean_field_values(Verification, values)
    if clean.get("sample_fraction") is not None and clean.get("sample_size") is not None:
        errors.append("give a sample fraction or a sample size, not both")
    if errors:
        raise JobError(" ".join(errors))
    return clean


def verification_create(
    *,
    job: Job,
    created_by: Any = None,
    sample_fraction: float | None = None,
    sample_size: int | None = None,
    consistent_read: bool | None = None,
    rate_limit_rcu: float | None = None,
) -> Verification:
    """Verify a job that has ended: queue a verification of its written items for the workers.

    By default every written item is read back, up to ``FULL_VERIFICATION_MAX_ITEMS``; above,
    a random ``DEFAULT_SAMPLE_SIZE``. A verification waiting for the job's end (the job's
    "verify when done") is started with these settings rather than a second one made.
    """
    settings = checked_settings(
        {
            "sample_fraction": sample_fraction,
            "sample_size": sample_size,
            "consistent_read": consistent_read,
            "rate_limit_rcu": rate_limit_rcu,
        }
    )
    dispatch.require_queue("read the job back")
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if not locked.is_finished:
            raise JobError(f"Job {job.pk} is {locked.status}; verify it once it has ended.")
        if locked.succeeded_items == 0:
            raise JobError(f"Job {job.pk} has written no item: there is nothing to read back.")
        running = Verification.objects.filter(job=locked).active().first()
        if running is not None:
            raise JobError(f"Verification {running.pk} of job {job.pk} is {running.status}; wait for it to end.")
        verification = Verification.objects.waiting_for_job(job.pk).first()
        if verification is None:
            verification = Verification(job=locked)
        verification.created_by = created_by if created_by is not None else verification.created_by
        verification.sample_fraction = settings.get("sample_fraction")
        verification.sample_size = settings.get("sample_size")
        verification.consistent_read = settings.get("consistent_read", True)
        verification.rate_limit_rcu = settings.get("rate_limit_rcu")
        verification.concurrency = locked.concurrency
        verification.save()
        if not verification.start(queue=dispatch.current_queue()):
            raise JobError(f"Verification {verification.pk} could not be started.")
        dispatch.enqueue_verification(verification.pk, robust=True)
    return verification


def verification_expect(*, job: Job) -> None:
    """A job that verifies when done is (re)started: a verification waits for its end."""
    if job.verify_when_done and not Verification.objects.waiting_for_job(job.pk).exists():
        Verification.objects.create(
            job=job, start_when_job_ends=True, created_by=job.created_by, concurrency=job.concurrency
        )


def start_due_verifications(*, job_id: int | None = None) -> list[int]:
    """Start the verifications that were waiting for their job to end (its own, or any in this queue)."""
    due = Verification.objects.due().filter(job__queue=dispatch.current_queue())
    if job_id is not None:
        due = due.filter(job_id=job_id)
    started = []
    for verification in due:
        with transaction.atomic():
            if verification.start(queue=dispatch.current_queue()):
                dispatch.enqueue_verification(verification.pk)
                started.append(verification.pk)
    return started


def verification_cancel(*, verification: Verification) -> None:
    """Stop reading: checks without a verdict stay pending (resume reads them)."""
    if not verification.cancel():
        raise JobError(f"Verification {verification.pk} is {verification.status}; it cannot be cancelled.")


def verification_resume(*, verification: Verification) -> None:
    """Read the unchecked items of a failed or cancelled verification (a missing table was restored...)."""
    dispatch.require_queue("resume the verification")
    with transaction.atomic():
        if not verification.resume(queue=dispatch.current_queue()):
            raise JobError(
                f"Verification {verification.pk} is {verification.status}; only a failed or cancelled one resumes."
            )
        dispatch.enqueue_verification(verification.pk, robust=True)


# --- repair ------------------------------------------------------------------------------


def job_repair(*, job: Job, created_by: Any = None) -> int:
    """Send again the items the job's latest verification found missing or different; re-check them after.

    A new attempt of the same job: each item's outcome so far, with the verdict and its diff,
    is appended to its history; the job runs again and, once it has ended, a verification of
    exactly those items starts on its own. Returns how many items are sent again.
    """
    dispatch.require_queue("send the items again")
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if not JOB_TRANSITIONS["repair"].allows(locked.status):
            raise JobError(f"Job {job.pk} is {locked.status}; repair it once it has ended.")
        latest = locked.latest_verification()
        if latest is None:
            raise JobError(f"Job {job.pk} has not been verified: verify it first, then repair what is found.")
        if latest.status != VerificationStatus.FINISHED:
            raise JobError(f"Verification {latest.pk} of job {job.pk} is {latest.status}; repair once it has finished.")
        if latest.mismatched_items == 0:
            raise JobError(f"Verification {latest.pk} of job {job.pk} found nothing missing or different to repair.")
        reopened = Item.objects.reopen_mismatched(locked.pk, verification_id=latest.pk)
        if not reopened:
            raise JobError(f"The items verification {latest.pk} found are not written items of job {job.pk}.")
        Slice.objects.reopen_with_pending(locked.pk)
        locked.requeue_for_repair(queue=dispatch.current_queue(), reopened=reopened)
        Verification.objects.create(
            job=locked,
            recheck_of=latest,
            start_when_job_ends=True,
            consistent_read=latest.consistent_read,
            rate_limit_rcu=latest.rate_limit_rcu,
            concurrency=latest.concurrency,
            created_by=created_by,
        )
        dispatch.enqueue_run(locked.pk, copies=locked.workers, robust=True)
    job.refresh_from_db()
    return reopened


# --- what the workers do -----------------------------------------------------------------


def verification_work(verification_id: int, *, worker: str) -> str:
    """One RQ job's share of a verification: stage it if needed, read a time slice, hand over."""
    verification = Verification.objects.filter(pk=verification_id).first()
    if verification is None or not verification.is_active:
        return f"verification {verification_id}: nothing to do ({verification.status if verification else 'deleted'})"
    if verification.staged_at is None and not verification_stage(verification):
        return f"verification {verification_id}: not staged here"
    report = verification_run(verification_id, worker=worker)
    if report.hands_over:
        retry_redis(
            lambda: dispatch.enqueue_verification(verification_id), what=f"handing verification {verification_id} over"
        )
    return (
        f"verification {verification_id}: {report.items} items in {report.slices} slices, "
        f"stopped by {report.stopped_by or 'done'}"
    )


def verification_stage(verification: Verification) -> bool:
    """Choose and record the items to check, and cut them into slices, if nobody has yet.

    False when another worker is staging it. Under an advisory lock, in one transaction: a
    worker killed while staging leaves nothing half done.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [_STAGING_LOCK, verification.pk])
            if not cursor.fetchone()[0]:
                return False
        verification.refresh_from_db(fields=["staged_at"])
        if verification.staged_at is not None:
            return True
        written = Item.objects.filter(job_id=verification.job_id, status=ItemStatus.SUCCEEDED).count()
        if verification.recheck_of_id is not None:
            total = ItemCheck.objects.stage_recheck(verification, of=verification.recheck_of_id)
            sampled = False
        else:
            sample_size = verification.sample_size_for(written)
            total = ItemCheck.objects.stage(verification, sample_size=sample_size)
            sampled = sample_size is not None
        CheckSlice.objects.cut(verification.pk, first=1, last=total, size=verification.slice_size)
        now = timezone.now()
        Verification.objects.filter(pk=verification.pk).update(
            staged_at=now, eligible_items=written, total_items=total, sampled=sampled, last_activity_at=now
        )
    logger.info("verification %s staged: %s of %s written items", verification.pk, total, written)
    return True


@dataclass
class CheckPass:
    """One claimed slice of checks while its batches are in flight."""

    claimed: CheckSlice
    outstanding: int = 0
    all_submitted: bool = False
    closed: bool = False
    fatal: ErrorInfo | None = None
    stopped: bool = False
    checks: int = 0

    def add(self, result: ReadResult) -> None:
        self.checks += len(result.checks)
        self.fatal = self.fatal or result.fatal
        self.stopped = self.stopped or result.stopped

    @property
    def complete(self) -> bool:
        return self.all_submitted and not (self.fatal or self.stopped)


def verification_run(
    verification_id: int,
    *,
    worker: str,
    client: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    budget_seconds: float | None = None,
) -> RunReport:
    """Read a verification's items back for up to ``budget_seconds``; the caller re-enqueues if not done."""
    report = RunReport()
    budget = app_settings().run_slice_seconds if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    verification = retry_database(
        lambda: Verification.objects.select_related("job").filter(pk=verification_id).first(),
        what="loading the verification",
    )
    if verification is not None and retry_database(
        lambda: CheckSlice.objects.holders(verification_id, other_than=worker), what="counting the verification's runs"
    ):
        # A verification has one run at a time; this one is a spare (see restaff_verifications).
        report.stopped_by = STAFFED
        return report
    if verification is None or not retry_database(verification.claim, what="starting a run"):
        report.stopped_by = "inactive"
        return report
    job = verification.job
    control = RunControl(
        lambda: Verification.objects.filter(pk=verification_id).values_list("status", "rate_limit_rcu").first(),
        VerificationStatus.active(),
    )
    # The same shared limiter as writes, in read units, under the verification's own key; its cap
    # is written to Redis again now and then, like a job's (a flushed Redis forgets it).
    limiter = ratelimit.JobRateLimiter(
        dispatch.redis_connection(),
        dispatch.verification_rate_scope(verification_id),
        sleep=sleep,
        policy=JOB_RATE_POLICY,
    )
    limiter.ensure_cap(verification.rate_limit_rcu)
    control.on_cap = limiter.ensure_cap
    if client is None:
        # The writing client's settings: botocore's retries off (the reader retries each call
        # itself, with the job's backoff), no second validation of what we built.
        client = dynamo_client.make_client(for_writing=True, max_connections=verification.concurrency)
    reader = BatchReader(
        client,
        job.table_name,
        consistent_read=verification.consistent_read,
        policy=WriterPolicy(max_attempts=job.max_attempts, backoff=Backoff(base=job.backoff_base, cap=job.backoff_cap)),
        sleep=sleep,
        should_stop=control.should_stop,
        limiter=limiter,
        endpoint=job.endpoint or dynamo_client.endpoint_label(),
    )
    put = job.operation == Operation.PUT
    prefetcher: SlicePrefetcher[CheckSlice, ReadRequest] = SlicePrefetcher(
        claim=lambda: CheckSlice.objects.claim(verification_id, worker=worker, lease=lease_duration()),
        read=lambda claimed: _pending_reads(verification_id, claimed, put=put),
    )
    recorder: OutcomeRecorder[Check, ReadStats] = OutcomeRecorder(
        record=lambda checks, stats: ItemCheck.objects.record_checks(verification_id, checks, stats),
        renew=lambda: CheckSlice.objects.renew(verification_id, worker=worker, lease=lease_duration()),
        close_range=_close_check_slice,
        new_stats=ReadStats,
    )

    def on_batch(progress: CheckPass, batch: ReadResult) -> None:
        progress.add(batch)
        recorder.add(batch.checks, batch.stats)

    try:
        streamed = stream_slices(
            prefetcher,
            start_pass=lambda claimed, _requests: CheckPass(claimed),
            batches_of=lambda requests: chunk_keys(requests),
            send=lambda batches, on_result: reader.read_batches(
                batches, concurrency=verification.concurrency, on_result=on_result
            ),
            on_batch=on_batch,
            close=lambda progress: recorder.close_slice(progress, stopped_by=""),
            control=control,
            deadline=deadline,
        )
    finally:
        try:
            recorder.close()
        finally:
            retry_database(lambda: CheckSlice.objects.release(verification_id, worker=worker), what="releasing leases")
    limiter.flush()
    result = streamed.result
    report.slices = len(streamed.passes)
    report.items = len(result.checks)
    if result.fatal:
        report.stopped_by = "fatal"
        fatal = result.fatal
        if retry_database(lambda: verification.fail(fatal.code, fatal.message), what="failing the verification"):
            logger.warning("verification %s failed: %s: %s", verification_id, fatal.code, fatal.message)
    elif result.stopped or control.should_stop():
        report.stopped_by = control.stop_reason or "stopped"
    elif not streamed.drained:
        report.stopped_by = "budget"
    else:
        report.finished = retry_database(lambda: finish_if_done(verification), what="finishing the verification")
    return report


def _close_check_slice(closing: SliceClosing) -> None:
    progress: CheckPass = closing.progress
    CheckSlice.objects.close(progress.claimed.pk, done=progress.complete)


def _pending_reads(verification_id: int, claimed: CheckSlice, *, put: bool) -> list[ReadRequest]:
    # The expected item comes as JSON text, parsed only when judged; a delete expects nothing.
    rows = (
        ItemCheck.objects.pending()
        .filter(verification_id=verification_id)
        .in_positions(claimed.first_position, claimed.last_position)
        .order_by("position")
        .annotate(
            expected=payload_of(OuterRef("item__job_id"), OuterRef("item__position"), as_text=True)
            if put
            else Value(None, TextField())
        )
        .values_list("id", "item__key", "expected", "item__size")
    )
    return [
        ReadRequest(ref=pk, key=cast(DynamoItem, key), expected_json=expected, size=size)
        for pk, key, expected, size in rows
    ]


def finish_if_done(verification: Verification) -> bool:
    """Close the verification when no slice is open; the conditional UPDATE makes one worker win."""
    if CheckSlice.objects.open().filter(verification_id=verification.pk).exists():
        return False
    if verification.finish():
        logger.info("verification %s finished", verification.pk)
        return True
    return False


def recover_stalled_verifications() -> list[int]:
    """Re-enqueue active verifications nobody is working on, and start those their job's end is due.

    Like ``work.recover_stalled_jobs``: stalled means no progress for ``STALL_SECONDS`` and no
    slice under a live lease, or, at once, a slice whose lease ran out and none live (its run
    died); only this deployment's queue.
    """
    stall = timedelta(seconds=app_settings().stall_seconds)
    now = timezone.now()
    recovered = start_due_verifications()
    abandoned = CheckSlice.objects.abandoned().values("verification_id")
    stalled = Verification.objects.filter(queue=dispatch.current_queue()).filter(
        Q(pk__in=Verification.objects.stalled(older_than=stall).values("pk"))
        | Q(pk__in=abandoned, status__in=VerificationStatus.active())
    )
    for verification in stalled:
        if CheckSlice.objects.under_live_lease().filter(verification=verification).exists():
            continue
        if verification.staged_at is not None and finish_if_done(verification):
            continue
        touched = Verification.objects.filter(
            pk=verification.pk, last_activity_at=verification.last_activity_at
        ).update(last_activity_at=now)
        if touched:
            logger.warning(
                "verification %s stalled since %s; re-enqueued", verification.pk, verification.last_activity_at
            )
            dispatch.enqueue_verification(verification.pk)
            recovered.append(verification.pk)
    return recovered


def restaff_verifications() -> list[int]:
    """Enqueue a run for each running verification that has none; their ids.

    As ``work.restaff_jobs`` does for jobs: a run hands over by enqueueing its successor, and a
    Redis flushed, or back empty, loses it; the verification then waited out the stall time.
    Only verifications with a range that nobody holds and no run waiting in the queue. A run
    enqueued while another is between two states (started, no lease yet) stops at once
    (``STAFFED``).
    """
    candidates = list(
        Verification.objects.filter(
            queue=dispatch.current_queue(),
            status=VerificationStatus.RUNNING,
            staged_at__isnull=False,
            pk__in=CheckSlice.objects.claimable().values("verification_id"),
        ).values_list("pk", flat=True)
    )
    if not candidates:
        return []
    queued = dispatch.queued_runs("run_verification")
    restaffed = []
    for verification_id in candidates:
        if not live_runs(CheckSlice.objects.holding(verification_id), queued.get(verification_id, set())):
            logger.warning("verification %s has no run; one enqueued", verification_id)
            dispatch.enqueue_verification(verification_id)
            restaffed.append(verification_id)
    return restaffed


def verify_line(verification: Verification) -> str:
    """The line the CLI ends with: ``verify <job>: <a> verified, <b> missing, <c> different``."""
    v = verification
    return f"verify {v.job_id}: {v.verified_items} verified, {v.missing_items} missing, {v.different_items} different"


def first_error(verification: Verification) -> str:
    """The reason of the first item that could not be read back."""
    check = ItemCheck.objects.filter(verification=verification, outcome=CheckOutcome.ERROR).order_by("position").first()
    return f"{check.error_code}: {check.error_message}" if check else ""
