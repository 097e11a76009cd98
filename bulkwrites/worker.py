"""The RQ worker bulkwrites runs: RQ's own, plus a sweeper over the ledger's leases.

RQ notices a SIGKILLed worker only ~90 s after its last heartbeat, on a maintenance run
that comes every 10 minutes by default (worst case ~11.5 minutes). Our jobs' truth is in
PostgreSQL, so every worker also runs ``recover_stalled_jobs`` every
``BULKWRITES_SWEEP_SECONDS`` (20 by default), also while idle: the blocking dequeue is
kept no longer than that interval.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import close_old_connections, connections
from rq import Worker as RQWorker

from bulkwrites.conf import app_settings
from bulkwrites.services.work import recover_stalled_jobs

logger = logging.getLogger(__name__)


class Worker(RQWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from project.security import require_secret_key

        require_secret_key("worker")  # also when started by `rq worker -w bulkwrites.worker.Worker`
        kwargs.setdefault("maintenance_interval", app_settings().sweep_seconds)
        super().__init__(*args, **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        # Wake up from the blocking dequeue often enough to run the sweeper while idle.
        return max(1, app_settings().sweep_seconds)

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        close_old_connections()
        try:
            recovered = recover_stalled_jobs()
        except Exception:  # a sweep must never kill the worker; the next one retries
            logger.exception("sweeping stalled jobs failed")
        else:
            if recovered:
                logger.warning("re-enqueued stalled jobs: %s", recovered)
        finally:
            # The work horse is forked from this process: it must not inherit a live connection.
            connections.close_all()

    def execute_job(self, job: Any, queue: Any) -> Any:
        connections.close_all()
        return super().execute_job(job, queue)
