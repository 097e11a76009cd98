"""Handing job ids to RQ. Only ids travel through Redis: never models, querysets or secrets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import django_rq
from rq import Worker

from bulkwrites.conf import app_settings


def current_queue() -> str:
    """The RQ queue of this deployment. A job records it when it is queued (see ``Job.start``):
    the sweeper of a deployment recovers only the jobs of its own queue."""
    return app_settings().queue


def enqueue_run(job_id: int, *, copies: int = 1) -> None:
    """Ask ``copies`` workers to work on the job; django-rq enqueues after the transaction commits."""
    queue = django_rq.get_queue(current_queue())
    for _ in range(max(1, copies)):
        queue.enqueue(
            "bulkwrites.tasks.run_job",
            job_id,
            job_timeout=app_settings().run_slice_seconds * 10 + 600,
            result_ttl=3600,
            failure_ttl=7 * 24 * 3600,
            description=f"bulkwrites job {job_id}",
        )


def enqueue_notification(job_id: int) -> None:
    """Ask a worker to send a finished job's mail and webhook (after the transaction commits).

    Its own RQ job, so a slow mail server or webhook receiver never holds up a writer.
    """
    django_rq.get_queue(current_queue()).enqueue(
        "bulkwrites.tasks.notify_job_ended",
        job_id,
        job_timeout=600,
        result_ttl=7 * 24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"bulkwrites job {job_id}: notifications",
    )


def enqueue_reclaim(job_id: int) -> None:
    """Ask a worker to delete a deleted job's rows (after the transaction commits)."""
    django_rq.get_queue(current_queue()).enqueue(
        "bulkwrites.tasks.reclaim_job",
        job_id,
        job_timeout=app_settings().run_slice_seconds * 10 + 600,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"bulkwrites job {job_id}: reclaim its rows",
    )


def enqueue_verification(verification_id: int, *, copies: int = 1) -> None:
    """Ask ``copies`` workers to read a verification's items back (after the transaction commits)."""
    queue = django_rq.get_queue(current_queue())
    for _ in range(max(1, copies)):
        queue.enqueue(
            "bulkwrites.tasks.run_verification",
            verification_id,
            job_timeout=app_settings().run_slice_seconds * 10 + 600,
            result_ttl=3600,
            failure_ttl=7 * 24 * 3600,
            description=f"bulkwrites verification {verification_id}",
        )


def redis_connection() -> Any:
    """The Redis of the job queue; also where the shared write-capacity budgets live."""
    return django_rq.get_connection(current_queue())


def rate_scope(job_id: int) -> str:
    """The job's key in the shared rate budgets: job ids repeat across databases, queues do not."""
    return f"{current_queue()}:{job_id}"


def verification_rate_scope(verification_id: int) -> str:
    """A verification's read budget: its own key, apart from its job's write budget."""
    return f"{current_queue()}:verify:{verification_id}"


LIVE_HEARTBEAT_SECONDS = 90  # a worker heartbeats at least every sweep interval (20 s) and while working


def live_worker_count() -> int:
    """Workers listening on the bulkwrites queue whose heartbeat is fresh.

    A SIGKILLed worker stays registered in Redis until its TTL (minutes) runs out; its
    heartbeat stops at once.
    """
    queue = django_rq.get_queue(current_queue())
    now = datetime.now(UTC)
    return sum(
        1
        for worker in Worker.all(queue=queue)
        if worker.last_heartbeat and (now - _aware(worker.last_heartbeat)).total_seconds() < LIVE_HEARTBEAT_SECONDS
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
