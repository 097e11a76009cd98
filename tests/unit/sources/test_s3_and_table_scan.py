"""S3 locations, the allow-list, resumed reads (a scripted client); table scans (a scripted client)."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError, ResponseStreamingError

from bulkwrites.sources import dynamodb_table, s3
from bulkwrites.sources.formats import SourceError

# --- locations and the allow-list ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://bucket/key", "not an S3 URL"),
        ("s3://B/key", "not a valid S3 bucket name"),
        ("s3://bucket", "names no object"),
        ("s3://bucket/dir/", "names no object"),
        ("s3://bucket/a/../b", '".." path segments'),
        ("s3://bucket/./b", '".." path segments'),
    ],
)
def test_bad_s3_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        s3.S3Location.from_url(url)


def test_the_allow_list() -> None:
    location = s3.S3Location.from_url("s3://exports-bucket/ddb/2024/part-0.json.gz")
    assert location.file_name == "part-0.json.gz"
    for allowed in (
        ["exports-bucket"],
        ["exports-bucket/ddb"],
        ["exports-bucket/ddb/"],
        ["x", "s3://exports-bucket/ddb"],
    ):
        s3.check_allowed(location, allowed)
    for refused in (["exports-bucket/dd"], ["exports-bucket/ddb/2023"], ["other"], ["exports-bucket-2"]):
        with pytest.raises(SourceError, match="outside the buckets and prefixes"):
            s3.check_allowed(location, refused)
    with pytest.raises(SourceError, match="S3 sources are off"):
        s3.check_allowed(location, [])


# --- reading an object ----------------------------------------------------------------------------


class BreakingBody:
    """A body that hands out ``data`` and raises after ``break_after`` bytes (once per body)."""

    def __init__(self, data: bytes, break_after: int | None) -> None:
        self._stream = io.BytesIO(data)
        self._break_after = break_after
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        if self._break_after is not None and self._stream.tell() >= self._break_after:
            raise ResponseStreamingError(error="connection reset")
        if self._break_after is not None:
            size = min(size, self._break_after - self._stream.tell())
        return self._stream.read(size)

    def close(self) -> None:
        self.closed = True


class ScriptedS3:
    def __init__(self, data: bytes, *, breaks: list[int | None], etag: str = '"e1"') -> None:
        self.data = data
        self.etag = etag
        self.breaks = breaks
        self.calls: list[dict[str, Any]] = []

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if kwargs["IfMatch"] != self.etag:
            raise ClientError({"Error": {"Code": "PreconditionFailed", "Message": "no"}}, "GetObject")
        first = 0
        if "Range" in kwargs:
            first = int(kwargs["Range"].removeprefix("bytes=").split("-")[0])
        rest = self.data[first:]
        brk = self.breaks.pop(0) if self.breaks else None
        return {"ContentLength": len(rest), "Body": BreakingBody(rest, brk)}


def test_a_broken_connection_is_resumed_from_where_it_stopped() -> None:
    data = bytes(range(256)) * 1000
    client = ScriptedS3(data, breaks=[70_000, 50_000, None])
    obj = s3.S3Object(len(data), '"e1"')
    reader = s3.ObjectReader(client, s3.S3Location("bucket", "k"), obj)
    assert b"".join(iter(lambda: reader.read(65536), b"")) == data
    assert [call.get("Range") for call in client.calls] == [None, "bytes=70000-", "bytes=120000-"]
    assert all(call["IfMatch"] == '"e1"' for call in client.calls)


def test_resuming_gives_up_after_three_attempts_that_read_nothing() -> None:
    data = b"x" * 100_000
    client = ScriptedS3(data, breaks=[10, 10, 10, 0, 0, 0, 0])
    reader = s3.ObjectReader(client, s3.S3Location("bucket", "k"), s3.S3Object(len(data), '"e1"'))
    with pytest.raises(SourceError, match="broke off at byte 30 and could not be resumed after 3 attempts"):
        b"".join(iter(lambda: reader.read(65536), b""))


def test_a_replaced_object_is_refused_before_anything_is_read() -> None:
    client = ScriptedS3(b"new content", breaks=[], etag='"e2"')
    with pytest.raises(SourceError, match="was replaced after the job was created"):
        s3.ObjectReader(client, s3.S3Location("bucket", "k"), s3.S3Object(11, '"e1"'))
    same_etag_other_size = ScriptedS3(b"new content", breaks=[], etag='"e1"')
    with pytest.raises(SourceError, match="was replaced after the job was created"):
        s3.ObjectReader(same_etag_other_size, s3.S3Location("bucket", "k"), s3.S3Object(5, '"e1"'))


# --- table scans ------------------------------------------------------------------------------------


class ScriptedScan:
    """``pages`` pages of ``per_page`` items per segment; counts pages handed out."""

    def __init__(self, pages: int, per_page: int) -> None:
        self.pages = pages
        self.per_page = per_page
        self.served = 0
        self.lock = threading.Lock()

    def scan(self, **kwargs: Any) -> dict[str, Any]:
        segment, page = kwargs["Segment"], int(kwargs.get("ExclusiveStartKey", {}).get("p", {}).get("N", 0))
        with self.lock:
            self.served += 1
        items = [
            {"id": {"N": f"{segment}{page:04d}{i:04d}"}, "blob": {"B": b"\x00\x01"}, "tags": {"SS": ["a"]}}
            for i in range(self.per_page)
        ]
        answer: dict[str, Any] = {"Items": items, "ConsumedCapacity": {"CapacityUnits": 2.5}}
        if page + 1 < self.pages:
            answer["LastEvaluatedKey"] = {"p": {"N": str(page + 1)}}
        return answer


def test_a_parallel_scan_reads_every_item_once_with_types_kept() -> None:
    client = ScriptedScan(pages=5, per_page=10)
    scan = dynamodb_table.TableScan(client, "a", segments=3)
    rows = list(scan.rows())
    assert len(rows) == 150
    assert [row.position for row in rows] == list(range(1, 151))
    assert len({row.values["id"]["N"] for row in rows if row.values}) == 150
    assert rows[0].values is not None
    assert rows[0].values["blob"] == {"B": "AAE="}  # botocore's bytes back to DynamoDB JSON's base64
    assert scan.consumed_read_units == 2.5 * 15


def test_a_slow_consumer_holds_back_the_scan_and_closing_stops_it() -> None:
    client = ScriptedScan(pages=1000, per_page=1)
    scan = dynamodb_table.TableScan(client, "a", segments=2)
    rows = scan.rows()
    next(rows)
    time.sleep(0.3)
    # At most two pages per segment wait in the queue (+ one in each segment's hand, + the one read).
    assert client.served <= 2 * 2 + 2 + 1
    rows.close()  # a preview that read enough
    served = client.served
    time.sleep(0.2)
    assert client.served == served  # the segments stopped
    assert not [t for t in threading.enumerate() if t.name.startswith("scan-")]


def test_scan_errors_become_source_errors() -> None:
    class Missing:
        def scan(self, **kwargs: Any) -> dict[str, Any]:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "gone"}}, "Scan")

    with pytest.raises(SourceError, match="Scanning table 'a': DynamoDB says table 'a' does not exist"):
        list(dynamodb_table.TableScan(Missing(), "a", segments=2).rows())


@pytest.mark.parametrize(
    ("text", "item", "expected"),
    [
        ("", {"a": {"S": "1"}, "b": {"N": "2"}}, {"a": {"S": "1"}, "b": {"N": "2"}}),
        ("a -> pk", {"a": {"S": "1"}, "b": {"N": "2"}}, {"pk": {"S": "1"}}),
        ("a -> pk\n*", {"a": {"S": "1"}, "b": {"N": "2"}}, {"pk": {"S": "1"}, "b": {"N": "2"}}),
        (
            "a\n# comment\nb -> c",
            {"a": {"S": "1"}, "b": {"N": "2"}, "d": {"S": "x"}},
            {"a": {"S": "1"}, "c": {"N": "2"}},
        ),
    ],
)
def test_attribute_mappings(text: str, item: dict[str, Any], expected: dict[str, Any]) -> None:
    assert dynamodb_table.AttributeMapping.parse(text).apply(item) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("a -> b:N", "types are kept"), ("a -> x\nb -> x", "mapped twice"), ("-> x", "write `source -> target`")],
)
def test_bad_attribute_mappings(text: str, message: str) -> None:
    with pytest.raises(dynamodb_table.MappingError, match=message):
        dynamodb_table.AttributeMapping.parse(text)
