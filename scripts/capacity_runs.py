"""The bench's capacity way, call by call: where in a run the partly refused calls come from.

``make bench``'s capacity way reports one share of partly refused calls per run; its spread
(2-6 % on one tree) is larger than most changes to the rate control, and it does not say
whether the calls were refused at the start (the table's burst running out under an unlimited
job) or by the probes that follow. This runs the same job the same way (a job of ``--items``
1 KB items staged beforehand, one RQ worker, the fault proxy's token bucket of
``--capacity-wcu`` WCU/s in front of DynamoDB Local), records every call the bucket answered
(time, items asked, items paid), and prints per run the share of partly refused calls and its
*episodes*: partly refused calls less than 0.5 s apart, as ``from-to s:count`` in seconds from
the job's first call.

    eval "$(make -s services)"
    .venv/bin/python scripts/capacity_runs.py --runs 6

A worker started from another checkout (``git worktree add``) measures another tree: run the
script from that checkout (the worker runs the tree the script is in).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def episodes(times: list[float], gap: float = 0.5) -> list[tuple[float, float, int]]:
    """Times grouped into runs with less than ``gap`` seconds between neighbours."""
    groups: list[list[Any]] = []
    for t in sorted(times):
        if groups and t - groups[-1][1] < gap:
            groups[-1][1] = t
            groups[-1][2] += 1
        else:
            groups.append([t, t, 1])
    return [(a, b, n) for a, b, n in groups]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--capacity-wcu", type=float, default=1000.0)
    # Random faults on top of the capacity limit (the proxy applies them first): the mixed case of
    # issue 10, e.g. --unprocessed-share 0.05 --throttle-share 0.02 --server-error-share 0.02.
    parser.add_argument("--unprocessed-share", type=float, default=0.0)
    parser.add_argument("--throttle-share", type=float, default=0.0)
    parser.add_argument("--server-error-share", type=float, default=0.0)
    args = parser.parse_args()
    faults = {
        "unprocessed_share": args.unprocessed_share,
        "throttle_share": args.throttle_share,
        "server_error_share": args.server_error_share,
    }

    from bench.app import Bulkwrites, Workers, delete_job, worker_env
    from bench.common import default_concurrency, endpoint, make_client, setup_django
    from bench.items import make_items, write_items_csv
    from bench.tables import Tables

    setup_django()
    from faultproxy import FaultProxy

    calls: list[tuple[float, int, int]] = []  # (monotonic time, items asked, items paid)
    lock = threading.Lock()

    class TimedProxy(FaultProxy):
        """Records each call the capacity bucket answered (the proxy counts them only in total)."""

        def _spend(self, config: Any, costs: list[int]) -> tuple[int, int]:
            paid, spent = super()._spend(config, costs)
            with lock:
                calls.append((time.monotonic(), len(costs), paid))
            return paid, spent

    shares: list[float] = []
    with tempfile.TemporaryDirectory() as workdir, TimedProxy(upstream=endpoint(), seed=1) as proxy:
        csv_path = write_items_csv(Path(workdir) / "items.csv", make_items(args.items, 1024))
        tables = Tables(make_client(endpoint()))
        workers = Workers(Path(workdir))
        app = Bulkwrites(workers, keep_jobs=False)
        for k in range(args.runs):
            with tables.fresh("capacity-runs") as table:
                job = app.staged_job(
                    csv_path, table, workers=1, concurrency=default_concurrency(), job_endpoint=proxy.url
                )
                try:
                    proxy.configure(capacity_wcu=args.capacity_wcu, **faults)
                    proxy.reset_stats()
                    with lock:
                        calls.clear()
                    began = time.monotonic()  # the worker's start-up is before the first call
                    env = worker_env(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
                    result = app.run(job, expected=args.items, workers=1, env=env, label="capacity-runs")
                    stats = proxy.stats()
                    with lock:
                        answered = list(calls)
                    first = answered[0][0] if answered else began
                    refused = [t - first for t, asked, paid in answered if paid < asked]
                    share = len(refused) / max(1, len(answered))
                    shares.append(share)
                    delivered = stats["wcu_charged"] / result["seconds"] / args.capacity_wcu
                    spans = " ".join(f"{a:.1f}-{b:.1f}s:{n}" for a, b, n in episodes(refused))
                    print(
                        f"run {k + 1}: {result['seconds']:.1f} s, {100 * delivered:.0f} % of the capacity delivered, "
                        f"{len(refused)}/{len(answered)} calls partly refused ({100 * share:.1f} %); episodes {spans}",
                        flush=True,
                    )
                except BaseException:
                    # A run that timed out would leave its worker listening, with this proxy's URL:
                    # the next invocation's job would be taken by it (bench/run.py does the same).
                    app.cancel_active()
                    workers.stop_all()
                    raise
                finally:
                    delete_job(job)
    if shares:
        print(
            f"partly refused: median {100 * statistics.median(shares):.1f} % "
            f"({', '.join(f'{100 * s:.1f}' for s in shares)})"
        )


if __name__ == "__main__":
    main()
