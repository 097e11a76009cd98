"""What the workers do: stage a job's items, run it a time slice at a time, recover stalled jobs.

``job_work`` is the whole of an RQ job (``bulkwrites.tasks.run_job``); ``recover_stalled_jobs``
is the sweeper every worker runs (``bulkwrites.worker``). Both take ids and read the truth
from PostgreSQL, so a lost RQ job or a flushed Redis costs time, never items.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from bulkwrites.conf import app_settings
from bulkwrites.dependencies import retry_redis
from bulkwrites.models import Job, JobStatus, Slice
from bulkwrites.services import deletion, dispatch, notify, running, staging, verifying
from bulkwrites.services.errors import JobError
from bulkwrites.services.source_rows import job_source_rows
from bulkwrites.sources import formats

logger = logging.getLogger(__name__)

CODE_SOURCE_UNREADABLE = "SourceUnreadable"
_STAGING_LOCK = 0x6277  # first key of the advisory lock a job is staged under (the second is its id)


def job_work(job_id: int, *, worker: str) -> str:
    """One RQ job's share of the work: stage if needed, run a time slice, hand over."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.status not in JobStatus.active():
        return f"job {job_id}: nothing to do ({job.status if job else 'deleted'})"
    if job.staged_at is None:
        if staging.stages_while_writing(job):
            return _stage_while_writing(job, worker=worker)
        if not job_stage(job):
            return f"job {job_id}: not staged here"
        if job.workers > 1:
            dispatch.enqueue_run(job_id, copies=job.workers - 1)
    report = running.job_run(job_id, worker=worker)
    return _after_run(job_id, report)


def _after_run(job_id: int, report: running.RunReport) -> str:
    if report.stopped_by in ("budget", "waiting"):
        retry_redis(lambda: dispatch.enqueue_run(job_id), what=f"handing job {job_id} over")
    elif report.finished:
        verifying.start_due_verifications(job_id=job_id)
    return f"job {job_id}: {report.items} items in {report.slices} slices, stopped by {report.stopped_by or 'done'}"


def _stage_while_writing(job: Job, *, worker: str) -> str:
    """Stage the job on a thread of this work horse while its writers send what is committed.

    Whoever holds the job's staging lock stages; other workers (the job's extra workers, a
    duplicated RQ job) only write, waiting for slices while staging goes on. The horse stays
    until staging ends (a horse that returned would take the thread with it), running again
    each time a run ends for its budget or for want of committed slices.
    """
    stager = Stager(job.pk)
    if stager.start() and job.workers > 1:
        dispatch.enqueue_run(job.pk, copies=job.workers - 1)
    try:
        report = running.job_run(job.pk, worker=worker)
        while stager.is_alive() and report.stopped_by in ("budget", "waiting"):
            report = running.job_run(job.pk, worker=worker)
    finally:
        stager.join()
    return _after_run(job.pk, report)


class Stager:
    """Stages one job (:func:`staging.stage_in_chunks`) on a thread with a connection of its own.

    The job's staging lock is a session lock on that connection: held for the whole staging,
    across its chunks' transactions, and released by PostgreSQL if the process dies.
    """

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self._locked = threading.Event()
        self._tried = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bulkwrites-staging", daemon=True)

    def start(self) -> bool:
        """Start staging; whether this process holds the staging lock (False: another one stages)."""
        self._thread.start()
        self._tried.wait()
        return self._locked.is_set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stage_here(self) -> bool:
        """Stage in the calling thread (no writers); whether the job is staged now."""
        self.stage_locked()
        if self._error is not None:
            raise self._error
        return Job.objects.filter(pk=self.job_id, staged_at__isnull=False).exists()

    def _run(self) -> None:
        try:
            self.stage_locked()
        finally:
            connection.close()  # this thread's own connection

    def stage_locked(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_STAGING_LOCK, self.job_id])
                locked = cursor.fetchone()[0]
            if locked:
                self._locked.set()
            self._tried.set()
            if locked:
                try:
                    self._stage()
                finally:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_STAGING_LOCK, self.job_id])
        except BaseException as exc:  # noqa: BLE001 - raised in the work horse's thread by join()
            self._error = exc
        finally:
            self._tried.set()

    def _stage(self) -> None:
        job = Job.objects.get(pk=self.job_id)
        if job.staged_at is not None:
            return
        progress = staging.StagingProgress(job.pk)
        try:
            with job_source_rows(job, track_bytes=progress.track_bytes) as (rows, dynamodb_json):
                staging.stage_in_chunks(job, rows, dynamodb_json=dynamodb_json, progress=progress)
        except (formats.SourceError, JobError) as exc:
            # Chunks already committed stay: their items were (or are being) written; the rest
            # of the source never will be, which the job's failure says.
            if job.fail(CODE_SOURCE_UNREADABLE, str(exc)):
                notify.job_ended(job)
        finally:
            progress.close()


def job_stage(job: Job) -> bool:
    """Store the job's items if nobody has yet. False when another worker is staging it,
    or when the source cannot be read (the job then fails with the reason).

    A job staged while written (:func:`staging.stages_while_writing`) is staged here in chunks,
    with no writer (the bench's staging way)."""
    if staging.stages_while_writing(job):
        return Stager(job.pk).stage_here()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [_STAGING_LOCK, job.pk])
            if not cursor.fetchone()[0]:
                return False
        job.refresh_from_db(fields=["staged_at"])
        if job.staged_at is not None:
            return True
        progress = staging.StagingProgress(job.pk)
        try:
            with job_source_rows(job, track_bytes=progress.track_bytes) as (rows, dynamodb_json):
                staging.stage_job(job, rows, dynamodb_json=dynamodb_json, progress=progress)
        except (formats.SourceError, JobError) as exc:
            if job.fail(CODE_SOURCE_UNREADABLE, str(exc)):
                notify.job_ended(job)  # enqueued once this transaction commits
            return False
        finally:
            progress.close()
    return True


def recover_stalled_jobs() -> list[int]:
    """Re-enqueue active jobs nobody is working on (killed worker, flushed Redis).

    A job counts as stalled when it made no progress for ``STALL_SECONDS`` and no slice of
    it is under a live lease. Only jobs of this worker's queue: several deployments (or a
    benchmark) may share one database with their own queues and endpoints. Duplicated RQ
    jobs are harmless: slices are claimed with leases.
    """
    stall = timedelta(seconds=app_settings().stall_seconds)
    now = timezone.now()
    recovered = []
    for job in Job.objects.stalled(older_than=stall).in_queue(dispatch.current_queue()):
        if Slice.objects.under_live_lease().filter(job=job).exists():
            continue
        if job.staged_at is not None and running.finish_if_done(job):
            verifying.start_due_verifications(job_id=job.pk)
            continue
        touched = Job.objects.filter(pk=job.pk, last_activity_at=job.last_activity_at).update(last_activity_at=now)
        if touched:
            logger.warning("job %s stalled since %s; re-enqueued", job.pk, job.last_activity_at)
            dispatch.enqueue_run(job.pk, copies=job.workers)
            recovered.append(job.pk)
    return recovered


EXPIRED_DRAFTS_PER_SWEEP = 100


def delete_expired_drafts(*, limit: int = EXPIRED_DRAFTS_PER_SWEEP) -> list[int]:
    """Delete drafts older than ``DRAFT_TTL_HOURS`` with their items and stored file; their ids.

    An abandoned preview holds an uploaded file (up to the upload cap) and, for records or a
    query, its staged items. A draft an operator starts meanwhile is left alone: each one is
    locked and checked again before it goes. Deleted as every job is (``deletion.jobs_delete``):
    gone at once, its rows and file reclaimed by a worker in bounded batches.
    """
    hours = app_settings().draft_ttl_hours
    if hours <= 0:
        return []
    deleted = []
    candidates = Job.objects.expired_drafts(older_than=timedelta(hours=hours)).order_by("pk")
    for job_id in candidates.values_list("pk", flat=True)[:limit]:
        with transaction.atomic():
            job = Job.objects.select_for_update(skip_locked=True).filter(pk=job_id, status=JobStatus.DRAFT).first()
            if job is None or not deletion.job_delete(job=job):
                continue
        deleted.append(job_id)
    if deleted:
        logger.info("deleted %s expired draft(s): %s", len(deleted), deleted)
    return deleted
