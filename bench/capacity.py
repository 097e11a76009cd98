"""The capacity way: a FaultProxy token bucket of ``--capacity-wcu`` WCU/s in front of DynamoDB
Local, and the share of it that boto3's ``batch_writer`` and bulkwrites (1 worker) achieve, with
how often they were throttled."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from bench.app import worker_env
from bench.common import default_concurrency, endpoint, log, summarize
from bench.items import write_items_csv
from bench.plain import run_batch_writer
from bench.tables import verify_count

if TYPE_CHECKING:
    from bench.context import Bench


def measure_capacity(bench: Bench) -> None:
    from faultproxy import FaultProxy

    r = bench.args.capacity_wcu
    m = bench.capacity_items()
    rows = bench.rows[:m]
    csv_path = write_items_csv(bench.workdir / "capacity.csv", rows)
    out: dict[str, Any] = {"capacity_wcu": r, "items": m, "item_bytes": bench.args.item_bytes, "ways": {}}
    with FaultProxy(upstream=endpoint(), seed=1) as proxy:
        for way in ("boto3_batch_writer", "bulkwrites_1_worker"):
            if way == "boto3_batch_writer" and bench.skipped("capacity_batch_writer"):
                continue
            runs = []
            for k in range(bench.args.capacity_runs):
                with bench.tables.fresh(f"cap-{way[:5]}") as table:
                    if way == "boto3_batch_writer":
                        proxy.configure(capacity_wcu=r)
                        proxy.reset_stats()
                        answers: dict[str, int] = {}
                        seconds = run_batch_writer(table, rows, url=proxy.url, calls=answers)
                        stats = proxy.stats()
                        extra: dict[str, Any] = {"calls_with_unprocessed": answers.get("with_unprocessed", 0)}
                    else:
                        job = bench.app.staged_job(
                            csv_path, table, workers=1, concurrency=default_concurrency(), job_endpoint=proxy.url
                        )
                        proxy.configure(capacity_wcu=r)
                        proxy.reset_stats()
                        env = worker_env(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
                        extra = bench.app.run(job, expected=m, workers=1, env=env, label="capacity")
                        seconds = extra.pop("seconds")
                        extra.pop("items_per_s")
                        stats = proxy.stats()
                        # The job counts calls that were throttled or carried unprocessed items.
                        extra["calls_with_unprocessed"] = max(0, extra["throttled_calls"] - stats["throttled_calls"])
                        bench.app.after(job)
                    verify_count(bench.client, table, m, f"capacity {way}")
                calls = stats["batch_write_calls"] or 1
                run = {
                    "seconds": seconds,
                    "items_per_s": m / seconds,
                    "wcu_per_s": stats["wcu_charged"] / seconds,
                    "share_of_capacity": stats["wcu_charged"] / seconds / r,
                    # The bucket starts full (1 s of capacity): what was sustained beyond it.
                    "sustained_share": max(0.0, stats["wcu_charged"] - r) / seconds / r,
                    "throttled_call_share": stats["throttled_calls"] / calls,
                    "unprocessed_call_share": extra["calls_with_unprocessed"] / calls,
                    "proxy_stats": stats,
                    **extra,
                }
                runs.append(run)
                log(
                    f"capacity {way} run {k + 1}/{bench.args.capacity_runs}: {run['wcu_per_s']:.0f} WCU/s = "
                    f"{100 * run['share_of_capacity']:.0f}% of {r:g} ({seconds:.1f} s); "
                    f"{stats['throttled_calls']}/{stats['batch_write_calls']} calls throttled, "
                    f"{extra['calls_with_unprocessed']} calls carried {stats['unprocessed_items_returned']} "
                    "unprocessed items"
                )
            out["ways"][way] = {
                **{
                    f"share_{k}": v
                    for k, v in summarize(runs, "share_of_capacity").items()
                    if k in ("median", "min", "max")
                },
                "throttled_call_share_median": statistics.median(x["throttled_call_share"] for x in runs),
                "unprocessed_call_share_median": statistics.median(x["unprocessed_call_share"] for x in runs),
                "batch_write_calls_median": statistics.median(x["proxy_stats"]["batch_write_calls"] for x in runs),
                "unprocessed_items_median": statistics.median(
                    x["proxy_stats"]["unprocessed_items_returned"] for x in runs
                ),
                "runs": len(runs),
                "raw": runs,
            }
    csv_path.unlink()
    bench.results["capacity"] = out
