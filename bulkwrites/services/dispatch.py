"""Handing job ids to RQ. Only ids travel through Redis: never models, querysets or secrets."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import django_rq
import redis
from django.db import transaction
from rq import Worker

from bulkwrites.conf import app_settings
from bulkwrites.dependencies import REDIS_DOWN
from bulkwrites.dynamo import ratelimit
from bulkwrites.services.errors import QueueUnavailable

logger = logging.getLogger(__name__)
QUEUE_CHECK_SECONDS = 2.0  # how long an operator's action waits for Redis to answer before it is refused


def current_queue() -> str:
    """The RQ queue of this deployment. A job records it when it is queued (see ``Job.start``):
    the sweeper of a deployment recovers only the jobs of its own queue."""
    return app_settings().queue


FAILURE_TTL = 7 * 24 * 3600  # a failed RQ job stays a week for the dashboard


def enqueue_task(
    task: str,
    object_id: int,
    *,
    description: str,
    copies: int = 1,
    job_timeout: int | None = None,
    result_ttl: int = 3600,
    robust: bool = False,
) -> None:
    """Ask ``copies`` workers to run ``bulkwrites.tasks.<task>(object_id)``; django-rq enqueues after the commit.

    The timeout defaults to what a run of slices may take (``run_slice_seconds``) with a margin.
    ``robust``: for an operator's action, whose change is committed by then: a Redis that stops
    answering after :func:`require_queue` costs a warning in the log, not an error page. The
    workers' sweeper enqueues the work from the ledger once Redis is back (a job or a
    verification nobody works on, a deletion not reclaimed). Without it the error goes up, as
    a worker's hand-over wants it (it retries).
    """
    queue = django_rq.get_queue(current_queue())
    timeout = app_settings().run_slice_seconds * 10 + 600 if job_timeout is None else job_timeout

    def send() -> None:
        for _ in range(max(1, copies)):
            queue.enqueue(
                f"bulkwrites.tasks.{task}",
                object_id,
                job_id=f"{_rq_prefix(task, object_id)}{uuid.uuid4().hex}",
                job_timeout=timeout,
                result_ttl=result_ttl,
                failure_ttl=FAILURE_TTL,
                description=description,
            )

    if not robust:
        send()
        return

    def send_or_warn() -> None:
        try:
            send()
        except REDIS_DOWN as exc:
            logger.warning(
                "%s: Redis did not answer (%s); the workers' sweeper enqueues it from the ledger once Redis is back",
                description,
                str(exc).strip()[:200],
            )

    transaction.on_commit(send_or_warn)  # outside a transaction: at once


def require_queue(action: str) -> None:
    """Refuse an operator's action (:class:`QueueUnavailable`) while Redis does not answer.

    Asked before anything changes, on a connection of its own that gives up after
    ``QUEUE_CHECK_SECONDS`` (the queue's own connection has no timeout, and a Redis that
    hangs would hang the admin's request).
    """
    pool = django_rq.get_connection(current_queue()).connection_pool
    timeouts = {"socket_timeout": QUEUE_CHECK_SECONDS, "socket_connect_timeout": QUEUE_CHECK_SECONDS}
    probe = redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class, **{**pool.connection_kwargs, **timeouts}
        )
    )
    try:
        probe.ping()
    except REDIS_DOWN:
        raise QueueUnavailable(action) from None
    finally:
        probe.close()
        probe.connection_pool.disconnect()


def _rq_prefix(task: str, object_id: int | None = None) -> str:
    """How the RQ ids of a task's jobs (for one object) begin: Redis can then say which are there."""
    return f"bulkwrites-{task}-" if object_id is None else f"bulkwrites-{task}-{object_id}-"


def enqueue_run(job_id: int, *, copies: int = 1, robust: bool = False) -> None:
    """Ask ``copies`` workers to work on the job (``robust``: see :func:`enqueue_task`)."""
    enqueue_task("run_job", job_id, copies=copies, description=f"bulkwrites job {job_id}", robust=robust)


def queued_runs(task: str = "run_job") -> dict[int, set[str]]:
    """The RQ ids of the runs of ``task`` (a job's, or ``run_verification``) waiting for a worker, by object id.

    Read from the queue, then the list a worker moves a job to as it takes it (the order a run
    moves through them, so a run moving along is seen at least once). A run is there from its
    enqueueing until a worker starts it, as long as Redis keeps them (a flush loses them all).
    Started runs are not read from Redis: RQ keeps a run killed outright in its started registry
    for minutes, while its lease in PostgreSQL runs out in seconds.
    """
    queue = django_rq.get_queue(current_queue())
    runs: dict[int, set[str]] = {}
    head = _rq_prefix(task)
    for rq_id in [*queue.get_job_ids(), *queue.intermediate_queue.get_job_ids()]:
        if rq_id.startswith(head):
            object_id, _, _ = rq_id[len(head) :].partition("-")
            if object_id.isdigit():
                runs.setdefault(int(object_id), set()).add(rq_id)
    return runs


def enqueue_notification(job_id: int) -> None:
    """Ask a worker to send a finished job's mail and webhook.

    Its own RQ job, so a slow mail server or webhook receiver never holds up a writer.
    """
    enqueue_task(
        "notify_job_ended",
        job_id,
        job_timeout=600,
        result_ttl=FAILURE_TTL,
        description=f"bulkwrites job {job_id}: notifications",
    )


def enqueue_reclaim(job_id: int, *, robust: bool = False) -> None:
    """Ask a worker to delete a deleted job's rows (``robust``: see :func:`enqueue_task`)."""
    enqueue_task("reclaim_job", job_id, description=f"bulkwrites job {job_id}: reclaim its rows", robust=robust)


def enqueue_verification(verification_id: int, *, copies: int = 1, robust: bool = False) -> None:
    """Ask ``copies`` workers to read a verification's items back (``robust``: see :func:`enqueue_task`)."""
    enqueue_task(
        "run_verification",
        verification_id,
        copies=copies,
        description=f"bulkwrites verification {verification_id}",
        robust=robust,
    )


def redis_connection() -> Any:
    """The Redis of the job queue; also where the shared write-capacity budgets live."""
    return django_rq.get_connection(current_queue())


def rate_scope(job_id: int) -> str:
    """The job's key in the shared rate budgets: job ids repeat across databases, queues do not."""
    return f"{current_queue()}:{job_id}"


def tell_rate_cap(scope: str, wcu_per_second: float | None, *, what: str) -> None:
    """Write an operator's new cap to the shared budget, saved in the ledger already.

    A Redis that does not answer costs a warning: every run writes its ledger's cap to Redis as
    it starts (a job's also every few seconds), so the cap reaches the workers once it is back.
    """
    try:
        ratelimit.set_rate_cap(redis_connection(), scope, wcu_per_second)
    except REDIS_DOWN as exc:
        logger.warning("%s: rate cap saved; Redis did not answer (%s)", what, str(exc).strip()[:200])


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
