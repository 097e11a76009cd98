"""Read-back verification: read keys with BatchGetItem and judge what the table holds.

Two parts, no Django:

* :func:`compare` judges one item as DynamoDB stores it against what a job wrote: numbers as
  numbers (DynamoDB stores "1.50" as "1.5"), sets as sets (returned in any order), binary as
  bytes, maps and lists recursively. The verdict is ``verified``, ``missing`` or ``different``
  with a short, bounded diff of the attributes that differ. For a delete, absence is
  ``verified`` and an item under the key is ``different`` (its diff says the item is present):
  either way the table does not hold what the job did, and a repair sends the request again.
* :class:`BatchReader` is the BatchGetItem loop, shaped like the writer's: it takes its client,
  sleep, clock and rate limiter (in read units), sends at most 100 keys and at most 16 MB of
  expected items per call, reads with ``ConsistentRead`` by default, retries ``UnprocessedKeys``
  (HTTP 200, like ``UnprocessedItems``) and retryable errors with the writer's backoff and
  attempt rules (a call that made progress does not count against ``max_attempts``), splits a
  call DynamoDB rejects whole until the offending key is alone, and stops at once on a fatal
  error (missing table, access denied), leaving the keys without a verdict to the caller.

Cost: BatchGetItem charges each item read (or not found) separately, rounded up to 4 KB:
1 read unit per 4 KB with strong consistency, half that eventually consistent.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar, cast

from .backoff import Stall
from .errors import CODE_CONNECTION, ErrorInfo, ErrorKind, classify
from .items import Item, Key, from_wire, key_identity, to_wire
from .pipeline import run_pipelined
from .writer import RateLimiter, WriterPolicy, refusals_are_background

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_KEYS_PER_CALL = 100
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
READ_UNIT_BYTES = 4096
CODE_UNPROCESSED_KEYS = "UnprocessedKeys"
# Where a client prepared by ``client.read_responses_as_json`` puts a BatchGetItem answer as the
# DynamoDB JSON it arrived as (binary as base64 text); without it, boto3's parsed form (bytes).
RAW_RESPONSE = "BulkwritesResponseJson"

# Verdicts (the Django layer stores these strings).
VERIFIED = "verified"
MISSING = "missing"
DIFFERENT = "different"
ERROR = "error"  # the key could not be read (gave up after retries, or DynamoDB refused the key)

MAX_DIFF_ENTRIES = 10
MAX_DIFF_VALUE_CHARS = 120
ABSENT = "(absent)"


# --- judging one item ---------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    verdict: str
    diff: list[dict[str, str]] = field(default_factory=list)


def compare(expected: Mapping[str, Any] | None, actual: Mapping[str, Any] | None) -> Judgement:
    """Judge ``actual`` (what the table holds, DynamoDB JSON; None if absent) against ``expected``.

    ``expected`` None means the job deleted the key. Both sides may carry binary as base64
    text or as bytes.
    """
    if expected is None:
        if actual is None:
            return Judgement(VERIFIED)
        return Judgement(DIFFERENT, [_entry("(item)", ABSENT, f"present ({len(actual)} attributes)")])
    if actual is None:
        return Judgement(MISSING)
    diff: list[dict[str, str]] = []
    more = _diff_maps(expected, actual, "", diff)
    if not diff:
        return Judgement(VERIFIED)
    if more:
        diff.append({"attribute": "…", "expected": "", "actual": f"{more} more attributes differ"})
    return Judgement(DIFFERENT, diff)


def _diff_maps(expected: Mapping[str, Any], actual: Mapping[str, Any], prefix: str, diff: list[dict[str, str]]) -> int:
    """Append the differences of two maps of attributes to ``diff``; return how many did not fit."""
    more = 0
    for name in sorted(set(expected) | set(actual), key=str):
        path = f"{prefix}.{name}" if prefix else name
        left, right = expected.get(name), actual.get(name)
        if left is not None and right is not None and same_value(left, right):
            continue
        if left is not None and right is not None and "M" in left and "M" in right and len(diff) < MAX_DIFF_ENTRIES:
            more += _diff_maps(left["M"], right["M"], path, diff)  # name the attribute inside the map
            continue
        if len(diff) >= MAX_DIFF_ENTRIES:
            more += 1
            continue
        diff.append(_entry(path, _show(left), _show(right)))
    return more


def _entry(attribute: str, expected: str, actual: str) -> dict[str, str]:
    return {"attribute": _cut(attribute), "expected": expected, "actual": actual}


def _show(value: Mapping[str, Any] | None) -> str:
    if value is None:
        return ABSENT
    return _cut(json.dumps(_printable(value), ensure_ascii=False, separators=(",", ":")))


def _printable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def _cut(text: str) -> str:
    return text if len(text) <= MAX_DIFF_VALUE_CHARS else text[: MAX_DIFF_VALUE_CHARS - 1] + "…"


def same_value(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """Whether two attribute values are the same value as DynamoDB sees it."""
    if len(expected) != 1 or len(actual) != 1:
        return False
    ((left_type, left),) = expected.items()
    ((right_type, right),) = actual.items()
    if left_type != right_type:
        return False
    if left_type == "S" or left_type == "BOOL" or left_type == "NULL":
        return bool(left == right)
    if left_type == "N":
        return _number(left) == _number(right)
    if left_type == "B":
        return _bytes(left) == _bytes(right)
    if left_type == "SS":
        return len(left) == len(right) and set(left) == set(right)
    if left_type == "NS":
        return len(left) == len(right) and {_number(n) for n in left} == {_number(n) for n in right}
    if left_type == "BS":
        return len(left) == len(right) and {_bytes(b) for b in left} == {_bytes(b) for b in right}
    if left_type == "L":
        return len(left) == len(right) and all(same_value(a, b) for a, b in zip(left, right, strict=True))
    if left_type == "M":
        return left.keys() == right.keys() and all(same_value(left[k], right[k]) for k in left)
    return bool(left == right)


def _number(text: Any) -> Decimal | str:
    try:
        return Decimal(str(text))
    except InvalidOperation:
        return str(text)  # never equal to a number


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return base64.b64decode(str(value))


# --- the BatchGetItem loop -----------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so sets of requests are cheap
class ReadRequest:
    """One key to read back; ``ref`` is the caller's id for it.

    ``expected_json`` is the item the job wrote (DynamoDB JSON text, parsed only when judged),
    or None when the job deleted the key. ``size`` is the expected item's size in bytes, for the
    read-unit estimate and the 16 MB budget of a call.
    """

    ref: int
    key: Item
    expected_json: str | None
    size: int = 0
    identity: Key = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity", key_identity(self.key))

    def read_units(self, *, consistent: bool) -> float:
        units = max(1, math.ceil(self.size / READ_UNIT_BYTES))
        return float(units) if consistent else units / 2


@dataclass(frozen=True)
class Check:
    """The verdict on one key."""

    ref: int
    verdict: str
    attempts: int
    diff: list[dict[str, str]] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None


@dataclass
class ReadStats:
    """What the calls of a batch cost."""

    calls: int = 0
    keys_sent: int = 0
    unprocessed: int = 0
    throttled_calls: int = 0
    failed_calls: int = 0
    consumed_rcu: float = 0.0
    latency_seconds: float = 0.0
    error_codes: Counter[str] = field(default_factory=Counter)

    def add(self, other: ReadStats) -> None:
        self.calls += other.calls
        self.keys_sent += other.keys_sent
        self.unprocessed += other.unprocessed
        self.throttled_calls += other.throttled_calls
        self.failed_calls += other.failed_calls
        self.consumed_rcu += other.consumed_rcu
        self.latency_seconds += other.latency_seconds
        self.error_codes.update(other.error_codes)


@dataclass
class ReadResult:
    checks: list[Check] = field(default_factory=list)
    stats: ReadStats = field(default_factory=ReadStats)
    fatal: ErrorInfo | None = None  # set when the run must stop; keys without a check stay pending
    stopped: bool = False  # the caller asked to stop; keys without a check stay pending

    def add(self, other: ReadResult) -> None:
        self.checks.extend(other.checks)
        self.stats.add(other.stats)
        self.fatal = self.fatal or other.fatal
        self.stopped = self.stopped or other.stopped


def chunk_keys[R: ReadRequest](
    requests: Iterable[R], *, max_keys: int = MAX_KEYS_PER_CALL, max_bytes: int = MAX_RESPONSE_BYTES
) -> Iterator[list[R]]:
    """Lists of requests in source order, each fit for one BatchGetItem call.

    At most ``max_keys`` keys, expected items of at most ``max_bytes`` together (a bigger
    response would come back partly as ``UnprocessedKeys`` anyway), and never one key twice
    (DynamoDB rejects the whole call).
    """
    if not 1 <= max_keys <= MAX_KEYS_PER_CALL:
        raise ValueError(f"max_keys must be between 1 and {MAX_KEYS_PER_CALL}")
    chunk: list[R] = []
    keys: set[Key] = set()
    size = 0
    for request in requests:
        if chunk and (len(chunk) >= max_keys or size + request.size > max_bytes or request.identity in keys):
            yield chunk
            chunk, keys, size = [], set(), 0
        chunk.append(request)
        keys.add(request.identity)
        size += request.size
    if chunk:
        yield chunk


def _as_is(item: Mapping[str, Mapping[str, Any]]) -> Item:
    return cast(Item, item)  # already DynamoDB JSON, as the ledger stores it


class BatchReader:
    """Reads keys back and judges them; the read-side twin of :class:`~.writer.BatchWriter`."""

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        consistent_read: bool = True,
        policy: WriterPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        should_stop: Callable[[], bool] = lambda: False,
        limiter: RateLimiter | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.client = client
        self.table = table
        self.consistent_read = consistent_read
        self.policy = policy or WriterPolicy()
        self.sleep = sleep
        self.clock = clock
        self.should_stop = should_stop
        self.limiter = limiter
        self.endpoint = endpoint

    def read(self, requests: Sequence[ReadRequest]) -> ReadResult:
        """Read and judge at most 100 keys (one BatchGetItem call), retrying as needed."""
        result = ReadResult()
        self._read(list(requests), Counter(), result)
        return result

    def read_batches(
        self,
        batches: Iterable[tuple[T, Sequence[ReadRequest]]],
        *,
        concurrency: int = 1,
        on_result: Callable[[T, ReadResult], None] | None = None,
    ) -> ReadResult:
        """Read batches of at most 100 keys, each with a tag of the caller's, ``concurrency`` calls in flight.

        Like :meth:`BatchWriter.write_batches`: batches are pulled lazily in the calling thread,
        ``on_result`` runs there, and nothing more is pulled after a fatal error or a stop.
        """
        total = ReadResult()

        def finish(tag: T, batch_result: ReadResult) -> None:
            total.add(batch_result)
            if on_result is not None:
                on_result(tag, batch_result)

        run_pipelined(
            self.read,
            batches,
            concurrency=concurrency,
            finish=finish,
            halted=lambda: bool(total.fatal or total.stopped),
            thread_name_prefix="bulkwrites-read",
        )
        return total

    def _read(self, requests: list[ReadRequest], attempts: Counter[int], result: ReadResult) -> None:
        pending = requests
        started = self.clock()
        retry = 0
        stall = Stall(self.policy.backoff)
        last_error: ErrorInfo | None = None
        while pending:
            if self.should_stop():
                result.stopped = True
                return
            if retry:
                self.sleep(stall.pause())
            for request in pending:
                attempts[request.ref] += 1
            error, found, unprocessed = self._call(pending, result.stats)
            retry += 1
            if error is None:
                for request in pending:
                    if request not in unprocessed:
                        result.checks.append(self._judge(request, found.get(request.identity), attempts[request.ref]))
                if not unprocessed:
                    return
                if len(unprocessed) < len(pending):
                    stall.progressed()
                else:
                    stall.refused(background=refusals_are_background(self.limiter))
                last_error = ErrorInfo(ErrorKind.RETRYABLE, CODE_UNPROCESSED_KEYS, "DynamoDB returned the key unread")
                pending = [r for r in pending if r in unprocessed]
            elif error.kind is ErrorKind.FATAL:
                result.fatal = error
                return
            elif error.kind is ErrorKind.REJECTED:
                self._isolate_rejected(pending, error, attempts, result)
                return
            else:
                if error.is_throttling:
                    stall.refused(background=refusals_are_background(self.limiter))
                else:
                    stall.failed()
                last_error = error
            elapsed = self.clock() - started
            if stall.calls >= self.policy.max_attempts or elapsed >= self.policy.max_elapsed:
                self._give_up(pending, last_error, attempts, elapsed, result)
                return

    def _judge(self, request: ReadRequest, actual: Item | None, attempts: int) -> Check:
        expected = None if request.expected_json is None else json.loads(request.expected_json)
        judgement = compare(expected, actual)
        return Check(request.ref, judgement.verdict, attempts, judgement.diff)

    def _isolate_rejected(
        self, requests: list[ReadRequest], error: ErrorInfo, attempts: Counter[int], result: ReadResult
    ) -> None:
        """DynamoDB rejected the call without naming a key: split until the culprit is alone."""
        if len(requests) == 1:
            (request,) = requests
            result.checks.append(Check(request.ref, ERROR, attempts[request.ref], [], error.code, error.message))
            return
        middle = len(requests) // 2
        for half in (requests[:middle], requests[middle:]):
            self._read(half, attempts, result)
            if result.fatal or result.stopped:
                return

    def _give_up(
        self,
        requests: list[ReadRequest],
        error: ErrorInfo | None,
        attempts: Counter[int],
        elapsed: float,
        result: ReadResult,
    ) -> None:
        assert error is not None
        if error.kind is ErrorKind.CONNECTION:
            result.fatal = ErrorInfo(
                ErrorKind.FATAL,
                CODE_CONNECTION,
                f"{error.message} (gave up after {attempts[requests[0].ref]} attempts over {elapsed:.1f} s)",
            )
            return
        for request in requests:
            tries = attempts[request.ref]
            if error.is_throttling or error.code == CODE_UNPROCESSED_KEYS:
                message = f"throttled: gave up reading after {tries} attempts over {elapsed:.1f} s"
            else:
                message = f"{error.message} (gave up after {tries} attempts over {elapsed:.1f} s)"
            result.checks.append(Check(request.ref, ERROR, tries, [], error.code, message))

    def _call(
        self, requests: list[ReadRequest], stats: ReadStats
    ) -> tuple[ErrorInfo | None, dict[Key, Item], set[ReadRequest]]:
        """One BatchGetItem call: (error, items found by key identity, requests returned unprocessed)."""
        if self.limiter is not None:
            self.limiter.acquire(sum(r.read_units(consistent=self.consistent_read) for r in requests))
        stats.calls += 1
        stats.keys_sent += len(requests)
        key_names = list(requests[0].key)
        began = time.perf_counter()
        try:
            response = self.client.batch_get_item(
                RequestItems={
                    self.table: {"Keys": [to_wire(r.key) for r in requests], "ConsistentRead": self.consistent_read}
                },
                ReturnConsumedCapacity="TOTAL",
            )
        except Exception as exc:  # noqa: BLE001 - classify() re-raises what it does not know
            stats.latency_seconds += time.perf_counter() - began
            error = classify(exc, table=self.table, endpoint=self.endpoint)
            stats.failed_calls += 1
            stats.error_codes[error.code] += 1
            if error.is_throttling:
                stats.throttled_calls += 1
            if self.limiter is not None:
                # A throttling error refused every unit; any other failure says nothing about capacity.
                units = sum(r.read_units(consistent=self.consistent_read) for r in requests)
                refused = units if error.is_throttling else 0.0
                self.limiter.record(consumed=0.0, refused=refused, fault=not error.is_throttling)
            logger.debug("BatchGetItem on %s failed: %s %s", self.table, error.code, error.message)
            return error, {}, set()
        stats.latency_seconds += time.perf_counter() - began
        raw = response.get(RAW_RESPONSE)
        answer, as_json = (raw, _as_is) if raw is not None else (response, from_wire)
        consumed = sum(float(c.get("CapacityUnits") or 0) for c in answer.get("ConsumedCapacity") or ())
        found: dict[Key, Item] = {}
        for returned in (answer.get("Responses") or {}).get(self.table) or ():
            item = as_json(returned)
            found[key_identity({name: item[name] for name in key_names})] = item
        unprocessed = self._match_unprocessed(requests, key_names, answer.get("UnprocessedKeys") or {}, as_json)
        stats.consumed_rcu += consumed
        stats.unprocessed += len(unprocessed)
        if unprocessed:
            stats.throttled_calls += 1
            stats.error_codes[CODE_UNPROCESSED_KEYS] += 1
        if self.limiter is not None:
            refused = sum(r.read_units(consistent=self.consistent_read) for r in unprocessed)
            self.limiter.record(consumed=consumed, refused=refused)
        return None, found, unprocessed

    def _match_unprocessed(
        self,
        requests: list[ReadRequest],
        key_names: list[str],
        unprocessed_keys: dict[str, Any],
        as_json: Callable[[Mapping[str, Mapping[str, Any]]], Item],
    ) -> set[ReadRequest]:
        entry = unprocessed_keys.get(self.table) or {}
        keys = entry.get("Keys") or []
        if not keys:
            return set()
        by_identity = {r.identity: r for r in requests}
        matched: set[ReadRequest] = set()
        for key in keys:
            attributes = as_json(key)
            identity = key_identity({name: attributes[name] for name in key_names})
            request = by_identity.get(identity)
            if request is None:  # pragma: no cover - DynamoDB only returns what it was sent
                raise RuntimeError(f"DynamoDB returned an unprocessed key that was not asked for: {identity}")
            matched.add(request)
        return matched
