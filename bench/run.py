"""Benchmark: bulkwrites against plain boto3, on DynamoDB Local.

Run with the services' environment (``make bench BENCH_ARGS="--quick"``, or
``eval "$(make -s services)" && .venv/bin/python bench/run.py --quick``).

Ways measured, each on a fresh PAY_PER_REQUEST table per run (key ``pk`` S), with the same
items (generated once from a fixed seed), each run checked afterwards by a ``Scan``
(``Select=COUNT``) that must find exactly the items written:

``boto3_batch_writer``
    ``Table.batch_writer()``, one thread: what most scripts do.
``threaded_batch_write_item``
    A plain threaded loop of ``batch_write_item`` (25 per call, UnprocessedItems resent, no
    bookkeeping) on one shared client; the thread count is sized first (2, 4, 8, 16 on a
    quarter of the items, once each; the most threads within 10 % of the fastest win), then
    measured: the endpoint's practical ceiling on this machine.
``bulkwrites_1_worker``, ``bulkwrites_2_workers``, ``bulkwrites_1_worker_c4``
    The app, at the job's default concurrency (``_c4``: 4 calls in flight, for comparison):
    items staged and ``manage.py rqworker`` process(es) started and listening before the clock;
    the clock runs from ``job_start`` until the job has finished (polled every 0.1 s).
``staging``
    A ``--staging-rows`` CSV (~150 bytes a row) from ``job_create_from_file`` until
    ``job_stage`` is done, in a child process whose peak RSS is reported.
``capacity``
    A FaultProxy token bucket of ``--capacity-wcu`` WCU/s in front of DynamoDB Local: the share
    of it that boto3's ``batch_writer`` and bulkwrites (1 worker) achieve, and how often they
    were throttled.

Isolation: the bench uses Redis database 14 for its RQ queue (a ``make run`` worker listens on
database 0) and the normal PostgreSQL database. Its jobs are deleted once verified (a default run
would otherwise leave ~1 GB of items behind, and staging ANALYZEs the whole item table, so every
kept job slows the next staging); ``--keep-jobs`` keeps the write jobs as an audit (without their
stored copy of the CSV). Progress goes to stderr; the table to stdout; everything to ``--json``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import datetime as dt
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_REDIS_DB = 14
SEED = 20240611
THREAD_COUNTS = (2, 4, 8, 16)
POLL_SECONDS = 0.1
UPLOAD_CAP_BYTES = 1 << 34  # the bench's files may exceed the app's upload cap (1 GiB by default)
APP_UPLOAD_CAP = int(os.environ.get("BULKWRITES_MAX_UPLOAD_BYTES") or 1024 * 1024 * 1024)  # before setup_django
WAYS = (
    "boto3_batch_writer",
    "threaded_batch_write_item",
    "bulkwrites_1_worker",
    "bulkwrites_2_workers",
    "bulkwrites_1_worker_c4",
)
SKIPPABLE = (*WAYS, "bulkwrites", "threaded", "batch_writer", "c4", "staging", "capacity", "chaos", "verify")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the app, project and faultproxy packages

_started = time.monotonic()


def default_concurrency() -> int:
    from bulkwrites.models import DEFAULT_CONCURRENCY

    return DEFAULT_CONCURRENCY


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- environment ------------------------------------------------------------------------


def bench_redis_url() -> str:
    """The services' Redis with database 14 (the URL's path is the database number)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:63799/0"))
    return urlunsplit(parts._replace(path=f"/{BENCH_REDIS_DB}"))


def setup_django() -> None:
    """Django for the bench: the normal database, Redis database 14, no upload cap in the way."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ["REDIS_URL"] = bench_redis_url()
    os.environ["BULKWRITES_MAX_UPLOAD_BYTES"] = str(UPLOAD_CAP_BYTES)
    os.environ.setdefault("BULKWRITES_LOG_LEVEL", "WARNING")
    import django

    django.setup()


def endpoint() -> str:
    url = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
    if not url:
        sys.exit('AWS_ENDPOINT_URL_DYNAMODB is not set: run `eval "$(make -s services)"` first (or `make bench`)')
    return url


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def boto_config(pool: int = 10) -> Any:
    """botocore's defaults (retries included), with a connection pool of at least ``pool``."""
    from botocore.config import Config

    return Config(region_name=region(), max_pool_connections=max(10, pool))


def make_client(url: str | None = None, pool: int = 10) -> Any:
    import boto3

    return boto3.session.Session().client("dynamodb", endpoint_url=url or endpoint(), config=boto_config(pool))


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_mb = int(line.split()[1]) // 1024
    commit, changed = "", []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.splitlines()
    versions: dict[str, str] = {}
    for name in ("boto3", "botocore", "django", "rq", "django_rq", "psycopg"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mb": mem_total_mb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "git_uncommitted": changed,  # the figures are of this working tree, not of the commit alone
        "versions": versions,
        "dynamodb_endpoint": os.environ.get("AWS_ENDPOINT_URL_DYNAMODB"),
    }


# --- items ------------------------------------------------------------------------------

WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "amber",
    "basalt",
    "cobalt",
    "dune",
    "ember",
)
ITEM_HEADER = ["pk", "n:N", "name", "flag:BOOL", "pad"]


def make_items(n: int, item_bytes: int, seed: int = SEED) -> list[tuple[str, int, str, bool, str]]:
    """``n`` rows (pk, n, name, flag, pad) whose DynamoDB item size is ``item_bytes`` exactly.

    Size by DynamoDB's rules (attribute names + values), so a 1024-byte item costs 1 WCU.
    """
    from faultproxy import item_size

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pk = f"item-{i:08d}"
        number = rng.randrange(1, 10**9)
        if number % 10 == 0:  # DynamoDB Local sizes numbers with trailing zeros bigger than the guide does
            number += 1
        name = " ".join(rng.choices(WORDS, k=3))
        flag = bool(i & 1)
        head = {"pk": {"S": pk}, "n": {"N": str(number)}, "name": {"S": name}, "flag": {"BOOL": flag}}
        pad_len = max(1, item_bytes - item_size(head) - len("pad"))
        pad = base64.b64encode(rng.randbytes(pad_len * 3 // 4 + 3)).decode("ascii")[:pad_len]
        rows.append((pk, number, name, flag, pad))
    return rows


def wire_item(row: tuple[str, int, str, bool, str]) -> dict[str, Any]:
    pk, number, name, flag, pad = row
    return {"pk": {"S": pk}, "n": {"N": str(number)}, "name": {"S": name}, "flag": {"BOOL": flag}, "pad": {"S": pad}}


def python_item(row: tuple[str, int, str, bool, str]) -> dict[str, Any]:
    pk, number, name, flag, pad = row
    return {"pk": pk, "n": number, "name": name, "flag": flag, "pad": pad}


def write_items_csv(path: Path, rows: Sequence[tuple[str, int, str, bool, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(ITEM_HEADER)
        for pk, number, name, flag, pad in rows:
            writer.writerow((pk, number, name, "true" if flag else "false", pad))
    return path


def write_staging_csv(path: Path, rows: int, seed: int = SEED + 1) -> Path:
    """~150 bytes a row: ``pk,n:N,name,flag:BOOL``."""
    rng = random.Random(seed)
    # A pool of names of 100..140 characters, so generating a million rows stays cheap.
    pool = []
    for _ in range(4096):
        words: list[str] = []
        target = rng.randrange(100, 141)
        while len(" ".join(words)) < target:
            words.append(rng.choice(WORDS))
        pool.append(" ".join(words))
    with path.open("w", newline="", encoding="utf-8") as f:
        f.write("pk,n:N,name,flag:BOOL\n")
        chunk = []
        for i in range(rows):
            chunk.append(f"s-{i:09d},{rng.randrange(10**9)},{pool[i & 4095]},{'true' if i & 1 else 'false'}\n")
            if len(chunk) == 10_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))
    return path


# --- tables -----------------------------------------------------------------------------


class Tables:
    """Creates fresh tables and deletes them (also on failure)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.live: set[str] = set()

    def create(self, label: str) -> str:
        name = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        self.client.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        self.live.add(name)
        self.client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
        return name

    def delete(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.client.delete_table(TableName=name)
        self.live.discard(name)

    def delete_all(self) -> None:
        for name in list(self.live):
            self.delete(name)

    @contextlib.contextmanager
    def fresh(self, label: str) -> Iterator[str]:
        name = self.create(label)
        try:
            yield name
        finally:
            self.delete(name)


def count_items(client: Any, table: str, expected: int) -> int:
    """Items really in the table: a parallel Scan with Select=COUNT, consistent reads.

    Many segments: DynamoDB Local's Scan gets slower with every page of a segment (100,000
    1-KB items: 58 s in one segment, 15 s in 4, 1.2 s in 128).
    """
    segments = max(4, min(128, expected // 800))

    def segment(number: int) -> int:
        total = 0
        kwargs: dict[str, Any] = {
            "TableName": table,
            "Select": "COUNT",
            "ConsistentRead": True,
            "Segment": number,
            "TotalSegments": segments,
        }
        while True:
            page = client.scan(**kwargs)
            total += page["Count"]
            if "LastEvaluatedKey" not in page:
                return total
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    with ThreadPoolExecutor(max_workers=min(16, segments)) as pool:
        return sum(pool.map(segment, range(segments)))


class BenchError(RuntimeError):
    pass


def verify_count(client: Any, table: str, expected: int, what: str) -> int:
    found = count_items(client, table, expected)
    if found != expected:
        raise BenchError(f"{what}: the table {table} holds {found} items, {expected} were written: items were LOST")
    return found


# --- the plain boto3 ways ---------------------------------------------------------------


def run_batch_writer(
    table: str, rows: Sequence[tuple], url: str | None = None, calls: dict[str, int] | None = None
) -> float:
    """boto3's ``Table.batch_writer()`` in one thread (botocore's default retries); seconds taken.

    ``calls``, if given, counts BatchWriteItem answers and those that carried UnprocessedItems.
    """
    import boto3

    dynamodb = boto3.session.Session().resource("dynamodb", endpoint_url=url or endpoint(), config=boto_config())
    if calls is not None:

        def count(parsed: dict[str, Any] | None = None, **_: Any) -> None:
            calls["answers"] = calls.get("answers", 0) + 1
            if parsed and parsed.get("UnprocessedItems"):
                calls["with_unprocessed"] = calls.get("with_unprocessed", 0) + 1

        dynamodb.meta.client.meta.events.register("after-call.dynamodb.BatchWriteItem", count)
    target = dynamodb.Table(table)
    began = time.perf_counter()
    # A fresh dict per put, as a script would build it (the resource serializes in place).
    with target.batch_writer() as batch:
        for row in rows:
            batch.put_item(Item=python_item(row))
    return time.perf_counter() - began


def run_threaded(client: Any, table: str, batches: Sequence[list[dict[str, Any]]], threads: int) -> float:
    """A plain threaded ``batch_write_item`` loop; UnprocessedItems are resent after a short backoff."""
    lock = threading.Lock()
    source = iter(batches)

    def work() -> int:
        calls = 0
        while True:
            with lock:
                batch = next(source, None)
            if batch is None:
                return calls
            requests = batch
            delay = 0.05
            while requests:
                response = client.batch_write_item(RequestItems={table: requests})
                calls += 1
                requests = (response.get("UnprocessedItems") or {}).get(table) or []
                if requests:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-writer") as pool:
        futures = [pool.submit(work) for _ in range(threads)]
        for future in futures:
            future.result()
    return time.perf_counter() - began


def to_batches(rows: Sequence[tuple]) -> list[list[dict[str, Any]]]:
    requests = [{"PutRequest": {"Item": wire_item(row)}} for row in rows]
    return [requests[i : i + 25] for i in range(0, len(requests), 25)]


# --- bulkwrites -------------------------------------------------------------------------


class Workers:
    """``manage.py rqworker bulkwrites`` processes started by the bench (and only those).

    They are started, and registered with RQ, before a job's clock starts: operators run
    workers all the time, and a worker's start-up (~1.5 s of imports) is not part of a job.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spawn(self, count: int, env: dict[str, str], label: str) -> list[subprocess.Popen[bytes]]:
        started = []
        for i in range(count):
            path = self.log_dir / f"{label}-worker{i}.log"
            with path.open("ab") as out:
                process = subprocess.Popen(
                    [sys.executable, "manage.py", "rqworker", "bulkwrites"],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            self.processes.append((process, path))
            started.append(process)
        return started

    def wait_ready(self, processes: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
        """Until every process is registered with RQ and listening on the bench queue."""
        from redis import Redis
        from rq import Worker

        pids = {p.pid for p in processes}
        connection = Redis.from_url(bench_redis_url())
        deadline = time.monotonic() + timeout
        while True:
            listening = {w.pid for w in Worker.all(connection=connection) if w.get_state() == "idle"}
            if pids <= listening:
                return
            if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                raise BenchError("workers did not start\n" + self.log_tail(processes))
            time.sleep(0.05)

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        for process, _ in self.processes:
            self.stop(process)

    def log_tail(self, processes: list[subprocess.Popen[bytes]], lines: int = 15) -> str:
        out = []
        for process, path in self.processes:
            if process in processes:
                with contextlib.suppress(OSError):
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                    out.append(f"--- {path.name} (exit {process.poll()}):\n" + "\n".join(tail))
        return "\n".join(out)


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(REDIS_URL=bench_redis_url(), PYTHONUNBUFFERED="1", DJANGO_SETTINGS_MODULE="project.settings", **extra)
    return env


@contextlib.contextmanager
def env_override(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Bulkwrites:
    """Creates, stages, starts and watches the bench's jobs."""

    def __init__(self, workers: Workers, keep_jobs: bool) -> None:
        from bulkwrites.models import Job

        self.Job = Job
        self.workers = workers
        self.keep_jobs = keep_jobs
        self.active_job: int | None = None

    def staged_job(
        self, csv_path: Path, table: str, *, workers: int, concurrency: int, job_endpoint: str | None = None
    ) -> Any:
        from bulkwrites.services import create, work

        with csv_path.open("rb") as upload, env_override(AWS_ENDPOINT_URL_DYNAMODB=job_endpoint or endpoint()):
            job = create.job_create_from_file(
                upload=upload, file_name=csv_path.name, table_name=table, concurrency=concurrency, workers=workers
            )
        try:
            staged = work.job_stage(job)
        except BaseException:
            delete_job(job)
            raise
        job.refresh_from_db()
        if not staged:
            message = f"job {job.pk} could not be staged: {job.error_code} {job.error_message}"
            delete_job(job)
            raise BenchError(message)
        return job

    def run(self, job: Any, *, expected: int, workers: int, env: dict[str, str], label: str) -> dict[str, Any]:
        """Timed: job_start + spawning the workers, until the job has finished."""
        from bulkwrites.models import JobStatus
        from bulkwrites.services import control

        if job.total_items != expected:
            raise BenchError(f"job {job.pk} staged {job.total_items} items, expected {expected}")
        timeout = max(300.0, expected / 100)
        processes = self.workers.spawn(workers, env, f"{label}-job{job.pk}")
        self.workers.wait_ready(processes)
        self.active_job = job.pk
        began = time.perf_counter()
        control.job_start(job=job)
        exited_at = None
        while True:
            status = self.Job.objects.filter(pk=job.pk).values_list("status", flat=True).get()
            if status in JobStatus.finished():
                break
            now = time.perf_counter()
            if all(p.poll() is not None for p in processes):
                exited_at = exited_at or now
                if now - exited_at > 5:  # the last outcome may still be committing: give it a moment
                    raise BenchError(
                        f"job {job.pk} is {status} but its workers have exited\n" + self.workers.log_tail(processes)
                    )
            if now - began > timeout:
                tail = self.workers.log_tail(processes)
                raise BenchError(f"job {job.pk} not finished after {timeout:.0f} s\n{tail}")
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - began
        self.active_job = None
        for process in processes:  # warm shutdown: a task still returning is let finish
            self.workers.stop(process)
        job.refresh_from_db()
        if job.status != JobStatus.SUCCEEDED or job.succeeded_items != expected:
            raise BenchError(
                f"job {job.pk} ended {job.status} with {job.succeeded_items}/{expected} succeeded, "
                f"{job.failed_items} failed: {job.error_code} {job.error_message}\n" + self.workers.log_tail(processes)
            )
        running_seconds = (job.finished_at - job.started_at).total_seconds() if job.started_at else None
        return {
            **self.slice_run_totals(job.pk),
            "job_id": job.pk,
            "seconds": elapsed,
            "items_per_s": expected / elapsed,
            "job_running_seconds": running_seconds,
            "calls": job.calls,
            "throttled_calls": job.throttled_calls,
            "unprocessed_returned": job.unprocessed_returned,
            "consumed_wcu": job.consumed_wcu,
        }

    @staticmethod
    def slice_run_totals(job_id: int) -> dict[str, Any]:
        """Where a job's time went, from its SliceRun audit rows."""
        from django.db.models import Count, F, Sum

        from bulkwrites.models import SliceRun

        totals = SliceRun.objects.filter(job_id=job_id).aggregate(
            slices=Count("id"),
            slice_seconds=Sum(F("finished_at") - F("started_at")),
            ddb_latency_ms=Sum("latency_ms"),
        )
        span = totals["slice_seconds"]
        return {
            "slice_runs": totals["slices"],
            "slice_seconds_sum": span.total_seconds() if span is not None else None,
            "ddb_call_seconds_sum": (totals["ddb_latency_ms"] or 0) / 1000,
        }

    def after(self, job: Any) -> None:
        """Untimed cleanup: the stored copy of the CSV always goes; the job too, unless --keep-jobs."""
        delete_job(job, keep_record=self.keep_jobs)

    def cancel_active(self) -> None:
        if self.active_job is None:
            return
        from bulkwrites.services import control

        with contextlib.suppress(Exception):
            job = self.Job.objects.get(pk=self.active_job)
            if not job.is_finished:
                control.job_cancel(job=job)
                log(f"cancelled bench job {job.pk}")
        self.active_job = None


def delete_job(job: Any, *, keep_record: bool = False) -> None:
    """Remove a bench job's stored source file and (unless ``keep_record``) the job with its items."""
    if job.source_file:
        with contextlib.suppress(OSError):
            job.source_file.delete(save=keep_record)
    if not keep_record:
        type(job).objects.filter(pk=job.pk).delete()


def note_upload_cap(notes: list[str], size: int, what: str) -> None:
    if size > APP_UPLOAD_CAP:
        note = (
            f"{what} ({size / 1e6:.0f} MB) is larger than the app's upload cap (BULKWRITES_MAX_UPLOAD_BYTES = "
            f"{APP_UPLOAD_CAP / 1e6:.0f} MB): the bench raises the cap"
        )
        if note not in notes:
            notes.append(note)


def clear_bench_queue() -> None:
    import django_rq

    queue = django_rq.get_queue("bulkwrites")
    left = queue.count
    if left:
        log(f"emptying {left} leftover RQ job(s) from the bench queue (Redis database {BENCH_REDIS_DB})")
        queue.empty()


def warn_about_stalled_jobs() -> None:
    """Workers sweep *every* stalled active job into their own queue: say so if there are any."""
    from bulkwrites.models import Job

    active = list(Job.objects.active().values_list("pk", flat=True)[:20])
    if active:
        log(
            f"WARNING: active jobs already in the database {active}: the bench's workers' sweeper may "
            "re-enqueue stalled ones into the bench queue and work on them"
        )


# --- statistics -------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], key: str = "items_per_s") -> dict[str, Any]:
    values = [r[key] for r in runs]
    return {
        "median": statistics.median(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "runs": len(values),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# --- the parts of the benchmark ----------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.client = make_client(pool=64)
        self.tables = Tables(self.client)
        self.workers = Workers(workdir)
        self.app = Bulkwrites(self.workers, args.keep_jobs)
        self.results: dict[str, Any] = {"ways": {}, "notes": []}
        self._rows: list[tuple] | None = None
        self._csv: Path | None = None

    def skipped(self, *names: str) -> bool:
        return any(n in self.args.skip for n in names)

    @property
    def rows(self) -> list[tuple]:
        if self._rows is None:
            n = max(self.args.items, self.capacity_items() if not self.skipped("capacity") else 0)
            log(f"generating {n} items of {self.args.item_bytes} bytes (seed {SEED})")
            self._rows = make_items(n, self.args.item_bytes)
        return self._rows

    @property
    def items_csv(self) -> Path:
        if self._csv is None:
            self._csv = write_items_csv(self.workdir / "items.csv", self.rows[: self.args.items])
            size = self._csv.stat().st_size
            log(f"wrote {size / 1e6:.1f} MB CSV of {self.args.items} items")
            note_upload_cap(self.results["notes"], size, "the items' CSV")
        return self._csv

    def capacity_items(self) -> int:
        return min(self.args.items, int(self.args.capacity_wcu * 30))

    def record(self, way: str, runs: list[dict[str, Any]], **extra: Any) -> None:
        self.results["ways"][way] = {**summarize(runs), "raw": runs, **extra}
        s = self.results["ways"][way]
        log(f"{way}: median {s['median']:.0f} items/s (min {s['min']:.0f}, max {s['max']:.0f}, {s['runs']} runs)")

    # 1. boto3 batch_writer
    def batch_writer(self) -> None:
        n = self.args.items
        rows = self.rows[:n]
        runs = []
        for k in range(self.args.runs):
            with self.tables.fresh("bw") as table:
                seconds = run_batch_writer(table, rows)
                verify_count(self.client, table, n, "boto3_batch_writer")
            runs.append({"seconds": seconds, "items_per_s": n / seconds})
            log(f"boto3_batch_writer run {k + 1}/{self.args.runs}: {n / seconds:.0f} items/s ({seconds:.1f} s)")
        self.record("boto3_batch_writer", runs, threads=1)

    # 2. threaded batch_write_item
    def threaded(self) -> None:
        n = self.args.items
        batches = to_batches(self.rows[:n])
        client = make_client(pool=max(THREAD_COUNTS) + 4)
        sizing_n = max(25, n // 4)
        sizing_batches = to_batches(self.rows[:sizing_n])
        sizing = []
        for threads in THREAD_COUNTS:
            with self.tables.fresh(f"th{threads}") as table:
                seconds = run_threaded(client, table, sizing_batches, threads)
                verify_count(self.client, table, sizing_n, f"threaded sizing ({threads} threads)")
            rate = sizing_n / seconds
            sizing.append({"threads": threads, "items": sizing_n, "seconds": seconds, "items_per_s": rate})
            log(f"threaded sizing: {threads:2d} threads {sizing_n / seconds:.0f} items/s")
        # One sizing run each is noisy (up to ~25 % here): take the most threads within 10 % of the
        # fastest, since this way stands for the ceiling and more calls in flight rarely lower it.
        fastest = max(x["items_per_s"] for x in sizing)
        best = max(x["threads"] for x in sizing if x["items_per_s"] >= 0.9 * fastest)
        runs = []
        for k in range(self.args.runs):
            with self.tables.fresh(f"th{best}") as table:
                seconds = run_threaded(client, table, batches, best)
                verify_count(self.client, table, n, "threaded_batch_write_item")
            runs.append({"seconds": seconds, "items_per_s": n / seconds})
            log(f"threaded ({best} threads) run {k + 1}/{self.args.runs}: {n / seconds:.0f} items/s ({seconds:.1f} s)")
        self.record("threaded_batch_write_item", runs, threads=best, sizing=sizing)

    # 3. bulkwrites
    def bulkwrites(self, way: str, *, workers: int, concurrency: int, runs_wanted: int) -> None:
        n = self.args.items
        runs = []
        for k in range(runs_wanted):
            with self.tables.fresh(f"bw{workers}c{concurrency}") as table:
                staged_began = time.perf_counter()
                job = self.app.staged_job(self.items_csv, table, workers=workers, concurrency=concurrency)
                staged_seconds = time.perf_counter() - staged_began
                result = self.app.run(job, expected=n, workers=workers, env=worker_env(), label=way)
                verify_count(self.client, table, n, way)
                self.app.after(job)
            result["untimed_create_and_stage_seconds"] = staged_seconds
            runs.append(result)
            log(
                f"{way} run {k + 1}/{runs_wanted}: {result['items_per_s']:.0f} items/s ({result['seconds']:.1f} s; "
                f"job {result['job_id']} running {result['job_running_seconds']:.1f} s; "
                f"staged beforehand in {staged_seconds:.1f} s)"
            )
        self.record(way, runs, workers=workers, concurrency=concurrency)

    # 4. staging
    def staging(self) -> None:
        rows = self.args.staging_rows
        path = write_staging_csv(self.workdir / "staging.csv", rows)
        size = path.stat().st_size
        log(f"wrote staging CSV: {rows} rows, {size / 1e6:.1f} MB ({size / rows:.0f} bytes a row)")
        note_upload_cap(self.results["notes"], size, "the staging file")
        from bulkwrites.models import Job

        runs = []
        with self.tables.fresh("staging") as table:
            for k in range(self.args.staging_runs):
                proc = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--_staging-child", str(path), table],
                    cwd=ROOT,
                    env=dict(os.environ),
                    capture_output=True,
                    text=True,
                    timeout=3600,
                )
                result = {}
                with contextlib.suppress(ValueError, IndexError):
                    result = json.loads(proc.stdout.strip().splitlines()[-1])
                job = Job.objects.filter(pk=result.get("job_id")).first() if result else None
                began = time.perf_counter()
                if job is not None:
                    delete_job(job)
                if proc.returncode != 0 or not result.get("staged"):
                    raise BenchError(f"staging child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
                result["untimed_delete_seconds"] = time.perf_counter() - began
                if result["total_items"] != rows:
                    raise BenchError(f"staging: job {result['job_id']} staged {result['total_items']} items of {rows}")
                result["rows_per_s"] = rows / result["seconds"]
                result["peak_rss_mb"] = result["peak_rss_kb"] / 1024
                result["baseline_rss_mb"] = result["baseline_rss_kb"] / 1024
                runs.append(result)
                log(
                    f"staging run {k + 1}/{self.args.staging_runs}: {result['rows_per_s']:.0f} rows/s "
                    f"({result['seconds']:.1f} s: create {result['create_seconds']:.1f} s + stage "
                    f"{result['stage_seconds']:.1f} s), peak RSS {result['peak_rss_mb']:.0f} MB "
                    f"(after Django setup {result['baseline_rss_mb']:.0f} MB); job deleted in "
                    f"{result['untimed_delete_seconds']:.1f} s"
                )
        self.results["staging"] = {
            "rows": rows,
            "file_bytes": size,
            **{f"rows_per_s_{k}": v for k, v in summarize(runs, "rows_per_s").items() if k != "runs"},
            "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in runs),
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
            "baseline_rss_mb_median": statistics.median(r["baseline_rss_mb"] for r in runs),
            "runs": len(runs),
            "raw": runs,
        }
        path.unlink()

    # 5. capacity
    def capacity(self) -> None:
        from faultproxy import FaultProxy

        r = self.args.capacity_wcu
        m = self.capacity_items()
        rows = self.rows[:m]
        csv_path = write_items_csv(self.workdir / "capacity.csv", rows)
        out: dict[str, Any] = {"capacity_wcu": r, "items": m, "item_bytes": self.args.item_bytes, "ways": {}}
        with FaultProxy(upstream=endpoint(), seed=1) as proxy:
            for way in ("boto3_batch_writer", "bulkwrites_1_worker"):
                runs = []
                for k in range(self.args.capacity_runs):
                    with self.tables.fresh(f"cap-{way[:5]}") as table:
                        if way == "boto3_batch_writer":
                            proxy.configure(capacity_wcu=r)
                            proxy.reset_stats()
                            answers: dict[str, int] = {}
                            seconds = run_batch_writer(table, rows, url=proxy.url, calls=answers)
                            stats = proxy.stats()
                            extra: dict[str, Any] = {"calls_with_unprocessed": answers.get("with_unprocessed", 0)}
                        else:
                            job = self.app.staged_job(
                                csv_path, table, workers=1, concurrency=default_concurrency(), job_endpoint=proxy.url
                            )
                            proxy.configure(capacity_wcu=r)
                            proxy.reset_stats()
                            env = worker_env(AWS_ENDPOINT_URL_DYNAMODB=proxy.url)
                            extra = self.app.run(job, expected=m, workers=1, env=env, label="capacity")
                            seconds = extra.pop("seconds")
                            extra.pop("items_per_s")
                            stats = proxy.stats()
                            # The job counts calls that were throttled or carried unprocessed items.
                            extra["calls_with_unprocessed"] = max(
                                0, extra["throttled_calls"] - stats["throttled_calls"]
                            )
                            self.app.after(job)
                        verify_count(self.client, table, m, f"capacity {way}")
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
                        f"capacity {way} run {k + 1}/{self.args.capacity_runs}: {run['wcu_per_s']:.0f} WCU/s = "
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
        self.results["capacity"] = out

    def run(self) -> dict[str, Any]:
        a = self.args
        if not self.skipped("boto3_batch_writer", "batch_writer"):
            self.batch_writer()
        if not self.skipped("threaded_batch_write_item", "threaded"):
            self.threaded()
        if not self.skipped("bulkwrites"):
            if not self.skipped("bulkwrites_1_worker"):
                self.bulkwrites("bulkwrites_1_worker", workers=1, concurrency=default_concurrency(), runs_wanted=a.runs)
            if not self.skipped("bulkwrites_2_workers"):
                self.bulkwrites(
                    "bulkwrites_2_workers", workers=2, concurrency=default_concurrency(), runs_wanted=a.runs
                )
            if not self.skipped("bulkwrites_1_worker_c4", "c4") and a.variant_runs > 0:
                self.bulkwrites("bulkwrites_1_worker_c4", workers=1, concurrency=4, runs_wanted=a.variant_runs)
        if not self.skipped("staging") and a.staging_runs > 0:
            self.staging()
        if not self.skipped("capacity") and a.capacity_runs > 0:
            self.capacity()
        if not self.skipped("chaos") and a.chaos_runs > 0:
            import chaos  # type: ignore[import-not-found]  # bench/chaos.py, beside this script

            chaos.run(self, sys.modules[__name__])
        if not self.skipped("verify"):
            from bench import verify

            verify.measure(self, sys.modules[__name__])  # read-back verification next to write throughput
        ways = self.results["ways"]

        def med(way: str) -> float | None:
            return ways.get(way, {}).get("median")

        self.results["ratios"] = {
            "threaded/batch_writer": ratio(med("threaded_batch_write_item"), med("boto3_batch_writer")),
            "bulkwrites_1/threaded": ratio(med("bulkwrites_1_worker"), med("threaded_batch_write_item")),
            "bulkwrites_2/threaded": ratio(med("bulkwrites_2_workers"), med("threaded_batch_write_item")),
            "bulkwrites_1_c4/threaded": ratio(med("bulkwrites_1_worker_c4"), med("threaded_batch_write_item")),
            "bulkwrites_1/batch_writer": ratio(med("bulkwrites_1_worker"), med("boto3_batch_writer")),
        }
        return self.results


# --- the staging child ------------------------------------------------------------------


def vm_hwm_kb() -> int | None:
    """Peak RSS of this process's own address space (``VmHWM``), in KB.

    Not ``ru_maxrss``: Linux carries it over ``fork``/``exec`` (``exec`` keeps the larger of the
    old and the new image's peak), so a child started by the bench would report the bench's own
    RSS whenever that is larger than its own.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def staging_child(path: str, table: str) -> None:
    """Upload to a staged job in this process; report time and peak RSS as JSON on stdout."""
    setup_django()
    from bulkwrites.services import create, work

    baseline = vm_hwm_kb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    with open(path, "rb") as upload:
        job = create.job_create_from_file(upload=upload, file_name="staging.csv", table_name=table)
    created = time.perf_counter()
    error = ""
    try:
        staged = work.job_stage(job)
    except Exception as exc:  # reported with the job id, so the bench can delete the job
        staged, error = False, f"{type(exc).__name__}: {exc}"
    done = time.perf_counter()
    job.refresh_from_db()
    if not staged:
        error = error or f"{job.error_code} {job.error_message}"
        print(f"staging failed: {error}", file=sys.stderr)
    result = {
        "job_id": job.pk,
        "staged": staged,
        "error": error,
        "total_items": job.total_items,
        "failed_items": job.failed_items,
        "seconds": done - began,
        "create_seconds": created - began,
        "stage_seconds": done - created,
        "peak_rss_kb": vm_hwm_kb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "baseline_rss_kb": baseline,
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(result))
    sys.exit(0 if staged else 1)


# --- output -----------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    ways = results["ways"]
    print()
    print(f"bulkwrites benchmark: {args.items} items of {args.item_bytes} bytes, DynamoDB Local, {args.runs} runs")
    print(f"{'way':<28} {'median items/s':>14} {'min':>8} {'max':>8} {'runs':>5}  notes")
    for way in WAYS:
        if way not in ways:
            continue
        s = ways[way]
        if "threads" in s:
            note = f"{s['threads']} thread(s)"
        else:
            note = f"{s['workers']} worker(s), concurrency {s['concurrency']}"
        if way.startswith("bulkwrites"):
            raw = s["raw"]
            spawn = statistics.median(r["seconds"] - (r["job_running_seconds"] or 0) for r in raw)
            slots = s["workers"] * s["concurrency"]
            busy = statistics.median(
                r["ddb_call_seconds_sum"] / (slots * r["job_running_seconds"]) for r in raw if r["job_running_seconds"]
            )
            note += f"; {spawn:.1f} s before the job ran; call slots busy {100 * busy:.0f}%"
        if s["runs"] < 3:
            note += f" [only {s['runs']} run(s)]"
        print(f"{way:<28} {fmt(s['median']):>14} {fmt(s['min']):>8} {fmt(s['max']):>8} {s['runs']:>5}  {note}")
    sizing = ways.get("threaded_batch_write_item", {}).get("sizing")
    if sizing:
        print("threaded sizing (items/s): " + ", ".join(f"{x['threads']}t {x['items_per_s']:.0f}" for x in sizing))
    print()
    for name, value in results.get("ratios", {}).items():
        if value is not None:
            print(f"{name:<28} {value:.2f}")
    st = results.get("staging")
    if st:
        print()
        print(
            f"staging {st['rows']} rows ({st['file_bytes'] / 1e6:.0f} MB CSV), upload to staged job: "
            f"median {st['rows_per_s_median']:.0f} rows/s (min {st['rows_per_s_min']:.0f}, max "
            f"{st['rows_per_s_max']:.0f}, {st['runs']} run(s)); peak RSS {st['peak_rss_mb_median']:.0f} MB "
            f"(max {st['peak_rss_mb_max']:.0f}; {st['baseline_rss_mb_median']:.0f} MB after Django setup)"
            + (f" [only {st['runs']} run(s)]" if st["runs"] < 3 else "")
        )
    cap = results.get("capacity")
    if cap:
        print()
        print(f"capacity: FaultProxy bucket of {cap['capacity_wcu']:g} WCU/s, {cap['items']} items of 1 WCU each")
        for way, c in cap["ways"].items():
            raw = c["raw"]
            print(
                f"  {way:<22} {100 * c['share_median']:5.1f}% of capacity (min {100 * c['share_min']:.1f}, max "
                f"{100 * c['share_max']:.1f}; sustained beyond the 1 s burst "
                f"{100 * statistics.median(x['sustained_share'] for x in raw):.1f}%), "
                f"{c['batch_write_calls_median']:.0f} calls: {100 * c['throttled_call_share_median']:.1f}% throttled, "
                f"{100 * c['unprocessed_call_share_median']:.1f}% carried unprocessed items "
                f"({c['unprocessed_items_median']:.0f} items), {c['runs']} run(s)"
                + (f" [only {c['runs']} run(s)]" if c["runs"] < 3 else "")
            )
    if results.get("chaos"):
        import chaos

        print("\n".join(chaos.report_lines(results)))
    if st:
        ru = statistics.median(r["ru_maxrss_kb"] for r in st["raw"]) / 1024
        print(
            f"(peak RSS is the child's VmHWM; its ru_maxrss says {ru:.0f} MB because Linux carries the "
            "parent's peak over fork/exec)"
        )
    from bench import verify

    verification = verify.report_lines(results)
    if verification:
        print()
        print("\n".join(verification))
    for note in results.get("notes", []):
        print(f"note: {note}")


# --- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--capacity-wcu", type=float, default=1000, help="FaultProxy capacity, WCU/s (default 1000)")
    parser.add_argument("--capacity-runs", type=int, default=1, help="runs of each capacity way (default 1)")
    parser.add_argument("--chaos-items", type=int, default=5000, help="items of the chaos way (default 5000)")
    parser.add_argument("--chaos-runs", type=int, default=3, help="runs of each chaos way (default 3)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(SKIPPABLE)}")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results.json"), help="results file")
    parser.add_argument("--quick", action="store_true", help="items 20000, staging rows 200000, runs 3")
    parser.add_argument(
        "--keep-jobs", action="store_true", help="keep the write jobs (and their items) in the database as an audit"
    )
    parser.add_argument("--_staging-child", nargs=2, metavar=("FILE", "TABLE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.staging_rows, args.runs = 20_000, 200_000, 3
    # The default run keeps to ~10 minutes with one run of the slow parts (1M-row staging, the
    # concurrency-4 variant); --quick measures them --runs times. Capacity: --capacity-runs.
    if args.staging_runs is None:
        args.staging_runs = args.runs if args.quick else 1
    if args.variant_runs is None:
        args.variant_runs = args.runs if args.quick else 1
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - set(SKIPPABLE)
    if unknown:
        parser.error(f"unknown --skip part(s) {sorted(unknown)}; choose from {', '.join(SKIPPABLE)}")
    if args.items < 1 or args.runs < 1:
        parser.error("--items and --runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._staging_child:
        staging_child(*args._staging_child)
        return 0
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
            results = bench.run()
        except BaseException:
            bench.app.cancel_active()
            bench.workers.stop_all()
            raise
        finally:
            bench.tables.delete_all()
    wall = time.perf_counter() - began
    args_out = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items() if k != "_staging_child"}
    document = {"machine": info, "args": args_out, "wall_seconds": wall, **results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
    print_report(results, args)
    print(f"\nwall clock {wall:.0f} s; results in {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"FAILED: {exc}")
        sys.exit(2)
