"""Stream rules against DynamoDB Local's own Streams: what lands in the target table, checkpoints,
a killed worker, throttling on the target, a poisoned record, and the failed-writes ledger."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import override_settings

from bulkwrites.models import StreamFailure, StreamFailureStatus, StreamRule, StreamRuleStatus, StreamShard
from bulkwrites.services.errors import JobError
from bulkwrites.services.streams import consume, rules
from faultproxy import FaultProxy
from tests.conftest import ROOT, TEST_QUEUE, run_cli, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def make_stream_table(dynamodb: Any) -> Iterator[Callable[..., str]]:
    """A table with a DynamoDB Stream (NEW_AND_OLD_IMAGES unless told); deleted after the test."""
    created: list[str] = []

    def make(view_type: str = "NEW_AND_OLD_IMAGES", pk: str = "pk", pk_type: str = "S") -> str:
        name = f"test-src-{uuid.uuid4().hex[:12]}"
        dynamodb.create_table(
            TableName=name,
            AttributeDefinitions=[{"AttributeName": pk, "AttributeType": pk_type}],
            KeySchema=[{"AttributeName": pk, "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": view_type},
        )
        created.append(name)
        return name

    yield make
    for name in created:
        with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
            dynamodb.delete_table(TableName=name)


def put_items(dynamodb: Any, table: str, keys: list[str], **extra: dict[str, Any]) -> None:
    for key in keys:
        dynamodb.put_item(TableName=table, Item={"pk": {"S": key}, "n": {"N": str(len(key))}, **extra})


def delete_items(dynamodb: Any, table: str, keys: list[str]) -> None:
    for key in keys:
        dynamodb.delete_item(TableName=table, Key={"pk": {"S": key}})


def keys_in(scan: Any, table: str) -> set[str]:
    return {item["pk"]["S"] for item in scan(table)}


def test_scavenging_deletes_from_b_what_was_removed_from_a_and_a_second_run_does_nothing(
    dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any
) -> None:
    source, target = make_stream_table(), make_table()
    keys = [f"k{n:03d}" for n in range(60)]
    put_items(dynamodb, source, keys)
    put_items(dynamodb, target, [*keys, "only-in-b-1", "only-in-b-2"])
    delete_items(dynamodb, source, keys[:20])
    put_items(dynamodb, source, [keys[30]], extra={"S": "modified"})  # a MODIFY: not this rule's business

    code, out, err = run_cli(
        "stream", "add", "scavenge", "--source-table", source, "--target-table", target,
        "--on", "REMOVE", "--operation", "delete", "--key", "pk=pk",
    )  # fmt: skip
    assert code == 0, err
    assert "stream rule scavenge (active)" in out
    assert rq_queue.count == 1  # a worker is asked to consume it (none runs here: the CLI does)

    code, out, err = run_cli("stream", "run", "scavenge", "--until-caught-up")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "stream scavenge: 81 records, 20 writes succeeded, 0 failed"
    assert keys_in(scan, target) == {*keys[20:], "only-in-b-1", "only-in-b-2"}

    code, out, err = run_cli("stream", "run", "scavenge", "--until-caught-up")
    assert (code, out.strip()) == (0, "stream scavenge: 0 records, 0 writes succeeded, 0 failed")

    delete_items(dynamodb, source, keys[20:25])
    code, out, err = run_cli("stream", "run", "scavenge", "--until-caught-up")
    assert (code, out.strip()) == (0, "stream scavenge: 5 records, 5 writes succeeded, 0 failed")
    assert keys_in(scan, target) == {*keys[25:], "only-in-b-1", "only-in-b-2"}

    (shard,) = StreamShard.objects.filter(rule__name="scavenge")
    assert (shard.records_read, shard.writes_succeeded, shard.writes_failed) == (86, 25, 0)
    assert shard.checkpoint and not shard.leased_by
    code, out, _ = run_cli("stream", "status", "scavenge")
    assert "86 records, 25 writes succeeded, 0 failed" in out
