"""The app under the bench: its RQ worker processes, and its jobs staged, started and watched."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    APP_UPLOAD_CAP,
    BENCH_REDIS_DB,
    POLL_SECONDS,
    ROOT,
    BenchError,
    CpuMeter,
    RunTimedOut,
    bench_redis_url,
    endpoint,
    env_override,
    log,
)


class Workers:
    """``manage.py rqworker bulkwrites`` processes started by the bench (and only those).

    They are started, and registered with RQ, before a job's clock starts: operators run
    workers all the time, and a worker's start-up (~1.5 s of imports) is not part of a job.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spawn(self, count: int, env: dict[str, str], label: str) -> list[subprocess.Popen[bytes]]:
        started = []
        for i in range(count):
            path = self.log_dir / f"{label}-worker{i}.log"
            with path.open("ab") as out:
                process = subprocess.Popen(
                    [sys.executable, "manage.py", "rqworker", "bulkwrites"],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            self.processes.append((process, path))
            started.append(process)
        return started

    def wait_ready(self, processes: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
        """Until every process is registered with RQ and listening on the bench queue."""
        from redis import Redis
        from rq import Worker

        pids = {p.pid for p in processes}
        connection = Redis.from_url(bench_redis_url())
        deadline = time.monotonic() + timeout
        while True:
            listening = {w.pid for w in Worker.all(connection=connection) if w.get_state() == "idle"}
            if pids <= listening:
                return
            if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                raise BenchError("workers did not start\n" + self.log_tail(processes))
            time.sleep(0.05)

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        for process, _ in self.processes:
            self.stop(process)

    def log_tail(self, processes: list[subprocess.Popen[bytes]], lines: int = 15) -> str:
        out = []
        for process, path in self.processes:
            if process in processes:
                with contextlib.suppress(OSError):
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                    out.append(f"--- {path.name} (exit {process.poll()}):\n" + "\n".join(tail))
        return "\n".join(out)


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(REDIS_URL=bench_redis_url(), PYTHONUNBUFFERED="1", DJANGO_SETTINGS_MODULE="project.settings", **extra)
    return env


class Bulkwrites:
    """Creates, stages, starts and watches the bench's jobs."""

    def __init__(self, workers: Workers, keep_jobs: bool) -> None:
        from bulkwrites.models import Job

        self.Job = Job
        self.workers = workers
        self.keep_jobs = keep_jobs
        self.active_job: int | None = None

    def staged_job(
        self, csv_path: Path, table: str, *, workers: int, concurrency: int, job_endpoint: str | None = None
    ) -> Any:
        from bulkwrites.services import create, work

        with csv_path.open("rb") as upload, env_override(AWS_ENDPOINT_URL_DYNAMODB=job_endpoint or endpoint()):
            job = create.job_create_from_file(
                upload=upload, file_name=csv_path.name, table_name=table, concurrency=concurrency, workers=workers
            )
        try:
            staged = work.job_stage(job)
        except BaseException:
            delete_job(job)
            raise
        job.refresh_from_db()
        if not staged:
            message = f"job {job.pk} could not be staged: {job.error_code} {job.error_message}"
            delete_job(job)
            raise BenchError(message)
        return job

    def run(
        self,
        job: Any,
        *,
        expected: int,
        workers: int,
        env: dict[str, str],
        label: str,
        before_clock: Callable[[], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Timed: job_start of a staged job, until the job has finished (workers already listening;
        ``before_clock`` is called once they are). Past ``timeout`` seconds (default: 300, or 100
        items/s if longer) the job is cancelled and :class:`RunTimedOut` raised."""
        from bulkwrites.services import control

        if job.total_items != expected:
            raise BenchError(f"job {job.pk} staged {job.total_items} items, expected {expected}")
        processes = self.start_workers(workers, env, f"{label}-job{job.pk}")
        if before_clock is not None:
            before_clock()
        self.active_job = job.pk
        meter = CpuMeter()
        began = time.perf_counter()
        control.job_start(job=job)
        return self.finish(job, processes, began, expected, timeout, meter=meter)

    def run_from_file(
        self, csv_path: Path, table: str, *, expected: int, workers: int, concurrency: int, env: dict[str, str]
    ) -> dict[str, Any]:
        """Timed end to end, as ``bulkwrite load`` does it: the file stored as a job and the job
        started (its workers stage it, then write), until the last outcome is recorded."""
        from bulkwrites.services import control, create

        processes = self.start_workers(workers, env, f"end-to-end-{table}")
        meter = CpuMeter()
        began = time.perf_counter()
        with csv_path.open("rb") as upload, env_override(AWS_ENDPOINT_URL_DYNAMODB=env["AWS_ENDPOINT_URL_DYNAMODB"]):
            job = create.job_create_from_file(
                upload=upload, file_name=csv_path.name, table_name=table, concurrency=concurrency, workers=workers
            )
        self.active_job = job.pk
        created = time.perf_counter()
        control.job_start(job=job)
        result = self.finish(job, processes, began, expected, meter=meter)
        job.refresh_from_db()
        result["create_seconds"] = created - began
        if job.staged_at and job.created_at:
            # From the job row's creation (the file already stored) until its items were staged.
            result["staged_after_create_seconds"] = (job.staged_at - job.created_at).total_seconds()
        if job.total_items != expected:
            raise BenchError(f"job {job.pk} staged {job.total_items} items, expected {expected}")
        return result

    def start_workers(self, count: int, env: dict[str, str], label: str) -> list[subprocess.Popen[bytes]]:
        processes = self.workers.spawn(count, env, label)
        self.workers.wait_ready(processes)
        return processes

    def finish(
        self,
        job: Any,
        processes: list[subprocess.Popen[bytes]],
        began: float,
        expected: int,
        timeout: float | None = None,
        *,
        meter: CpuMeter,
    ) -> dict[str, Any]:
        """Poll until the job has finished; stop its workers; its figures (every item must have succeeded)."""
        from bulkwrites.models import JobStatus

        if timeout is None:
            timeout = max(300.0, expected / 100)
        exited_at = None
        while True:
            status = self.Job.objects.filter(pk=job.pk).values_list("status", flat=True).get()
            if status in JobStatus.finished():
                break
            now = time.perf_counter()
            if all(p.poll() is not None for p in processes):
                exited_at = exited_at or now
                if now - exited_at > 5:  # the last outcome may still be committing: give it a moment
                    raise BenchError(
                        f"job {job.pk} is {status} but its workers have exited\n" + self.workers.log_tail(processes)
                    )
            if now - began > timeout:
                tail = self.workers.log_tail(processes)
                # Cancelled and stopped here: a worker left listening would take the next run's
                # job (with this run's proxy URL), and a way may go on to its next run.
                self.cancel_active()
                for process in processes:
                    self.workers.stop(process)
                raise RunTimedOut(f"job {job.pk} not finished after {timeout:.0f} s\n{tail}", now - began)
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - began
        cores = meter.cores()  # before the workers stop: a stopped worker's CPU leaves the count
        self.active_job = None
        for process in processes:  # warm shutdown: a task still returning is let finish
            self.workers.stop(process)
        job.refresh_from_db()
        if job.status != JobStatus.SUCCEEDED or job.succeeded_items != expected:
            raise BenchError(
                f"job {job.pk} ended {job.status} with {job.succeeded_items}/{expected} succeeded, "
                f"{job.failed_items} failed: {job.error_code} {job.error_message}\n" + self.workers.log_tail(processes)
            )
        running_seconds = (job.finished_at - job.started_at).total_seconds() if job.started_at else None
        return {
            **self.slice_run_totals(job.pk),
            "job_id": job.pk,
            "seconds": elapsed,
            "items_per_s": expected / elapsed,
            "job_running_seconds": running_seconds,
            "calls": job.calls,
            "throttled_calls": job.throttled_calls,
            "unprocessed_returned": job.unprocessed_returned,
            "consumed_wcu": job.consumed_wcu,
            "cores": cores,
        }

    @staticmethod
    def slice_run_totals(job_id: int) -> dict[str, Any]:
        """Where a job's time went, from its SliceRun audit rows."""
        from django.db.models import Count, F, Sum

        from bulkwrites.models import SliceRun

        totals = SliceRun.objects.filter(job_id=job_id).aggregate(
            slices=Count("id"),
            slice_seconds=Sum(F("finished_at") - F("started_at")),
            ddb_latency_ms=Sum("latency_ms"),
        )
        span = totals["slice_seconds"]
        return {
            "slice_runs": totals["slices"],
            "slice_seconds_sum": span.total_seconds() if span is not None else None,
            "ddb_call_seconds_sum": (totals["ddb_latency_ms"] or 0) / 1000,
        }

    def after(self, job: Any) -> None:
        """Untimed cleanup: the stored copy of the CSV always goes; the job too, unless --keep-jobs."""
        delete_job(job, keep_record=self.keep_jobs)

    def cancel_active(self) -> None:
        if self.active_job is None:
            return
        from bulkwrites.services import control

        with contextlib.suppress(Exception):
            job = self.Job.objects.get(pk=self.active_job)
            if not job.is_finished:
                control.job_cancel(job=job)
                log(f"cancelled bench job {job.pk}")
        self.active_job = None


def delete_job(job: Any, *, keep_record: bool = False) -> dict[str, float]:
    """Remove a bench job's stored source file and (unless ``keep_record``) the job with its items.

    As the app deletes a job (``services.deletion``): marked deleted, then its rows reclaimed,
    here in this process rather than by a worker; the seconds of each step.
    """
    from bulkwrites.services import deletion

    if job.source_file:
        with contextlib.suppress(OSError):
            job.source_file.delete(save=keep_record)
    if keep_record:
        return {}
    began = time.perf_counter()
    deletion.jobs_delete(job_ids=[job.pk])
    marked = time.perf_counter()
    deletion.job_reclaim(job.pk, budget_seconds=float("inf"))
    return {"mark_seconds": marked - began, "reclaim_seconds": time.perf_counter() - marked}


def note_upload_cap(notes: list[str], size: int, what: str) -> None:
    if size > APP_UPLOAD_CAP:
        note = (
            f"{what} ({size / 1e6:.0f} MB) is larger than the app's upload cap (BULKWRITES_MAX_UPLOAD_BYTES = "
            f"{APP_UPLOAD_CAP / 1e6:.0f} MB): the bench raises the cap"
        )
        if note not in notes:
            notes.append(note)


def clear_bench_queue() -> None:
    import django_rq

    queue = django_rq.get_queue("bulkwrites")
    left = queue.count
    if left:
        log(f"emptying {left} leftover RQ job(s) from the bench queue (Redis database {BENCH_REDIS_DB})")
        queue.empty()  # type: ignore[no-untyped-call]


def warn_about_stalled_jobs() -> None:
    """Workers sweep *every* stalled active job into their own queue: say so if there are any."""
    from bulkwrites.models import Job

    active = list(Job.objects.active().values_list("pk", flat=True)[:20])
    if active:
        log(
            f"WARNING: active jobs already in the database {active}: the bench's workers' sweeper may "
            "re-enqueue stalled ones into the bench queue and work on them"
        )
