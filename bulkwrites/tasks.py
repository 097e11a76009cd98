"""RQ entry points: take a job (or stream rule) id, call a service, nothing else."""

from __future__ import annotations

import os
import socket

from rq import get_current_job

from bulkwrites.services import notify, work
from bulkwrites.services.streams import consume


def run_job(job_id: int) -> str:
    rq_job = get_current_job()
    worker = f"{socket.gethostname()}:{os.getpid()}:{rq_job.id if rq_job else 'inline'}"
    return work.job_work(job_id, worker=worker)


def notify_job_ended(job_id: int) -> str:
    return notify.send_job_notifications(job_id)


def run_stream_rule(rule_id: int) -> str:
    rq_job = get_current_job()
    worker = f"{socket.gethostname()}:{os.getpid()}:{rq_job.id if rq_job else 'inline'}"
    return consume.stream_rule_work(rule_id, worker=worker)


def retry_stream_failures(rule_id: int) -> str:
    return consume.stream_failures_retry(rule_id)
