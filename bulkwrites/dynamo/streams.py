"""DynamoDB Streams, read by our own workers: shards, reading a shard, and the rule's mapping.

Plain Python (no Django): the workers' bookkeeping (leases, checkpoints, the failure ledger)
lives in ``bulkwrites.services.streams``; this module knows the API and the records.

- :func:`describe_stream` lists every shard (``DescribeStream`` is paginated by shard id). A
  closed shard has an ``EndingSequenceNumber``; a shard's ``ParentShardId`` must be read to its
  end before it, or the order of changes to one key breaks.
- :class:`ShardReader` reads one shard with ``GetShardIterator`` / ``GetRecords`` (at most
  1,000 records or 1 MB a call). Iterators expire after 15 minutes: an expired one is replaced
  from the last sequence number read (or, before any, from the starting position). A
  checkpoint older than the stream's 24-hour retention cannot be resumed: the reader starts
  again at ``TRIM_HORIZON`` and says so (``trimmed``), so the loss is recorded where an
  operator sees it, never silent.
- :class:`StreamMapping` turns a stream record into the target's write requests, in the same
  ``source -> target[:TYPE]`` lines as the admin's "Copy to DynamoDB".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from .items import Item, ItemError, KeySchema, from_wire, normalize_number, parse_header

EVENTS = ("INSERT", "MODIFY", "REMOVE")
VIEW_TYPES = ("KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES")
IMAGES_OF_VIEW_TYPE: Mapping[str, frozenset[str]] = {
    "KEYS_ONLY": frozenset(),
    "NEW_IMAGE": frozenset({"NewImage"}),
    "OLD_IMAGE": frozenset({"OldImage"}),
    "NEW_AND_OLD_IMAGES": frozenset({"NewImage", "OldImage"}),
}
TRIM_HORIZON = "TRIM_HORIZON"
LATEST = "LATEST"
MAX_RECORDS_PER_CALL = 1000
SOURCES = ("Keys", "NewImage", "OldImage")


class StreamError(Exception):
    """The stream cannot be read; the message is for an operator.

    ``retryable``: busy or briefly unavailable (throttled reads, a server error): try again
    later. Otherwise (gone, disabled, access denied) nothing changes until an operator acts.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


# --- shards ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    shard_id: str
    parent_shard_id: str | None
    starting_sequence: str
    ending_sequence: str | None  # set once the shard is closed (no more records will come)

    @property
    def closed(self) -> bool:
        return self.ending_sequence is not None


@dataclass(frozen=True)
class StreamInfo:
    arn: str
    status: str  # ENABLING, ENABLED, DISABLING, DISABLED
    view_type: str
    shards: list[ShardInfo]


def describe_stream(client: Any, stream_arn: str) -> StreamInfo:
    """The stream and every one of its shards (``DescribeStream`` pages through them)."""
    shards: list[ShardInfo] = []
    kwargs: dict[str, Any] = {"StreamArn": stream_arn}
    while True:
        try:
            description = client.describe_stream(**kwargs)["StreamDescription"]
        except ClientError as exc:
            raise _stream_error(exc, stream_arn) from None
        for shard in description.get("Shards") or ():
            numbers = shard.get("SequenceNumberRange") or {}
            shards.append(
                ShardInfo(
                    shard_id=shard["ShardId"],
                    parent_shard_id=shard.get("ParentShardId") or None,
                    starting_sequence=str(numbers.get("StartingSequenceNumber") or ""),
                    ending_sequence=numbers.get("EndingSequenceNumber") or None,
                )
            )
        last = description.get("LastEvaluatedShardId")
        if not last:
            status = str(description.get("StreamStatus") or "")
            return StreamInfo(stream_arn, status, str(description.get("StreamViewType") or ""), shards)
        kwargs["ExclusiveStartShardId"] = last


def sequence_number(value: str) -> int:
    """Sequence numbers are decimal strings of up to 40 digits; compare them as numbers."""
    return int(value)


# --- reading a shard ---------------------------------------------------------------------


@dataclass
class ShardBatch:
    records: list[dict[str, Any]]
    """The records read, as plain JSON (see :func:`plain_record`), oldest first."""
    end_of_shard: bool = False
    """The shard is closed and every record of it has been read."""
    trimmed: str | None = None
    """Set when records between the checkpoint and the trim horizon were lost (older than 24 h)."""


class ShardReader:
    """Reads one shard from a checkpoint (or its start), one ``GetRecords`` call at a time."""

    def __init__(
        self,
        client: Any,
        stream_arn: str,
        shard_id: str,
        *,
        after: str | None,
        initial: str = TRIM_HORIZON,
        iterator: str | None = None,
        limit: int = MAX_RECORDS_PER_CALL,
    ) -> None:
        self.client = client
        self.stream_arn = stream_arn
        self.shard_id = shard_id
        self.position = after  # sequence number of the last record handed out, or the checkpoint
        self.initial = initial
        self.limit = max(1, min(limit, MAX_RECORDS_PER_CALL))
        self._iterator: str | None = iterator  # an iterator kept from an earlier reader, if still fresh
        self._pending_trim: str | None = None
        self.finished = False

    @property
    def iterator(self) -> str | None:
        """Where the next read starts (an iterator is good for 15 minutes)."""
        return self._iterator

    def read(self) -> ShardBatch:
        if self.finished:
            return ShardBatch([], end_of_shard=True)
        if self._iterator is None:
            self._iterator = self._new_iterator()
        try:
            response = self.client.get_records(ShardIterator=self._iterator, Limit=self.limit)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ExpiredIteratorException":  # 15 minutes old: a fresh one from where we are
                self._iterator = self._new_iterator()
                response = self.client.get_records(ShardIterator=self._iterator, Limit=self.limit)
            elif code == "TrimmedDataAccessException":
                self._iterator = self._from_trim_horizon()
                response = self.client.get_records(ShardIterator=self._iterator, Limit=self.limit)
            else:
                raise _stream_error(exc, self.stream_arn) from None
        records = [plain_record(r) for r in response.get("Records") or ()]
        if records:
            self.position = records[-1]["dynamodb"]["SequenceNumber"]
        self._iterator = response.get("NextShardIterator")
        batch = ShardBatch(records, trimmed=self._pending_trim)
        self._pending_trim = None
        if self._iterator is None:
            self.finished = batch.end_of_shard = True
        return batch

    def _new_iterator(self) -> str:
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": self.shard_id}
        if self.position:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=self.position)
        else:
            kwargs["ShardIteratorType"] = self.initial
        try:
            return str(self.client.get_shard_iterator(**kwargs)["ShardIterator"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "TrimmedDataAccessException":
                return self._from_trim_horizon()
            raise _stream_error(exc, self.stream_arn) from None

    def _from_trim_horizon(self) -> str:
        self._pending_trim = (
            f"records of shard {self.shard_id} after sequence number {self.position or '(start)'} were trimmed "
            "from the stream (older than its 24-hour retention) before they were read; reading goes on "
            "from the oldest record still kept"
        )
        try:
            response = self.client.get_shard_iterator(
                StreamArn=self.stream_arn, ShardId=self.shard_id, ShardIteratorType=TRIM_HORIZON
            )
        except ClientError as exc:
            raise _stream_error(exc, self.stream_arn) from None
        return str(response["ShardIterator"])


def plain_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as boto3 returns it, in plain JSON: attribute values in DynamoDB JSON (binary as
    base64, as Lambda delivers them) and ``ApproximateCreationDateTime`` in epoch seconds."""
    out = {k: v for k, v in record.items() if k != "dynamodb"}
    change: dict[str, Any] = {}
    for name, value in (record.get("dynamodb") or {}).items():
        if name in SOURCES and isinstance(value, Mapping):
            change[name] = from_wire(value)
        elif isinstance(value, dt.datetime):
            change[name] = value.timestamp()
        else:
            change[name] = value
    out["dynamodb"] = change
    if isinstance(out.get("userIdentity"), Mapping):
        out["userIdentity"] = dict(out["userIdentity"])
    return out


_BUSY_CODES = frozenset({"LimitExceededException", "ThrottlingException", "InternalServerError", "ServiceUnavailable"})


def _stream_error(exc: ClientError, stream_arn: str) -> StreamError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _BUSY_CODES or status >= 500:
        return StreamError(code, f"the stream is busy or unavailable ({code}): {message}", retryable=True)
    if code == "ResourceNotFoundException":
        return StreamError(code, f"the stream {stream_arn} does not exist any more (was it disabled?): {message}")
    if code == "AccessDeniedException":
        return StreamError(code, f"the AWS identity may not read the stream {stream_arn}: {message}")
    return StreamError(code, f"reading the stream failed ({code}): {message}")


# --- the rule's mapping ------------------------------------------------------------------


@dataclass(frozen=True)
class MappingLine:
    """``source -> target[:TYPE]``: ``source`` is ``Keys.a``, ``NewImage.a``, ``OldImage.a`` or
    ``a`` (the record's keys first, then its image: the new one, or the old one for a REMOVE)."""

    image: str | None
    source: str
    target: str
    type: str | None = None

    def text(self) -> str:
        source = f"{self.image}.{self.source}" if self.image else self.source
        target = f"{self.target}:{self.type}" if self.type else self.target
        return source if target == self.source and not self.image else f"{source} -> {target}"


def parse_mapping(text: str) -> list[MappingLine]:
    """Parse the lines of a rule's mapping; an empty text maps nothing (see :class:`StreamMapping`)."""
    lines: list[MappingLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        source_text, arrow, target_text = (part.strip() for part in line.partition("->"))
        image, dot, name = source_text.partition(".")
        if dot and image in SOURCES:
            source_image: str | None = image
        else:
            source_image, name = None, source_text
        if not name:
            raise ItemError(f"line {number}: no source attribute in {raw.strip()!r}")
        target, type_name = parse_header(target_text if arrow else name)
        if arrow and not target_text:
            raise ItemError(f"line {number}: no target attribute after '->'")
        if not target:
            raise ItemError(f"line {number}: no target attribute in {raw.strip()!r}")
        if type_name is not None and type_name not in ("S", "N"):
            raise ItemError(f"line {number}: a mapped value can be converted to S or N only, not {type_name}")
        lines.append(MappingLine(source_image, name, target, type_name))
    targets = [line.target for line in lines]
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise ItemError(f"target attribute {twice[0]!r} is mapped twice")
    return lines


def format_mapping(lines: Iterable[MappingLine]) -> str:
    return "\n".join(line.text() for line in lines)


@dataclass(frozen=True)
class StreamMapping:
    """What a stream record becomes in the target table.

    ``delete``: the target key is the mapped attributes (or, without a mapping, the record's own
    keys). ``put``: the target item is the mapped attributes (or, without a mapping, the record's
    whole image: the new one, or the old one for a REMOVE). A mapped attribute missing from the
    record is left out of a put item, but a missing key attribute fails the record with the reason.
    """

    operation: str  # "put" or "delete"
    lines: tuple[MappingLine, ...] = ()
    target_key: KeySchema = field(default_factory=lambda: KeySchema(()))

    def requests(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        change = record.get("dynamodb") or {}
        event = record.get("eventName")
        if self.operation == "delete":
            key = self._mapped(change, event) if self.lines else dict(change.get("Keys") or {})
            missing = [name for name in self.target_key.names if name not in key]
            if missing:
                raise ItemError(f"the record gives no value for the target's key attribute {missing[0]!r}")
            return [{"DeleteRequest": {"Key": key}}]
        if self.lines:
            item = self._mapped(change, event)
        else:
            image_name = "OldImage" if event == "REMOVE" else "NewImage"
            if image_name not in change:
                raise ItemError(f"the record has no {image_name} (the stream's view type does not carry it)")
            item = dict(change[image_name])
        missing = [name for name in self.target_key.names if name not in item]
        if missing:
            raise ItemError(f"the record gives no value for the target's key attribute {missing[0]!r}")
        return [{"PutRequest": {"Item": item}}]

    def _mapped(self, change: Mapping[str, Any], event: Any) -> Item:
        out: Item = {}
        image_name = "OldImage" if event == "REMOVE" else "NewImage"
        for line in self.lines:
            places = (line.image,) if line.image else ("Keys", image_name)
            value = None
            for place in places:
                source = change.get(place) or {}
                if line.source in source:
                    value = source[line.source]
                    break
            if value is None:
                continue
            out[line.target] = convert(value, line.type) if line.type else dict(value)
        return out

    def images_needed(self, events: Sequence[str], source_key: Sequence[str]) -> set[str]:
        """The images (``NewImage``/``OldImage``) a record must carry for this mapping to work."""
        needed: set[str] = set()
        for event in events:
            current = "OldImage" if event == "REMOVE" else "NewImage"
            if not self.lines:
                if self.operation == "put":
                    needed.add(current)
                continue
            for line in self.lines:
                if line.image in ("NewImage", "OldImage"):
                    needed.add(line.image)
                elif line.image is None and line.source not in source_key:
                    needed.add(current)
        return needed


def view_type_problem(
    view_type: str, mapping: StreamMapping, events: Sequence[str], source_key: Sequence[str]
) -> str | None:
    """Why records of this view type cannot feed the mapping, or None."""
    have = IMAGES_OF_VIEW_TYPE.get(view_type)
    if have is None:
        return f"unknown stream view type {view_type!r}"
    missing = sorted(mapping.images_needed(events, source_key) - have)
    if missing:
        return (
            f"the source's stream carries {view_type} records, without {' or '.join(missing)}, which this mapping "
            f"needs for {', '.join(events)} events; map only the source's key attributes "
            f"({', '.join(source_key)}), or switch the stream to NEW_AND_OLD_IMAGES"
        )
    return None


def convert(value: Mapping[str, Any], type_name: str) -> dict[str, Any]:
    """A scalar attribute value as another scalar type (``N`` ↔ ``S``)."""
    ((current, inner),) = value.items()
    if current == type_name:
        return {current: inner}
    if current not in ("S", "N") or type_name not in ("S", "N"):
        raise ItemError(f"a {current} value cannot be converted to {type_name}")
    if type_name == "N":
        return {"N": normalize_number(inner)}
    return {"S": str(inner)}
