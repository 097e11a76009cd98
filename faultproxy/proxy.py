"""An HTTP proxy in front of DynamoDB Local that injects the faults real DynamoDB produces.

DynamoDB Local never throttles and never returns ``UnprocessedItems``; this proxy sits between a
boto3 client and it, forwards every request, and - for ``BatchWriteItem`` - can answer the way
real DynamoDB does under load or failure. It is a test tool: plain standard library, no Django.

Use::

    from faultproxy import FaultProxy

    with FaultProxy(upstream="http://127.0.0.1:8124", seed=1) as proxy:   # port=0: ephemeral
        client = boto3.client("dynamodb", endpoint_url=proxy.url, ...)
        proxy.configure(unprocessed_share=0.3, throttle_share=0.1)
        ...
        proxy.stats()["unprocessed_items_returned"]

``configure(**settings)`` replaces *all* fault settings at once (``configure()`` = no faults), refills
the capacity bucket and re-arms ``outage_calls``; ``configure(seed=N)`` also re-seeds the random
generator. ``outage(seconds=..., calls=..., code=...)`` changes only the outage settings. The
settings (fields of :class:`FaultConfig`):

``unprocessed_share`` (0..1)
    Share of the write requests of each ``BatchWriteItem`` that are removed from the body sent
    upstream (they never reach DynamoDB Local) and returned in ``UnprocessedItems`` (merged with
    what upstream returned). The count is ``share x n`` rounded *stochastically* (``floor(share x n +
    U[0,1))``), so its mean is exactly ``share x n`` for any call size: 0.4 of 25 holds back exactly
    10, 0.3 of 25 holds back 7 or 8, 0.3 of a single request holds it back 30 % of the time. Which
    requests are held back is drawn at random. Only when ``share x n > n - 1`` can a call have every
    request held back; it is then answered ``200`` with all of them unprocessed without calling
    upstream (``share=1`` always does this - a way to test a writer that must give up).
``unprocessed_keys_share`` (0..1)
    The same for reads: share of the keys of each ``BatchGetItem`` that are removed from the body
    sent upstream (never read) and returned in ``UnprocessedKeys`` (with the table's other request
    settings, such as ``ConsistentRead``, as DynamoDB returns them), rounded the same stochastic
    way; a call whose every key is held back is answered ``200`` without calling upstream.
``throttle_share`` + ``throttle_code``
    Share of calls answered ``400`` with ``ProvisionedThroughputExceededException`` (default),
    ``ThrottlingException`` or ``RequestLimitExceeded``, without forwarding.
``server_error_share`` + ``server_error_status``
    Share of calls answered ``500 InternalServerError`` or ``503 ServiceUnavailableException``.
``drop_after_write_share``
    Share of calls forwarded (the write happens) whose client connection is then closed without a
    response: botocore raises ``ConnectionClosedError`` (and, with retries on, replays the call,
    which is idempotent for BatchWriteItem).
``latency_ms`` + ``latency_jitter_ms``
    Added delay before each call is handled: ``latency_ms + U[0, latency_jitter_ms)``.
``outage_until`` (Unix time, ``time.time()``), ``outage_calls``, ``outage_code``
    Reject every call until the deadline, and/or the next ``outage_calls`` calls, with
    ``outage_code`` (default ``ServiceUnavailableException``; any code below). ``configure`` also
    takes ``outage_seconds`` (relative to now) instead of ``outage_until``.
``capacity_wcu`` (+ ``capacity_burst_seconds``, default 1)
    A token bucket of write capacity units refilled at ``capacity_wcu`` per second and holding at
    most ``capacity_wcu x burst`` (it starts full). Each put costs ``ceil(item size / 1 KB)`` WCU
    (DynamoDB's item-size rules, see :func:`item_size`), each delete 1 WCU. The requests of a call
    are paid in order; the first that the bucket cannot pay and all after it are returned in
    ``UnprocessedItems``, and if not even the first can be paid the call is answered
    ``ProvisionedThroughputExceededException``, as real DynamoDB does. An item costing more than
    the whole bucket is paid once the bucket is full, leaving it in debt, so it is never starved.
    WCU charged for a call that upstream rejects are given back.
``poison_attribute`` (+ ``poison_value``)
    Reject the whole call with ``ValidationException`` when any put item or delete key has an
    attribute of that name (and, if ``poison_value`` is set, whose scalar value - the string of
    an ``S``, ``N`` or ``BOOL`` - equals it). Nothing of the call is forwarded.
``sink`` (default False)
    Answer every ``BatchWriteItem`` that would be forwarded at once, as fully written (``200``,
    empty ``UnprocessedItems``, ``ConsumedCapacity`` from the item sizes when asked), sending nothing
    upstream: a DynamoDB of unbounded speed, so a bench measures the client and its ledger without
    DynamoDB Local's single writer thread in the way. The other faults still apply first (requests
    held back are returned unprocessed); other operations are forwarded as usual, so tables can
    be created and described.
``all_operations`` (default False)
    Faults target only the two batch operations, ``BatchWriteItem`` and ``BatchGetItem``; every
    other operation (CreateTable, Scan, GetItem, ...) passes untouched. With
    ``all_operations=True``, latency, outage, throttling, server errors and drops apply to every
    operation (the body-level faults stay with their batch operation).

Per call the faults are tried in this order: latency, outage, throttle, server error, poison,
unprocessed share (or unprocessed keys share), capacity, drop. Random draws come from one
``random.Random(seed)`` under a lock and are made only for the faults that are on, so a sequential
run is reproducible; concurrent callers interleave their draws in scheduling order.

``stats()`` counts since the last ``reset_stats()``: ``calls`` (DynamoDB operations, not control
requests), ``batch_write_calls``, ``batch_get_calls``, ``unprocessed_keys_returned`` (keys in the
``UnprocessedKeys`` of responses the proxy built or rewrote), ``keys_forwarded`` (keys read upstream
in BatchGetItem bodies the proxy parsed), ``throttled_calls`` (throttling codes, including capacity and
outage rejections with such a code), ``server_errors`` (synthesized 5xx), ``outage_rejections``,
``poisoned_calls``, ``dropped``, ``unprocessed_items_returned`` (requests in the
``UnprocessedItems`` of responses the proxy built or rewrote), ``items_forwarded`` (write requests
sent upstream in BatchWriteItem bodies, or answered as written by a ``sink``), ``wcu_charged`` (WCU
of forwarded requests upstream accepted; counted only while ``capacity_wcu`` is set),
``upstream_errors`` (upstream unreachable: the client connection is closed, as a network failure
would).

``items_forwarded`` is exact for calls whose body the proxy parsed (whenever a body-level fault -
unprocessed share, capacity, poison - is on); otherwise it is counted from the raw body's
``"PutRequest"``/``"DeleteRequest"`` keys, which an attribute of one of those names would inflate.

Control, on the proxy's own port (paths that no DynamoDB operation uses; JSON in and out)::

    POST /__faultproxy__/config   body = configure() keyword arguments -> the settings now in force
    GET  /__faultproxy__/config   -> the settings in force
    POST /__faultproxy__/outage   body = outage() keyword arguments
    GET  /__faultproxy__/stats    -> stats()
    POST /__faultproxy__/reset    -> reset_stats(); the settings stay

Performance: one thread per client connection (HTTP/1.1 keep-alive, as botocore pools them), one
persistent upstream connection per client connection, ``TCP_NODELAY`` on both sides (without it
Nagle's algorithm and delayed ACKs add ~40 ms a request), a small HTTP/1.1 reader of its own on both
sides (http.server/http.client parse headers through the email package, which cost more than all
the rest), each request and response written in one send, and request bodies parsed only when a
body-level fault needs them. About 120 us of CPU per passed-through call (~8,000 calls/s on one
core); the upstream must be plain ``http://`` (DynamoDB Local).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import logging
import math
import random
import socket
import socketserver
import threading
import time
import uuid
import zlib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

BATCH_WRITE_TARGET = "DynamoDB_20120810.BatchWriteItem"
BATCH_GET_TARGET = "DynamoDB_20120810.BatchGetItem"
CONTROL_PREFIX = "/__faultproxy__/"
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"

# code -> (HTTP status, __type, message), as DynamoDB sends them; botocore's Error.Code is the part
# of __type after "#".
ERRORS: dict[str, tuple[int, str, str]] = {
    "ProvisionedThroughputExceededException": (
        400,
        "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        (
            "The level of configured provisioned throughput for the table was exceeded. "
            "Consider increasing your provisioning level with the UpdateTable API."
        ),
    ),
    "ThrottlingException": (
        400,
        "com.amazon.coral.availability#ThrottlingException",
        "Rate of requests exceeds the allowed throughput.",
    ),
    "RequestLimitExceeded": (
        400,
        "com.amazonaws.dynamodb.v20120810#RequestLimitExceeded",
        (
            "Throughput exceeds the current throughput limit for your account. "
            "Please contact AWS Support at https://aws.amazon.com/support request a limit increase"
        ),
    ),
    "InternalServerError": (
        500,
        "com.amazonaws.dynamodb.v20120810#InternalServerError",
        "Internal server error (injected by faultproxy)",
    ),
    "ServiceUnavailableException": (
        503,
        "com.amazon.coral.availability#ServiceUnavailableException",
        "Service unavailable (injected by faultproxy)",
    ),
    "ValidationException": (
        400,
        "com.amazon.coral.validate#ValidationException",
        "faultproxy: the batch holds a poisoned item",
    ),
}
THROTTLE_CODES = (
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
)
SERVER_ERROR_CODES = {500: "InternalServerError", 503: "ServiceUnavailableException"}
OUTAGE_CODES = THROTTLE_CODES + tuple(SERVER_ERROR_CODES.values())

# Headers that belong to one hop and are not passed on; Content-Length is always recomputed.
_HOP_HEADERS = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    )
)

_MAX_LINE = 65536
_MAX_HEADERS = 200
_REASONS = {status.value: status.phrase for status in HTTPStatus}

STAT_NAMES = (
    "calls",
    "batch_write_calls",
    "batch_get_calls",
    "throttled_calls",
    "server_errors",
    "outage_rejections",
    "poisoned_calls",
    "dropped",
    "unprocessed_items_returned",
    "items_forwarded",
    "wcu_charged",
    "upstream_errors",
    "unprocessed_keys_returned",
    "keys_forwarded",
)


def _check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, not {value!r}")


@dataclasses.dataclass(frozen=True)
class FaultConfig:
    """The fault settings in force; see the module docstring for what each one does."""

    unprocessed_share: float = 0.0
    unprocessed_keys_share: float = 0.0
    throttle_share: float = 0.0
    throttle_code: str = "ProvisionedThroughputExceededException"
    server_error_share: float = 0.0
    server_error_status: int = 500
    drop_after_write_share: float = 0.0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    outage_until: float | None = None
    outage_calls: int = 0
    outage_code: str = "ServiceUnavailableException"
    capacity_wcu: float | None = None
    capacity_burst_seconds: float = 1.0
    poison_attribute: str | None = None
    poison_value: str | None = None
    all_operations: bool = False
    sink: bool = False

    def __post_init__(self) -> None:
        for name in (
            "unprocessed_share",
            "unprocessed_keys_share",
            "throttle_share",
            "server_error_share",
            "drop_after_write_share",
        ):
            _check_share(name, getattr(self, name))
        if self.throttle_code not in THROTTLE_CODES:
            raise ValueError(f"throttle_code must be one of {THROTTLE_CODES}, not {self.throttle_code!r}")
        if self.server_error_status not in SERVER_ERROR_CODES:
            raise ValueError(f"server_error_status must be 500 or 503, not {self.server_error_status!r}")
        if self.outage_code not in OUTAGE_CODES:
            raise ValueError(f"outage_code must be one of {OUTAGE_CODES}, not {self.outage_code!r}")
        if self.latency_ms < 0 or self.latency_jitter_ms < 0:
            raise ValueError("latency_ms and latency_jitter_ms cannot be negative")
        if self.outage_calls < 0:
            raise ValueError("outage_calls cannot be negative")
        if self.capacity_wcu is not None and self.capacity_wcu <= 0:
            raise ValueError("capacity_wcu must be positive (or None for no limit)")
        if self.capacity_burst_seconds <= 0:
            raise ValueError("capacity_burst_seconds must be positive")

    @property
    def parses_batches(self) -> bool:
        """Whether a BatchWriteItem body must be read to apply these settings."""
        return bool(self.unprocessed_share or self.capacity_wcu or self.poison_attribute)


# --- item size (developer guide, "Item sizes"); independent of the app's own rules on purpose:
# a fault injector that shared the code under test would hide that code's mistakes.


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    """Stored size in bytes of an item in wire form (DynamoDB JSON, binary as base64 text)."""
    return sum(len(name.encode("utf-8")) + _value_size(value) for name, value in item.items())


def _value_size(value: Mapping[str, Any]) -> int:
    ((type_name, inner),) = value.items()
    if type_name == "S":
        return len(inner.encode("utf-8"))
    if type_name == "N":
        return _number_size(inner)
    if type_name == "B":
        return _base64_size(inner)
    if type_name in ("BOOL", "NULL"):
        return 1
    if type_name == "SS":
        return sum(len(s.encode("utf-8")) for s in inner)
    if type_name == "NS":
        return sum(_number_size(n) for n in inner)
    if type_name == "BS":
        return sum(_base64_size(b) for b in inner)
    if type_name == "L":
        return 3 + sum(_value_size(v) + 1 for v in inner)
    if type_name == "M":
        return 3 + sum(len(k.encode("utf-8")) + _value_size(v) + 1 for k, v in inner.items())
    raise ValueError(f"unknown DynamoDB type {type_name!r}")


def _number_size(text: str) -> int:
    """About one byte per two significant digits, plus one."""
    try:
        digits = len(Decimal(text).normalize().as_tuple().digits)
    except InvalidOperation:
        digits = len(text)  # upstream rejects it anyway; any cost will do
    return math.ceil(digits / 2) + 1


def _base64_size(text: str) -> int:
    """Decoded length of base64 text, without decoding it."""
    return len(text) * 3 // 4 - (len(text) - len(text.rstrip("=")))


def request_wcu(write_request: Mapping[str, Any]) -> int:
    """Write capacity units one BatchWriteItem request costs: a put per started KB, a delete 1."""
    put = write_request.get("PutRequest")
    if put is None:
        return 1
    return max(1, math.ceil(item_size(put["Item"]) / 1024))


# --- responses -----------------------------------------------------------------------


def crc32_header(body: bytes) -> str:
    return str(zlib.crc32(body) & 0xFFFFFFFF)


def error_response(code: str, message: str | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """A DynamoDB error response (status, headers, body) as botocore expects it."""
    status, type_name, default_message = ERRORS[code]
    body = json.dumps({"__type": type_name, "message": message or default_message}).encode()
    headers = [
        ("x-amzn-RequestId", _request_id()),
        ("x-amzn-ErrorType", code),
        ("Content-Type", JSON_CONTENT_TYPE),
        ("x-amz-crc32", crc32_header(body)),
    ]
    return status, headers, body


def _json_response(data: Any, status: int = 200) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = [
        ("x-amzn-RequestId", _request_id()),
        ("Content-Type", JSON_CONTENT_TYPE),
        ("x-amz-crc32", crc32_header(body)),
    ]
    return status, headers, body


def _request_id() -> str:
    return str(uuid.uuid4())


def _count_requests(body: bytes) -> int:
    return body.count(b'"PutRequest"') + body.count(b'"DeleteRequest"')


def _count_items(request_items: Mapping[str, list[Any]]) -> int:
    return sum(len(requests) for requests in request_items.values())


# --- the proxy -------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """What to do with one call, decided before anything is forwarded."""

    latency: float = 0.0
    reject: str | None = None  # an error code to answer with, nothing forwarded
    drop: bool = False
    body: bytes | None = None  # a rewritten request body
    held_back: dict[str, Any] | None = None  # requests to add to UnprocessedItems (keys: UnprocessedKeys)
    held_back_count: int = 0
    forwarded_count: int | None = None
    wcu: int = 0
    answer_without_upstream: bool = False
    return_capacity: bool = False
    sink: bool = False  # answer as written, without upstream (FaultConfig.sink)


class FaultProxy:
    """The fault-injecting proxy; see the module docstring. Thread-safe."""

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = 0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL (DynamoDB Local), not {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._config = FaultConfig()
        self._outage_calls_left = 0
        self._tokens = 0.0
        self._refilled_at = 0.0
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("the proxy is already running")
        self._server = _Server((self._host, self._port), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="faultproxy",
            daemon=True,
        )
        self._thread.start()
        logger.info("faultproxy on %s forwarding to %s", self.url, self.upstream)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        return self.start() if self._server is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # --- settings and stats

    def configure(
        self,
        *,
        seed: int | None = None,
        outage_seconds: float | None = None,
        **settings: Any,
    ) -> None:
        """Replace every fault setting at once (no arguments: no faults). See :class:`FaultConfig`."""
        if outage_seconds is not None:
            if "outage_until" in settings:
                raise TypeError("give outage_seconds or outage_until, not both")
            settings["outage_until"] = time.time() + outage_seconds
        config = FaultConfig(**settings)
        with self._lock:
            if seed is not None:
                self._random.seed(seed)
            self._install(config)

    def outage(
        self,
        seconds: float | None = None,
        *,
        calls: int | None = None,
        code: str | None = None,
    ) -> None:
        """Start an outage (for some seconds and/or some calls) without touching other settings."""
        with self._lock:
            changes: dict[str, Any] = {}
            if seconds is not None:
                changes["outage_until"] = time.time() + seconds
            if calls is not None:
                changes["outage_calls"] = calls
            if code is not None:
                changes["outage_code"] = code
            self._config = dataclasses.replace(self._config, **changes)
            if calls is not None:
                self._outage_calls_left = calls

    def _install(self, config: FaultConfig) -> None:
        self._config = config
        self._outage_calls_left = config.outage_calls
        if config.capacity_wcu:
            self._tokens = config.capacity_wcu * config.capacity_burst_seconds
            self._refilled_at = time.monotonic()

    @property
    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self._config)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = dict.fromkeys(STAT_NAMES, 0)

    # --- per call

    def _plan(self, target: str | None, body: bytes) -> _Plan:
        """Decide the faults of one call (under the lock: it draws random numbers and spends tokens)."""
        plan = _Plan()
        is_batch = target == BATCH_WRITE_TARGET
        is_read = target == BATCH_GET_TARGET
        with self._lock:
            config = self._config
            stats = self._stats
            stats["calls"] += 1
            if is_batch:
                stats["batch_write_calls"] += 1
            elif is_read:
                stats["batch_get_calls"] += 1
            elif not config.all_operations:
                return plan
            rng = self._random
            if config.latency_ms or config.latency_jitter_ms:
                plan.latency = (config.latency_ms + rng.random() * config.latency_jitter_ms) / 1000
            if self._outage_calls_left > 0 or (config.outage_until and time.time() < config.outage_until):
                if self._outage_calls_left > 0:
                    self._outage_calls_left -= 1
                plan.reject = config.outage_code
                stats["outage_rejections"] += 1
            elif config.throttle_share and rng.random() < config.throttle_share:
                plan.reject = config.throttle_code
            elif config.server_error_share and rng.random() < config.server_error_share:
                plan.reject = SERVER_ERROR_CODES[config.server_error_status]
            elif is_batch and config.parses_batches:
                self._plan_batch(config, body, plan)
            elif is_read and config.unprocessed_keys_share:
                self._plan_batch_get(config, body, plan)
            if plan.reject is None and config.drop_after_write_share and not plan.answer_without_upstream:
                plan.drop = rng.random() < config.drop_after_write_share
            plan.sink = is_batch and config.sink and plan.reject is None and not plan.answer_without_upstream
            if plan.reject is not None:
                status = ERRORS[plan.reject][0]
                if plan.reject in THROTTLE_CODES:
                    stats["throttled_calls"] += 1
                elif status >= 500:
                    stats["server_errors"] += 1
                else:
                    stats["poisoned_calls"] += 1
            elif is_batch:
                stats["items_forwarded"] += (
                    _count_requests(body) if plan.forwarded_count is None else plan.forwarded_count
                )
        return plan

    def _plan_batch(self, config: FaultConfig, body: bytes, plan: _Plan) -> None:
        """The body-level faults: poison, unprocessed share, capacity. Called under the lock."""
        try:
            request = json.loads(body)
            request_items: dict[str, list[Any]] = request["RequestItems"]
            entries = [(table, wr) for table, requests in request_items.items() for wr in requests]
        except (ValueError, TypeError, KeyError, AttributeError):
            return  # malformed: upstream answers it with its own validation error
        if not entries:
            return
        if config.poison_attribute and any(_is_poisoned(wr, config) for _, wr in entries):
            plan.reject = "ValidationException"
            return
        count = len(entries)
        held: set[int] = set()
        if config.unprocessed_share:
            share_count = min(count, int(config.unprocessed_share * count + self._random.random()))
            held.update(self._random.sample(range(count), share_count))
        if config.capacity_wcu:
            remaining = [i for i in range(count) if i not in held]
            try:
                costs = [request_wcu(entries[i][1]) for i in remaining]
            except (ValueError, TypeError, KeyError, AttributeError):
                return  # a malformed item: upstream rejects the call with its own ValidationException
            paid, plan.wcu = self._spend(config, costs)
            if remaining and not paid:
                plan.reject = "ProvisionedThroughputExceededException"
                return
            held.update(remaining[paid:])
        plan.forwarded_count = count - len(held)
        if not held:
            return
        plan.held_back_count = len(held)
        plan.held_back = {}
        forwarded: dict[str, list[Any]] = {}
        for index, (table, write_request) in enumerate(entries):
            target = plan.held_back if index in held else forwarded
            target.setdefault(table, []).append(write_request)
        plan.return_capacity = request.get("ReturnConsumedCapacity", "NONE") != "NONE"
        if forwarded:
            request["RequestItems"] = forwarded
            plan.body = json.dumps(request, separators=(",", ":")).encode()
        else:
            plan.answer_without_upstream = True

    def _plan_batch_get(self, config: FaultConfig, body: bytes, plan: _Plan) -> None:
        """The unprocessed keys share of a BatchGetItem. Called under the lock."""
        try:
            request = json.loads(body)
            request_items: dict[str, dict[str, Any]] = request["RequestItems"]
            entries = [(table, key) for table, spec in request_items.items() for key in spec["Keys"]]
        except (ValueError, TypeError, KeyError, AttributeError):
            return  # malformed: upstream answers it with its own validation error
        count = len(entries)
        if not count:
            return
        share_count = min(count, int(config.unprocessed_keys_share * count + self._random.random()))
        held = set(self._random.sample(range(count), share_count))
        self._stats["keys_forwarded"] += count - len(held)
        if not held:
            return
        plan.held_back_count = len(held)
        plan.held_back = {}
        forwarded: dict[str, dict[str, Any]] = {}
        for index, (table, key) in enumerate(entries):
            target = plan.held_back if index in held else forwarded
            spec = target.setdefault(table, {**request_items[table], "Keys": []})
            spec["Keys"].append(key)
        plan.return_capacity = request.get("ReturnConsumedCapacity", "NONE") != "NONE"
        if forwarded:
            request["RequestItems"] = forwarded
            plan.body = json.dumps(request, separators=(",", ":")).encode()
        else:
            plan.answer_without_upstream = True

    def _spend(self, config: FaultConfig, costs: list[int]) -> tuple[int, int]:
        """Pay costs in order from the token bucket while it can; return (count paid, WCU spent)."""
        assert config.capacity_wcu is not None
        capacity = config.capacity_wcu * config.capacity_burst_seconds
        now = time.monotonic()
        self._tokens = min(capacity, self._tokens + (now - self._refilled_at) * config.capacity_wcu)
        self._refilled_at = now
        paid = 0
        spent = 0
        for cost in costs:
            # An item larger than the whole bucket is let through once the bucket is full.
            if self._tokens < min(cost, capacity):
                break
            self._tokens -= cost
            spent += cost
            paid += 1
        self._stats["wcu_charged"] += spent
        return paid, spent

    def _refund(self, wcu: int) -> None:
        with self._lock:
            config = self._config
            if config.capacity_wcu:
                self._tokens = min(
                    config.capacity_wcu * config.capacity_burst_seconds,
                    self._tokens + wcu,
                )
            self._stats["wcu_charged"] -= wcu

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._stats[name] += amount

    def handle(self, handler: _Handler, body: bytes) -> None:
        """Serve one DynamoDB call received by ``handler``."""
        target = handler.fields.get("x-amz-target")
        is_read = target == BATCH_GET_TARGET
        plan = self._plan(target, body)
        if plan.latency:
            time.sleep(plan.latency)
        if plan.reject is not None:
            handler.respond(*error_response(plan.reject))
            return
        if plan.answer_without_upstream:
            assert plan.held_back is not None
            if is_read:
                answer: dict[str, Any] = {
                    "Responses": {table: [] for table in plan.held_back},
                    "UnprocessedKeys": plan.held_back,
                }
            else:
                answer = {"UnprocessedItems": plan.held_back}
            if plan.return_capacity:
                answer["ConsumedCapacity"] = [{"TableName": table, "CapacityUnits": 0.0} for table in plan.held_back]
            self._count("unprocessed_keys_returned" if is_read else "unprocessed_items_returned", plan.held_back_count)
            handler.respond(*_json_response(answer))
            return
        if plan.sink:
            self._answer_as_written(handler, plan.body if plan.body is not None else body, plan)
            return
        try:
            status, headers, response_body = handler.forward(plan.body if plan.body is not None else body)
        except (OSError, ValueError) as exc:
            logger.warning("faultproxy: upstream %s failed: %s", self.upstream, exc)
            self._count("upstream_errors")
            if plan.wcu:
                self._refund(plan.wcu)
            handler.drop()
            return
        if plan.wcu and status != 200:
            self._refund(plan.wcu)
        if plan.drop:
            self._count("dropped")
            handler.drop()
            return
        if plan.held_back and status == 200 and is_read:
            headers, response_body, unprocessed = _merge_unprocessed_keys(headers, response_body, plan.held_back)
            self._count("unprocessed_keys_returned", unprocessed)
        elif plan.held_back and status == 200:
            headers, response_body, unprocessed = _merge_unprocessed(headers, response_body, plan.held_back)
            self._count("unprocessed_items_returned", unprocessed)
        handler.respond(status, headers, response_body)

    def _answer_as_written(self, handler: _Handler, body: bytes, plan: _Plan) -> None:
        """Sink mode: answer a BatchWriteItem as if every forwarded request was written."""
        if plan.drop:  # "written", then the connection is lost, as with drop_after_write upstream
            self._count("dropped")
            handler.drop()
            return
        answer: dict[str, Any] = {"UnprocessedItems": plan.held_back or {}}
        if plan.held_back:
            self._count("unprocessed_items_returned", plan.held_back_count)
        if b'"ReturnConsumedCapacity"' in body:
            try:
                request = json.loads(body)
                if request.get("ReturnConsumedCapacity", "NONE") != "NONE":
                    answer["ConsumedCapacity"] = [
                        {"TableName": table, "CapacityUnits": float(sum(request_wcu(wr) for wr in requests))}
                        for table, requests in request["RequestItems"].items()
                    ]
            except (ValueError, TypeError, KeyError, AttributeError):
                handler.respond(*error_response("ValidationException", "malformed BatchWriteItem body"))
                return
        handler.respond(*_json_response(answer))

    def control(self, handler: _Handler, body: bytes) -> None:
        """Serve a request to the control path."""
        action = handler.path[len(CONTROL_PREFIX) :].split("?", 1)[0].strip("/")
        method = handler.method
        try:
            arguments = json.loads(body) if body.strip() else {}
            if not isinstance(arguments, dict):
                raise TypeError("the body must be a JSON object")
            if (method, action) == ("POST", "config"):
                self.configure(**arguments)
                result: Any = self.config
            elif (method, action) == ("GET", "config"):
                result = self.config
            elif (method, action) == ("POST", "outage"):
                self.outage(**arguments)
                result = self.config
            elif (method, action) == ("GET", "stats"):
                result = self.stats()
            elif (method, action) == ("POST", "reset"):
                self.reset_stats()
                result = self.stats()
            else:
                handler.respond(*_json_response({"error": f"no control action {method} {action}"}, 404))
                return
        except (TypeError, ValueError) as exc:
            handler.respond(*_json_response({"error": str(exc)}, 400))
            return
        handler.respond(*_json_response(result))


def _is_poisoned(write_request: Mapping[str, Any], config: FaultConfig) -> bool:
    if "PutRequest" in write_request:
        attributes = (write_request["PutRequest"] or {}).get("Item")
    else:
        attributes = (write_request.get("DeleteRequest") or {}).get("Key")
    if not isinstance(attributes, Mapping) or config.poison_attribute not in attributes:
        return False
    if config.poison_value is None:
        return True
    value = attributes[config.poison_attribute]
    if not isinstance(value, Mapping) or len(value) != 1:
        return False
    ((type_name, inner),) = value.items()
    if type_name == "BOOL":
        inner = "true" if inner else "false"
    return type_name in ("S", "N", "BOOL") and inner == config.poison_value


def _merge_unprocessed(
    headers: list[tuple[str, str]], body: bytes, held_back: dict[str, list[Any]]
) -> tuple[list[tuple[str, str]], bytes, int]:
    """Add held-back requests to an upstream response's UnprocessedItems; fix the CRC header.

    Returns the new headers and body, and how many requests the response now leaves unprocessed.
    """
    answer = _decoded(headers, body)
    unprocessed = answer.setdefault("UnprocessedItems", {})
    for table, requests in held_back.items():
        unprocessed.setdefault(table, []).extend(requests)
    new_headers, new_body = _reencoded(headers, answer)
    return new_headers, new_body, _count_items(unprocessed)


def _merge_unprocessed_keys(
    headers: list[tuple[str, str]], body: bytes, held_back: dict[str, dict[str, Any]]
) -> tuple[list[tuple[str, str]], bytes, int]:
    """Add held-back keys to an upstream BatchGetItem response's UnprocessedKeys; fix the CRC header."""
    answer = _decoded(headers, body)
    unprocessed = answer.setdefault("UnprocessedKeys", {})
    for table, spec in held_back.items():
        if table in unprocessed:
            unprocessed[table].setdefault("Keys", []).extend(spec["Keys"])
        else:
            unprocessed[table] = spec
    new_headers, new_body = _reencoded(headers, answer)
    return new_headers, new_body, sum(len(spec.get("Keys") or ()) for spec in unprocessed.values())


def _decoded(headers: list[tuple[str, str]], body: bytes) -> Any:
    encoding = next((v.lower() for k, v in headers if k.lower() == "content-encoding"), "")
    if encoding == "gzip":
        body = gzip.decompress(body)
    return json.loads(body)


def _reencoded(headers: list[tuple[str, str]], answer: Any) -> tuple[list[tuple[str, str]], bytes]:
    new_body = json.dumps(answer, separators=(",", ":")).encode()
    new_headers = [(k, v) for k, v in headers if k.lower() not in ("x-amz-crc32", "content-encoding")]
    new_headers.append(("x-amz-crc32", crc32_header(new_body)))
    return new_headers, new_body


# --- HTTP plumbing ---------------------------------------------------------------------
# A minimal HTTP/1.1 on both sides instead of http.server and http.client: their header parsing
# goes through the email package and cost about four times the CPU of everything else a call does.


class _BadRequest(ValueError):
    """A message that is not HTTP/1.1 as this proxy reads it."""


class _UpstreamClosed(Exception):
    """Upstream closed a reused connection before answering: safe to send again on a new one."""


class _Reader(Protocol):
    """What the HTTP parsing below reads from: a socket's buffered file, either side."""

    def readline(self, size: int | None = -1, /) -> bytes: ...

    def read(self, size: int | None = -1, /) -> bytes: ...

    def close(self) -> None: ...


def _read_head(reader: _Reader) -> tuple[str, list[tuple[str, str]]] | None:
    """Read a start line and header lines; None when the peer closed before sending anything."""
    line = reader.readline(_MAX_LINE)
    while line in (b"\r\n", b"\n"):  # tolerated before a request (RFC 9112, 2.2)
        line = reader.readline(_MAX_LINE)
    if not line:
        return None
    headers = []
    while True:
        header = reader.readline(_MAX_LINE)
        if header in (b"\r\n", b"\n", b""):
            break
        name, colon, value = header.decode("latin-1").partition(":")
        if not colon:
            raise _BadRequest(f"malformed header line {header[:80]!r}")
        headers.append((name.strip(), value.strip()))
        if len(headers) > _MAX_HEADERS:
            raise _BadRequest("too many headers")
    return line.decode("latin-1").rstrip("\r\n"), headers


def _read_body(reader: _Reader, headers: Mapping[str, str], *, until_close: bool = False) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size = int(reader.readline(_MAX_LINE).split(b";", 1)[0], 16)
            if size == 0:
                while reader.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(_read_exactly(reader, size))
            reader.readline(_MAX_LINE)
    length = headers.get("content-length")
    if length is not None:
        return _read_exactly(reader, int(length))
    return reader.read() if until_close else b""


def _read_exactly(reader: _Reader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise ConnectionError(f"connection closed after {len(data)} of {size} body bytes")
    return data


class _Upstream:
    """One persistent connection to upstream, used by one client connection's thread."""

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self.host_header = f"{host}:{port}"
        self._sock: socket.socket | None = None
        self._reader: _Reader | None = None

    def exchange(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        lines = [f"{method} {path} HTTP/1.1"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        request = "\r\n".join(lines).encode("latin-1") + body
        try:
            return self._exchange(request, method)
        except _UpstreamClosed:
            return self._exchange(request, method)  # the idle connection had been closed upstream

    def _exchange(self, request: bytes, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
        reused = self._sock is not None
        sock, reader = (self._sock, self._reader) if self._sock and self._reader else self._connect()
        try:
            sock.sendall(request)
            while True:
                head = _read_head(reader)
                if head is None:
                    raise _UpstreamClosed() if reused else ConnectionError("upstream closed the connection")
                status_line, headers = head
                version, status_text = status_line.split(" ", 2)[:2]
                status = int(status_text)
                if status >= 200 or status == 101:
                    break  # 1xx interim answers are skipped
            fields = {name.lower(): value for name, value in headers}
            will_close = "close" in fields.get("connection", "").lower() or version == "HTTP/1.0"
            no_body = method == "HEAD" or status in (204, 304)
            body = b"" if no_body else _read_body(reader, fields, until_close=will_close)
        except (ConnectionResetError, BrokenPipeError) as exc:
            self.close()
            if reused:
                raise _UpstreamClosed() from exc
            raise
        except BaseException:
            self.close()
            raise
        if will_close:
            self.close()
        return status, [(k, v) for k, v in headers if k.lower() not in _HOP_HEADERS], body

    def _connect(self) -> tuple[socket.socket, _Reader]:
        sock = socket.create_connection(self._address, timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._reader = sock, sock.makefile("rb")
        return self._sock, self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """One thread per client connection."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[_Handler], proxy: FaultProxy) -> None:
        self.proxy = proxy
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("faultproxy: failed serving %s", client_address)

    def close_connections(self) -> None:
        """End keep-alive connections that would otherwise keep their threads waiting."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(socketserver.StreamRequestHandler):
    """Serves the requests of one client connection, one after another (keep-alive)."""

    disable_nagle_algorithm = True  # StreamRequestHandler sets TCP_NODELAY on the client socket
    server: _Server

    def setup(self) -> None:
        super().setup()
        proxy = self.server.proxy
        self.upstream = _Upstream(proxy._upstream_host, proxy._upstream_port)
        self.close_connection = False
        self.method = self.path = ""
        self.headers: list[tuple[str, str]] = []
        self.fields: dict[str, str] = {}
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the client is gone (or was dropped on purpose)
        finally:
            self.upstream.close()
            self.server.track(self.connection, False)

    def handle(self) -> None:
        proxy = self.server.proxy
        while not self.close_connection:
            try:
                head = _read_head(self.rfile)
                if head is None:
                    return
                request_line, self.headers = head
                parts = request_line.split()
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    raise _BadRequest(f"malformed request line {request_line[:80]!r}")
                self.method, self.path, version = parts
                self.fields = {name.lower(): value for name, value in self.headers}
                connection = self.fields.get("connection", "").lower()
                self.close_connection = "close" in connection or (
                    version == "HTTP/1.0" and "keep-alive" not in connection
                )
                if self.fields.get("expect", "").lower() == "100-continue":
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = _read_body(self.rfile, self.fields)
            except (_BadRequest, ValueError) as exc:
                self.close_connection = True
                self.respond(*_json_response({"error": f"faultproxy: bad request: {exc}"}, 400))
                return
            except OSError:
                return  # the client went away mid-request
            if self.path.startswith(CONTROL_PREFIX):
                proxy.control(self, body)
            else:
                proxy.handle(self, body)

    def forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request upstream on this connection's persistent connection; return the answer."""
        headers = [(k, v) for k, v in self.headers if k.lower() not in _HOP_HEADERS]
        if "host" not in self.fields:
            headers.append(("Host", self.upstream.host_header))
        return self.upstream.exchange(self.method, self.path, headers, body)

    def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write a whole response in one send (one segment for small answers)."""
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        lines.append("\r\n")
        try:
            self.wfile.write("\r\n".join(lines).encode("latin-1") + body)
        except OSError:
            self.close_connection = True  # the client is gone; nothing to tell it

    def drop(self) -> None:
        """Close the client connection without a response, as a network failure would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
