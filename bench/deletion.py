"""Deleting one big job alone: a ledger of N items built in SQL, then deleted as the app deletes a job.

The job is built as ``bench.ledger`` builds one (pending items of ~1 KB and their payloads, the
same columns staging fills, slices of 1,000), with every item recorded as succeeded, so each row
has the versions a real finished job has. Then it is deleted with ``services.deletion``: the mark
(what the operator waits for: the job is gone from every page) and the reclaim of its rows (what
a worker does afterwards), timed apart, with the process's peak RSS. ``--django-cascade`` deletes
it with ``Job.delete()`` instead (Django's collector: how a job was deleted before), for comparison.

Run alone: ``eval "$(make -s services)" && .venv/bin/python -m bench.deletion --items 1000000 --runs 3``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from typing import Any


def build_finished_job(items: int) -> int:
    from django.db import connection

    from bench.ledger import build_job
    from bulkwrites.models import Item, Job

    job_id = build_job(items)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Item._meta.db_table} SET status = 'succeeded', attempts = 1 WHERE job_id = %s", [job_id]
        )
        cursor.execute(f"VACUUM (ANALYZE) {Item._meta.db_table}")
    Job.objects.filter(pk=job_id).update(status="succeeded", succeeded_items=items)
    return job_id


def delete(job_id: int, *, cascade: bool) -> dict[str, Any]:
    from bulkwrites.models import Job

    began = time.perf_counter()
    if cascade:
        Job.objects.filter(pk=job_id).delete()
        return {"seconds": time.perf_counter() - began, "mark_seconds": None, "reclaim_seconds": None}
    from bulkwrites.services import deletion

    deletion.jobs_delete(job_ids=[job_id])
    marked = time.perf_counter()
    done = deletion.job_reclaim(job_id, budget_seconds=float("inf"))
    ended = time.perf_counter()
    if done is not True or Job.all_objects.filter(pk=job_id).exists():
        raise RuntimeError(f"job {job_id} was not reclaimed ({done})")
    return {"seconds": ended - began, "mark_seconds": marked - began, "reclaim_seconds": ended - marked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--django-cascade", action="store_true", help="Job.delete(), Django's collector")
    args = parser.parse_args()
    from bench.common import setup_django

    setup_django()
    from bulkwrites.models import Item

    runs = []
    for k in range(args.runs):
        began = time.perf_counter()
        job_id = build_finished_job(args.items)
        built = time.perf_counter() - began
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = delete(job_id, cascade=args.django_cascade)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_rss_mb_before_delete"] = rss_before / 1024
        if Item.objects.filter(job_id=job_id).exists():
            raise RuntimeError(f"job {job_id}: items left behind")
        runs.append(result)
        mark = f", hidden in {1000 * result['mark_seconds']:.0f} ms" if result["mark_seconds"] is not None else ""
        print(
            f"delete run {k + 1}/{args.runs}: {args.items} items built in {built:.0f} s, deleted in "
            f"{result['seconds']:.1f} s{mark}; peak RSS {result['peak_rss_mb']:.0f} MB "
            f"({result['peak_rss_mb_before_delete']:.0f} MB before the delete)",
            flush=True,
        )
    summary = {
        "items": args.items,
        "way": "django_cascade" if args.django_cascade else "deletion_service",
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "runs": runs,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
