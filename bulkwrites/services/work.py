"""What the workers do: stage a job's items, run it a time slice at a time, recover stalled jobs.

``job_work`` is the whole of an RQ job (``bulkwrites.tasks.run_job``); ``recover_stalled_jobs``
is the sweeper every worker runs (``bulkwrites.worker``). Both take ids and read the truth
from PostgreSQL, so a lost RQ job or a flushed Redis costs time, never items.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Q
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
        if not job_stage(job):
            return f"job {job_id}: not staged here"
        if job.workers > 1:
            # job_start enqueued `workers` copies; those no free worker took while this one staged
            # are still queued.
            running.restaff(job, also=worker)
    report = running.job_run(job_id, worker=worker)
    if report.hands_over:
        retry_redis(lambda: dispatch.enqueue_run(job_id), what=f"handing job {job_id} over")
    elif report.finished:
        verifying.start_due_verifications(job_id=job_id)
    return f"job {job_id}: {report.items} items in {report.slices} slices, stopped by {report.stopped_by or 'done'}"


def job_stage(job: Job) -> bool:
    """Store the job's items if nobody has yet. False when another worker is staging it,
    or when the source cannot be read (the job then fails with the reason)."""
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
                # None of a job's sources reads through this connection (SQL ones open their own).
                staging.stage_job(job, rows, dynamodb_json=dynamodb_json, progress=progress, read_ahead=True)
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
    it is under a live lease. So does one, at once, whose runs all died: a slice's lease ran out
    (a run that stops hands its slices back) and nobody holds one. A job's last run killed
    used to wait out the stall time as well (its lease, then 45-65 s more). Only jobs of this
    worker's queue: several deployments (or a benchmark) may share one database with their own
    queues and endpoints. Duplicated RQ jobs are harmless: slices are claimed with leases, and a
    run that finds the job's runs under way stops (``running.STAFFED``).
    """
    stall = timedelta(seconds=app_settings().stall_seconds)
    now = timezone.now()
    queue = dispatch.current_queue()
    abandoned = Slice.objects.abandoned().values("job_id")
    candidates = Job.objects.in_queue(queue).filter(
        Q(pk__in=Job.objects.stalled(older_than=stall).values("pk"))
        | Q(pk__in=abandoned, status__in=JobStatus.active())
    )
    recovered = []
    for job in candidates:
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


def restaff_jobs() -> list[int]:
    """Enqueue the runs each running job is short of (``running.restaff``); the ids of those that were.

    A run hands its job over by enqueueing its successor, and that RQ job waits in Redis until
    a worker is free. A Redis flushed, or back empty after a restart, loses it: the job went on
    with one run fewer to its end, or, if it had one, waited out the stall time (its last run
    handed its ranges back, so no lease ran out). Only jobs with a range that nobody holds.
    """
    candidates = list(
        Job.objects.in_queue(dispatch.current_queue()).filter(
            status=JobStatus.RUNNING, staged_at__isnull=False, pk__in=Slice.objects.claimable().values("job_id")
        )
    )
    if not candidates:
        return []
    queued = dispatch.queued_runs()  # once for every job: one read of the queue
    return [job.pk for job in candidates if running.restaff(job, queued=queued)]


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
