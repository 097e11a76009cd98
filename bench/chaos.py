"""The chaos way of the benchmark: the fault mix of issue 10, three writers side by side.

A FaultProxy in front of DynamoDB Local answers every ``BatchWriteItem`` with 30 % of its items
unprocessed, 5 % of calls with a 5xx, 5 % with ``ThrottlingException``, and drops 2 % of the
connections after the write; there is spare capacity (no capacity bucket). The same items are
written by

``boto3_batch_writer``
    ``Table.batch_writer()`` (botocore's default retries for the 5xx, throttles and drops; the
    unprocessed items resent at once), one thread;
``full_jitter_loop``
    a plain ``batch_write_item`` loop, one thread, botocore's default retries, and unprocessed
    items resent after AWS's "full jitter" backoff (random(0, min(20 s, 50 ms x 2^attempt)));
``bulkwrites_1_worker``
    the app end to end (one ``rqworker``, default concurrency, the full ledger), timed from
    ``job_start`` until the job has finished.

The ways take turns within each run (the machine is shared: neighbours' load hits all three
alike), and each run's table is then read back whole with a Scan and compared item for item
(every key, every attribute). Target: bulkwrites within 1.5x batch_writer's time.

Called from ``bench/run.py`` (:func:`run`) and ``bench/report.py`` (:func:`report_lines`).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from bench.app import worker_env
from bench.common import SEED, BenchError, RunTimedOut, default_concurrency, endpoint, log, make_client
from bench.items import Row, make_items, to_batches, wire_item, write_items_csv
from bench.plain import run_batch_writer

if TYPE_CHECKING:
    from bench.context import Bench

FAULTS: dict[str, Any] = {
    "unprocessed_share": 0.3,
    "server_error_share": 0.05,
    "throttle_share": 0.05,
    "throttle_code": "ThrottlingException",
    "drop_after_write_share": 0.02,
}
WAYS = ("boto3_batch_writer", "full_jitter_loop", "bulkwrites_1_worker")


def run_full_jitter(url: str, table: str, batches: Sequence[list[dict[str, Any]]]) -> float:
    """One thread; unprocessed items resent after full-jitter backoff; seconds taken."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = make_client(url)
    rng = random.Random(SEED)
    began = time.perf_counter()
    for batch in batches:
        requests, attempt = batch, 0
        while requests:
            try:
                response = client.batch_write_item(RequestItems={table: requests})
                requests = (response.get("UnprocessedItems") or {}).get(table) or []
            except (BotoCoreError, ClientError):  # botocore's own retries ran out: same requests again
                pass
            if requests:
                time.sleep(rng.uniform(0, min(20.0, 0.05 * 2**attempt)))
                attempt += 1
    return time.perf_counter() - began


def scan_items(client: Any, table: str) -> dict[str, dict[str, Any]]:
    """Every item of the table by its key, read with a parallel consistent Scan."""
    segments = 8

    def segment(number: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True, "Segment": number}
        kwargs["TotalSegments"] = segments
        while True:
            page = client.scan(**kwargs)
            items.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    with ThreadPoolExecutor(max_workers=segments) as pool:
        return {item["pk"]["S"]: item for part in pool.map(segment, range(segments)) for item in part}


def verify_items(client: Any, table: str, rows: Sequence[Row], what: str) -> None:
    found = scan_items(client, table)
    expected = {row[0]: wire_item(row) for row in rows}
    missing = expected.keys() - found.keys()
    extra = found.keys() - expected.keys()
    wrong = [k for k in expected.keys() & found.keys() if found[k] != expected[k]]
    if missing or extra or wrong:
        raise BenchError(
            f"{what}: table {table} differs from the items written: {len(missing)} missing, "
            f"{len(extra)} unexpected, {len(wrong)} with other attributes (e.g. {sorted(missing or wrong)[:3]})"
        )


def run(bench: Bench) -> None:
    from faultproxy import FaultProxy

    n = bench.args.chaos_items
    rows = bench.rows[:n] if len(bench.rows) >= n else make_items(n, bench.args.item_bytes)
    csv_path = write_items_csv(bench.workdir / "chaos.csv", rows)
    batches = to_batches(rows)
    skip_names = {"boto3_batch_writer": "chaos_batch_writer", "full_jitter_loop": "chaos_full_jitter"}
    ways_run = [way for way in WAYS if not (way in skip_names and bench.skipped(skip_names[way]))]
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in ways_run}
    with FaultProxy(upstream=endpoint(), seed=SEED) as proxy:
        for k in range(bench.args.chaos_runs):
            for way in ways_run:
                with bench.tables.fresh(f"chaos-{way[:5]}") as table:
                    extra: dict[str, Any] = {}
                    if way == "bulkwrites_1_worker":
                        job = bench.app.staged_job(
                            csv_path, table, workers=1, concurrency=default_concurrency(), job_endpoint=proxy.url
                        )
                        proxy.configure(seed=SEED + k, **FAULTS)
                        proxy.reset_stats()
                        env = worker_env(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
                        try:
                            result = bench.app.run(
                                job, expected=n, workers=1, env=env, label="chaos", timeout=bench.args.chaos_timeout
                            )
                        except RunTimedOut as exc:
                            # A run that stalls is this way's finding, not the bench's failure: it is
                            # counted (at the time it was given, a lower bound) and the runs go on.
                            seconds = exc.seconds
                            extra = {"finished": False}
                        else:
                            seconds = result["seconds"]
                            extra = {"calls": result["calls"], "job_running_seconds": result["job_running_seconds"]}
                        bench.app.after(job)
                    else:
                        proxy.configure(seed=SEED + k, **FAULTS)
                        proxy.reset_stats()
                        if way == "boto3_batch_writer":
                            seconds = run_batch_writer(table, rows, url=proxy.url)
                        else:
                            seconds = run_full_jitter(proxy.url, table, batches)
                    stats = proxy.stats()
                    proxy.configure()  # the read-back goes through DynamoDB Local untouched anyway
                    finished = extra.get("finished", True)
                    if finished:
                        verify_items(bench.client, table, rows, f"chaos {way}")
                runs[way].append({"seconds": seconds, "items_per_s": n / seconds, "proxy_stats": stats, **extra})
                log(
                    f"chaos {way} run {k + 1}/{bench.args.chaos_runs}: "
                    + (
                        f"{seconds:.1f} s ({n / seconds:.0f} items/s)"
                        if finished
                        else f"NOT FINISHED in {seconds:.0f} s, cancelled"
                    )
                    + f"; {stats['batch_write_calls']} calls, {stats['unprocessed_items_returned']} unprocessed, "
                    f"{stats['server_errors']} 5xx, {stats['throttled_calls']} throttled, {stats['dropped']} dropped"
                    + ("; every item verified" if finished else "")
                )
    csv_path.unlink()
    ways = {
        way: {
            "seconds_median": statistics.median(r["seconds"] for r in runs[way]),
            "seconds_min": min(r["seconds"] for r in runs[way]),
            "seconds_max": max(r["seconds"] for r in runs[way]),
            "runs": len(runs[way]),
            "not_finished": sum(1 for r in runs[way] if not r.get("finished", True)),
            "raw": runs[way],
        }
        for way in ways_run
    }
    bw = ways.get("boto3_batch_writer", {}).get("seconds_median")
    ours = ways.get("bulkwrites_1_worker", {}).get("seconds_median")
    bench.results["chaos"] = {
        "items": n,
        "faults": FAULTS,
        "ways": ways,
        "bulkwrites_over_batch_writer": ours / bw if bw and ours else None,
    }


def report_lines(results: dict[str, Any]) -> list[str]:
    chaos = results.get("chaos")
    if not chaos:
        return []
    lines = [
        "",
        f"chaos: {chaos['items']} items through the fault mix (30% of each call unprocessed, 5% 5xx, "
        "5% ThrottlingException, 2% dropped after the write); every item of each finished run verified in the table",
    ]
    for way, c in chaos["ways"].items():
        stalled = c.get("not_finished", 0)
        lines.append(
            f"  {way:<22} median {c['seconds_median']:6.1f} s (min {c['seconds_min']:.1f}, max {c['seconds_max']:.1f})"
            f", {c['runs']} run(s)"
            + (f" [only {c['runs']} run(s)]" if c["runs"] < 3 else "")
            + (f"; {stalled} NOT FINISHED (counted at the time they were given)" if stalled else "")
        )
    ratio = chaos.get("bulkwrites_over_batch_writer")
    if ratio is not None:
        stalled = chaos["ways"].get("bulkwrites_1_worker", {}).get("not_finished", 0)
        verdict = f"NOT met: {stalled} run(s) did not finish" if stalled else "met" if ratio <= 1.5 else "NOT met"
        lines.append(f"  bulkwrites / batch_writer time: {ratio:.2f} (target <= 1.5: {verdict})")
    return lines
