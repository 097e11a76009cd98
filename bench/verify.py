"""Read-back verification throughput, next to write throughput (a part of ``bench/run.py``).

For each run: a fresh table, the bench's items written by one bulkwrites worker (timed: the
write throughput), then the job verified by one worker, every item read back with strongly
consistent ``BatchGetItem`` and compared (timed from the request to the finished verification:
the verification throughput). The ceiling for reads is measured the same way as the writes'
ceiling: a plain threaded ``batch_get_item`` loop over the same keys, no ledger, no comparison.

``python bench/run.py --quick --skip
batch_writer,threaded,plain_http,csv_threads,bulkwrites,sink,ledger,staging,capacity,chaos`` runs
only this part (``--skip verify`` leaves it out).
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from bench.app import worker_env
from bench.common import BenchError, default_concurrency, log, make_client, summarize
from bench.tables import verify_count

if TYPE_CHECKING:
    from bench.context import Bench

KEYS_PER_CALL = 100
READ_THREADS = 16


def measure(bench: Bench) -> None:
    """Write, then verify, ``--runs`` times; store the figures in ``bench.results["verification"]``."""
    n = bench.args.items
    runs: list[dict[str, Any]] = []
    ceiling: list[dict[str, Any]] = []
    for k in range(bench.args.runs):
        with bench.tables.fresh("verify") as table:
            job = bench.app.staged_job(bench.items_csv, table, workers=1, concurrency=default_concurrency())
            written = bench.app.run(job, expected=n, workers=1, env=worker_env(), label="verify-write")
            verify_count(bench.client, table, n, "verification bench")
            checked = _verify(bench, job, n)
            if (checked["verified"], checked["missing"], checked["different"]) != (n, 0, 0):
                raise BenchError(f"verification of job {job.pk} found {checked}")
            raw_seconds = _threaded_batch_get(table, [row[0] for row in bench.rows[:n]])
            bench.app.after(job)
        runs.append({**checked, "write_items_per_s": written["items_per_s"], "write_seconds": written["seconds"]})
        ceiling.append({"seconds": raw_seconds, "items_per_s": n / raw_seconds})
        log(
            f"verification run {k + 1}/{bench.args.runs}: {checked['items_per_s']:.0f} items/s verified "
            f"({checked['seconds']:.1f} s, {checked['consumed_rcu']:.0f} RCU); written at "
            f"{written['items_per_s']:.0f} items/s; plain threaded batch_get_item {n / raw_seconds:.0f} items/s"
        )
    verified = summarize(runs)
    written_summary = summarize(runs, "write_items_per_s")
    ceiling_summary = summarize(ceiling)
    bench.results["verification"] = {
        "items": n,
        "verify": verified,
        "write": written_summary,
        "threaded_batch_get_item": {**ceiling_summary, "threads": READ_THREADS, "raw": ceiling},
        "verify/write": _ratio(verified["median"], written_summary["median"]),
        "verify/threaded_batch_get_item": _ratio(verified["median"], ceiling_summary["median"]),
        "raw": runs,
    }


def _verify(bench: Bench, job: Any, n: int) -> dict[str, Any]:
    """Timed: the verification requested (as an operator would) until it has finished."""
    from bulkwrites.models import Verification, VerificationStatus
    from bulkwrites.services import verifying

    processes = bench.workers.spawn(1, worker_env(), f"verify-job{job.pk}")
    bench.workers.wait_ready(processes)
    began = time.perf_counter()
    verification = verifying.verification_create(job=job)
    timeout = max(300.0, n / 100)
    while True:
        status = Verification.objects.filter(pk=verification.pk).values_list("status", flat=True).get()
        if status in (VerificationStatus.FINISHED, VerificationStatus.FAILED, VerificationStatus.CANCELLED):
            break
        if time.perf_counter() - began > timeout or all(p.poll() is not None for p in processes):
            raise BenchError(f"verification {verification.pk} is {status}\n" + bench.workers.log_tail(processes))
        time.sleep(0.1)
    elapsed = time.perf_counter() - began
    for process in processes:
        bench.workers.stop(process)
    verification.refresh_from_db()
    if verification.status != VerificationStatus.FINISHED:
        raise BenchError(f"verification {verification.pk} {verification.status}: {verification.error_message}")
    reading = verification.duration_seconds  # from the first worker's claim to the finish
    return {
        "verification_id": verification.pk,
        "seconds": elapsed,
        "items_per_s": n / elapsed,
        "reading_seconds": reading,
        "verified": verification.verified_items,
        "missing": verification.missing_items,
        "different": verification.different_items,
        "calls": verification.calls,
        "consumed_rcu": verification.consumed_rcu,
    }


def _threaded_batch_get(table: str, keys: list[str]) -> float:
    """The reads' ceiling: 100-key strongly consistent calls on 16 threads, nothing recorded."""
    client = make_client(pool=READ_THREADS + 4)
    chunks = [keys[i : i + KEYS_PER_CALL] for i in range(0, len(keys), KEYS_PER_CALL)]

    def read(chunk: list[str]) -> int:
        request = {table: {"Keys": [{"pk": {"S": key}} for key in chunk], "ConsistentRead": True}}
        found = 0
        while request:
            response = client.batch_get_item(RequestItems=request)
            found += len(response["Responses"].get(table, ()))
            request = response.get("UnprocessedKeys") or {}
        return found

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        found = sum(pool.map(read, chunks))
    seconds = time.perf_counter() - began
    if found != len(keys):
        raise BenchError(f"threaded batch_get_item found {found} of {len(keys)} items")
    return seconds


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def report_lines(results: dict[str, Any]) -> list[str]:
    """The verification part of the bench's printed report."""
    v = results.get("verification")
    if not v:
        return []
    verified, written, ceiling = v["verify"], v["write"], v["threaded_batch_get_item"]
    runs = verified["runs"]
    rcu = statistics.median(r["consumed_rcu"] for r in v["raw"])
    lines = [
        f"verification of {v['items']} items (1 worker, strongly consistent, every item compared), {runs} run(s):",
        f"  verify            median {verified['median']:.0f} items/s (min {verified['min']:.0f}, max "
        f"{verified['max']:.0f}); {rcu:.0f} RCU consumed a run",
        f"  write (same job)  median {written['median']:.0f} items/s "
        f"(min {written['min']:.0f}, max {written['max']:.0f})",
        f"  threaded batch_get_item ({ceiling['threads']} threads, no ledger) median {ceiling['median']:.0f} items/s",
    ]
    if v["verify/write"] is not None:
        lines.append(
            f"  verify/write {v['verify/write']:.2f}; "
            f"verify/threaded_batch_get_item {v['verify/threaded_batch_get_item']:.2f}"
        )
    return lines
