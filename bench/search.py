"""How long looking up an item by its key takes on a big ledger: within a 1M-item job and across jobs.

Run with the services' environment, on a migrated database:
``eval "$(make -s services)" && .venv/bin/python bench/search.py --jobs 10 --job-items 1000000``.

It builds a synthetic ledger in PostgreSQL itself (``INSERT ... SELECT generate_series``, keys
hashed by ``KEY_HASH_SQL``, the hash staging computes in Python): ``--jobs`` jobs of
``--job-items`` items each, every job loading the same key space (``k0`` ...), as repeated loads
of one table do, so a key is found once in each job. It is kept between runs (``--drop``
deletes it). Then it times, ``--runs`` times after a warm-up, what the item list does for a
search: the first page (100 items in the list's order) and its count (exact within 200 ms,
else the planner's estimate, as ``EstimatedCountPaginator``):

- ``now``: ``selectors.search_items_by_key`` (the key-hash index), and the admin page itself;
- ``before``: the queries of the tree before (23e3187): within a job, jsonb containment over the
  job's items; across jobs, ``key::text ILIKE '%term%'`` over every item.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-search-" + "x" * 40)

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import QuerySet  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.urls import reverse  # noqa: E402

from bulkwrites.dynamo.items import KEY_HASH_SQL  # noqa: E402
from bulkwrites.models import Item, ItemQuerySet, Job, JobStatus, SourceKind  # noqa: E402
from bulkwrites.selectors import search_items_by_key  # noqa: E402

MARK = "search-bench"
PAGE = 100


def build(jobs: int, job_items: int) -> list[Job]:
    """The synthetic ledger (kept between runs); built in SQL, a job at a time."""
    existing = list(Job.objects.filter(source_name=MARK).order_by("pk"))
    if len(existing) == jobs and all(j.total_items == job_items for j in existing):
        return existing
    drop()
    made = []
    key_hash = KEY_HASH_SQL.format(column="jsonb_build_object('pk', jsonb_build_object('S', 'k' || g))")
    for _ in range(jobs):
        job = Job.objects.create(
            table_name="bench-search",
            key_schema=[{"name": "pk", "type": "S", "role": "HASH"}],
            source_kind=SourceKind.FILE,
            source_name=MARK,
            status=JobStatus.SUCCEEDED,
            total_items=job_items,
            succeeded_items=job_items,
        )
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {Item._meta.db_table}
                    (job_id, position, key, raw, size, wire_bytes, status, attempts, error_code,
                     error_message, history, updated_at, key_hash)
                SELECT %s, g, jsonb_build_object('pk', jsonb_build_object('S', 'k' || g)),
                       '', 120, 130, 'succeeded', 1, '', '', '[]', now(), {key_hash}
                FROM generate_series(1, %s) AS g
                """,
                [job.pk, job_items],
            )
        print(f"job {job.pk}: {job_items:,} items in {time.perf_counter() - started:.0f} s", flush=True)
        made.append(job)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Item._meta.db_table}")
    return made


def drop() -> None:
    for job in Job.objects.filter(source_name=MARK):
        Item.objects.filter(job=job).delete()
        job.delete()


def page_and_count(items: QuerySet[Item]) -> tuple[int, int, bool]:
    """What the item list asks: the first page in its order, and the count (or its estimate)."""
    rows = list(items.defer("raw", "history").order_by("job_id", "position")[:PAGE])
    assert isinstance(items, ItemQuerySet)
    count, exact = items.count_or_estimate()
    return len(rows), count, exact


def timed(what: Callable[[], Any], runs: int) -> tuple[dict[str, float], Any]:
    result = what()  # warm-up (and the answer)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        what()
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--job-items", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before-runs", type=int, default=3, help="runs of the old queries (slow)")
    parser.add_argument(
        "--other-jobs", type=int, default=0, help="more jobs of the same key schema, without items (one probe each)"
    )
    parser.add_argument("--drop", action="store_true", help="delete the synthetic ledger and exit")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.drop:
        drop()
        return
    jobs = build(args.jobs, args.job_items)
    big = jobs[0]
    Job.objects.filter(source_name=f"{MARK}-other").delete()
    Job.objects.bulk_create(
        [
            Job(table_name="bench-search", key_schema=big.key_schema, source_name=f"{MARK}-other")
            for _ in range(args.other_jobs)
        ],
        batch_size=5000,
    )
    total = Item.objects.count()
    term = f"k{args.job_items // 2 + 7}"
    print(
        f"ledger: {total:,} items in all, {len(jobs)} bench jobs of {args.job_items:,}"
        f" (+{args.other_jobs:,} jobs without items); looking up {term!r}"
    )
    all_items = Item.objects.all()
    in_job = Item.objects.filter(job_id=big.pk)

    cases: dict[str, Callable[[], Any]] = {
        "now: within the job": lambda: page_and_count(search_items_by_key(in_job, term, job=big).items),
        "now: across jobs": lambda: page_and_count(search_items_by_key(all_items, term).items),
        "now: a key nobody has, across jobs": lambda: page_and_count(search_items_by_key(all_items, "nope").items),
        "before: within the job (jsonb containment)": lambda: page_and_count(
            in_job.filter(key__contains={"pk": {"S": term}})
        ),
        "before: across jobs (key::text ILIKE)": lambda: page_and_count(all_items.filter(key__icontains=term)),
    }
    user = get_user_model().objects.filter(
        username="search-bench"
    ).first() or get_user_model().objects.create_superuser("search-bench", "bench@example.com", "pw")
    setup_test_environment()  # responses then carry their template context (the list's rows)
    client = Client()
    client.force_login(user)
    url = reverse("admin:bulkwrites_item_changelist")

    def admin_page(**params: Any) -> int:
        response = client.get(url, params, HTTP_HOST="127.0.0.1")
        assert response.status_code == 200, response.status_code
        return len(response.context["cl"].result_list)

    cases["now: the admin's item list, within the job"] = lambda: admin_page(q=term, job__id__exact=big.pk)
    cases["now: the admin's item list, across jobs"] = lambda: admin_page(q=term)

    results: dict[str, Any] = {
        "items": total,
        "jobs": len(jobs),
        "job_items": args.job_items,
        "other_jobs": args.other_jobs,
        "cases": {},
    }
    for name, case in cases.items():
        runs = args.before_runs if name.startswith("before") else args.runs
        stats, answer = timed(case, runs)
        results["cases"][name] = {**stats, "answer": answer, "runs": runs}
        print(
            f"{name:48} median {stats['median_ms']:9.1f} ms (min {stats['min_ms']:.1f}, max {stats['max_ms']:.1f};"
            f" {runs} runs) -> {answer}",
            flush=True,
        )
    Job.objects.filter(source_name=f"{MARK}-other").delete()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
