"""bulkwrites itself, with real ``rqworker`` processes and the full ledger.

``bulkwrites_1_worker``, ``bulkwrites_2_workers``, ``bulkwrites_1_worker_c4``
    Writing only: items staged and the worker process(es) started and listening before the
    clock; the clock runs from ``job_start`` until the job has finished (polled every 0.1 s).
    At the job's default concurrency (``_c4``: 4 calls in flight, for comparison).
``end_to_end``
    What an operator waits for (issue 15, target 1): worker(s) listening, then the clock from
    storing the CSV as a job and starting it, as ``bulkwrite load`` does (the worker stages it,
    then writes), until the last outcome is recorded. Compared with ``csv_threads``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bench.app import worker_env
from bench.common import default_concurrency, log
from bench.tables import verify_count

if TYPE_CHECKING:
    from bench.context import Bench


def measure_bulkwrites(bench: Bench, way: str, *, workers: int, concurrency: int, runs_wanted: int) -> None:
    n = bench.args.items
    runs = []
    for k in range(runs_wanted):
        with bench.tables.fresh(f"bw{workers}c{concurrency}") as table:
            staged_began = time.perf_counter()
            job = bench.app.staged_job(bench.items_csv, table, workers=workers, concurrency=concurrency)
            staged_seconds = time.perf_counter() - staged_began
            result = bench.app.run(job, expected=n, workers=workers, env=worker_env(), label=way)
            verify_count(bench.client, table, n, way)
            bench.app.after(job)
        result["untimed_create_and_stage_seconds"] = staged_seconds
        runs.append(result)
        log(
            f"{way} run {k + 1}/{runs_wanted}: {result['items_per_s']:.0f} items/s ({result['seconds']:.1f} s; "
            f"job {result['job_id']} running {result['job_running_seconds']:.1f} s; "
            f"staged beforehand in {staged_seconds:.1f} s)"
        )
    bench.record(way, runs, workers=workers, concurrency=concurrency)


def measure_end_to_end(bench: Bench) -> None:
    n = bench.args.items
    workers = bench.args.end_to_end_workers
    concurrency = default_concurrency()
    runs = []
    for k in range(bench.args.runs):
        with bench.tables.fresh("e2e") as table:
            result = bench.app.run_from_file(
                bench.items_csv, table, expected=n, workers=workers, concurrency=concurrency, env=worker_env()
            )
            verify_count(bench.client, table, n, "end_to_end")
            job = bench.app.Job.objects.get(pk=result["job_id"])
            bench.app.after(job)
        runs.append(result)
        staged = result.get("staged_after_create_seconds")
        log(
            f"end_to_end run {k + 1}/{bench.args.runs}: {result['items_per_s']:.0f} items/s ({result['seconds']:.1f} s "
            f"from the file: stored in {result['create_seconds']:.1f} s, staged "
            + (f"{staged:.1f} s after" if staged is not None else "-")
            + ")"
        )
    bench.record("end_to_end", runs, workers=workers, concurrency=concurrency)
