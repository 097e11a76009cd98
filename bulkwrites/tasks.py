"""RQ entry points: take a job id, call a service, nothing else."""

from __future__ import annotations

import os
import socket

from rq import get_current_job

from bulkwrites.services import notify, work


def run_job(job_id: int) -> str:
    rq_job = get_current_job()
    worker = f"{socket.gethostname()}:{os.getpid()}:{rq_job.id if rq_job else 'inline'}"
    return work.job_work(job_id, worker=worker)


def notify_job_ended(job_id: int) -> str:
    return notify.send_job_notifications(job_id)
