"""Records in, one outcome per record out: the writer behind event batches and stream rules.

A *record* is anything that turns into DynamoDB write requests: a Lambda event record (SQS,
Kinesis, DynamoDB Streams) or a stream record a worker read itself. ``to_requests(record)``
returns the record's requests in DynamoDB JSON (``{"PutRequest": {"Item": {...}}}`` or
``{"DeleteRequest": {"Key": {...}}}``), possibly none. Every request of the batch then goes
through the same :class:`~bulkwrites.dynamo.writer.BatchWriter` as bulk jobs, and the request
outcomes are mapped back to the records. The rules, in one place:

- **A record succeeds only when every request it depends on succeeded.** A record whose
  ``to_requests`` returns nothing succeeds. A record whose ``to_requests`` raises, or returns
  something DynamoDB would refuse (not a write request, a put without the table's key, an item
  over 400 KB, a malformed attribute), fails without any call, with the reason (logged, never
  swallowed).
- **Duplicate keys within a batch: the later request wins.** One call may not carry two
  requests for one key, and sending both would only make the earlier one's effect vanish. So
  only the last request per key is sent; the records whose requests it superseded *depend on
  it*: they succeed iff it succeeded (the table ends in the same state either way), and fail
  with its reason (``superseded by record N, whose write failed: ...``) otherwise.
- **Order.** Per key only the final request is sent, so the table ends as if every record had
  been applied in order. A surviving request is sent at the place of the *earliest* record that
  depends on it, so whenever records are written in order, every record's outcome is known
  once the records before it are done: that is what makes ``stop_on_first_failure`` exact.
- **stop_on_first_failure** (ordered sources: Kinesis, DynamoDB Streams, SQS FIFO): calls are
  made one at a time, in record order. The first record that fails ends the batch: no call is
  made after the call that showed the failure, and when a rejected call is split to find its
  culprit, the parts after the culprit are not sent either. That record and every record after
  it are reported failed, so the source delivers them again. One case cannot be avoided
  without giving up batching: requests of later records that shared a call with the failing
  one may have been written by DynamoDB (a call that comes back with some requests
  ``UnprocessedItems`` wrote the others). They are reported failed all the same; when they are
  delivered again their writes are replayed, which is idempotent (a put of the same item, a
  delete of the same key).
- **Nothing is dropped**: a request without an outcome (the deadline passed, the caller
  stopped, an error no retry can fix) leaves its records *unsettled*: reported failed, with
  the reason, so they come again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .batching import chunk_requests
from .errors import ErrorInfo
from .items import (
    MAX_ITEM_BYTES,
    Item,
    ItemError,
    Key,
    KeySchema,
    item_size,
    key_identity,
    parse_dynamodb_json,
    validate_item,
)
from .text import quoted
from .writer import BatchResult, BatchWriter, CallStats, Outcome, WriteRequest

logger = logging.getLogger(__name__)

ToRequests = Callable[[Any], Iterable[Mapping[str, Any]] | None]

# Codes a failed record carries besides DynamoDB's own.
CODE_RECORD_ERROR = "RecordError"  # to_requests raised
CODE_INVALID_REQUEST = "InvalidRequest"  # to_requests returned something DynamoDB would refuse
CODE_DEADLINE = "DeadlineExceeded"  # not written before the deadline
CODE_NOT_ATTEMPTED = "NotAttempted"  # not written: an earlier record failed, or the writer was stopped
CODE_AFTER_FAILURE = "AfterEarlierFailure"  # written, but an earlier record failed (stop_on_first_failure)


class TargetKey:
    """The target table's key, as far as it is known.

    Given as a :class:`KeySchema` (types too: requests are validated exactly as DynamoDB would),
    as attribute names (puts are keyed by those; types are left to DynamoDB), or not at all, with
    ``describe`` to read it when a put first needs it (deletes carry their key themselves).
    """

    def __init__(
        self,
        key: KeySchema | Sequence[str] | None = None,
        *,
        describe: Callable[[], KeySchema] | None = None,
    ) -> None:
        self._schema: KeySchema | None = key if isinstance(key, KeySchema) else None
        self._names: tuple[str, ...] | None = None
        if isinstance(key, KeySchema):
            self._names = key.names
        elif key is not None:
            names = tuple(key)
            if not names or any(not isinstance(n, str) or not n for n in names):
                raise ValueError(f"key must name the table's key attributes, not {key!r}")
            self._names = names
        self._describe = describe

    def known_names(self) -> tuple[str, ...] | None:
        return self._names

    def names(self) -> tuple[str, ...]:
        """The key's attribute names; reads the table's key with ``describe`` if it must."""
        if self._names is None:
            if self._describe is None:
                raise ItemError("the target table's key is not known: pass key=(...) to key put requests")
            self._schema = self._describe()
            self._names = self._schema.names
        return self._names

    @property
    def schema(self) -> KeySchema | None:
        return self._schema


@dataclass(frozen=True)
class RecordOutcome:
    """What became of one record of the batch (``index`` is its place in it)."""

    index: int
    succeeded: bool
    requests: int = 0  # write requests the record produced
    error_code: str = ""
    error_message: str = ""
    settled: bool = True
    """False when the record's writes have no outcome (deadline, stop, fatal error, an earlier
    failure): nothing is known of them, the record must simply come again."""


@dataclass
class RecordsResult:
    outcomes: list[RecordOutcome] = field(default_factory=list)
    stats: CallStats = field(default_factory=CallStats)
    fatal: ErrorInfo | None = None

    @property
    def failed(self) -> list[RecordOutcome]:
        return [o for o in self.outcomes if not o.succeeded]

    @property
    def succeeded(self) -> list[RecordOutcome]:
        return [o for o in self.outcomes if o.succeeded]

    @property
    def requests_failed(self) -> int:
        return sum(o.requests for o in self.failed if o.settled)


@dataclass
class _Planned:
    """One request of one record, before duplicates are resolved."""

    record: int
    key: Item
    identity: Key
    item: Item | None
    size: int
    wire_bytes: int


def parse_request(raw: Any, key: TargetKey) -> _Planned:
    """Check one write request in DynamoDB JSON; raise :class:`ItemError` with the reason."""
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise ItemError(
            'a write request is {"PutRequest": {"Item": {...}}} or {"DeleteRequest": {"Key": {...}}}, '
            f"not {quoted(raw, 80)}"
        )
    ((kind, body),) = raw.items()
    if kind == "PutRequest":
        if not isinstance(body, Mapping) or "Item" not in body:
            raise ItemError('a PutRequest needs {"Item": {...}}')
        item = parse_dynamodb_json(body["Item"])
        names = key.names()  # reads the table's key first if it must: then its types are known too
        if key.schema is not None:
            size = validate_item(item, key.schema)
        else:
            missing = [n for n in names if n not in item]
            if missing:
                raise ItemError(f"missing key attribute {missing[0]!r}")
            size = item_size(item)
            if size > MAX_ITEM_BYTES:
                raise ItemError(f"item is {size:,} bytes; DynamoDB's limit is {MAX_ITEM_BYTES:,} bytes (400 KB)")
        item_key = {name: item[name] for name in names}
        wire = len(json.dumps(item, separators=(",", ":")))
        return _Planned(-1, item_key, key_identity(item_key), item, size, wire + 32)
    if kind == "DeleteRequest":
        if not isinstance(body, Mapping) or "Key" not in body:
            raise ItemError('a DeleteRequest needs {"Key": {...}}')
        item_key = parse_dynamodb_json(body["Key"])
        known = key.known_names()
        if known is not None and set(item_key) != set(known):
            raise ItemError(
                f"a delete carries exactly the key attributes ({', '.join(known)}), not {', '.join(item_key)}"
            )
        if key.schema is not None:
            validate_item(item_key, key.schema)
        wire = len(json.dumps(item_key, separators=(",", ":")))
        return _Planned(-1, item_key, key_identity(item_key), None, 0, wire + 32)
    raise ItemError(f"unknown write request {kind!r} (expected PutRequest or DeleteRequest)")


def write_records(
    records: Sequence[Any],
    to_requests: ToRequests,
    *,
    writer: BatchWriter,
    key: TargetKey,
    stop_on_first_failure: bool = False,
    concurrency: int = 1,
    label: Callable[[int], str] = lambda index: f"record {index}",
    stopped_because: tuple[str, str] = (CODE_DEADLINE, "not written before the deadline"),
) -> RecordsResult:
    """Write the requests of ``records`` and tell, per record, whether its writes succeeded.

    ``writer`` carries the client, the table, the retry policy, the rate limiter and, through
    its ``should_stop``, any deadline; ``stopped_because`` is the code and reason given to the
    records left unwritten when it stops. ``label(index)`` names a record in messages.
    """
    result = RecordsResult()
    planned, produced, conversion_errors = _convert(records, to_requests, key, stop_on_first_failure, label)
    survivors, depends_on = _resolve_duplicates(planned)
    requests = [
        WriteRequest(ref=ref, key=p.key, item=p.item, size=p.size, wire_bytes=p.wire_bytes)
        for ref, p in enumerate(survivors)
    ]
    written = _write(requests, writer, stop_on_first_failure, concurrency)
    result.stats, result.fatal = written.stats, written.fatal
    by_ref = {o.ref: o for o in written.outcomes}

    first_failure: int | None = None
    for index in range(len(records)):
        outcome = conversion_errors.get(index)
        refs = depends_on.get(index, [])
        if outcome is None and first_failure is not None and stop_on_first_failure:
            outcome = _after_failure(index, produced.get(index, 0), label(first_failure), refs, by_ref)
        if outcome is None:
            unwritten = (written.fatal.code, written.fatal.message) if written.fatal else stopped_because
            if not written.fatal and not written.stopped:
                unwritten = (CODE_NOT_ATTEMPTED, "not written: the batch stopped at an earlier failure")
            outcome = _record_outcome(index, produced.get(index, 0), refs, survivors, by_ref, unwritten, label)
        if not outcome.succeeded and first_failure is None:
            first_failure = index
        result.outcomes.append(outcome)
    _log_failures(result, label)
    return result


def _log_failures(result: RecordsResult, label: Callable[[int], str]) -> None:
    """Each failed record with its reason; records merely left unwritten in one line per reason."""
    unwritten: dict[str, list[int]] = {}
    for outcome in result.failed:
        if outcome.error_code == CODE_RECORD_ERROR:
            continue  # logged with its traceback when it happened
        if outcome.settled:
            logger.warning("%s failed: %s: %s", label(outcome.index), outcome.error_code, outcome.error_message)
        else:
            unwritten.setdefault(f"{outcome.error_code}: {outcome.error_message}", []).append(outcome.index)
    for reason, indices in unwritten.items():
        logger.warning("%d record(s) from %s on left to come again: %s", len(indices), label(indices[0]), reason)


def _convert(
    records: Sequence[Any],
    to_requests: ToRequests,
    key: TargetKey,
    stop_on_first_failure: bool,
    label: Callable[[int], str],
) -> tuple[list[_Planned], dict[int, int], dict[int, RecordOutcome]]:
    """Every record's requests, checked; how many each record produced; the records that failed already."""
    planned: list[_Planned] = []
    produced: dict[int, int] = {}
    failed: dict[int, RecordOutcome] = {}
    for index, record in enumerate(records):
        if stop_on_first_failure and failed:
            first = min(failed)
            failed[index] = RecordOutcome(
                index, False, 0, CODE_NOT_ATTEMPTED, f"not written: {label(first)} failed before it", settled=False
            )
            continue
        try:
            raw_requests = list(to_requests(record) or ())
        except Exception as exc:  # any error of the caller's code fails this record only
            logger.warning("%s failed: to_requests raised %s", label(index), type(exc).__name__, exc_info=True)
            failed[index] = RecordOutcome(index, False, 0, CODE_RECORD_ERROR, f"{type(exc).__name__}: {exc}")
            continue
        try:
            mine = [parse_request(raw, key) for raw in raw_requests]
        except ItemError as exc:
            failed[index] = RecordOutcome(index, False, len(raw_requests), CODE_INVALID_REQUEST, str(exc))
            continue
        for request in mine:
            request.record = index
        planned.extend(mine)
        produced[index] = len(mine)
    return planned, produced, failed


def _resolve_duplicates(planned: list[_Planned]) -> tuple[list[_Planned], dict[int, list[int]]]:
    """The last request per key, each placed at the earliest record depending on it.

    Returns the requests to send (in sending order) and, per record, the indices into that
    list of the requests its outcome depends on (its own, or those that superseded them).
    """
    last_for_key: dict[Key, int] = {}
    for position, request in enumerate(planned):
        last_for_key[request.identity] = position
    earliest: dict[Key, int] = {}
    for request in planned:
        earliest.setdefault(request.identity, request.record)
    winners = sorted(set(last_for_key.values()), key=lambda p: (earliest[planned[p].identity], p))
    ref_of_position = {position: ref for ref, position in enumerate(winners)}
    depends_on: dict[int, list[int]] = {}
    for request in planned:
        ref = ref_of_position[last_for_key[request.identity]]
        refs = depends_on.setdefault(request.record, [])
        if ref not in refs:
            refs.append(ref)
    return [planned[p] for p in winners], depends_on


def _write(
    requests: list[WriteRequest], writer: BatchWriter, stop_on_first_failure: bool, concurrency: int
) -> BatchResult:
    batches = chunk_requests(requests)
    if not stop_on_first_failure:
        return writer.write_batches(((None, batch) for batch in batches), concurrency=concurrency)
    total = BatchResult()
    for batch in batches:
        written = writer.write(batch, stop_at_first_failure=True)
        total.add(written)
        if written.fatal or written.stopped or any(not o.succeeded for o in written.outcomes):
            break
        if len(written.outcomes) < len(batch):  # pragma: no cover - the writer gives every request an outcome
            break
    return total


def _record_outcome(
    index: int,
    produced: int,
    refs: list[int],
    survivors: list[_Planned],
    by_ref: Mapping[int, Outcome],
    unwritten: tuple[str, str],
    label: Callable[[int], str],
) -> RecordOutcome:
    for ref in refs:
        outcome = by_ref.get(ref)
        if outcome is None:
            return RecordOutcome(index, False, produced, unwritten[0], unwritten[1], settled=False)
        if not outcome.succeeded:
            message = outcome.error_message or ""
            owner = survivors[ref].record
            if owner != index:
                message = f"superseded by {label(owner)}, whose write failed: {message}"
            return RecordOutcome(index, False, produced, outcome.error_code or "WriteFailed", message)
    return RecordOutcome(index, True, produced)


def _after_failure(
    index: int, produced: int, first: str, refs: list[int], by_ref: Mapping[int, Outcome]
) -> RecordOutcome:
    """A record after the first failure (stop_on_first_failure): reported failed, whatever was written."""
    if refs and all(ref in by_ref and by_ref[ref].succeeded for ref in refs):
        return RecordOutcome(
            index,
            False,
            produced,
            CODE_AFTER_FAILURE,
            f"written, but reported failed because {first} failed before it (stop_on_first_failure); "
            "its writes are replayed when it comes again, which is idempotent",
            settled=False,
        )
    return RecordOutcome(
        index, False, produced, CODE_NOT_ATTEMPTED, f"not written: {first} failed before it", settled=False
    )
