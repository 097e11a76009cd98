"""Benchmark: bulkwrites against plain boto3, a plain HTTP client and a plain script, on DynamoDB Local.

Run with the services' environment (``make bench BENCH_ARGS="--quick"``, or
``eval "$(make -s services)" && .venv/bin/python bench/run.py --quick``).

Each write way runs on a fresh PAY_PER_REQUEST table per run (key ``pk`` S), with the same items
(generated once from a fixed seed), and each run is checked afterwards by a ``Scan``
(``Select=COUNT``) that must find exactly the items written. The ways, by module:

``bench/plain.py``
    boto3's ``batch_writer``, threaded ``batch_write_item`` (the SDK's ceiling), ``plain_http``
    (no SDK), ``plain_http_consumed`` (the same, asking for the consumed capacity as bulkwrites
    does) and ``csv_threads`` (the hand-written script, from the CSV file).
``bench/writes.py``
    bulkwrites with 1 and 2 workers (items staged beforehand), at 4 calls in flight, and
    ``end_to_end`` (from the file, staging included).
``bench/sink.py``
    the same writers against a fault proxy in ``sink`` mode (no DynamoDB Local in the way).
``bench/ledger.py``
    the ledger alone: outcomes recorded per second.
``bench/staging.py``
    staging a CSV (rows/s, peak RSS of the staging process and of each conversion process), and
    ``--scale N``: one N-row job, its pages and its deletion.
``bench/capacity.py``, ``bench/chaos.py``, ``bench/verify.py``
    a capacity-capped table, the fault mix of issue 10, read-back verification.

``bench/report.py`` prints each way's figures, then one table of issue 15's targets, each next
to its figure (medians) and whether it is met. ``bench/results.json`` keeps every run's raw
figures (appended, with the commit and date; ``bench/common.py`` has the plumbing).

Isolation: the bench uses Redis database 14 for its RQ queue (a ``make run`` worker listens on
database 0) and the normal PostgreSQL database. Its jobs are deleted once verified (a default run
would otherwise leave ~1 GB of items behind, and staging ANALYZEs the whole item table, so every
kept job slows the next staging); ``--keep-jobs`` keeps the write jobs as an audit (without their
stored copy of the CSV). Progress goes to stderr; the tables to stdout; everything to ``--json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (make bench): the repository, not bench/, goes first
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.app import clear_bench_queue, warn_about_stalled_jobs
from bench.common import (
    ROOT,
    BenchError,
    append_results,
    default_concurrency,
    endpoint,
    load_history,
    log,
    machine_info,
    ratio,
    setup_django,
    summarize,
)
from bench.context import Bench

__all__ = ["main", "setup_django"]  # setup_django: bench/ledger.py's main takes it from here

PARTS = (
    "boto3_batch_writer",
    "threaded_batch_write_item",
    "plain_http",
    "plain_http_consumed",
    "csv_threads",
    "bulkwrites_1_worker",
    "bulkwrites_2_workers",
    "bulkwrites_1_worker_c4",
    "end_to_end",
)
SKIPPABLE = (
    *PARTS,
    "bulkwrites",
    "threaded",
    "batch_writer",
    "c4",
    "sink",
    "ledger",
    "staging",
    "capacity",
    "chaos",
    # The reference writers of the capacity and chaos ways (the full-jitter loop alone takes
    # 70-110 s a run): skipped, the bulkwrites rows can be repeated ten times to see their spread.
    "capacity_batch_writer",
    "chaos_batch_writer",
    "chaos_full_jitter",
    "verify",
)


def run_ways(bench: Bench) -> dict[str, Any]:
    from bench import capacity, chaos, ledger, plain, sink, staging, verify, writes

    a = bench.args
    skipped = bench.skipped
    if not skipped("boto3_batch_writer", "batch_writer"):
        plain.measure_batch_writer(bench)
    if not skipped("threaded_batch_write_item", "threaded"):
        plain.measure_threaded(bench)
    if not skipped("plain_http"):
        plain.measure_plain_http(bench, consumed_too=not skipped("plain_http_consumed"))
    if not skipped("csv_threads"):
        plain.measure_csv_threads(bench)
    if not skipped("bulkwrites"):
        if not skipped("bulkwrites_1_worker"):
            writes.measure_bulkwrites(
                bench, "bulkwrites_1_worker", workers=1, concurrency=default_concurrency(), runs_wanted=a.runs
            )
        if not skipped("bulkwrites_2_workers"):
            writes.measure_bulkwrites(
                bench, "bulkwrites_2_workers", workers=2, concurrency=default_concurrency(), runs_wanted=a.runs
            )
        if not skipped("bulkwrites_1_worker_c4", "c4") and a.variant_runs > 0:
            writes.measure_bulkwrites(
                bench, "bulkwrites_1_worker_c4", workers=1, concurrency=4, runs_wanted=a.variant_runs
            )
        if not skipped("end_to_end"):
            writes.measure_end_to_end(bench)
    if not skipped("sink"):
        sink.measure_sink(bench)
    if not skipped("ledger") and a.ledger_runs > 0:
        runs = ledger.measure(a.ledger_items, a.ledger_threads, a.ledger_runs, log=log)
        bench.results["ledger"] = {
            **summarize(runs, "outcomes_per_s"),
            "items": a.ledger_items,
            "threads": a.ledger_threads,
            "raw": runs,
        }
    if not skipped("staging") and a.staging_runs > 0:
        staging.measure_staging(bench)
    if a.scale:
        staging.measure_scale(bench)
    if not skipped("capacity") and a.capacity_runs > 0:
        capacity.measure_capacity(bench)
    if not skipped("chaos") and a.chaos_runs > 0:
        chaos.run(bench)
    if not skipped("verify"):
        verify.measure(bench)  # read-back verification next to write throughput
    ways = bench.results["ways"]

    def med(way: str) -> float | None:
        value = ways.get(way, {}).get("median")
        return None if value is None else float(value)

    bench.results["ratios"] = {
        "threaded/batch_writer": ratio(med("threaded_batch_write_item"), med("boto3_batch_writer")),
        "plain_http/threaded": ratio(med("plain_http"), med("threaded_batch_write_item")),
        "plain_http_consumed/threaded": ratio(med("plain_http_consumed"), med("threaded_batch_write_item")),
        "bulkwrites_1/threaded": ratio(med("bulkwrites_1_worker"), med("threaded_batch_write_item")),
        "bulkwrites_2/threaded": ratio(med("bulkwrites_2_workers"), med("threaded_batch_write_item")),
        "bulkwrites_1_c4/threaded": ratio(med("bulkwrites_1_worker_c4"), med("threaded_batch_write_item")),
        "bulkwrites_1/batch_writer": ratio(med("bulkwrites_1_worker"), med("boto3_batch_writer")),
        "end_to_end/csv_threads": ratio(med("end_to_end"), med("csv_threads")),
    }
    return bench.results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="items per run (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each main way (default 3)")
    parser.add_argument("--item-bytes", type=int, default=1024, help="DynamoDB size of each item (default 1024)")
    parser.add_argument("--staging-rows", type=int, default=1_000_000, help="rows of the staging CSV (default 1M)")
    parser.add_argument("--staging-runs", type=int, default=None, help="staging runs (default 1; with --quick, --runs)")
    parser.add_argument(
        "--variant-runs",
        type=int,
        default=None,
        help="runs of bulkwrites_1_worker_c4 (default 1; with --quick, --runs)",
    )
    parser.add_argument(
        "--end-to-end-workers", type=int, default=1, help="workers of the end_to_end way (default 1, a job's default)"
    )
    parser.add_argument("--ledger-items", type=int, default=200_000, help="outcomes per ledger run (default 200000)")
    parser.add_argument("--ledger-threads", type=int, default=4, help="recorders at once in the ledger way (default 4)")
    parser.add_argument("--ledger-runs", type=int, default=None, help="ledger runs (default --runs)")
    parser.add_argument(
        "--scale",
        type=int,
        default=0,
        metavar="N",
        help="also stage one N-row job and time its pages and its deletion (issue 15 target 4: N = 10000000)",
    )
    parser.add_argument("--capacity-wcu", type=float, default=1000, help="FaultProxy capacity, WCU/s (default 1000)")
    # Three, as the other ways: one capacity run's share of partly refused calls varies 2.8-10 %
    # from run to run on the same tree, and the table's verdict should be a median's.
    parser.add_argument("--capacity-runs", type=int, default=3, help="runs of each capacity way (default 3)")
    parser.add_argument("--chaos-items", type=int, default=5000, help="items of the chaos way (default 5000)")
    parser.add_argument("--chaos-runs", type=int, default=3, help="runs of each chaos way (default 3)")
    parser.add_argument(
        "--chaos-timeout",
        type=float,
        default=300,
        help="seconds a bulkwrites chaos run is given before it counts as not finished (default 300)",
    )
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(SKIPPABLE)}")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results.json"), help="results file (appended to)")
    parser.add_argument(
        "--quick", action="store_true", help="items 20000, staging rows 200000, ledger items 100000, runs 3"
    )
    parser.add_argument(
        "--keep-jobs", action="store_true", help="keep the write jobs (and their items) in the database as an audit"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.staging_rows, args.runs, args.ledger_items = 20_000, 200_000, 3, 100_000
    # The default run keeps to ~10 minutes with one run of the slow parts (1M-row staging, the
    # concurrency-4 variant); --quick measures them --runs times. Capacity: --capacity-runs.
    if args.staging_runs is None:
        args.staging_runs = args.runs if args.quick else 1
    if args.variant_runs is None:
        args.variant_runs = args.runs if args.quick else 1
    if args.ledger_runs is None:
        args.ledger_runs = args.runs
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - set(SKIPPABLE)
    if unknown:
        parser.error(f"unknown --skip part(s) {sorted(unknown)}; choose from {', '.join(SKIPPABLE)}")
    if args.items < 1 or args.runs < 1:
        parser.error("--items and --runs must be at least 1")
    if args.scale < 0 or args.end_to_end_workers < 1 or args.ledger_threads < 1:
        parser.error("--scale must be positive, --end-to-end-workers and --ledger-threads at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    endpoint()
    setup_django()
    from django.core.management import call_command

    try:
        call_command("makemigrations", "bulkwrites", check=True, dry_run=True, verbosity=0)
    except SystemExit:
        log("FAILED: bulkwrites' models have changes no migration holds yet (makemigrations --check)")
        return 2
    call_command("migrate", verbosity=0, interactive=False)
    clear_bench_queue()
    warn_about_stalled_jobs()
    info = machine_info()
    log(f"{info['nproc']} CPU(s) {info['cpu_model']}, Python {info['python']}, DynamoDB at {endpoint()}")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bulkwrites-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            results = run_ways(bench)
        except BaseException:
            bench.app.cancel_active()
            bench.workers.stop_all()
            raise
        finally:
            bench.tables.delete_all()
    wall = time.perf_counter() - began
    args_out = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()}
    document = {"machine": info, "args": args_out, "wall_seconds": wall, **results}
    path = Path(args.json)
    history = load_history(path)
    runs_kept = append_results(path, document)
    from bench import report

    report.print_report(document, args, history)
    print(f"\nwall clock {wall:.0f} s; raw figures appended to {args.json} ({runs_kept} run(s) kept)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"FAILED: {exc}")
        sys.exit(2)
