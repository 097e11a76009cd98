"""The plain ways a script would take, no ledger: the figures bulkwrites is measured against.

``boto3_batch_writer``
    ``Table.batch_writer()``, one thread: what most scripts do.
``threaded_batch_write_item``
    A threaded loop of ``batch_write_item`` (25 per call, UnprocessedItems resent after a short
    backoff) on one shared boto3 client: the SDK's ceiling on this machine.
``plain_http``
    The same ``BatchWriteItem`` bodies over ``http.client``, signed here (SigV4, a few lines of
    ``hmac``), no SDK, 16 threads, one keep-alive connection each: what the endpoint itself allows.
``csv_threads``
    The script of issue 15's first target: read the CSV with the ``csv`` module, 25 rows a batch,
    written by 16 threads of ``batch_write_item`` (UnprocessedItems retried), no ledger; timed from
    opening the file until the last call has returned.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import http.client
import json
import queue
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bench.common import BenchError, CpuMeter, log, make_client, region
from bench.items import ITEM_HEADER, Row, python_item, to_batches
from bench.tables import verify_count

if TYPE_CHECKING:
    from bench.context import Bench

THREAD_COUNTS = (2, 4, 8, 16)
SCRIPT_THREADS = 16  # the plain script's threads, as the issue states it
TARGET_PREFIX = "DynamoDB_20120810."
RETRYABLE_CODES = ("ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded")


# --- boto3 ------------------------------------------------------------------------------


def run_batch_writer(
    table: str, rows: Sequence[Row], url: str | None = None, calls: dict[str, int] | None = None
) -> float:
    """boto3's ``Table.batch_writer()`` in one thread (botocore's default retries); seconds taken.

    ``calls``, if given, counts BatchWriteItem answers and those that carried UnprocessedItems.
    """
    import boto3

    from bench.common import boto_config, endpoint

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


def write_batch(client: Any, table: str, requests: list[dict[str, Any]]) -> int:
    """One batch until every request is written (UnprocessedItems resent after a short backoff); calls made."""
    calls, delay = 0, 0.05
    while requests:
        response = client.batch_write_item(RequestItems={table: requests})
        calls += 1
        requests = (response.get("UnprocessedItems") or {}).get(table) or []
        if requests:
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    return calls


def run_threaded(client: Any, table: str, batches: Sequence[list[dict[str, Any]]], threads: int) -> float:
    """A plain threaded ``batch_write_item`` loop over prepared batches; seconds taken."""
    lock = threading.Lock()
    source = iter(batches)

    def work() -> int:
        calls = 0
        while True:
            with lock:
                batch = next(source, None)
            if batch is None:
                return calls
            calls += write_batch(client, table, batch)

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-writer") as pool:
        futures = [pool.submit(work) for _ in range(threads)]
        for future in futures:
            future.result()
    return time.perf_counter() - began


def run_csv_threads(client: Any, csv_path: Path, table: str, threads: int = SCRIPT_THREADS) -> float:
    """The hand-written script: ``csv`` reader -> batches of 25 -> ``threads`` writers; seconds from
    opening the file until every batch is written."""
    pending: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=threads * 4)
    errors: list[BaseException] = []

    def writer() -> None:
        while (batch := pending.get()) is not None:
            if not errors:
                try:
                    write_batch(client, table, batch)
                except BaseException as exc:  # re-raised by the reader, after every thread ended
                    errors.append(exc)

    began = time.perf_counter()
    workers = [threading.Thread(target=writer, name=f"csv-writer-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            if next(reader) != ITEM_HEADER:
                raise BenchError(f"{csv_path}: not the bench's items CSV")
            batch: list[dict[str, Any]] = []
            for pk, number, name, flag, pad in reader:
                item: dict[str, Any] = {
                    "pk": {"S": pk},
                    "n": {"N": number},
                    "name": {"S": name},
                    "flag": {"BOOL": flag == "true"},
                    "pad": {"S": pad},
                }
                batch.append({"PutRequest": {"Item": item}})
                if len(batch) == 25:
                    pending.put(batch)
                    batch = []
            if batch:
                pending.put(batch)
    finally:
        for _ in workers:
            pending.put(None)
        for worker in workers:
            worker.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - began


# --- plain HTTP, no SDK -----------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def sigv4_headers(
    body: bytes, *, host: str, target: str, amz_date: str, region: str, access_key: str, secret_key: str
) -> dict[str, str]:
    """The headers of a DynamoDB JSON call signed with AWS Signature Version 4 (``amz_date`` =
    ``YYYYMMDDTHHMMSSZ``): what botocore's ``SigV4Auth`` produces for the same request."""
    content_type = "application/x-amz-json-1.0"
    signed = "content-type;host;x-amz-date;x-amz-target"
    canonical = "\n".join(
        (
            "POST",
            "/",
            "",
            f"content-type:{content_type}",
            f"host:{host}",
            f"x-amz-date:{amz_date}",
            f"x-amz-target:{target}",
            "",
            signed,
            hashlib.sha256(body).hexdigest(),
        )
    )
    day = amz_date[:8]
    scope = f"{day}/{region}/dynamodb/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), "dynamodb"), "aws4_request")
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return {
        "Content-Type": content_type,
        "X-Amz-Target": target,
        "X-Amz-Date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, "
        f"Signature={signature}",
    }


class PlainHttpDynamoDB:
    """DynamoDB's JSON protocol over ``http.client``: one keep-alive connection per thread."""

    def __init__(self, url: str, *, region_name: str, access_key: str, secret_key: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise BenchError(f"the plain HTTP client speaks http:// only, not {url}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.host_header = parts.netloc
        self.region, self.access_key, self.secret_key = region_name, access_key, secret_key
        self.local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self.local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            connection.connect()
            assert connection.sock is not None
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.local.connection = connection
        return connection

    def call(self, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One operation; throttling, 5xx and dropped connections retried with backoff."""
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        delay = 0.05
        for _ in range(20):
            amz_date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            headers = sigv4_headers(
                body,
                host=self.host_header,
                target=TARGET_PREFIX + operation,
                amz_date=amz_date,
                region=self.region,
                access_key=self.access_key,
                secret_key=self.secret_key,
            )
            try:
                connection = self._connection()
                connection.request("POST", "/", body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self.local.connection = None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if response.status == 200:
                answer: dict[str, Any] = json.loads(data)
                return answer
            code = str(json.loads(data or b"{}").get("__type", "")).rsplit("#", 1)[-1]
            if response.status < 500 and code not in RETRYABLE_CODES:
                raise BenchError(f"plain HTTP {operation}: {response.status} {data[:300]!r}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise BenchError(f"plain HTTP {operation}: no answer after 20 attempts")


def plain_http_client(url: str) -> PlainHttpDynamoDB:
    import os

    return PlainHttpDynamoDB(
        url,
        region_name=region(),
        access_key=os.environ.get("AWS_ACCESS_KEY_ID", "local"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "local"),
    )


def run_plain_http(
    url: str, table: str, batches: Sequence[list[dict[str, Any]]], threads: int, *, consumed: bool = False
) -> float:
    """``threads`` threads sending the batches with :class:`PlainHttpDynamoDB`; seconds taken.

    ``consumed``: ask for ``ReturnConsumedCapacity=TOTAL`` on each call, as bulkwrites does.
    """
    extra = {"ReturnConsumedCapacity": "TOTAL"} if consumed else {}
    client = plain_http_client(url)
    lock = threading.Lock()
    source = iter(batches)

    def work() -> None:
        while True:
            with lock:
                batch = next(source, None)
            if batch is None:
                return
            requests, delay = batch, 0.05
            while requests:
                answer = client.call("BatchWriteItem", {"RequestItems": {table: requests}, **extra})
                requests = (answer.get("UnprocessedItems") or {}).get(table) or []
                if requests:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-http") as pool:
        for future in [pool.submit(work) for _ in range(threads)]:
            future.result()
    return time.perf_counter() - began


# --- the ways, measured -----------------------------------------------------------------


def measure_batch_writer(bench: Bench) -> None:
    n = bench.args.items
    rows = bench.rows[:n]
    runs = []
    for k in range(bench.args.runs):
        with bench.tables.fresh("bw") as table:
            meter = CpuMeter()
            seconds = run_batch_writer(table, rows)
            cores = meter.cores()
            verify_count(bench.client, table, n, "boto3_batch_writer")
        runs.append({"seconds": seconds, "items_per_s": n / seconds, "cores": cores})
        log(f"boto3_batch_writer run {k + 1}/{bench.args.runs}: {n / seconds:.0f} items/s ({seconds:.1f} s)")
    bench.record("boto3_batch_writer", runs, threads=1)


def measure_threaded(bench: Bench) -> None:
    """Sized first (2, 4, 8, 16 threads on a quarter of the items, once each; the most threads
    within 10 % of the fastest win), then measured ``--runs`` times."""
    n = bench.args.items
    batches = to_batches(bench.rows[:n])
    client = make_client(pool=max(THREAD_COUNTS) + 4)
    sizing_n = max(25, n // 4)
    sizing_batches = to_batches(bench.rows[:sizing_n])
    sizing = []
    for threads in THREAD_COUNTS:
        with bench.tables.fresh(f"th{threads}") as table:
            seconds = run_threaded(client, table, sizing_batches, threads)
            verify_count(bench.client, table, sizing_n, f"threaded sizing ({threads} threads)")
        rate = sizing_n / seconds
        sizing.append({"threads": threads, "items": sizing_n, "seconds": seconds, "items_per_s": rate})
        log(f"threaded sizing: {threads:2d} threads {sizing_n / seconds:.0f} items/s")
    # One sizing run each is noisy (up to ~25 % here): take the most threads within 10 % of the
    # fastest, since this way stands for the ceiling and more calls in flight rarely lower it.
    fastest = max(x["items_per_s"] for x in sizing)
    best = max(x["threads"] for x in sizing if x["items_per_s"] >= 0.9 * fastest)
    runs = []
    for k in range(bench.args.runs):
        with bench.tables.fresh(f"th{best}") as table:
            meter = CpuMeter()
            seconds = run_threaded(client, table, batches, best)
            cores = meter.cores()
            verify_count(bench.client, table, n, "threaded_batch_write_item")
        runs.append({"seconds": seconds, "items_per_s": n / seconds, "cores": cores})
        log(f"threaded ({best} threads) run {k + 1}/{bench.args.runs}: {n / seconds:.0f} items/s ({seconds:.1f} s)")
    bench.record("threaded_batch_write_item", runs, threads=best, sizing=sizing)


def measure_plain_http(bench: Bench, *, consumed_too: bool = True) -> None:
    """``plain_http``, and with ``consumed_too`` ``plain_http_consumed``: the same calls asking for
    ``ReturnConsumedCapacity=TOTAL`` as bulkwrites does (its rate control and audit need it), run
    after each plain run. DynamoDB Local then does more work per call (measured: ~25 % fewer
    items/s at 16 threads); DynamoDB computes the consumed capacity of every call anyway."""
    from bench.common import endpoint

    n = bench.args.items
    batches = to_batches(bench.rows[:n])
    runs: dict[str, list[dict[str, Any]]] = {"plain_http": [], "plain_http_consumed": []}
    for k in range(bench.args.runs):
        for way in runs if consumed_too else ("plain_http",):
            with bench.tables.fresh("http") as table:
                meter = CpuMeter()
                seconds = run_plain_http(
                    endpoint(), table, batches, SCRIPT_THREADS, consumed=way == "plain_http_consumed"
                )
                cores = meter.cores()
                verify_count(bench.client, table, n, way)
            runs[way].append({"seconds": seconds, "items_per_s": n / seconds, "cores": cores})
            log(f"{way} run {k + 1}/{bench.args.runs}: {n / seconds:.0f} items/s ({seconds:.1f} s)")
    for way, measured in runs.items():
        if measured:
            bench.record(way, measured, threads=SCRIPT_THREADS)


def measure_csv_threads(bench: Bench) -> None:
    n = bench.args.items
    csv_path = bench.items_csv
    client = make_client(pool=SCRIPT_THREADS + 4)
    runs = []
    for k in range(bench.args.runs):
        with bench.tables.fresh("csv") as table:
            meter = CpuMeter()
            seconds = run_csv_threads(client, csv_path, table)
            cores = meter.cores()
            verify_count(bench.client, table, n, "csv_threads")
        runs.append({"seconds": seconds, "items_per_s": n / seconds, "cores": cores})
        log(f"csv_threads run {k + 1}/{bench.args.runs}: {n / seconds:.0f} items/s ({seconds:.1f} s, from the file)")
    bench.record("csv_threads", runs, threads=SCRIPT_THREADS)
