"""One worker, in this process, through issue 10's fault mix, once per proxy seed: does every run finish?

The bench's chaos way (``bench/chaos.py``) runs three times through an RQ worker; a rare run in
which the rate control collapses needs more runs than that to show. This stages a job of
``--items`` 1 KB items, then for each seed re-seeds the fault proxy (``bench.chaos.FAULTS``:
30 % of each call unprocessed, 5 % 5xx, 5 % ``ThrottlingException``, 2 % dropped after the write)
and runs :func:`bulkwrites.services.running.job_run` with a budget of ``--budget`` seconds (the
run returns at the first slice boundary after it). Each line: seconds, or ``NOT FINISHED``, and
the attempts the items took (``count x attempts``).

    eval "$(make -s services)"
    .venv/bin/python scripts/chaos_runs.py --seeds 20-34
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def seeds_from(text: str) -> list[int]:
    """``20-34`` or ``1,5,9``."""
    if "-" in text:
        first, last = text.split("-", 1)
        return list(range(int(first), int(last) + 1))
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="20-34")
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds a run may take")
    args = parser.parse_args()

    from bench.app import Bulkwrites, Workers, delete_job
    from bench.chaos import FAULTS
    from bench.common import default_concurrency, endpoint, env_override, make_client, setup_django
    from bench.items import make_items, write_items_csv
    from bench.tables import Tables

    setup_django()
    from django.db.models import Count

    from bulkwrites.models import Item
    from bulkwrites.services import control, running
    from faultproxy import FaultProxy

    finished: list[float] = []
    seeds = seeds_from(args.seeds)
    with tempfile.TemporaryDirectory() as workdir, FaultProxy(upstream=endpoint(), seed=1) as proxy:
        csv_path = write_items_csv(Path(workdir) / "items.csv", make_items(args.items, 1024))
        tables = Tables(make_client(endpoint()))
        app = Bulkwrites(Workers(Path(workdir)), keep_jobs=False)
        for seed in seeds:
            with tables.fresh("chaos-runs") as table, env_override(AWS_ENDPOINT_URL_DYNAMODB=proxy.url):
                job = app.staged_job(
                    csv_path, table, workers=1, concurrency=default_concurrency(), job_endpoint=proxy.url
                )
                try:
                    proxy.configure(**FAULTS, seed=seed)
                    assert job.start(queue="chaos-runs")
                    began = time.perf_counter()
                    report = running.job_run(job.pk, worker="chaos-runs", budget_seconds=args.budget)
                    seconds = time.perf_counter() - began
                    rows = Item.objects.filter(job_id=job.pk).values_list("attempts").annotate(n=Count("id"))
                    shape = " ".join(f"{count}x{tries}" for tries, count in sorted(rows))
                    if report.finished:
                        finished.append(seconds)
                        print(f"seed {seed}: {seconds:.1f} s; attempts {shape}", flush=True)
                    else:
                        print(f"seed {seed}: NOT FINISHED after {seconds:.0f} s; attempts {shape}", flush=True)
                        job.refresh_from_db()
                        control.job_cancel(job=job)
                finally:
                    delete_job(job)
    spread = f"{min(finished):.1f}-{max(finished):.1f} s" if finished else "-"
    print(f"{len(finished)} of {len(seeds)} finished within {args.budget:.0f} s ({spread})")


if __name__ == "__main__":
    main()
