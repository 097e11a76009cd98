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
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
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
    assert shard.checkpoint
    assert not shard.leased_by
    code, out, _ = run_cli("stream", "status", "scavenge")
    assert "86 records, 25 writes succeeded, 0 failed" in out


def batch_put(dynamodb: Any, table: str, items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), 25):
        requests = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        dynamodb.batch_write_item(RequestItems={table: requests})


def batch_delete(dynamodb: Any, table: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 25):
        requests = [{"DeleteRequest": {"Key": {"pk": {"S": k}}}} for k in keys[start : start + 25]]
        dynamodb.batch_write_item(RequestItems={table: requests})


def scavenging_rule(source: str, target: str, *, name: str = "scavenge", **extra: Any) -> StreamRule:
    return rules.stream_rule_create(
        name=name,
        source_table=source,
        target_table=target,
        events=["REMOVE"],
        operation="delete",
        mapping_text="pk -> pk",
        **extra,
    )


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """Writers (and stream readers) in this process go through the fault proxy."""
    with FaultProxy(upstream=os.environ["AWS_ENDPOINT_URL_DYNAMODB"], seed=11) as fault_proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", fault_proxy.url)
        yield fault_proxy


def finished_exactly(shard: StreamShard, rule: StreamRule, scan: Any, target: str) -> None:
    """Wait for the 3,000 records of :func:`removed_from_source` (1,500) to be read; every item
    deleted from the target, each record counted once, nothing in the failed-writes ledger."""
    wait_for(
        lambda: StreamShard.objects.get(pk=shard.pk).records_read == 3000,
        timeout=180,
        interval=0.5,
        what="another worker to finish the stream",
    )
    shard.refresh_from_db()
    assert keys_in(scan, target) == set()  # nothing lost
    assert (shard.records_read, shard.writes_succeeded, shard.writes_failed) == (3000, 1500, 0)
    assert not StreamFailure.objects.filter(rule=rule).exists()


@pytest.mark.slow
def test_a_sigkilled_worker_is_taken_over_from_its_checkpoint_and_nothing_is_lost(
    dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any, worker_process: Any, tmp_path: Any
) -> None:
    # 1,500 INSERT then 1,500 REMOVE records in the stream; the rule enqueued, no worker yet.
    target, _, rule = removed_from_source(dynamodb, make_stream_table, make_table, 1500, start=True)
    with FaultProxy(upstream=os.environ["AWS_ENDPOINT_URL_DYNAMODB"], seed=5) as proxy:
        proxy.configure(latency_ms=150)  # every BatchWriteItem is slow: the kill lands mid-stream
        env = {
            "AWS_ENDPOINT_URL_DYNAMODB": proxy.url,
            "BULKWRITES_LEASE_SECONDS": "5",
            "BULKWRITES_STALL_SECONDS": "5",
            "BULKWRITES_SWEEP_SECONDS": "3",
            "BULKWRITES_STREAM_RECORDS_PER_READ": "50",
        }
        victim = subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", TEST_QUEUE],
            cwd=ROOT,
            env=worker_env(**env),
            stdout=(tmp_path / "victim.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGKILL reaches the forked work horse too
        )
        try:
            wait_for(
                lambda: StreamShard.objects.filter(rule=rule, writes_succeeded__gte=200).exists(),
                timeout=90,
                what="the first worker to delete some items",
            )
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
        finally:
            if victim.poll() is None:
                os.killpg(victim.pid, signal.SIGKILL)
        (shard,) = StreamShard.objects.filter(rule=rule)
        assert shard.writes_succeeded < 1500  # killed mid-stream
        assert shard.leased_by  # its lease is left behind, to expire

        worker_process(**env)  # the sweeper of this worker finds the rule stalled and re-enqueues it
        # Read again from the checkpoint, counted once: the killed worker's unrecorded batch never counted.
        finished_exactly(shard, rule, scan, target)
    assert shard.leased_by != "" or shard.caught_up


@pytest.mark.slow
def test_a_worker_asked_to_stop_hands_its_stream_rule_over_at_once_and_nothing_is_lost(
    dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any, worker_process: Any
) -> None:
    # Before: the worker waited for its horse's 60 s time slice (or, its horse signalled too, the
    # horse died and the shard waited for its lease). Now the consumer stops as for a pause,
    # releases its shard and enqueues its successor. Default lease and stall times: a takeover
    # within 20 s is the hand-over, not the sweeper.
    # 1,500 INSERT then 1,500 REMOVE records in the stream; the rule enqueued, no worker yet.
    target, _, rule = removed_from_source(dynamodb, make_stream_table, make_table, 1500, start=True)
    with FaultProxy(upstream=os.environ["AWS_ENDPOINT_URL_DYNAMODB"], seed=5) as proxy:
        proxy.configure(latency_ms=150)  # every BatchWriteItem is slow: the stop lands mid-stream
        env = {"AWS_ENDPOINT_URL_DYNAMODB": proxy.url, "BULKWRITES_STREAM_RECORDS_PER_READ": "50"}
        first = worker_process(**env)
        wait_for(
            lambda: StreamShard.objects.filter(rule=rule, writes_succeeded__gte=200).exists(),
            timeout=90,
            what="the first worker to delete some items",
        )
        first.process.send_signal(signal.SIGTERM)  # the worker only, as a container runtime does
        first.process.wait(timeout=15)
        (shard,) = StreamShard.objects.filter(rule=rule)
        assert shard.writes_succeeded < 1500  # stopped mid-stream
        assert shard.leased_by == ""  # released, not left to expire
        stopped_at = shard.records_read

        worker_process(**env)
        wait_for(
            lambda: StreamShard.objects.get(pk=shard.pk).records_read > stopped_at,
            timeout=20,
            what="the next worker to take the rule over",
        )
        finished_exactly(shard, rule, scan, target)


def test_throttling_on_the_target_slows_the_rule_but_every_write_lands(
    proxy: FaultProxy, dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any
) -> None:
    source, target = make_stream_table(), make_table()
    keys = [f"k{n:03d}" for n in range(300)]
    batch_put(dynamodb, source, [{"pk": {"S": k}} for k in keys])
    batch_put(dynamodb, target, [{"pk": {"S": k}} for k in [*keys, "keep"]])
    batch_delete(dynamodb, source, keys)
    rule = scavenging_rule(source, target, start=False)
    # A table with 100 WCU/s: calls beyond it come back with unprocessed items or throttled whole.
    proxy.configure(capacity_wcu=100, throttle_share=0.05, seed=3)

    report = consume.stream_rule_consume(rule, worker="test", until_caught_up=True)

    assert report.caught_up
    assert not report.error
    assert (report.records, report.writes_succeeded, report.writes_failed) == (600, 300, 0)
    assert keys_in(scan, target) == {"keep"}
    stats = proxy.stats()
    assert stats["throttled_calls"] > 0
    assert stats["unprocessed_items_returned"] > 0
    assert not StreamFailure.objects.filter(rule=rule).exists()


def removed_from_source(
    dynamodb: Any, make_stream_table: Any, make_table: Any, count: int, *, start: bool = False
) -> tuple[str, list[str], StreamRule]:
    """A source whose ``count`` items were put then deleted (its stream holds both), a target
    holding the same keys, and a scavenging rule between them, started (enqueued) only if
    ``start``: (target, keys, rule)."""
    source, target = make_stream_table(), make_table()
    keys = [f"k{n:02d}" for n in range(count)]
    batch_put(dynamodb, source, [{"pk": {"S": k}} for k in keys])
    batch_put(dynamodb, target, [{"pk": {"S": k}} for k in keys])
    batch_delete(dynamodb, source, keys)
    return target, keys, scavenging_rule(source, target, start=start)


def impatient_writer() -> Any:
    """A writer policy that gives up within a fraction of a second."""
    from bulkwrites.dynamo.backoff import Backoff
    from bulkwrites.dynamo.writer import WriterPolicy

    return WriterPolicy(max_attempts=2, backoff=Backoff(base=0.01, cap=0.05))


def test_writes_throttled_beyond_the_writers_retries_are_read_again_not_dropped(
    proxy: FaultProxy, dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any
) -> None:
    target, keys, rule = removed_from_source(dynamodb, make_stream_table, make_table, 40)
    impatient = impatient_writer()

    proxy.configure(unprocessed_share=1.0)  # the target takes nothing
    report = consume.stream_rule_consume(rule, worker="test", budget_seconds=2, policy=impatient)
    assert report.writes_failed == 0  # a throttled write is not the record's fault: nothing in the ledger
    assert not StreamFailure.objects.filter(rule=rule).exists()
    assert keys_in(scan, target) == set(keys)
    (shard,) = StreamShard.objects.filter(rule=rule)
    assert shard.records_read == 40  # the 40 INSERTs were settled; the REMOVEs wait at the checkpoint

    proxy.configure()  # the table recovers
    report = consume.stream_rule_consume(rule, worker="test", until_caught_up=True, policy=impatient)
    assert (report.records, report.writes_succeeded) == (40, 40)
    assert keys_in(scan, target) == set()


def test_a_target_answering_only_server_errors_is_tried_again_later_not_failed(
    proxy: FaultProxy, dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any
) -> None:
    target, keys, rule = removed_from_source(dynamodb, make_stream_table, make_table, 10)
    impatient = impatient_writer()

    proxy.outage(120.0, code="InternalServerError")  # only BatchWriteItem: the stream is read as usual
    report = consume.stream_rule_consume(rule, worker="test", budget_seconds=2, policy=impatient)
    assert report.stopped_by == "unreachable"  # an outage: the rule is not failed
    rule.refresh_from_db()
    assert rule.status != StreamRuleStatus.FAILED
    assert report.writes_failed == 0
    assert not StreamFailure.objects.filter(rule=rule).exists()
    assert keys_in(scan, target) == set(keys)

    proxy.configure(outage_until=None)  # DynamoDB answers again
    report = consume.stream_rule_consume(rule, worker="test", until_caught_up=True, policy=impatient)
    assert report.writes_succeeded == 10
    assert keys_in(scan, target) == set()


def test_a_poisoned_record_lands_in_the_ledger_with_its_reason_and_the_shard_moves_on(
    dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any, tmp_path: Any
) -> None:
    source = make_stream_table()
    target = make_table(pk="id", pk_type="N")
    items = [{"pk": {"S": f"k{n}"}, "ref": {"N": str(n)}} for n in range(30)]
    items[7] = {"pk": {"S": "k7"}, "ref": {"S": "0007"}}  # maps to a string key in a number-keyed table
    batch_put(dynamodb, source, items)
    code, _, err = run_cli(
        "stream", "add", "copy-refs", "--source-table", source, "--target-table", target, "--on", "INSERT",
        "--operation", "put", "--key", "id=ref", "--map", "source_pk=pk", "--paused",
    )  # fmt: skip
    assert code == 0, err

    code, out, err = run_cli("stream", "run", "copy-refs", "--until-caught-up")
    assert code == 3  # writes failed
    assert out.strip() == "stream copy-refs: 30 records, 29 writes succeeded, 1 failed"
    assert sorted(int(i["id"]["N"]) for i in scan(target)) == [n for n in range(30) if n != 7]
    (failure,) = StreamFailure.objects.filter(rule__name="copy-refs")
    assert failure.event_name == "INSERT"
    assert failure.keys == {"pk": {"S": "k7"}}
    assert failure.error_code == "InvalidRequest"
    assert failure.error_message == "key attribute 'id' is S but the table's key is N"
    assert failure.record["dynamodb"]["NewImage"]["ref"] == {"S": "0007"}
    (shard,) = StreamShard.objects.filter(rule__name="copy-refs")
    assert failure.shard_id == shard.shard_id
    assert failure.sequence_number
    assert int(shard.checkpoint) > int(failure.sequence_number)  # the shard moved on past it
    assert (shard.records_failed, shard.writes_failed) == (1, 1)

    exported = tmp_path / "failed.csv"
    assert run_cli("stream", "export", "copy-refs", "-o", str(exported))[0] == 0
    (row,) = list(csv.DictReader(io.StringIO(exported.read_text())))
    assert (row["sequence_number"], row["error_code"]) == (failure.sequence_number, "InvalidRequest")
    assert '"0007"' in row["record"]

    # Retried with the same mapping it fails the same way, and its first outcome stays in history.
    code, out, _ = run_cli("stream", "retry", "copy-refs")
    assert code == 3
    failure.refresh_from_db()
    assert (failure.status, failure.attempts, len(failure.history)) == (StreamFailureStatus.FAILED, 2, 1)

    # Fixed by the mapping (convert the value to a number), then retried: written.
    code, out, err = run_cli("stream", "mapping", "copy-refs", "--key", "id:N=ref", "--map", "source_pk=pk")
    assert code == 0, err
    code, out, _ = run_cli("stream", "retry", "copy-refs")
    assert code == 0, out
    failure.refresh_from_db()
    assert (failure.status, failure.attempts, len(failure.history)) == (StreamFailureStatus.RESOLVED, 3, 2)
    assert 7 in {int(i["id"]["N"]) for i in scan(target)}


def test_a_write_dynamodb_rejects_is_isolated_then_written_on_retry(
    proxy: FaultProxy, dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any
) -> None:
    source, target = make_stream_table(), make_table()
    items = [{"pk": {"S": f"k{n:02d}"}} for n in range(30)]
    items[12]["poison"] = {"S": "yes"}
    batch_put(dynamodb, source, items)
    rule = rules.stream_rule_create(
        name="mirror", source_table=source, target_table=target, events=["INSERT"], operation="put", start=False
    )
    proxy.configure(poison_attribute="poison")  # DynamoDB rejects any call holding it (ValidationException)

    report = consume.stream_rule_consume(rule, worker="test", until_caught_up=True)
    assert (report.records, report.writes_succeeded, report.writes_failed) == (30, 29, 1)
    assert keys_in(scan, target) == {f"k{n:02d}" for n in range(30) if n != 12}
    (failure,) = StreamFailure.objects.filter(rule=rule)
    assert failure.error_code == "ValidationException"
    assert failure.keys == {"pk": {"S": "k12"}}

    proxy.configure()  # whatever made DynamoDB refuse it is fixed
    assert rules.stream_rule_retry_failures(rule=rule) == 1
    consume.stream_failures_retry(rule.pk)  # what the RQ task does
    failure.refresh_from_db()
    assert failure.status == StreamFailureStatus.RESOLVED
    assert failure.history[0]["error_code"] == "ValidationException"
    assert "k12" in keys_in(scan, target)
    with pytest.raises(JobError, match="no failed writes to retry"):
        rules.stream_rule_retry_failures(rule=rule)


@pytest.fixture
def allow_test_hooks(settings: Any) -> None:
    settings.BULKWRITES = {**settings.BULKWRITES, "STREAM_CALLABLE_PREFIXES": ("tests.stream_hooks",)}


@pytest.mark.usefixtures("allow_test_hooks")
def test_a_callable_from_an_allowed_module_builds_the_rest(
    dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any
) -> None:
    source, target = make_stream_table(), make_table()
    put_items(dynamodb, source, ["c1", "c2"])
    put_items(dynamodb, target, ["c1", "c1#profile", "c1#prefs", "c2", "c2#profile", "c2#prefs"])
    delete_items(dynamodb, source, ["c1"])
    rule = scavenging_rule(source, target, callable_path="tests.stream_hooks.fan_out", start=False)
    report = consume.stream_rule_consume(rule, worker="test", until_caught_up=True)
    assert report.writes_succeeded == 3
    assert keys_in(scan, target) == {"c2", "c2#profile", "c2#prefs"}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("os.system", "not in an allowed module"),
        ("tests.stream_hooksX.fan_out", "not in an allowed module"),
        ("tests.stream_hooks.missing", "has no function 'missing'"),
        ("tests.stream_hooks.NOT_CALLABLE", "has no function 'NOT_CALLABLE'"),
        ("tests.stream_hooks; import os", "not a dotted path"),
    ],
)
@pytest.mark.usefixtures("allow_test_hooks")
def test_a_callable_outside_the_allowed_modules_is_refused(
    make_stream_table: Any, make_table: Any, path: str, message: str
) -> None:
    with pytest.raises(JobError, match=message):
        scavenging_rule(make_stream_table(), make_table(), callable_path=path, start=False)
    assert not StreamRule.objects.exists()


def test_callables_are_refused_when_no_module_is_allowed(make_stream_table: Any, make_table: Any) -> None:
    with pytest.raises(JobError, match="none are allowed"):
        scavenging_rule(make_stream_table(), make_table(), callable_path="tests.stream_hooks.fan_out", start=False)


def test_a_rule_is_refused_when_its_tables_cannot_work(dynamodb: Any, make_stream_table: Any, make_table: Any) -> None:
    plain, target = make_table(), make_table()
    with pytest.raises(JobError, match="has no DynamoDB Stream"):
        scavenging_rule(plain, target, start=False)
    keys_only = make_stream_table(view_type="KEYS_ONLY")
    with pytest.raises(JobError, match="carries KEYS_ONLY records, without NewImage"):
        rules.stream_rule_create(
            name="m", source_table=keys_only, target_table=target, events=["INSERT"], operation="put", start=False
        )
    with pytest.raises(JobError, match="without OldImage"):
        rules.stream_rule_create(
            name="m", source_table=keys_only, target_table=target, events=["REMOVE"], operation="delete",
            mapping_text="OldImage.owner -> pk", start=False,
        )  # fmt: skip
    assert scavenging_rule(keys_only, target, start=False).stream_view_type == "KEYS_ONLY"  # keys are enough
    number_keyed = make_table(pk="id", pk_type="N")
    with pytest.raises(JobError, match="the tables' keys differ"):
        rules.stream_rule_create(
            name="x", source_table=keys_only, target_table=number_keyed, events=["REMOVE"], operation="delete",
            start=False,
        )  # fmt: skip
    with pytest.raises(JobError, match="nothing maps to the target's key attribute 'id'"):
        rules.stream_rule_create(
            name="x", source_table=keys_only, target_table=number_keyed, events=["REMOVE"], operation="delete",
            mapping_text="pk -> other", start=False,
        )  # fmt: skip
    with pytest.raises(JobError, match="same table"):
        scavenging_rule(keys_only, keys_only, name="loop", start=False)
    with pytest.raises(JobError, match="does not exist"):
        scavenging_rule(keys_only, "no-such-table", name="y", start=False)
    with pytest.raises(JobError, match="exists already"):
        scavenging_rule(keys_only, target, start=False)


def test_latest_skips_what_was_in_the_stream_before_the_rule_started(
    dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any
) -> None:
    source, target = make_stream_table(), make_table()
    put_items(dynamodb, source, ["old-1", "old-2"])
    put_items(dynamodb, target, ["old-1", "old-2", "new-1"])
    delete_items(dynamodb, source, ["old-1"])
    rule = scavenging_rule(source, target, start_position="LATEST", start=False)
    consume.stream_rule_consume(rule, worker="test", until_caught_up=True)  # takes its place at the end
    put_items(dynamodb, source, ["new-1"])
    delete_items(dynamodb, source, ["new-1", "old-2"])
    report = consume.stream_rule_consume(rule, worker="test", until_caught_up=True)
    assert (report.records, report.writes_succeeded) == (3, 2)
    assert keys_in(scan, target) == {"old-1"}  # removed before the rule started: not its business


def test_the_sweeper_re_enqueues_an_active_rule_nobody_consumes(
    make_stream_table: Any, make_table: Any, rq_queue: Any
) -> None:
    from django.utils import timezone

    rule = scavenging_rule(make_stream_table(), make_table())
    rq_queue.empty()  # a flushed Redis, or an RQ job lost with its worker
    assert consume.recover_stalled_stream_rules() == [rule.pk]  # never reported on: stalled
    assert rq_queue.count == 1
    assert consume.recover_stalled_stream_rules() == []  # just touched
    StreamRule.objects.filter(pk=rule.pk).update(last_activity_at=timezone.now() - timedelta(minutes=5))
    StreamShard.objects.create(
        rule=rule, shard_id="s1", leased_by="someone", lease_expires_at=timezone.now() + timedelta(seconds=30)
    )
    assert consume.recover_stalled_stream_rules() == []  # a worker holds a live lease on it
    rules.stream_rule_pause(rule=rule)
    StreamShard.objects.all().delete()
    assert consume.recover_stalled_stream_rules() == []  # paused: nobody should consume it


def test_pause_stops_a_running_consumer_and_resume_goes_on_from_the_checkpoint(
    proxy: FaultProxy, dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any
) -> None:
    import threading

    source, target = make_stream_table(), make_table()
    keys = [f"k{n:03d}" for n in range(400)]
    batch_put(dynamodb, source, [{"pk": {"S": k}} for k in keys])
    batch_put(dynamodb, target, [{"pk": {"S": k}} for k in keys])
    batch_delete(dynamodb, source, keys)
    rule = scavenging_rule(source, target)
    proxy.configure(latency_ms=100)
    reports: list[consume.ConsumeReport] = []
    with override_settings(BULKWRITES={**django_settings.BULKWRITES, "STREAM_RECORDS_PER_READ": 50}):

        def consume_then_close() -> None:
            try:
                reports.append(consume.stream_rule_consume(rule, worker="w1", budget_seconds=120))
            finally:
                connection.close()  # this thread's own connection

        runner = threading.Thread(target=consume_then_close)
        runner.start()
        wait_for(lambda: StreamShard.objects.filter(rule=rule, writes_succeeded__gt=0).exists(), timeout=60)
        rules.stream_rule_pause(rule=rule)
        runner.join(timeout=60)
    (report,) = reports
    assert report.stopped_by == "paused"
    (shard,) = StreamShard.objects.filter(rule=rule)
    assert 0 < shard.writes_succeeded < 400
    assert not shard.leased_by  # handed back
    rules.stream_rule_resume(rule=rule)
    rule.refresh_from_db()
    proxy.configure()
    consume.stream_rule_consume(rule, worker="w2", until_caught_up=True)
    shard.refresh_from_db()
    assert (shard.records_read, shard.writes_succeeded) == (800, 400)
    assert keys_in(scan, target) == set()


class SplitStream:
    """A fake ``dynamodbstreams`` client with a closed parent shard and its child (a shard split)."""

    def __init__(self, shards: dict[str, tuple[str | None, list[dict[str, Any]], bool]]) -> None:
        self.shards = shards  # id -> (parent, records, closed)
        self.reads: list[str] = []

    def describe_stream(self, **kwargs: Any) -> dict[str, Any]:
        shards = []
        for shard_id, (parent, records, closed) in self.shards.items():
            numbers = {"StartingSequenceNumber": records[0]["dynamodb"]["SequenceNumber"]}
            if closed:
                numbers["EndingSequenceNumber"] = records[-1]["dynamodb"]["SequenceNumber"]
            shards.append(
                {"ShardId": shard_id, "SequenceNumberRange": numbers, **({"ParentShardId": parent} if parent else {})}
            )
        return {
            "StreamDescription": {"StreamViewType": "NEW_AND_OLD_IMAGES", "StreamStatus": "ENABLED", "Shards": shards}
        }

    def get_shard_iterator(
        self, *, StreamArn: str, ShardId: str, ShardIteratorType: str, **kwargs: Any
    ) -> dict[str, Any]:
        records = self.shards[ShardId][1]
        start = 0
        if ShardIteratorType == "AFTER_SEQUENCE_NUMBER":
            start = 1 + [r["dynamodb"]["SequenceNumber"] for r in records].index(kwargs["SequenceNumber"])
        return {"ShardIterator": f"{ShardId}|{start}"}

    def get_records(self, *, ShardIterator: str, Limit: int) -> dict[str, Any]:
        shard_id, start = ShardIterator.split("|")
        _, records, closed = self.shards[shard_id]
        batch = records[int(start) : int(start) + Limit]
        self.reads.append(shard_id)
        end = int(start) + len(batch)
        response: dict[str, Any] = {"Records": batch}
        if not (closed and end >= len(records)):
            response["NextShardIterator"] = f"{shard_id}|{end}"
        return response


def change(event: str, sequence: int, pk: str, version: int) -> dict[str, Any]:
    image = {"pk": {"S": pk}, "version": {"N": str(version)}}
    return {
        "eventID": str(sequence),
        "eventName": event,
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "ApproximateCreationDateTime": time.time() - 5,
            "Keys": {"pk": {"S": pk}},
            "NewImage": image,
            "SequenceNumber": f"{sequence:021d}",
            "SizeBytes": 20,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


def test_a_parent_shard_is_read_to_its_end_before_its_child(
    dynamodb: Any, make_stream_table: Any, make_table: Any, scan: Any, rq_queue: Any
) -> None:
    source, target = make_stream_table(), make_table()
    rule = rules.stream_rule_create(
        name="mirror", source_table=source, target_table=target, events=["INSERT", "MODIFY"], operation="put",
        start=False,
    )  # fmt: skip
    parent = [change("INSERT", n, f"k{n % 3}", n) for n in range(1, 8)]
    child = [change("MODIFY", n, f"k{n % 3}", n) for n in range(100, 104)]
    # The child is listed first: only the parent-before-child rule puts it second.
    streams = SplitStream({"child": ("parent", child, False), "parent": (None, parent, True)})

    claimed = StreamShard.objects.claim(rule.pk, worker="w", lease=timedelta(seconds=30))
    assert claimed == []  # no shard known yet
    with override_settings(BULKWRITES={**django_settings.BULKWRITES, "STREAM_RECORDS_PER_READ": 3}):
        report = consume.stream_rule_consume(rule, worker="w", until_caught_up=True, streams_client=streams)
    assert report.caught_up
    assert streams.reads.index("child") > max(i for i, s in enumerate(streams.reads) if s == "parent")
    versions = {item["pk"]["S"]: int(item["version"]["N"]) for item in scan(target)}
    assert versions == {"k0": 102, "k1": 103, "k2": 101}  # the child's later versions won
    shards = {s.shard_id: s for s in StreamShard.objects.filter(rule=rule)}
    assert shards["parent"].finished
    assert not shards["child"].finished
    assert shards["parent"].records_read == 7
    assert shards["child"].records_read == 4


def test_a_child_shard_is_not_leased_while_its_parent_is_open(
    rq_queue: Any, make_stream_table: Any, make_table: Any
) -> None:
    rule = scavenging_rule(make_stream_table(), make_table(), start=False)
    StreamShard.objects.create(rule=rule, shard_id="parent")
    StreamShard.objects.create(rule=rule, shard_id="child", parent_shard_id="parent")
    StreamShard.objects.create(rule=rule, shard_id="orphan", parent_shard_id="trimmed-long-ago")
    lease = timedelta(seconds=30)
    assert {s.shard_id for s in StreamShard.objects.claim(rule.pk, worker="w1", lease=lease)} == {"parent", "orphan"}
    assert StreamShard.objects.claim(rule.pk, worker="w2", lease=lease) == []  # leased, or waiting for its parent
    StreamShard.objects.filter(shard_id="parent").update(finished=True, leased_by="", lease_expires_at=None)
    assert [s.shard_id for s in StreamShard.objects.claim(rule.pk, worker="w2", lease=lease)] == ["child"]


def test_an_rq_job_hands_over_only_when_it_consumed_and_bows_out_when_another_worker_holds_every_shard(
    dynamodb: Any, make_stream_table: Any, make_table: Any, rq_queue: Any, settings: Any
) -> None:
    from django.utils import timezone

    settings.BULKWRITES = {**settings.BULKWRITES, "RUN_SLICE_SECONDS": 1}
    source = make_stream_table()
    put_items(dynamodb, source, ["a"])
    rule = scavenging_rule(source, make_table())
    rq_queue.empty()

    assert "stopped by budget" in consume.stream_rule_work(rule.pk, worker="w1")
    assert rq_queue.count == 1  # it consumed: its successor is queued
    rq_queue.empty()

    StreamShard.objects.filter(rule=rule).update(
        leased_by="w-other", lease_expires_at=timezone.now() + timedelta(minutes=5)
    )
    assert "stopped by budget" in consume.stream_rule_work(rule.pk, worker="w2")
    assert rq_queue.count == 0  # another worker holds every shard: no duplicate consumer is kept alive
