"""How long one /metrics scrape takes against a ledger of many jobs (an aggregate over Job rows).

Run with the services' environment, on a migrated database:
``eval "$(make -s services)" && .venv/bin/python bench/metrics_scrape.py --jobs 10000 --tables 50``.
It adds ``--jobs`` job rows (no items), times ``bulkwrites.metrics.exposition()`` (what the
endpoint serves; it also asks Redis for live workers) ``--runs`` times, prints median / min /
max, and deletes its rows.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup()

from bulkwrites import metrics  # noqa: E402
from bulkwrites.models import Job, JobStatus  # noqa: E402

MARK = "metrics-scrape-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--tables", type=int, default=50)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(7)
    Job.objects.filter(source_name=MARK).delete()
    Job.objects.bulk_create(
        [
            Job(
                table_name=f"bench-{n % args.tables}",
                source_name=MARK,
                status=rng.choice(JobStatus.values),
                total_items=1000,
                succeeded_items=900,
                failed_items=50,
                calls=40,
                consumed_wcu=900.0,
            )
            for n in range(args.jobs)
        ],
        batch_size=2000,
    )
    try:
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            body = metrics.exposition()
            times.append((time.perf_counter() - started) * 1000)
        median, low, high = statistics.median(times), min(times), max(times)
        print(
            f"{Job.objects.count()} job rows, {args.tables} tables: /metrics {len(body):,} bytes, "
            f"median {median:.1f} ms (min {low:.1f}, max {high:.1f}) over {args.runs} runs"
        )
    finally:
        Job.objects.filter(source_name=MARK).delete()


if __name__ == "__main__":
    main()
