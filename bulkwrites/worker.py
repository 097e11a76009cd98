"""The RQ worker bulkwrites runs: RQ's own, plus a sweeper over the ledger's leases, and no exit on a blip.

RQ notices a SIGKILLed worker only ~90 s after its last heartbeat, on a maintenance run
that comes every 10 minutes by default (worst case ~11.5 minutes). Our jobs' truth is in
PostgreSQL, so every worker also runs ``recover_stalled_jobs`` (and, for stream rules,
``recover_stalled_stream_rules``) every
``BULKWRITES_SWEEP_SECONDS`` (20 by default), also while idle: the blocking dequeue is
kept no longer than that interval.

Redis going away must not end the worker. RQ's loop retries a failed *dequeue*, but an error
from a heartbeat while a job runs, from the registries' maintenance or from the suspension check
ends it ("found an unhandled exception, quitting..."), and a Redis timeout ends it too. Each of
those is caught here: the worker waits for Redis with capped backoff and carries on; the work
horse (the job) keeps running meanwhile and rides the outage out itself (its rate limiter and
its hand-over retry). A Redis restarted empty has forgotten the worker: it registers again.

Asked to stop (SIGTERM), the worker does RQ's warm shutdown, and the run in its work horse hands
over at once instead of finishing its time slice (:mod:`bulkwrites.services.shutdown`): the
horse takes SIGTERM as that request rather than dying of it (a supervisor may signal every
process of the service), and the worker passes its own SIGTERM on to the horse (a container
runtime signals only the main process; RQ puts the horse in a process group of its own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Any

from django.db import close_old_connections, connections
from rq import Worker as RQWorker
from rq import worker_registration

from bulkwrites.conf import app_settings
from bulkwrites.dependencies import MAX_DELAY, REDIS_DOWN
from bulkwrites.services import shutdown
from bulkwrites.services.deletion import reclaim_stalled_deletions
from bulkwrites.services.schema import SchemaError, check_schema
from bulkwrites.services.streams.consume import recover_stalled_stream_rules
from bulkwrites.services.verifying import recover_stalled_verifications, restaff_verifications
from bulkwrites.services.work import delete_expired_drafts, recover_stalled_jobs, restaff_jobs

logger = logging.getLogger(__name__)


class Worker(RQWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from project.security import require_secret_key

        require_secret_key("worker")  # also when started by `rq worker -w bulkwrites.worker.Worker`
        try:
            check_schema()  # one line naming the fix, not "column does not exist" on the first job
        except SchemaError as exc:
            raise SystemExit(f"bulkwrites worker: {exc}") from None
        finally:
            connections.close_all()
        kwargs.setdefault("maintenance_interval", app_settings().sweep_seconds)
        super().__init__(*args, **kwargs)
        self._redis_lost = False

    # --- stopping ---------------------------------------------------------------------------

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()  # type: ignore[no-untyped-call]  # SIGINT ignored: the worker decides
        signal.signal(signal.SIGTERM, lambda signum, frame: shutdown.request())

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]
        if self.horse_pid:
            # The horse alone, not its process group: staging's conversion processes follow it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.horse_pid, signal.SIGTERM)

    @property
    def dequeue_timeout(self) -> int:
        # Wake up from the blocking dequeue often enough to run the sweeper while idle.
        return max(1, app_settings().sweep_seconds)

    # --- Redis outages ---------------------------------------------------------------------

    def _lost_redis(self, what: str, exc: BaseException) -> None:
        if not self._redis_lost:
            logger.warning("Redis unreachable (%s: %s); the worker waits for it", what, str(exc).strip()[:200])
        self._redis_lost = True

    def _wait_for_redis(self) -> None:
        """Block until Redis answers (the work horse, if any, keeps working meanwhile)."""
        delay = 0.1
        while True:
            try:
                self.connection.ping()
            except REDIS_DOWN:
                time.sleep(delay)
                delay = min(MAX_DELAY, delay * 2)
                continue
            self._register_again()
            return

    def _register_again(self) -> None:
        """A Redis restarted empty (or flushed) no longer lists this worker, and ``--wait`` counts
        on that list: put the worker back if it is missing (one SISMEMBER per heartbeat)."""
        queue_key = worker_registration.WORKERS_BY_QUEUE_KEY % self.queue_names()[0]
        if self.connection.sismember(queue_key, self.key):
            self._redis_lost = False
            return
        with self.connection.pipeline() as pipeline:
            pipeline.hset(self.key, mapping=self.serialize())
            pipeline.expire(self.key, self.worker_ttl + 60)
            worker_registration.register(self, pipeline)
            pipeline.execute()
        self._redis_lost = False
        logger.warning("worker %s was missing from Redis (restarted or flushed): registered again", self.name)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
            if pipeline is None:
                self._register_again()
        except REDIS_DOWN as exc:
            if pipeline is not None:
                raise
            self._lost_redis("heartbeat", exc)

    def maintain_heartbeats(self, job: Any) -> None:
        try:
            super().maintain_heartbeats(job)
            self._register_again()
        except REDIS_DOWN as exc:  # the horse works on; the next heartbeat tries again
            self._lost_redis("heartbeat while working", exc)

    def set_current_job_working_time(self, current_job_working_time: float, pipeline: Any = None) -> None:
        try:
            super().set_current_job_working_time(current_job_working_time, pipeline)
        except REDIS_DOWN as exc:  # while the horse runs: a dashboard figure, not worth quitting over
            if pipeline is not None:
                raise
            self._lost_redis("job working time", exc)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        try:
            super().set_state(state, pipeline)
        except REDIS_DOWN as exc:
            if pipeline is not None:
                raise
            self._lost_redis("worker state", exc)

    def check_for_suspension(self, burst: bool) -> None:
        while True:
            try:
                super().check_for_suspension(burst)
                return
            except REDIS_DOWN as exc:
                self._lost_redis("suspension check", exc)
                self._wait_for_redis()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except REDIS_DOWN as exc:  # RQ retries connection errors itself, but quits on a timeout
                self._lost_redis("dequeue", exc)
                self._wait_for_redis()

    # --- jobs and maintenance ------------------------------------------------------------------

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        except REDIS_DOWN as exc:  # RQ's registries wait; our sweeper needs only PostgreSQL
            self._lost_redis("cleaning registries", exc)
        close_old_connections()
        try:
            self._sweep()
        finally:
            # The work horse is forked from this process: it must not inherit a live connection.
            connections.close_all()

    def _sweep(self) -> None:
        """The ledger's chores: re-enqueue stalled jobs, the runs a job is short of, verifications
        and stream rules, delete expired drafts, finish reclaiming deleted jobs. Never raises: a
        sweep must never kill the worker; the next one retries."""
        try:
            recovered = recover_stalled_jobs()
            if recovered:
                logger.warning("re-enqueued stalled jobs: %s", recovered)
            verifications = recover_stalled_verifications()
            if verifications:
                logger.warning("started or re-enqueued verifications: %s", verifications)
        except Exception:  # a sweep must never kill the worker; the next one retries
            logger.exception("sweeping stalled jobs failed")
        try:
            restaff_jobs()  # each logs what it enqueues
            restaff_verifications()
        except REDIS_DOWN as exc:  # they read the queue whenever a job runs: an outage is no stack trace
            self._lost_redis("counting the queued runs", exc)
        except Exception:  # likewise
            logger.exception("enqueueing the runs jobs and verifications are short of failed")
        try:
            rules = recover_stalled_stream_rules()
        except Exception:  # likewise
            logger.exception("sweeping stalled stream rules failed")
        else:
            if rules:
                logger.warning("re-enqueued stream rules nobody consumed: %s", rules)
        try:
            delete_expired_drafts()
        except Exception:  # likewise
            logger.exception("deleting expired drafts failed")
        try:
            reclaim_stalled_deletions()
        except Exception:  # likewise
            logger.exception("sweeping deleted jobs failed")

    def execute_job(self, job: Any, queue: Any) -> Any:
        connections.close_all()
        try:
            return super().execute_job(job, queue)
        except REDIS_DOWN as exc:
            # RQ's bookkeeping of this job is lost (the job's own state is in PostgreSQL: a job
            # that handed over did so before returning; one that did not is swept).
            self._lost_redis(f"RQ job {job.id}", exc)
            if self._horse_pid:  # never leave a horse behind to take the next job
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self._horse_pid, 0)
                self._horse_pid = 0
            self._wait_for_redis()
            return None
