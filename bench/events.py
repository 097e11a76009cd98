"""Benchmark: event batches and stream rules on DynamoDB Local.

Run with the services' environment::

    eval "$(make -s services)" && .venv/bin/python bench/events.py [--records 1000] [--runs 3]

``lambda_batch`` (no Django): one SQS batch of ``--records`` messages, each a put of a ~1 KB item,
written three ways on a fresh table per run, every run checked by a ``Scan``:

``process_event``
    ``bulkwrites.dynamo.events.process_event`` (4 calls in flight), per-record outcomes.
``per_record_put_item``
    What a Powertools record handler usually does: one ``PutItem`` per record, in order.
``batch_writer``
    boto3's ``Table.batch_writer()`` over the whole batch (no per-record outcome at all).

and once more through the fault proxy with 30 % of each call's requests left unprocessed:
``process_event`` must still write every item and report no failure.

``stream_rule``: ``--stream-records`` items put into a source table with a stream, then
removed; a scavenging rule (``REMOVE`` → delete from the target) consumed in the foreground
until caught up (``stream_rule_consume``); records/s over the whole stream (INSERTs included) and
deletes/s. Needs PostgreSQL and Redis (the app's database, migrated here first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from bulkwrites.dynamo.client import make_client  # noqa: E402
from bulkwrites.dynamo.events import process_event  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from tests.lambda_events import batch, sqs_record  # noqa: E402


def admin_client() -> Any:
    return boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 5}))


def new_table(client: Any, *, stream: bool = False) -> str:
    name = f"bench-events-{uuid.uuid4().hex[:10]}"
    extra: dict[str, Any] = {}
    if stream:
        extra["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    client.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
        **extra,
    )
    return name


def count(client: Any, table: str) -> int:
    total = 0
    kwargs: dict[str, Any] = {"TableName": table, "Select": "COUNT", "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        total += int(page["Count"])
        if "LastEvaluatedKey" not in page:
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def sqs_batch(records: int) -> dict[str, Any]:
    body = "x" * 1000
    return batch(*(sqs_record({"pk": f"k{n:06d}", "body": body}, message_id=f"m{n}") for n in range(records)))


def to_put(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    payload = json.loads(record["body"])
    return [{"PutRequest": {"Item": {"pk": {"S": payload["pk"]}, "body": {"S": payload["body"]}}}}]


def way_process_event(event: dict[str, Any], table: str, client: Any) -> int:
    response = process_event(event, to_put, table=table, client=client, key=["pk"])
    return len(response["batchItemFailures"])


def way_per_record(event: dict[str, Any], table: str, client: Any) -> int:
    for record in event["Records"]:
        (request,) = to_put(record)
        client.put_item(TableName=table, Item=request["PutRequest"]["Item"])
    return 0


def way_batch_writer(event: dict[str, Any], table: str, resource: Any) -> int:
    with resource.Table(table).batch_writer() as writer:
        for record in event["Records"]:
            payload = json.loads(record["body"])
            writer.put_item(Item={"pk": payload["pk"], "body": payload["body"]})
    return 0


def lambda_batch(args: argparse.Namespace) -> dict[str, Any]:
    client = admin_client()
    event = sqs_batch(args.records)
    # Clients are made before the clock (a warm Lambda keeps them): only the writing is timed.
    ways: dict[str, tuple[Callable[[dict[str, Any], str, Any], int], Any]] = {
        "process_event": (way_process_event, make_client(for_writing=True)),
        "per_record_put_item": (way_per_record, admin_client()),
        "batch_writer": (way_batch_writer, boto3.resource("dynamodb")),
    }
    results: dict[str, Any] = {}
    for name, (way, way_client) in ways.items():
        seconds = []
        for _ in range(args.runs):
            table = new_table(client)
            started = time.perf_counter()
            failures = way(event, table, way_client)
            seconds.append(time.perf_counter() - started)
            written = count(client, table)
            client.delete_table(TableName=table)
            if (failures, written) != (0, args.records):
                raise RuntimeError(f"{name}: {failures} failures, {written} of {args.records} written")
        results[name] = {
            "median_seconds": round(statistics.median(seconds), 3),
            "records_per_second": round(args.records / statistics.median(seconds)),
            "runs": [round(s, 3) for s in seconds],
        }
        print(
            f"{name:>22}: {results[name]['records_per_second']:>7,} records/s  {results[name]['runs']}", file=sys.stderr
        )
    with FaultProxy(upstream=os.environ["AWS_ENDPOINT_URL_DYNAMODB"], seed=3) as proxy:
        proxy.configure(unprocessed_share=0.3, seed=3)
        table = new_table(client)
        started = time.perf_counter()
        failures = way_process_event(event, table, make_client(for_writing=True, endpoint=proxy.url))
        elapsed = time.perf_counter() - started
        written = count(client, table)
        client.delete_table(TableName=table)
        stats = proxy.stats()
    results["process_event_30pct_unprocessed"] = {
        "seconds": round(elapsed, 3),
        "failures": failures,
        "written": written,
        "unprocessed_returned": stats["unprocessed_items_returned"],
        "calls": stats["batch_write_calls"],
    }
    print(f"  with 30 % unprocessed: {results['process_event_30pct_unprocessed']}", file=sys.stderr)
    return results


def stream_rule(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-" + uuid.uuid4().hex * 2)
    import django

    django.setup()
    from django.core.management import call_command

    from bulkwrites.models import StreamRule
    from bulkwrites.services.streams import consume, rules

    call_command("migrate", verbosity=0)
    client = admin_client()
    source, target = new_table(client, stream=True), new_table(client)
    keys = [f"k{n:06d}" for n in range(args.stream_records)]
    for table in (source, target):
        for start in range(0, len(keys), 25):
            puts = [{"PutRequest": {"Item": {"pk": {"S": k}, "n": {"N": "1"}}}} for k in keys[start : start + 25]]
            client.batch_write_item(RequestItems={table: puts})
    for start in range(0, len(keys), 25):
        deletes = [{"DeleteRequest": {"Key": {"pk": {"S": k}}}} for k in keys[start : start + 25]]
        client.batch_write_item(RequestItems={source: deletes})
    rule = rules.stream_rule_create(
        name=f"bench-{uuid.uuid4().hex[:8]}", source_table=source, target_table=target, events=["REMOVE"],
        operation="delete", mapping_text="pk -> pk", start=False,
    )  # fmt: skip
    try:
        started = time.perf_counter()
        report = consume.stream_rule_consume(rule, worker="bench", until_caught_up=True)
        elapsed = time.perf_counter() - started
        left = count(client, target)
    finally:
        StreamRule.objects.filter(pk=rule.pk).delete()
        client.delete_table(TableName=source)
        client.delete_table(TableName=target)
    if not report.caught_up or left:
        raise RuntimeError(f"the stream rule did not finish: {report}, {left} items left in the target")
    result = {
        "records": report.records,
        "deletes": report.writes_succeeded,
        "seconds": round(elapsed, 3),
        "records_per_second": round(report.records / elapsed),
        "deletes_per_second": round(report.writes_succeeded / elapsed),
    }
    print(f"           stream_rule: {result}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000, help="records in the Lambda batch (default 1000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stream-records", type=int, default=5000, help="items put then removed (default 5000)")
    parser.add_argument("--skip", default="", help="lambda_batch and/or stream_rule")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if "lambda_batch" not in args.skip:
        results["lambda_batch"] = lambda_batch(args)
    if "stream_rule" not in args.skip:
        results["stream_rule"] = stream_rule(args)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
