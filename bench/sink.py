"""Against a sink (issue 15, target 3): the worker and its ledger without DynamoDB Local in the way.

A fault proxy in ``sink`` mode (``python -m faultproxy --sink``, its own process) answers every
``BatchWriteItem`` at once as fully written and forwards nothing; tables are still created in
DynamoDB Local through it. Measured against the same sink, ``--runs`` times each:

``sink_bulkwrites_1_worker``
    bulkwrites, one ``rqworker``, default concurrency, the full ledger; items staged and the
    worker listening before the clock, as ``bulkwrites_1_worker`` (target: >= 10,000 items/s).
``sink_threaded_batch_write_item``, ``sink_plain_http``
    For reference: 16 threads of boto3's ``batch_write_item``, and the plain-HTTP client.

The proxy is Python too and shares the machine's 2 cores with the writer, PostgreSQL and the
bench: its CPU (user + system seconds over the run's wall clock, in cores) is reported with each
run. Nothing reaches a table, so each run is checked by the proxy's count of items answered as
written (and, for bulkwrites, by the ledger: every item succeeded).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import TYPE_CHECKING, Any

from bench.app import worker_env
from bench.common import ROOT, BenchError, default_concurrency, endpoint, log, make_client, process_cpu_seconds
from bench.items import to_batches
from bench.plain import SCRIPT_THREADS, run_plain_http, run_threaded

if TYPE_CHECKING:
    from bench.context import Bench

WAYS = ("sink_bulkwrites_1_worker", "sink_threaded_batch_write_item", "sink_plain_http")


class SinkProcess:
    """``python -m faultproxy --sink`` in front of DynamoDB Local, in its own process."""

    def __init__(self, upstream: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "faultproxy", "--upstream", upstream, "--sink"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("faultproxy listening on "):
            self.stop()
            raise BenchError(f"the sink proxy did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1]
        self.cpu_at_zero = 0.0

    def _control(self, path: str, method: str = "GET") -> dict[str, Any]:
        url = f"{self.url}/__faultproxy__/{path}"
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)  # noqa: S310 (http://, ours)
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def stats(self) -> dict[str, Any]:
        return self._control("stats")

    def reset(self) -> None:
        self._control("reset", "POST")

    def zero(self) -> None:
        """Counts reset, and the CPU used so far noted: a run starts next."""
        self.reset()
        self.cpu_at_zero = self.cpu_seconds()

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid) or 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def measure_sink(bench: Bench) -> None:
    n = bench.args.items
    batches = to_batches(bench.rows[:n])
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    sink = SinkProcess(endpoint())
    try:
        client = make_client(sink.url, pool=SCRIPT_THREADS + 4)
        for k in range(bench.args.runs):
            for way in WAYS:  # the ways take turns within a run: the neighbours' load hits all alike
                with bench.tables.fresh(f"sink-{way[5:10]}") as table:
                    extra: dict[str, Any] = {}
                    if way == "sink_bulkwrites_1_worker":
                        job = bench.app.staged_job(
                            bench.items_csv, table, workers=1, concurrency=default_concurrency(), job_endpoint=sink.url
                        )
                        env = worker_env(AWS_ENDPOINT_URL_DYNAMODB=sink.url)
                        result = bench.app.run(
                            job, expected=n, workers=1, env=env, label="sink", before_clock=sink.zero
                        )
                        seconds = result["seconds"]
                        extra = {k: v for k, v in result.items() if k not in ("seconds", "items_per_s")}
                        bench.app.after(job)
                    else:
                        sink.zero()
                        if way == "sink_threaded_batch_write_item":
                            seconds = run_threaded(client, table, batches, SCRIPT_THREADS)
                        else:
                            seconds = run_plain_http(sink.url, table, batches, SCRIPT_THREADS)
                    proxy_cores = (sink.cpu_seconds() - sink.cpu_at_zero) / seconds
                    stats = sink.stats()
                if stats["items_forwarded"] < n:
                    raise BenchError(f"{way}: the sink answered {stats['items_forwarded']} items of {n}")
                run = {"seconds": seconds, "items_per_s": n / seconds, "proxy_cores": proxy_cores, **extra}
                run["sink_items_answered"] = stats["items_forwarded"]
                run["sink_calls"] = stats["batch_write_calls"]
                runs[way].append(run)
                log(
                    f"{way} run {k + 1}/{bench.args.runs}: {n / seconds:.0f} items/s ({seconds:.1f} s); "
                    f"the sink proxy used {proxy_cores:.2f} cores"
                )
    finally:
        sink.stop()
    for way in WAYS:
        proxy = sorted(r["proxy_cores"] for r in runs[way])
        bench.record(way, runs[way], threads=SCRIPT_THREADS, proxy_cores_median=proxy[len(proxy) // 2])
    bench.results["ways"]["sink_bulkwrites_1_worker"].update(workers=1, concurrency=default_concurrency())
    bench.results["ways"]["sink_bulkwrites_1_worker"].pop("threads", None)
