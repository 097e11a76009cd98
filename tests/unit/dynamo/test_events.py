"""process_event against a scripted client: events built as AWS documents them, no server.

Every case checks both what was reported to Lambda and what was (or was not) sent to DynamoDB.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import pytest
from botocore.exceptions import ClientError

from bulkwrites.dynamo import events
from bulkwrites.dynamo.backoff import Backoff
from bulkwrites.dynamo.errors import CODE_UNPROCESSED
from bulkwrites.dynamo.events import (
    BatchProcessingError,
    MalformedEventError,
    kinesis_data,
    process_event,
    process_event_report,
)
from bulkwrites.dynamo.record_writes import (
    CODE_AFTER_FAILURE,
    CODE_DEADLINE,
    CODE_INVALID_REQUEST,
    CODE_NOT_ATTEMPTED,
    CODE_RECORD_ERROR,
)
from bulkwrites.dynamo.writer import WriterPolicy
from tests.lambda_events import (
    batch,
    kinesis_record,
    kinesis_sequence,
    sqs_record,
    stream_record,
    stream_sequence,
)

TABLE = "target"
FAST = WriterPolicy(max_attempts=3, backoff=Backoff(base=0.001, cap=0.01, random=lambda: 1.0))


def client_error(code: str, message: str = "boom", status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "BatchWriteItem",
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedTable:
    """A fake DynamoDB client keyed on ``pk``: rules per key, every call recorded."""

    def __init__(
        self,
        *,
        reject: set[str] | None = None,
        unprocessed: set[str] | None = None,
        fatal: str | None = None,
        clock: Clock | None = None,
        seconds_per_call: float = 0.0,
    ) -> None:
        self.reject = reject or set()  # a call holding one of these keys is rejected whole (ValidationException)
        self.unprocessed = unprocessed or set()  # these keys always come back unprocessed
        self.fatal = fatal
        self.clock = clock
        self.seconds_per_call = seconds_per_call
        self.calls: list[list[tuple[str, str]]] = []  # per call: (op, pk)
        self.table: dict[str, Any] = {}
        self.describes = 0
        self.lock = threading.Lock()

    def describe_table(self, *, TableName: str) -> dict[str, Any]:
        self.describes += 1
        return {
            "Table": {
                "TableName": TableName,
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            }
        }

    def batch_write_item(self, *, RequestItems: Mapping[str, Any], ReturnConsumedCapacity: str) -> dict[str, Any]:
        (table, requests) = next(iter(RequestItems.items()))
        assert table == TABLE
        sent = [_op_key(r) for r in requests]
        assert len(sent) <= 25
        assert len({k for _, k in sent}) == len(sent), "two requests for one key in a call"
        with self.lock:
            self.calls.append(sent)
            if self.clock is not None:
                self.clock.now += self.seconds_per_call
        if self.fatal:
            raise client_error(self.fatal, "Requested resource not found")
        if any(k in self.reject for _, k in sent):
            raise client_error("ValidationException", "One or more parameter values were invalid")
        left = [r for r, (_, k) in zip(requests, sent, strict=True) if k in self.unprocessed]
        with self.lock:
            for request, (op, k) in zip(requests, sent, strict=True):
                if k in self.unprocessed:
                    continue
                if op == "put":
                    self.table[k] = request["PutRequest"]["Item"]
                else:
                    self.table.pop(k, None)
        return {"UnprocessedItems": {TABLE: left} if left else {}, "ConsumedCapacity": []}

    def sent(self) -> list[str]:
        return [k for call in self.calls for _, k in call]


def _op_key(request: Mapping[str, Any]) -> tuple[str, str]:
    if "PutRequest" in request:
        return "put", request["PutRequest"]["Item"]["pk"]["S"]
    return "delete", request["DeleteRequest"]["Key"]["pk"]["S"]


def put_body(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """SQS: the body is a JSON object {"pk": ..., "n": ...}; put it."""
    body = json.loads(record["body"])
    return [{"PutRequest": {"Item": {"pk": {"S": body["pk"]}, "n": {"N": str(body["n"])}}}}]


def put_kinesis(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    payload = json.loads(kinesis_data(record))
    return [{"PutRequest": {"Item": {"pk": {"S": payload["pk"]}, "n": {"N": str(payload["n"])}}}}]


def scavenge(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """DynamoDB Streams: a REMOVE in the source deletes the same key in the target."""
    if record["eventName"] != "REMOVE":
        return []
    return [{"DeleteRequest": {"Key": record["dynamodb"]["Keys"]}}]


def ids(response: Mapping[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


# --- the three sources, partial failures mapped to their identifiers ---------------------


def test_sqs_reports_message_ids_of_failed_records_only() -> None:
    records = [sqs_record({"pk": f"k{n}", "n": n}) for n in range(5)]
    records[2] = sqs_record("not json", message_id="bad-body")
    records[4] = sqs_record({"pk": "rejected", "n": 4}, message_id="rejected-write")
    client = ScriptedTable(reject={"rejected"})
    response = process_event(batch(*records), put_body, table=TABLE, client=client, key=["pk"], policy=FAST)
    assert ids(response) == ["bad-body", "rejected-write"]
    assert sorted(client.table) == ["k0", "k1", "k3"]
    assert "rejected" not in client.table


def test_kinesis_reports_sequence_numbers_and_decodes_base64_data() -> None:
    records = [kinesis_record({"pk": f"k{n}", "n": n}, sequence_number=kinesis_sequence(n)) for n in range(4)]
    client = ScriptedTable(unprocessed={"k1"})
    response = process_event(batch(*records), put_kinesis, table=TABLE, client=client, key=["pk"], policy=FAST)
    assert ids(response) == [kinesis_sequence(1)]
    assert client.table["k3"] == {"pk": {"S": "k3"}, "n": {"N": "3"}}
    # The first call made progress (k0, k2, k3): then max_attempts (3) calls without progress.
    assert client.sent().count("k1") == 4
    assert client.sent().count("k0") == 1  # only what came back unprocessed is sent again


def test_dynamodb_streams_reports_sequence_numbers_and_bisects_a_poisoned_call() -> None:
    records = [
        stream_record("REMOVE", {"pk": {"S": f"k{n}"}}, sequence_number=stream_sequence(n), old_image={})
        for n in range(25)
    ]
    records.insert(3, stream_record("INSERT", {"pk": {"S": "new"}}, sequence_number=stream_sequence(99)))
    client = ScriptedTable(reject={"k13"})
    client.table = {f"k{n}": {} for n in range(25)}
    report = process_event_report(batch(*records), scavenge, table=TABLE, client=client, policy=FAST)
    assert ids(report.response) == [stream_sequence(13)]
    assert sorted(client.table) == ["k13"]  # 24 of 25 deleted; the culprit alone failed
    ((_identifier, outcome),) = report.failed
    assert outcome.error_code == "ValidationException"
    assert client.describes == 0  # deletes carry their key: no DescribeTable


def test_a_record_succeeds_only_when_all_its_requests_did() -> None:
    def two_puts(record: Mapping[str, Any]) -> list[dict[str, Any]]:
        body = json.loads(record["body"])
        return [{"PutRequest": {"Item": {"pk": {"S": pk}}}} for pk in body["keys"]]

    records = [
        sqs_record({"keys": ["a", "b"]}, message_id="m1"),
        sqs_record({"keys": ["c", "bad"]}, message_id="m2"),
        sqs_record({"keys": []}, message_id="m3"),  # nothing to write: succeeds
    ]
    client = ScriptedTable(reject={"bad"})
    response = process_event(batch(*records), two_puts, table=TABLE, client=client, key=["pk"], policy=FAST)
    assert ids(response) == ["m2"]
    assert sorted(client.table) == ["a", "b", "c"]


def test_to_requests_raising_fails_that_record_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    def explode(record: Mapping[str, Any]) -> list[dict[str, Any]]:
        if record["messageId"] == "boom":
            raise KeyError("customer_id")
        return put_body(record)

    records = [sqs_record({"pk": "a", "n": 1}), sqs_record({}, message_id="boom")]
    client = ScriptedTable()
    report = process_event_report(batch(*records), explode, table=TABLE, client=client, key=["pk"])
    ((identifier, outcome),) = report.failed
    assert identifier == "boom"
    assert (outcome.error_code, outcome.error_message) == (CODE_RECORD_ERROR, "KeyError: 'customer_id'")
    assert "record boom failed: to_requests raised KeyError" in caplog.text  # with its traceback
    assert "Traceback" in caplog.text


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        ({"PutRequest": {"Item": {"n": {"N": "1"}}}}, "missing key attribute 'pk'"),
        ({"PutRequest": {"Item": {"pk": {"S": "x"}, "n": {"N": "NaN"}}}}, "not a number"),
        ({"DeleteRequest": {"Key": {"pk": {"S": "x"}, "extra": {"S": "y"}}}}, "exactly the key attributes"),
        ({"UpdateRequest": {}}, "unknown write request"),
        ("pk=x", "a write request is"),
        ({"PutRequest": {"Item": {"pk": {"S": "x"}, "big": {"S": "x" * 410_000}}}}, "DynamoDB's limit"),
    ],
)
def test_a_request_dynamodb_would_refuse_fails_its_record_without_a_call(request_: Any, reason: str) -> None:
    records = [sqs_record({}, message_id="only")]
    client = ScriptedTable()
    report = process_event_report(
        batch(*records),
        lambda record: [request_],
        table=TABLE,
        client=client,
        key=["pk"],
        raise_on_entire_batch_failure=False,
    )
    ((_identifier, outcome),) = report.failed
    assert outcome.error_code == CODE_INVALID_REQUEST
    assert reason in outcome.error_message
    assert client.calls == []


@pytest.fixture(autouse=True)
def _forget_key_schemas() -> Any:
    events._KEY_SCHEMAS.clear()  # a warm Lambda's cache; each test starts cold
    yield
    events._KEY_SCHEMAS.clear()


def test_put_keys_are_read_once_with_describe_table_when_not_given() -> None:
    client = ScriptedTable()
    for _ in range(2):  # a warm Lambda: the second invocation reuses the key
        records = [sqs_record({"pk": "a", "n": 1})]
        assert ids(process_event(batch(*records), put_body, table=TABLE, client=client)) == []
    assert client.describes == 1


def test_a_number_key_typed_as_a_string_is_refused_with_the_tables_own_types() -> None:
    client = ScriptedTable()
    records = [sqs_record({}, message_id="typed")]
    response = process_event(
        batch(*records),
        lambda record: [{"PutRequest": {"Item": {"pk": {"N": "1"}}}}],
        table=TABLE,
        client=client,
        raise_on_entire_batch_failure=False,
    )
    assert ids(response) == ["typed"]
    assert client.calls == []


# --- duplicate keys ------------------------------------------------------------------------


def test_duplicate_keys_send_only_the_last_request_and_the_earlier_record_follows_it() -> None:
    records = [
        stream_record("INSERT", {"pk": {"S": "k"}}, sequence_number=stream_sequence(1), new_image={"pk": {"S": "k"}}),
        stream_record("INSERT", {"pk": {"S": "x"}}, sequence_number=stream_sequence(2), new_image={"pk": {"S": "x"}}),
        stream_record("REMOVE", {"pk": {"S": "k"}}, sequence_number=stream_sequence(3), old_image={"pk": {"S": "k"}}),
    ]

    def mirror(record: Mapping[str, Any]) -> list[dict[str, Any]]:
        if record["eventName"] == "REMOVE":
            return [{"DeleteRequest": {"Key": record["dynamodb"]["Keys"]}}]
        return [{"PutRequest": {"Item": record["dynamodb"]["NewImage"]}}]

    client = ScriptedTable()
    client.table = {"k": {}}
    assert ids(process_event(batch(*records), mirror, table=TABLE, client=client, key=["pk"])) == []
    assert client.calls == [[("delete", "k"), ("put", "x")]]  # one request for k: the later one
    assert sorted(client.table) == ["x"]

    failing = ScriptedTable(reject={"k"})
    response = process_event(batch(*records), mirror, table=TABLE, client=failing, key=["pk"], policy=FAST)
    # The earlier put of k was superseded by the delete; the delete failed, so both records fail.
    assert ids(response) == [stream_sequence(1), stream_sequence(3)]


# --- stop_on_first_failure -----------------------------------------------------------------


def test_stop_on_first_failure_reports_the_rest_and_sends_nothing_after_a_failed_record() -> None:
    records = [kinesis_record({"pk": f"k{n}", "n": n}, sequence_number=kinesis_sequence(n)) for n in range(6)]

    def fail_third(record: Mapping[str, Any]) -> list[dict[str, Any]]:
        if record["kinesis"]["sequenceNumber"] == kinesis_sequence(2):
            raise ValueError("cannot map")
        return put_kinesis(record)

    client = ScriptedTable()
    report = process_event_report(
        batch(*records), fail_third, table=TABLE, client=client, key=["pk"], stop_on_first_failure=True
    )
    assert ids(report.response) == [kinesis_sequence(n) for n in range(2, 6)]
    assert client.sent() == ["k0", "k1"]
    codes = [o.error_code for _, o in report.failed]
    assert codes == [CODE_RECORD_ERROR, CODE_NOT_ATTEMPTED, CODE_NOT_ATTEMPTED, CODE_NOT_ATTEMPTED]


def test_stop_on_first_failure_stops_isolating_a_rejected_call_at_its_culprit() -> None:
    records = [kinesis_record({"pk": f"k{n}", "n": n}, sequence_number=kinesis_sequence(n)) for n in range(40)]
    client = ScriptedTable(reject={"k5"})
    response = process_event(
        batch(*records), put_kinesis, table=TABLE, client=client, key=["pk"], stop_on_first_failure=True, policy=FAST
    )
    assert ids(response) == [kinesis_sequence(n) for n in range(5, 40)]
    assert sorted(client.table, key=lambda k: int(k[1:])) == [f"k{n}" for n in range(5)]
    # Later keys went out only in calls that also held the culprit (rejected whole), never without it.
    assert all(("put", "k5") in call for call in client.calls if ("put", "k6") in call)
    assert all(f"k{n}" not in client.sent() for n in range(25, 40))  # and no later call was made


def test_stop_on_first_failure_is_honest_about_later_requests_written_in_the_failing_call() -> None:
    records = [kinesis_record({"pk": f"k{n}", "n": n}, sequence_number=kinesis_sequence(n)) for n in range(4)]
    client = ScriptedTable(unprocessed={"k1"})  # k2 and k3 share k1's call and are written
    report = process_event_report(
        batch(*records),
        put_kinesis,
        table=TABLE,
        client=client,
        key=["pk"],
        stop_on_first_failure=True,
        policy=FAST,
    )
    assert ids(report.response) == [kinesis_sequence(n) for n in (1, 2, 3)]
    assert sorted(client.table) == ["k0", "k2", "k3"]
    codes = {identifier: o.error_code for identifier, o in report.failed}
    assert codes[kinesis_sequence(1)] == CODE_UNPROCESSED
    assert codes[kinesis_sequence(2)] == codes[kinesis_sequence(3)] == CODE_AFTER_FAILURE


def test_stop_on_first_failure_sends_a_superseding_request_at_the_earliest_record_it_covers() -> None:
    # Record 0 puts k, record 1 puts x (rejected), record 2 deletes k. The delete of k stands for
    # record 0 too, so it is sent in record 0's place: record 0 is settled before record 1 fails.
    records = [
        stream_record("INSERT", {"pk": {"S": "k"}}, sequence_number=stream_sequence(1), new_image={"pk": {"S": "k"}}),
        stream_record("INSERT", {"pk": {"S": "x"}}, sequence_number=stream_sequence(2), new_image={"pk": {"S": "x"}}),
        stream_record("REMOVE", {"pk": {"S": "k"}}, sequence_number=stream_sequence(3), old_image={"pk": {"S": "k"}}),
    ]

    def mirror(record: Mapping[str, Any]) -> list[dict[str, Any]]:
        if record["eventName"] == "REMOVE":
            return [{"DeleteRequest": {"Key": record["dynamodb"]["Keys"]}}]
        return [{"PutRequest": {"Item": record["dynamodb"]["NewImage"]}}]

    client = ScriptedTable(reject={"x"})
    response = process_event(
        batch(*records), mirror, table=TABLE, client=client, key=["pk"], stop_on_first_failure=True, policy=FAST
    )
    assert ids(response) == [stream_sequence(2), stream_sequence(3)]
    assert client.calls[0] == [("delete", "k"), ("put", "x")]


# --- all failed, empty, deadline, malformed ------------------------------------------------


def test_all_failed_raises_unless_told_not_to() -> None:
    records = [sqs_record("nope", message_id=f"m{n}") for n in range(3)]
    client = ScriptedTable()
    with pytest.raises(BatchProcessingError) as raised:
        process_event(batch(*records), put_body, table=TABLE, client=client, key=["pk"])
    assert ids(raised.value.response) == ["m0", "m1", "m2"]
    assert "all 3 records failed" in str(raised.value)
    response = process_event(
        batch(*records), put_body, table=TABLE, client=client, key=["pk"], raise_on_entire_batch_failure=False
    )
    assert ids(response) == ["m0", "m1", "m2"]


def test_a_missing_table_fails_every_record_with_dynamodbs_reason() -> None:
    records = [sqs_record({"pk": f"k{n}", "n": n}) for n in range(3)]
    client = ScriptedTable(fatal="ResourceNotFoundException")
    with pytest.raises(BatchProcessingError, match="does not exist"):
        process_event(batch(*records), put_body, table=TABLE, client=client, key=["pk"])
    assert len(client.calls) == 1  # no retry of what no retry can fix


def test_an_empty_batch_succeeds_without_a_call() -> None:
    client = ScriptedTable()
    assert process_event(batch(), put_body, table=TABLE, client=client) == {"batchItemFailures": []}
    assert client.calls == []


def test_what_is_not_done_by_the_deadline_is_reported_never_dropped() -> None:
    clock = Clock()
    records = [sqs_record({"pk": f"k{n}", "n": n}, message_id=f"m{n}") for n in range(60)]
    client = ScriptedTable(clock=clock, seconds_per_call=0.4)
    report = process_event_report(
        batch(*records),
        put_body,
        table=TABLE,
        client=client,
        key=["pk"],
        deadline=0.5,
        concurrency=1,
        clock=clock,
        sleep=clock.sleep,
    )
    assert len(client.calls) == 2  # 0.0 and 0.4 started before the deadline; 0.8 did not
    written = set(client.table)
    assert len(written) == 50
    failed = {identifier for identifier, _ in report.failed}
    assert failed == {f"m{n}" for n in range(60) if f"k{n}" not in written}
    assert {o.error_code for _, o in report.failed} == {CODE_DEADLINE}


def test_a_lambda_context_deadline_keeps_a_reserve_to_answer() -> None:
    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 1_200  # 1.2 s left: 0.2 s after the reserve

    clock = Clock()
    records = [sqs_record({"pk": f"k{n}", "n": n}, message_id=f"m{n}") for n in range(50)]
    client = ScriptedTable(clock=clock, seconds_per_call=0.3)
    response = process_event(
        batch(*records),
        put_body,
        table=TABLE,
        client=client,
        key=["pk"],
        deadline=Context(),
        concurrency=1,
        clock=clock,
        sleep=clock.sleep,
    )
    assert len(client.calls) == 1
    assert ids(response) == [f"m{n}" for n in range(25, 50)]


def test_backoff_never_sleeps_past_the_deadline() -> None:
    clock = Clock()
    slow = WriterPolicy(max_attempts=10, backoff=Backoff(base=5.0, cap=60.0, random=lambda: 1.0))
    records = [sqs_record({"pk": "k1", "n": 1}, message_id="m1"), sqs_record({"pk": "k2", "n": 2}, message_id="m2")]
    client = ScriptedTable(unprocessed={"k1"}, clock=clock)
    response = process_event(
        batch(*records),
        put_body,
        table=TABLE,
        client=client,
        key=["pk"],
        deadline=2.0,
        policy=slow,
        clock=clock,
        sleep=clock.sleep,
    )
    assert ids(response) == ["m1"]
    assert clock.now == pytest.approx(2.0)  # slept up to the deadline, not the 5 s backoff


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"records": []}, "no 'Records' list"),
        ({"Records": [{"eventSource": "aws:sqs", "messageId": ""}]}, "has no messageId"),
        ({"Records": [{"eventSource": "aws:sqs"}]}, "has no messageId"),
        ({"Records": [{"eventSource": "aws:kinesis", "kinesis": {"data": "eA=="}}]}, "kinesis.sequenceNumber"),
        ({"Records": [{"eventSource": "aws:dynamodb", "dynamodb": {"Keys": {}}}]}, "dynamodb.SequenceNumber"),
        ({"Records": [{"eventSource": "aws:s3"}]}, "eventSource 'aws:s3'"),
        ({"Records": ["x"]}, "not a JSON object"),
        ([], "JSON object"),
    ],
)
def test_a_malformed_event_raises_before_anything_is_written(event: Any, message: str) -> None:
    good = sqs_record({"pk": "a", "n": 1})
    if isinstance(event, dict) and "Records" in event:
        event = {"Records": [good, *event["Records"]]}
    client = ScriptedTable()
    with pytest.raises(MalformedEventError, match=message):
        process_event(event, put_body, table=TABLE, client=client, key=["pk"])
    assert client.calls == []


def test_every_identifier_ever_reported_belongs_to_the_batch() -> None:
    records = [sqs_record({"pk": f"k{n % 7}", "n": n}) for n in range(100)]
    client = ScriptedTable(reject={"k3"}, unprocessed={"k5"})
    response = process_event(batch(*records), put_body, table=TABLE, client=client, key=["pk"], policy=FAST)
    reported = ids(response)
    assert set(reported) <= {r["messageId"] for r in records}
    assert all(reported)
    assert len(reported) == len(set(reported))
    expected = {r["messageId"] for r in records if json.loads(r["body"])["pk"] in ("k3", "k5")}
    assert set(reported) == expected
