"""DynamoDB Streams core without a server: the mapping, view types, shard listing and reading."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from botocore.exceptions import ClientError

from bulkwrites.dynamo.items import ItemError, KeyAttribute, KeySchema
from bulkwrites.dynamo.streams import (
    ShardReader,
    StreamError,
    StreamMapping,
    describe_stream,
    format_mapping,
    parse_mapping,
    plain_record,
    view_type_problem,
)
from tests.lambda_events import stream_record

PK = KeySchema((KeyAttribute("pk", "S", "HASH"),))
ID_N = KeySchema((KeyAttribute("id", "N", "HASH"),))


def removed(pk: str, **old: Any) -> dict[str, Any]:
    return stream_record(
        "REMOVE",
        {"pk": {"S": pk}},
        sequence_number="1",
        old_image={"pk": {"S": pk}, **old},
        view_type="NEW_AND_OLD_IMAGES",
    )


def inserted(pk: str, **new: Any) -> dict[str, Any]:
    return stream_record("INSERT", {"pk": {"S": pk}}, sequence_number="2", new_image={"pk": {"S": pk}, **new})


# --- mapping ---------------------------------------------------------------------------------


def test_a_delete_without_a_mapping_takes_the_records_keys() -> None:
    mapping = StreamMapping("delete", (), PK)
    assert mapping.requests(removed("a")) == [{"DeleteRequest": {"Key": {"pk": {"S": "a"}}}}]


def test_a_delete_maps_a_source_attribute_to_the_target_key_with_a_type() -> None:
    mapping = StreamMapping("delete", tuple(parse_mapping("OldImage.order_no -> id:N")), ID_N)
    record = removed("a", order_no={"S": "0042"})
    assert mapping.requests(record) == [{"DeleteRequest": {"Key": {"id": {"N": "42"}}}}]


def test_a_put_without_a_mapping_copies_the_image_of_the_event() -> None:
    mapping = StreamMapping("put", (), PK)
    assert mapping.requests(inserted("a", n={"N": "1"})) == [
        {"PutRequest": {"Item": {"pk": {"S": "a"}, "n": {"N": "1"}}}}
    ]
    assert mapping.requests(removed("a", n={"N": "1"})) == [  # a REMOVE's item is its old image
        {"PutRequest": {"Item": {"pk": {"S": "a"}, "n": {"N": "1"}}}}
    ]


def test_unprefixed_sources_look_in_the_keys_then_the_events_image_and_missing_ones_are_left_out() -> None:
    mapping = StreamMapping(
        "put", tuple(parse_mapping("pk -> id:S\nn\nmissing -> m")), KeySchema((KeyAttribute("id", "S", "HASH"),))
    )
    assert mapping.requests(inserted("a", n={"N": "7"})) == [
        {"PutRequest": {"Item": {"id": {"S": "a"}, "n": {"N": "7"}}}}
    ]


def test_a_missing_key_attribute_fails_the_record_with_the_reason() -> None:
    mapping = StreamMapping("delete", tuple(parse_mapping("OldImage.owner -> pk")), PK)
    with pytest.raises(ItemError, match="no value for the target's key attribute 'pk'"):
        mapping.requests(removed("a"))
    with pytest.raises(ItemError, match="has no NewImage"):
        StreamMapping("put", (), PK).requests(stream_record("MODIFY", {"pk": {"S": "a"}}, sequence_number="3"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a -> b\nc -> b", "target attribute 'b' is mapped twice"),
        ("a ->", "no target attribute"),
        ("a -> b:SS", "converted to S or N only"),
        ("NewImage. -> b", "no source attribute"),
    ],
)
def test_a_bad_mapping_says_which_line_and_why(text: str, message: str) -> None:
    with pytest.raises(ItemError, match=message):
        parse_mapping(text)


def test_a_mapping_reads_back_as_it_was_written() -> None:
    text = "pk\nOldImage.owner -> pk2\nn -> count:N"
    assert format_mapping(parse_mapping(text)) == text
    assert parse_mapping("# comment\n\n pk -> pk ") == parse_mapping("pk")


def test_a_value_that_cannot_be_converted_fails_the_record() -> None:
    mapping = StreamMapping("put", tuple(parse_mapping("pk\nn -> n:N")), PK)
    with pytest.raises(ItemError, match="not a number"):
        mapping.requests(inserted("a", n={"S": "many"}))


# --- view types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view_type", "operation", "text", "events", "works"),
    [
        ("KEYS_ONLY", "delete", "", ["REMOVE"], True),
        ("KEYS_ONLY", "delete", "pk -> pk", ["REMOVE"], True),
        ("KEYS_ONLY", "put", "", ["INSERT"], False),
        ("KEYS_ONLY", "delete", "owner -> pk", ["REMOVE"], False),
        ("NEW_IMAGE", "delete", "owner -> pk", ["REMOVE"], False),  # a REMOVE has no new image
        ("OLD_IMAGE", "delete", "owner -> pk", ["REMOVE"], True),
        ("NEW_IMAGE", "put", "", ["INSERT", "MODIFY"], True),
        ("NEW_IMAGE", "put", "OldImage.x -> x\npk", ["MODIFY"], False),
        ("NEW_AND_OLD_IMAGES", "put", "", ["INSERT", "MODIFY", "REMOVE"], True),
    ],
)
def test_the_view_type_must_carry_what_the_mapping_reads(
    view_type: str, operation: str, text: str, events: list[str], works: bool
) -> None:
    mapping = StreamMapping(operation, tuple(parse_mapping(text)), PK)
    problem = view_type_problem(view_type, mapping, events, ["pk"])
    assert (problem is None) is works, problem


# --- shards and reading --------------------------------------------------------------------------


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "GetRecords")


class ScriptedStreams:
    """A fake ``dynamodbstreams`` client: pages of shards; records per shard; scripted errors."""

    def __init__(self, pages: list[list[dict[str, Any]]] | None = None, records: list[dict[str, Any]] | None = None):
        self.pages = pages or []
        self.records = records or []
        self.iterator_calls: list[dict[str, Any]] = []
        self.errors: list[str] = []  # raised by the next get_records calls, in order
        self.closed = False

    def describe_stream(self, **kwargs: Any) -> dict[str, Any]:
        page = int(kwargs.get("ExclusiveStartShardId", "page-0").split("-")[1])
        description: dict[str, Any] = {
            "StreamViewType": "KEYS_ONLY",
            "StreamStatus": "ENABLED",
            "Shards": self.pages[page],
        }
        if page + 1 < len(self.pages):
            description["LastEvaluatedShardId"] = f"page-{page + 1}"
        return {"StreamDescription": description}

    def get_shard_iterator(self, **kwargs: Any) -> dict[str, Any]:
        self.iterator_calls.append(kwargs)
        if kwargs["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER" and kwargs["SequenceNumber"] == "trimmed":
            raise client_error("TrimmedDataAccessException")
        start = 0
        if kwargs["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER":
            start = next(
                i + 1 for i, r in enumerate(self.records) if r["dynamodb"]["SequenceNumber"] == kwargs["SequenceNumber"]
            )
        return {"ShardIterator": f"at-{start}"}

    def get_records(self, *, ShardIterator: str, Limit: int) -> dict[str, Any]:
        if self.errors:
            raise client_error(self.errors.pop(0))
        start = int(ShardIterator.split("-")[1])
        batch = self.records[start : start + Limit]
        response: dict[str, Any] = {"Records": batch}
        end = start + len(batch)
        if not (self.closed and end >= len(self.records)):
            response["NextShardIterator"] = f"at-{end}"
        return response


def shard(shard_id: str, parent: str | None = None, end: str | None = None) -> dict[str, Any]:
    numbers = {"StartingSequenceNumber": "1", **({"EndingSequenceNumber": end} if end else {})}
    return {"ShardId": shard_id, **({"ParentShardId": parent} if parent else {}), "SequenceNumberRange": numbers}


def boto_record(n: int) -> dict[str, Any]:
    """A record as boto3 returns it: binary as bytes, the creation time as a datetime."""
    return {
        "eventID": str(n),
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "ApproximateCreationDateTime": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            "Keys": {"pk": {"S": f"k{n}"}},
            "NewImage": {"pk": {"S": f"k{n}"}, "blob": {"B": b"\x00\x01"}},
            "SequenceNumber": f"{n:021d}",
            "SizeBytes": 10,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


def test_describe_stream_pages_through_every_shard() -> None:
    streams = ScriptedStreams(pages=[[shard("s1", end="9")], [shard("s2", parent="s1")], [shard("s3", parent="s1")]])
    info = describe_stream(streams, "arn")
    assert [(s.shard_id, s.parent_shard_id, s.closed) for s in info.shards] == [
        ("s1", None, True),
        ("s2", "s1", False),
        ("s3", "s1", False),
    ]


def test_a_reader_reads_in_batches_and_resumes_after_its_checkpoint() -> None:
    streams = ScriptedStreams(records=[boto_record(n) for n in range(5)])
    reader = ShardReader(streams, "arn", "s1", after=None, limit=2)
    first = reader.read()
    assert [r["dynamodb"]["SequenceNumber"] for r in first.records] == [f"{n:021d}" for n in (0, 1)]
    assert first.records[0]["dynamodb"]["NewImage"]["blob"] == {"B": "AAE="}  # plain JSON, as Lambda delivers
    assert first.records[0]["dynamodb"]["ApproximateCreationDateTime"] == 1704067200.0
    resumed = ShardReader(streams, "arn", "s1", after=f"{1:021d}", limit=10).read()
    assert [r["eventID"] for r in resumed.records] == ["2", "3", "4"]
    assert streams.iterator_calls[-1]["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"


def test_an_expired_iterator_is_replaced_from_the_last_record_read() -> None:
    streams = ScriptedStreams(records=[boto_record(n) for n in range(4)])
    reader = ShardReader(streams, "arn", "s1", after=None, limit=2)
    reader.read()
    streams.errors = ["ExpiredIteratorException"]
    assert [r["eventID"] for r in reader.read().records] == ["2", "3"]
    assert streams.iterator_calls[-1] == {
        "StreamArn": "arn",
        "ShardId": "s1",
        "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
        "SequenceNumber": f"{1:021d}",
    }


def test_a_checkpoint_past_the_trim_horizon_is_reported_not_silently_skipped() -> None:
    streams = ScriptedStreams(records=[boto_record(n) for n in range(2)])
    batch = ShardReader(streams, "arn", "s1", after="trimmed").read()
    assert batch.trimmed is not None
    assert "trimmed from the stream" in batch.trimmed
    assert [r["eventID"] for r in batch.records] == ["0", "1"]  # goes on from the oldest record kept


def test_the_end_of_a_closed_shard_is_reported_once_everything_is_read() -> None:
    streams = ScriptedStreams(records=[boto_record(n) for n in range(3)])
    streams.closed = True
    reader = ShardReader(streams, "arn", "s1", after=None, limit=2)
    assert not reader.read().end_of_shard
    last = reader.read()
    assert last.end_of_shard
    assert len(last.records) == 1


def test_a_stream_that_is_gone_raises_with_the_reason() -> None:
    streams = ScriptedStreams(records=[boto_record(0)])
    streams.errors = ["ResourceNotFoundException"]
    with pytest.raises(StreamError, match="does not exist any more"):
        ShardReader(streams, "arn", "s1", after=None).read()


def test_plain_record_keeps_the_lambda_shape() -> None:
    record: Mapping[str, Any] = plain_record(boto_record(3))
    assert record["dynamodb"]["Keys"] == {"pk": {"S": "k3"}}
    assert record["eventName"] == "INSERT"


@pytest.mark.parametrize(("code", "retryable"), [("LimitExceededException", True), ("AccessDeniedException", False)])
def test_a_busy_stream_is_retried_later_and_a_forbidden_one_is_not(code: str, retryable: bool) -> None:
    streams = ScriptedStreams(records=[boto_record(0)])
    streams.errors = [code]
    with pytest.raises(StreamError) as raised:
        ShardReader(streams, "arn", "s1", after=None).read()
    assert raised.value.retryable is retryable
