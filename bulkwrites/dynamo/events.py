"""Lambda event batches (SQS, Kinesis, DynamoDB Streams) written with the bulk writer.

Usable inside AWS Lambda with only boto3 (no Django)::

    from bulkwrites.dynamo.events import process_event

    def handler(event, context):
        return process_event(event, to_requests, table="orders-by-customer", deadline=context)

``process_event`` answers with Lambda's partial batch response,
``{"batchItemFailures": [{"itemIdentifier": ID}, ...]}`` (the event source mapping must have
``ReportBatchItemFailures`` on), where ``ID`` is the record's ``messageId`` (``aws:sqs``),
``kinesis.sequenceNumber`` (``aws:kinesis``) or ``dynamodb.SequenceNumber``
(``aws:dynamodb``). What a record's success means, duplicate keys, ordering and
``stop_on_first_failure`` are defined in :mod:`bulkwrites.dynamo.record_writes`.

An empty or unknown identifier makes Lambda fail the whole batch, so a record without one is
never reported: an event that is not one of the three shapes raises :class:`MalformedEventError`
before anything is written.

The deadline (seconds, or the Lambda context, whose remaining time less a reserve of
:data:`LAMBDA_RESERVE_SECONDS` is used): no call and no retry starts after it, and every record
whose writes are not done by then is reported failed (so it is delivered again), never dropped.
A call already in flight when the deadline passes is waited for (its outcome is real); the
default client's connect and read timeouts bound it.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from .client import make_client
from .items import KeySchema
from .record_writes import RecordOutcome, RecordsResult, TargetKey, ToRequests, write_records
from .writer import BatchWriter, WriterPolicy

logger = logging.getLogger(__name__)

SOURCE_SQS = "aws:sqs"
SOURCE_KINESIS = "aws:kinesis"
SOURCE_DYNAMODB = "aws:dynamodb"
LAMBDA_RESERVE_SECONDS = 1.0  # of a Lambda context's remaining time, kept to answer Lambda
DEFAULT_CONCURRENCY = 4  # calls in flight when records may be written in any order


class MalformedEventError(ValueError):
    """The event is not an SQS, Kinesis or DynamoDB Streams batch as Lambda delivers it."""


class BatchProcessingError(Exception):
    """Every record of the batch failed (Lambda then retries the whole batch, as it should).

    ``outcomes`` holds each record's reason; ``response`` is the partial batch response that
    would have been returned.
    """

    def __init__(self, message: str, *, outcomes: list[RecordOutcome], response: dict[str, Any]) -> None:
        super().__init__(message)
        self.outcomes = outcomes
        self.response = response


class LambdaContext(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True)
class EventReport:
    """The outcome of one event batch: the response for Lambda, and each record's reason."""

    response: dict[str, Any]
    identifiers: list[str]
    result: RecordsResult

    @property
    def failed(self) -> list[tuple[str, RecordOutcome]]:
        return [(self.identifiers[o.index], o) for o in self.result.failed]


_IDENTIFIERS: dict[str, tuple[str, ...]] = {
    SOURCE_SQS: ("messageId",),
    SOURCE_KINESIS: ("kinesis", "sequenceNumber"),
    SOURCE_DYNAMODB: ("dynamodb", "SequenceNumber"),
}


def event_records(event: Any) -> list[Mapping[str, Any]]:
    """The records of a Lambda event batch; :class:`MalformedEventError` if it is not one."""
    if not isinstance(event, Mapping):
        raise MalformedEventError(f"an event batch is a JSON object with 'Records', not {type(event).__name__}")
    records = event.get("Records")
    if not isinstance(records, list):
        raise MalformedEventError("the event has no 'Records' list (is it an SQS, Kinesis or DynamoDB Streams batch?)")
    for number, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise MalformedEventError(f"record {number} is not a JSON object")
    return list(records)


def record_identifier(record: Mapping[str, Any], *, number: int = 0) -> str:
    """The id Lambda knows a record by; :class:`MalformedEventError` if it has none."""
    source = record.get("eventSource")
    path = _IDENTIFIERS.get(str(source)) if isinstance(source, str) else None
    if path is None:
        raise MalformedEventError(
            f"record {number} has eventSource {source!r}; expected one of {', '.join(sorted(_IDENTIFIERS))}"
        )
    value: Any = record
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    if not isinstance(value, str) or not value.strip():
        raise MalformedEventError(
            f"record {number} ({source}) has no {'.'.join(path)}: it could not be reported to Lambda "
            "(an empty or unknown identifier fails the whole batch)"
        )
    return value


def process_event(
    event: Mapping[str, Any],
    to_requests: ToRequests,
    *,
    table: str,
    client: Any = None,
    deadline: float | LambdaContext | None = None,
    raise_on_entire_batch_failure: bool = True,
    stop_on_first_failure: bool = False,
    key: KeySchema | Sequence[str] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    policy: WriterPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Write a Lambda event batch with the bulk writer; the partial batch response for Lambda.

    ``to_requests(record)`` gets each record as Lambda delivered it (a Kinesis record's data is
    still base64: see :func:`kinesis_data`) and returns its write requests in DynamoDB JSON,
    possibly none; if it raises, that record fails. ``table`` is the target table;
    ``key`` its key attribute names (or :class:`KeySchema`), read once per process with
    ``DescribeTable`` when a put needs it and it is not given (deletes carry their key).
    ``client`` defaults to :func:`bulkwrites.dynamo.client.make_client` ``(for_writing=True)``:
    botocore's retries off, since the writer retries itself.

    ``stop_on_first_failure``: for sources that must be applied in order (Kinesis, DynamoDB
    Streams, SQS FIFO): the first failed record and every record after it are reported, and no
    call is made for requests of records after it (requests of later records that shared the
    failing call may be written; they are reported too and replayed, idempotently, when they
    come again). Otherwise ``concurrency`` calls go out at once and only failed records are
    reported. When every record failed, :class:`BatchProcessingError` is raised unless
    ``raise_on_entire_batch_failure=False`` (Powertools' semantics); an empty batch succeeds.
    """
    return process_event_report(
        event,
        to_requests,
        table=table,
        client=client,
        deadline=deadline,
        raise_on_entire_batch_failure=raise_on_entire_batch_failure,
        stop_on_first_failure=stop_on_first_failure,
        key=key,
        concurrency=concurrency,
        policy=policy,
        sleep=sleep,
        clock=clock,
    ).response


def process_event_report(
    event: Mapping[str, Any],
    to_requests: ToRequests,
    *,
    table: str,
    client: Any = None,
    deadline: float | LambdaContext | None = None,
    raise_on_entire_batch_failure: bool = True,
    stop_on_first_failure: bool = False,
    key: KeySchema | Sequence[str] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    policy: WriterPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> EventReport:
    """:func:`process_event`, with each record's outcome and reason (for logs, metrics, tests)."""
    deadline_at = _deadline_at(deadline, clock)
    records = event_records(event)
    identifiers = [record_identifier(record, number=n) for n, record in enumerate(records)]
    if not records:
        return EventReport({"batchItemFailures": []}, [], RecordsResult())
    if client is None:
        client = default_client(concurrency)

    def should_stop() -> bool:
        return deadline_at is not None and clock() >= deadline_at

    def bounded_sleep(seconds: float) -> None:
        # A backoff never sleeps past the deadline: what is not done by then is reported, not waited for.
        if deadline_at is not None:
            seconds = min(seconds, max(0.0, deadline_at - clock()))
        sleep(seconds)

    writer = BatchWriter(client, table, policy=policy, sleep=bounded_sleep, clock=clock, should_stop=should_stop)
    result = write_records(
        records,
        to_requests,
        writer=writer,
        key=TargetKey(key, describe=lambda: describe_key(client, table)),
        stop_on_first_failure=stop_on_first_failure,
        concurrency=1 if stop_on_first_failure else max(1, concurrency),
        label=lambda index: f"record {identifiers[index]}",
    )
    failures = [{"itemIdentifier": identifiers[o.index]} for o in result.outcomes if not o.succeeded]
    response: dict[str, Any] = {"batchItemFailures": failures}
    if failures and len(failures) == len(records) and raise_on_entire_batch_failure:
        reasons = "; ".join(f"{identifiers[o.index]}: {o.error_code}: {o.error_message}" for o in result.outcomes[:3])
        raise BatchProcessingError(
            f"all {len(records)} records failed ({reasons}{'; ...' if len(records) > 3 else ''})",
            outcomes=result.outcomes,
            response=response,
        )
    return EventReport(response, identifiers, result)


def _deadline_at(deadline: float | LambdaContext | None, clock: Callable[[], float]) -> float | None:
    if deadline is None:
        return None
    remaining_ms = getattr(deadline, "get_remaining_time_in_millis", None)
    if callable(remaining_ms):
        return clock() + float(remaining_ms()) / 1000.0 - LAMBDA_RESERVE_SECONDS
    if isinstance(deadline, int | float) and not isinstance(deadline, bool):
        return clock() + float(deadline)
    raise TypeError(f"deadline is seconds or a Lambda context, not {type(deadline).__name__}")


@lru_cache(maxsize=4)
def default_client(concurrency: int = DEFAULT_CONCURRENCY) -> Any:
    """The writing client, made once per process: a warm Lambda reuses it (and its connections)."""
    return make_client(for_writing=True, max_connections=concurrency)


_KEY_SCHEMAS: dict[tuple[str, str], KeySchema] = {}


def describe_key(client: Any, table: str) -> KeySchema:
    """The table's key, read with DescribeTable once per process (Lambda keeps it between invocations)."""
    cache_key = (str(getattr(getattr(client, "meta", None), "endpoint_url", "")), table)
    schema = _KEY_SCHEMAS.get(cache_key)
    if schema is None:
        schema = KeySchema.from_describe_table(client.describe_table(TableName=table)["Table"])
        _KEY_SCHEMAS[cache_key] = schema
    return schema


def kinesis_data(record: Mapping[str, Any]) -> bytes:
    """A Kinesis record's payload (Lambda delivers it base64-encoded)."""
    return base64.b64decode(record["kinesis"]["data"], validate=True)
