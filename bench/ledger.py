"""The ledger alone: outcomes recorded per second, with no DynamoDB and no worker in the way.

A job of ``--ledger-items`` pending items of ~1 KB is built in SQL (the same columns staging
fills), then ``--ledger-threads`` threads, each on its own connection as each worker's recorder
is, record outcomes through ``Item.objects.record_outcomes`` exactly as the recorder does: one
statement per 250 outcomes, ids in slice order, every thread on slices of its own. The figure is
outcomes recorded per second of wall clock, from the first statement to the last commit.

Run alone: ``eval "$(make -s services)" && .venv/bin/python -m bench.ledger --items 200000``.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

FLUSH = 250  # outcomes per statement, as running.FLUSH_OUTCOMES
SLICE = 1000  # items per slice, as the job's default slice size
PAD = 960  # bytes of padding in each payload: ~1 KB items, as make bench writes


def build_job(items: int) -> int:
    """A queued job with ``items`` pending items of ~1 KB, staged in SQL; its id."""
    from django.db import connection
    from django.utils import timezone

    from bulkwrites.models import Job, JobStatus, Slice

    job = Job.objects.create(
        table_name="bench-ledger",
        key_schema=[{"AttributeName": "pk", "KeyType": "HASH", "AttributeType": "S"}],
        status=JobStatus.RUNNING,
        total_items=items,
        staged_at=timezone.now(),
    )
    with connection.cursor() as cursor:
        for sql, params in insert_items_sql(job.pk, items):
            cursor.execute(sql, params)
        cursor.execute("ANALYZE bulkwrites_item")
    Slice.objects.create_for_job(job.pk, slice_size=SLICE)
    return job.pk


def insert_items_sql(job_id: int, items: int) -> list[tuple[str, list[Any]]]:
    """Statements that stage ``items`` pending items of ~1 KB and their payloads, as staging's COPY would."""
    from bulkwrites.models import Item, ItemPayload

    payload = (
        "jsonb_build_object('pk', jsonb_build_object('S', 'item-' || lpad(s::text, 8, '0')), "
        "'n', jsonb_build_object('N', (s::bigint * 7919 %% 1000000007)::text), "
        "'pad', jsonb_build_object('S', repeat(md5(s::text), %s)))"
    )
    key = "jsonb_build_object('pk', jsonb_build_object('S', 'item-' || lpad(s::text, 8, '0')))"
    sql = f"""
        INSERT INTO {Item._meta.db_table} (job_id, position, key, raw, size, wire_bytes, status, attempts,
            error_code, error_message, history, updated_at, key_hash)
        SELECT %s, s, {key}, '', 1024, 1100, 'pending', 0, '', '', '[]', now(), hashtext(s::text)
        FROM generate_series(1, %s) AS s
    """
    payloads = f"""
        INSERT INTO {ItemPayload._meta.db_table} (job_id, position, payload)
        SELECT %s, s, {payload} FROM generate_series(1, %s) AS s
    """
    return [(sql, [job_id, items]), (payloads, [job_id, PAD // 32, items])]


def item_ids(job_id: int) -> list[int]:
    from bulkwrites.models import Item

    return list(Item.objects.filter(job_id=job_id).order_by("position").values_list("id", flat=True))


def record_all(job_id: int, ids: list[int], threads: int) -> dict[str, Any]:
    """Record a success for every id, ``threads`` recorders at once; wall time and statements."""
    from django.db import connection

    from bulkwrites.dynamo.writer import CallStats, Outcome
    from bulkwrites.models import Item

    slices = [ids[i : i + SLICE] for i in range(0, len(ids), SLICE)]
    lock = threading.Lock()
    source = iter(slices)
    latencies: list[float] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)

    def recorder() -> None:
        try:
            start.wait()
            while True:
                with lock:
                    chunk = next(source, None)
                if chunk is None:
                    return
                for i in range(0, len(chunk), FLUSH):
                    outcomes = [Outcome(ref, True, 1) for ref in chunk[i : i + FLUSH]]
                    stats = CallStats(calls=len(outcomes) // 25 or 1, consumed_wcu=float(len(outcomes)))
                    began = time.perf_counter()
                    Item.objects.record_outcomes(job_id, outcomes, stats)
                    took = time.perf_counter() - began
                    with lock:
                        latencies.append(took)
        except BaseException as exc:  # reported by the caller, after every thread ended
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=recorder, name=f"ledger-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - began
    if errors:
        raise errors[0]
    return {
        "seconds": seconds,
        "outcomes": len(ids),
        "outcomes_per_s": len(ids) / seconds,
        "statements": len(latencies),
        "statement_ms_median": 1000 * statistics.median(latencies),
        "statement_ms_p95": 1000 * sorted(latencies)[int(0.95 * (len(latencies) - 1))],
    }


def measure(items: int, threads: int, runs: int, log: Any = print) -> list[dict[str, Any]]:
    from bulkwrites.models import Item, Job

    results = []
    for k in range(runs):
        job_id = build_job(items)
        try:
            ids = item_ids(job_id)
            result = record_all(job_id, ids, threads)
            job = Job.objects.get(pk=job_id)
            recorded = Item.objects.filter(job_id=job_id, status="succeeded").count()
            if job.succeeded_items != items or recorded != items:
                raise RuntimeError(f"ledger: {job.succeeded_items} counted, {recorded} recorded, of {items}")
            result["threads"] = threads
            results.append(result)
            log(
                f"ledger run {k + 1}/{runs}: {result['outcomes_per_s']:.0f} outcomes/s with {threads} recorder(s) "
                f"({result['seconds']:.1f} s; statement median {result['statement_ms_median']:.1f} ms, "
                f"p95 {result['statement_ms_p95']:.1f} ms)"
            )
        finally:
            from bulkwrites.services import deletion

            deletion.jobs_delete(job_ids=[job_id])
            deletion.job_reclaim(job_id, budget_seconds=float("inf"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from bench.run import setup_django

    setup_django()
    for threads in args.threads:
        runs = measure(args.items, threads, args.runs)
        print(f"{threads} thread(s): median {statistics.median(r['outcomes_per_s'] for r in runs):.0f} outcomes/s")


if __name__ == "__main__":
    main()
