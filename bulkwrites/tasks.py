"""RQ entry points: take an id (a job, a verification, a stream rule), call a service, nothing else."""

from __future__ import annotations

import os
import socket

from rq import get_current_job

from bulkwrites.services import deletion, notify, verifying, work
from bulkwrites.services.streams import consume


def _worker_name() -> str:
    rq_job = get_current_job()
    return f"{socket.gethostname()}:{os.getpid()}:{rq_job.id if rq_job else 'inline'}"


def run_job(job_id: int) -> str:
    return work.job_work(job_id, worker=_worker_name())


def run_verification(verification_id: int) -> str:
    return verifying.verification_work(verification_id, worker=_worker_name())


def reclaim_job(job_id: int) -> str:
    return deletion.reclaim_work(job_id)


def notify_job_ended(job_id: int) -> str:
    return notify.send_job_notifications(job_id)


def run_stream_rule(rule_id: int) -> str:
    return consume.stream_rule_work(rule_id, worker=_worker_name())


def retry_stream_failures(rule_id: int) -> str:
    return consume.stream_failures_retry(rule_id)
