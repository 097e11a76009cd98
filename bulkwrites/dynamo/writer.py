"""The BatchWriteItem loop: send requests, retry what DynamoDB did not take, report outcomes.

The writer owns item-level retrying only. It takes its client, sleep and clock from the
caller and returns plain outcome objects; what to do with them (the ledger, the job's
status) is the caller's business.

The three failure shapes of BatchWriteItem, and what happens to each:

1. HTTP 200 with ``UnprocessedItems``: only those requests are sent again, after a backoff.
   A call that made progress does not count against ``max_attempts``, so a table that
   drains slowly is not mistaken for a dead one.
2. The whole call fails with a retryable error (throttling, 5xx, connection): the same
   requests are sent again after a backoff.
3. The whole call is rejected (``ValidationException``, which names no item): the call is
   split in halves until the offending requests are alone; they fail with DynamoDB's
   message and every other request is written.

Errors that no retry can fix (missing table, bad credentials) stop the batch at once with
``BatchResult.fatal`` set; requests without an outcome are left for the caller to keep
pending.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .backoff import Backoff, Stall
from .batching import chunk_requests
from .errors import CODE_CONNECTION, CODE_SERVER_FAILING, CODE_UNPROCESSED, ErrorInfo, ErrorKind, classify
from .items import Item, Key, from_wire, key_identity, to_wire
from .pipeline import run_pipelined

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WriteRequest:
    """One put or delete; ``ref`` is the caller's id for it (the ledger row).

    A put carries its item either as a dict (``item``) or, cheaper, as the JSON text it was
    stored as (``item_json``, DynamoDB JSON): that text is already the item's form in the
    body of a BatchWriteItem call, so it can be sent without being parsed and serialized again.

    A plain class with slots, not a frozen dataclass: a worker makes one per item, and the
    dataclass's ``object.__setattr__`` per field cost ~3 µs of an item's ~100 µs under the GIL.
    Compared and hashed by identity, so sets of requests are cheap; treat it as immutable.
    """

    __slots__ = ("identity", "item", "item_json", "key", "ref", "size", "wire_bytes")

    def __init__(
        self,
        ref: int,
        key: Item,
        item: Item | None = None,  # the whole item for a put; None for a delete
        wire_bytes: int = 0,
        size: int = 0,  # DynamoDB item size, for write-capacity estimates
        item_json: str | None = None,  # the item as DynamoDB JSON text, instead of ``item``
    ) -> None:
        self.ref = ref
        self.key = key
        self.item = item
        self.wire_bytes = wire_bytes
        self.size = size
        self.item_json = item_json
        self.identity: Key = key_identity(key)

    def __repr__(self) -> str:
        kind = "put" if self.is_put else "delete"
        return f"WriteRequest(ref={self.ref!r}, {kind} key={self.key!r}, size={self.size})"

    @property
    def is_put(self) -> bool:
        return self.item is not None or self.item_json is not None

    @property
    def write_units(self) -> int:
        """Write capacity units DynamoDB charges: 1 per started KB for a put, 1 for a delete."""
        return max(1, math.ceil(self.size / 1024)) if self.is_put else 1

    def to_api(self) -> dict[str, Any]:
        """The request as boto3 takes it (binary as bytes)."""
        if self.item is not None:
            return {"PutRequest": {"Item": to_wire(self.item)}}
        if self.item_json is not None:
            return {"PutRequest": {"Item": to_wire(json.loads(self.item_json))}}
        return {"DeleteRequest": {"Key": to_wire(self.key)}}

    def to_json(self) -> str:
        """The request as it appears in the JSON body of a call (DynamoDB JSON, binary as base64)."""
        if self.item_json is not None:
            return '{"PutRequest":{"Item":' + self.item_json + "}}"
        if self.item is not None:
            return json.dumps({"PutRequest": {"Item": self.item}}, separators=(",", ":"))
        return json.dumps({"DeleteRequest": {"Key": self.key}}, separators=(",", ":"))


class CallRequests(Sequence[dict[str, Any]]):
    """The requests of one call, passed to ``batch_write_item`` as ``RequestItems[table]``.

    To any client it reads as the list of request dicts boto3 expects (built on access). A
    client prepared by :func:`bulkwrites.dynamo.client.send_requests_as_json` takes
    :meth:`json` instead and puts it in the request body as is: botocore's serializer would
    otherwise walk every attribute of every item on each call (~2 ms of CPU per call of 25).
    """

    def __init__(self, requests: Sequence[WriteRequest]) -> None:
        self.requests = requests

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [r.to_api() for r in self.requests[index]]
        return self.requests[index].to_api()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (r.to_api() for r in self.requests)

    def json(self) -> str:
        return "[" + ",".join(r.to_json() for r in self.requests) + "]"


@dataclass(frozen=True)
class Outcome:
    ref: int
    succeeded: bool
    attempts: int
    error_code: str | None = None
    error_message: str | None = None


@dataclass
class CallStats:
    """What the calls of a batch cost; summed into the job's audit."""

    calls: int = 0
    requests_sent: int = 0
    unprocessed: int = 0
    throttled_calls: int = 0
    failed_calls: int = 0
    consumed_wcu: float = 0.0
    latency_seconds: float = 0.0
    error_codes: Counter[str] = field(default_factory=Counter)

    def add(self, other: CallStats) -> None:
        self.calls += other.calls
        self.requests_sent += other.requests_sent
        self.unprocessed += other.unprocessed
        self.throttled_calls += other.throttled_calls
        self.failed_calls += other.failed_calls
        self.consumed_wcu += other.consumed_wcu
        self.latency_seconds += other.latency_seconds
        self.error_codes.update(other.error_codes)


@dataclass
class BatchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    stats: CallStats = field(default_factory=CallStats)
    fatal: ErrorInfo | None = None  # set when the job must stop; requests without outcome stay pending
    stopped: bool = False  # the caller asked to stop; requests without outcome stay pending

    def add(self, other: BatchResult) -> None:
        self.outcomes.extend(other.outcomes)
        self.stats.add(other.stats)
        self.fatal = self.fatal or other.fatal
        self.stopped = self.stopped or other.stopped


@dataclass(frozen=True)
class WriterPolicy:
    # Consecutive calls without progress before an item is given up. A batch's last item is sent
    # alone, and where a share of calls fails at random (issue 10's fault mix: ~40 % of calls take
    # nothing of a lone item) 10 in a row befell one tail in ~10,000: about one 5,000-item job in
    # 50 lost an item to it (seen in a bench chaos run). 20 in a row is ~1e-8 a tail; a table that
    # takes nothing at all still fails its items, after about a minute of backoff instead of 20 s.
    max_attempts: int = 20
    max_elapsed: float = 600.0  # seconds one batch may spend retrying
    backoff: Backoff = field(default_factory=Backoff)


class RateLimiter(Protocol):
    """Write-capacity control shared by the calls of a job (see ``dynamo.ratelimit``)."""

    def acquire(self, write_units: float) -> None: ...

    def record(self, *, consumed: float, refused: float, fault: bool = False) -> None:
        """Units consumed (0: unreported) and refused for capacity (all of a throttled call's,
        the unprocessed ones'), or ``fault``: the call failed for a reason that says nothing about
        capacity (5xx, connection)."""
        ...

    def background_share(self) -> float:
        """The share of each call DynamoDB refuses whatever the rate, as the limiter learnt it
        (0: none learnt, refusals are taken for capacity)."""
        ...


def refusals_are_background(limiter: RateLimiter | None) -> bool:
    """Whether the job's rate limiter has learnt a background share (see ``backoff.Stall.refused``)."""
    return limiter is not None and limiter.background_share() > 0


class BatchWriter:
    def __init__(
        self,
        client: Any,
        table: str,
        *,
        policy: WriterPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        should_stop: Callable[[], bool] = lambda: False,
        limiter: RateLimiter | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.client = client
        self.table = table
        self.policy = policy or WriterPolicy()
        self.sleep = sleep
        self.clock = clock
        self.should_stop = should_stop
        self.limiter = limiter
        self.endpoint = endpoint
        # When a call of this writer (any thread) last wrote an item: a batch that exhausted its
        # retries on server errors while no call wrote anything is an outage (see _give_up).
        self._wrote_at = -math.inf

    # --- one call's worth -------------------------------------------------------------

    def write(self, requests: Sequence[WriteRequest], *, stop_at_first_failure: bool = False) -> BatchResult:
        """Write at most 25 requests (one BatchWriteItem call), retrying as needed.

        With ``stop_at_first_failure`` (ordered event sources), isolating a rejected call stops at
        the first request that fails: the requests after it in the call get no outcome (they were
        never sent on their own). Requests DynamoDB already wrote in a shared call stay written.
        """
        result = BatchResult()
        attempts: Counter[int] = Counter()
        self._write(list(requests), attempts, result, stop_at_first_failure=stop_at_first_failure)
        return result

    def _write(
        self,
        requests: list[WriteRequest],
        attempts: Counter[int],
        result: BatchResult,
        *,
        stop_at_first_failure: bool = False,
    ) -> None:
        pending = requests
        started = self.clock()
        retry = 0  # calls made for these requests so far
        stall = Stall(self.policy.backoff)
        stalled_since = started  # when the first of the calls in a row without progress was sent
        server_errors_only = True  # every one of them answered with a server error (5xx)
        last_error: ErrorInfo | None = None
        while pending:
            if self.should_stop():
                result.stopped = True
                return
            if retry:
                self.sleep(stall.pause())
            for request in pending:
                attempts[request.ref] += 1
            if not stall.calls:
                stalled_since, server_errors_only = self.clock(), True
            error, unprocessed = self._call(pending, result.stats)
            retry += 1
            if error is None:
                done = len(pending) - len(unprocessed)
                if done:
                    self._wrote_at = self.clock()
                result.outcomes.extend(Outcome(r.ref, True, attempts[r.ref]) for r in pending if r not in unprocessed)
                if not unprocessed:
                    return
                if done:
                    stall.progressed()
                else:
                    stall.refused(background=refusals_are_background(self.limiter))
                server_errors_only = False
                last_error = ErrorInfo(
                    ErrorKind.RETRYABLE,
                    CODE_UNPROCESSED,
                    "DynamoDB returned the item as unprocessed (throttled)",
                )
                pending = [r for r in pending if r in unprocessed]
            elif error.kind is ErrorKind.FATAL:
                result.fatal = error
                return
            elif error.kind is ErrorKind.REJECTED:
                self._isolate_rejected(pending, error, attempts, result, stop_at_first_failure=stop_at_first_failure)
                return
            else:
                if error.is_throttling:
                    stall.refused(background=refusals_are_background(self.limiter))
                else:
                    stall.failed()
                last_error = error
                server_error = error.kind is ErrorKind.RETRYABLE and not error.is_throttling
                server_errors_only = server_errors_only and server_error
            elapsed = self.clock() - started
            if stall.calls >= self.policy.max_attempts or elapsed >= self.policy.max_elapsed:
                outage = server_errors_only and self._wrote_at < stalled_since
                silent = self.clock() - stalled_since if outage else None
                self._give_up(pending, last_error, attempts, elapsed, result, outage_seconds=silent)
                return

    def _isolate_rejected(
        self,
        requests: list[WriteRequest],
        error: ErrorInfo,
        attempts: Counter[int],
        result: BatchResult,
        *,
        stop_at_first_failure: bool = False,
    ) -> None:
        """DynamoDB rejected the call without naming an item: split until the culprits are alone."""
        if len(requests) == 1:
            (request,) = requests
            result.outcomes.append(Outcome(request.ref, False, attempts[request.ref], error.code, error.message))
            return
        middle = len(requests) // 2
        known = len(result.outcomes)
        for half in (requests[:middle], requests[middle:]):
            self._write(half, attempts, result, stop_at_first_failure=stop_at_first_failure)
            if result.fatal or result.stopped:
                return
            if stop_at_first_failure and any(not o.succeeded for o in result.outcomes[known:]):
                return  # the halves after a failed one are not sent: their requests get no outcome

    def _give_up(
        self,
        requests: list[WriteRequest],
        error: ErrorInfo | None,
        attempts: Counter[int],
        elapsed: float,
        result: BatchResult,
        *,
        outage_seconds: float | None = None,
    ) -> None:
        assert error is not None
        if error.kind is ErrorKind.CONNECTION:
            # An unreachable endpoint is the job's problem, not the items': they stay pending.
            result.fatal = ErrorInfo(
                ErrorKind.FATAL,
                CODE_CONNECTION,
                f"{error.message} (gave up after {attempts[requests[0].ref]} attempts over {elapsed:.1f} s)",
            )
            return
        if outage_seconds is not None:
            # Only server errors, and nothing written by any call meanwhile: DynamoDB (or what is in
            # front of it) is failing, and so would every other batch, one retry budget at a time
            # (a 10M-item job: weeks of failing items). The items stay pending, as for an
            # unreachable endpoint. A batch that fails while other calls write fails its items.
            result.fatal = ErrorInfo(
                ErrorKind.FATAL,
                CODE_SERVER_FAILING,
                f"DynamoDB answered every call with a server error and wrote nothing for {outage_seconds:.1f} s "
                f"(last: {error.code}: {error.message}; {attempts[requests[0].ref]} attempts); "
                "the items were left pending: resume once DynamoDB answers again",
            )
            return
        for request in requests:
            tries = attempts[request.ref]
            if error.is_throttling:
                message = f"throttled: gave up after {tries} attempts over {elapsed:.1f} s"
            else:
                message = f"{error.message} (gave up after {tries} attempts over {elapsed:.1f} s)"
            result.outcomes.append(Outcome(request.ref, False, tries, error.code, message))

    def _call(self, requests: list[WriteRequest], stats: CallStats) -> tuple[ErrorInfo | None, set[WriteRequest]]:
        """One BatchWriteItem call: the error, or the set of requests returned unprocessed."""
        if self.limiter is not None:
            self.limiter.acquire(sum(r.write_units for r in requests))
        stats.calls += 1
        stats.requests_sent += len(requests)
        began = time.perf_counter()
        try:
            response = self.client.batch_write_item(
                RequestItems={self.table: CallRequests(requests)},
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
                refused = float(sum(r.write_units for r in requests)) if error.is_throttling else 0.0
                self.limiter.record(consumed=0.0, refused=refused, fault=not error.is_throttling)
            logger.debug("BatchWriteItem on %s failed: %s %s", self.table, error.code, error.message)
            return error, set()
        stats.latency_seconds += time.perf_counter() - began
        consumed = sum(float(c.get("CapacityUnits") or 0) for c in response.get("ConsumedCapacity") or ())
        unprocessed = self._match_unprocessed(requests, response.get("UnprocessedItems") or {})
        stats.consumed_wcu += consumed
        stats.unprocessed += len(unprocessed)
        if unprocessed:
            stats.throttled_calls += 1
            stats.error_codes[CODE_UNPROCESSED] += 1
        if self.limiter is not None:
            self.limiter.record(consumed=consumed, refused=float(sum(r.write_units for r in unprocessed)))
        return None, unprocessed

    def _match_unprocessed(self, requests: list[WriteRequest], unprocessed_items: dict[str, Any]) -> set[WriteRequest]:
        entries = unprocessed_items.get(self.table) or []
        if not entries:
            return set()
        by_identity = {r.identity: r for r in requests}
        key_names = list(requests[0].key)
        matched: set[WriteRequest] = set()
        for entry in entries:
            if "PutRequest" in entry:
                attributes = from_wire(entry["PutRequest"]["Item"])
            else:
                attributes = from_wire(entry["DeleteRequest"]["Key"])
            identity = key_identity({name: attributes[name] for name in key_names})
            request = by_identity.get(identity)
            if request is None:  # pragma: no cover - DynamoDB only returns what it was sent
                raise RuntimeError(f"DynamoDB returned an unprocessed item that was not sent: {identity}")
            matched.add(request)
        return matched

    # --- many calls at once -------------------------------------------------------------

    def write_all(
        self,
        requests: Iterable[WriteRequest],
        *,
        concurrency: int = 1,
        batch_size: int = 25,
        on_result: Callable[[BatchResult], None] | None = None,
    ) -> BatchResult:
        """Write any number of requests, ``concurrency`` calls in flight (see :meth:`write_batches`)."""
        batches = ((None, batch) for batch in chunk_requests(requests, max_requests=batch_size))
        report = None if on_result is None else (lambda _tag, result: on_result(result))
        return self.write_batches(batches, concurrency=concurrency, on_result=report)

    def write_batches(
        self,
        batches: Iterable[tuple[T, Sequence[WriteRequest]]],
        *,
        concurrency: int = 1,
        on_result: Callable[[T, BatchResult], None] | None = None,
    ) -> BatchResult:
        """Write batches of at most 25 requests, each with a tag of the caller's, ``concurrency`` calls in flight.

        ``batches`` is pulled lazily, in the calling thread, whenever a call slot is free, so a
        caller can fetch more work while earlier calls are in flight. ``on_result(tag, result)``
        is called in the calling thread for each finished batch, so the caller can record
        outcomes as they come. Stops pulling batches after a fatal error or a stop request;
        calls already in flight are finished first.
        """
        total = BatchResult()

        def finish(tag: T, batch_result: BatchResult) -> None:
            total.add(batch_result)
            if on_result is not None:
                on_result(tag, batch_result)

        run_pipelined(
            self.write,
            batches,
            concurrency=concurrency,
            finish=finish,
            halted=lambda: bool(total.fatal or total.stopped),
        )
        return total
