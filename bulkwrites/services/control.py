"""Controlling jobs: start, pause, resume, cancel, retry failed items, change the rate cap.

Each use-case is a transition of ``Job`` (see ``bulkwrites.models.JOB_TRANSITIONS``: a
conditional UPDATE, so an operator and a worker racing on a job never undo each other) plus
what goes with it: workers asked after the transaction commits, the shared rate budget told.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction

from bulkwrites.models import JOB_TRANSITIONS, Item, Job, JobStatus, Slice
from bulkwrites.services import dispatch, notify, verifying
from bulkwrites.services.create import checked_settings
from bulkwrites.services.errors import JobError


def job_start(*, job: Job) -> None:
    """Queue a draft job; workers are asked after the transaction commits."""
    dispatch.require_queue("start the job")
    with transaction.atomic():
        if not job.start(queue=dispatch.current_queue()):
            raise JobError(_refused(job, "only a draft job can be started"))
        verifying.verification_expect(job=job)
        dispatch.enqueue_run(job.pk, copies=job.workers, robust=True)


def job_pause(*, job: Job) -> None:
    """Writers stop before their next call; pending items wait for resume."""
    if not job.pause():
        raise JobError(_refused(job, "only a queued or running job can be paused"))


def job_resume(*, job: Job) -> None:
    """Run the pending items of a paused, failed or cancelled job again."""
    dispatch.require_queue("resume the job")
    with transaction.atomic():
        if not job.resume(queue=dispatch.current_queue()):
            raise JobError(_refused(job, "only a paused, failed or cancelled job can resume"))
        verifying.verification_expect(job=job)
        dispatch.enqueue_run(job.pk, copies=job.workers, robust=True)


def job_cancel(*, job: Job) -> None:
    """Stop for good: unsent items stay pending; a running writer stops within a call."""
    was_draft = Job.objects.status_of(job.pk) == JobStatus.DRAFT
    if not job.cancel():
        raise JobError(_refused(job, "it cannot be cancelled"))
    if not was_draft:  # a discarded preview is no news to anyone
        notify.job_ended(job)


def job_retry_failed(*, job: Job) -> int:
    """Send the items that failed at sending once more; their first outcome stays in history.

    Rows that could not be read or converted, and copies refused by the duplicate policy, are
    not retried: the same input fails the same way.
    """
    dispatch.require_queue("send the failed items again")
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if not JOB_TRANSITIONS["retry_failed"].allows(locked.status):
            raise JobError(_refused(locked, "retry failed items once it has finished"))
        positions = Item.objects.reopen_failed(job.pk)
        if not positions:
            raise JobError(f"Job {job.pk} has no failed items that can be sent again.")
        Slice.objects.reopen_positions(job.pk, positions)
        locked.requeue_failed(queue=dispatch.current_queue(), reopened=len(positions))
        verifying.verification_expect(job=locked)
        dispatch.enqueue_run(job.pk, copies=locked.workers, robust=True)
    job.refresh_from_db()
    return len(positions)


def job_set_rate(*, job: Job, wcu_per_second: float | None) -> None:
    """Change a job's write-capacity cap; running workers follow within about a second."""
    checked_settings({"rate_limit_wcu": wcu_per_second})
    Job.objects.filter(pk=job.pk).update(rate_limit_wcu=wcu_per_second)
    dispatch.tell_rate_cap(dispatch.rate_scope(job.pk), wcu_per_second, what=f"job {job.pk}")
    job.refresh_from_db()


# The operator actions by transition name (the admin's buttons, the CLI's commands).
ACTIONS: dict[str, Callable[..., Any]] = {
    "start": job_start,
    "pause": job_pause,
    "resume": job_resume,
    "retry_failed": job_retry_failed,
    "cancel": job_cancel,
    "repair": verifying.job_repair,
}


# The permission each operator action needs: the admin's buttons, the CLI's audit and the API check these.
ACTION_PERMISSIONS: dict[str, str] = {
    "start": "bulkwrites.run_job",
    "resume": "bulkwrites.run_job",
    "retry_failed": "bulkwrites.run_job",
    "rate": "bulkwrites.run_job",
    "pause": "bulkwrites.cancel_job",
    "cancel": "bulkwrites.cancel_job",
    "repair": "bulkwrites.run_job",
    "verify": "bulkwrites.run_job",
    "resume_verification": "bulkwrites.run_job",
    "cancel_verification": "bulkwrites.cancel_job",
}


def _refused(job: Job, why: str) -> str:
    status = Job.objects.status_of(job.pk) or "gone"
    return f"Job {job.pk} is {status}; {why}."
