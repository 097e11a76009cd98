"""Read-back verification: the comparison, and the BatchGetItem loop against a scripted client."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from bulkwrites.dynamo.backoff import Backoff
from bulkwrites.dynamo.errors import CODE_CONNECTION
from bulkwrites.dynamo.verify import (
    DIFFERENT,
    ERROR,
    MAX_DIFF_ENTRIES,
    MISSING,
    VERIFIED,
    BatchReader,
    ReadRequest,
    chunk_keys,
    compare,
    same_value,
)
from bulkwrites.dynamo.writer import WriterPolicy

TABLE = "t"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- compare -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        ({"N": "1.50"}, {"N": "1.5"}),  # DynamoDB normalises numbers
        ({"N": "100"}, {"N": "1E+2"}),
        ({"N": "-0"}, {"N": "0"}),
        ({"SS": ["b", "a"]}, {"SS": ["a", "b"]}),  # sets come back in any order
        ({"NS": ["1", "2.50"]}, {"NS": ["2.5", "1.0"]}),
        ({"B": b64(b"\x00\x01")}, {"B": b"\x00\x01"}),  # base64 in the ledger, bytes from boto3
        ({"BS": [b64(b"a"), b64(b"b")]}, {"BS": [b"b", b"a"]}),
        (
            {"L": [{"N": "1.0"}, {"M": {"x": {"SS": ["p", "q"]}}}]},
            {"L": [{"N": "1"}, {"M": {"x": {"SS": ["q", "p"]}}}]},
        ),
        ({"M": {}}, {"M": {}}),
        ({"NULL": True}, {"NULL": True}),
        ({"S": ""}, {"S": ""}),
    ],
)
def test_same_value_as_dynamodb_stores_it(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert same_value(expected, actual)
    assert compare({"pk": {"S": "a"}, "v": expected}, {"pk": {"S": "a"}, "v": actual}).verdict == VERIFIED


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        ({"N": "1"}, {"S": "1"}),  # same text, another type
        ({"N": "1"}, {"N": "1.0000001"}),
        ({"SS": ["a", "b"]}, {"SS": ["a"]}),
        ({"L": [{"N": "1"}, {"N": "2"}]}, {"L": [{"N": "2"}, {"N": "1"}]}),  # lists keep their order
        ({"B": b64(b"a")}, {"B": b"b"}),
        ({"BOOL": True}, {"BOOL": False}),
        ({"M": {"a": {"N": "1"}}}, {"M": {"a": {"N": "1"}, "b": {"N": "2"}}}),
    ],
)
def test_different_values(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert not same_value(expected, actual)


def test_missing_and_different_items_with_a_diff_of_what_differs() -> None:
    expected = {"pk": {"S": "a"}, "price": {"N": "9.50"}, "name": {"S": "x"}, "doc": {"M": {"n": {"N": "1"}}}}
    assert compare(expected, None).verdict == MISSING
    actual = {"pk": {"S": "a"}, "price": {"N": "12"}, "extra": {"BOOL": True}, "doc": {"M": {"n": {"N": "2"}}}}
    judgement = compare(expected, actual)
    assert judgement.verdict == DIFFERENT
    assert judgement.diff == [
        {"attribute": "doc.n", "expected": '{"N":"1"}', "actual": '{"N":"2"}'},
        {"attribute": "extra", "expected": "(absent)", "actual": '{"BOOL":true}'},
        {"attribute": "name", "expected": '{"S":"x"}', "actual": "(absent)"},
        {"attribute": "price", "expected": '{"N":"9.50"}', "actual": '{"N":"12"}'},
    ]


def test_a_deleted_key_is_verified_when_absent_and_different_when_present() -> None:
    assert compare(None, None).verdict == VERIFIED
    judgement = compare(None, {"pk": {"S": "a"}, "v": {"N": "1"}})
    assert judgement.verdict == DIFFERENT
    assert judgement.diff == [{"attribute": "(item)", "expected": "(absent)", "actual": "present (2 attributes)"}]


def test_the_diff_is_bounded() -> None:
    expected = {f"a{n:03d}": {"S": "x" * 1000} for n in range(300)}
    actual = {f"a{n:03d}": {"S": "y" * 1000} for n in range(300)}
    judgement = compare(expected, actual)
    assert len(judgement.diff) == MAX_DIFF_ENTRIES + 1
    assert judgement.diff[-1]["actual"] == "290 more attributes differ"
    assert all(len(entry["expected"]) <= 120 and len(entry["actual"]) <= 120 for entry in judgement.diff)
    assert len(json.dumps(judgement.diff)) < 4000


# --- chunk_keys ----------------------------------------------------------------------------


def request(n: int, *, size: int = 100, expected: bool = True, pk: str | None = None) -> ReadRequest:
    key = {"pk": {"S": pk or f"k{n}"}}
    item = {**key, "v": {"N": str(n)}}
    return ReadRequest(ref=n, key=key, expected_json=json.dumps(item) if expected else None, size=size)


def test_calls_hold_at_most_100_keys() -> None:
    assert [len(c) for c in chunk_keys(request(n) for n in range(250))] == [100, 100, 50]


def test_calls_expect_at_most_16_mb_of_items() -> None:
    chunks = list(chunk_keys(request(n, size=409_600) for n in range(100)))
    assert [len(c) for c in chunks] == [40, 40, 20]  # 41 items of 400 KB are over 16 MiB


def test_never_one_key_twice_in_a_call() -> None:
    chunks = list(chunk_keys([request(1, pk="a"), request(2, pk="b"), request(3, pk="a")]))
    assert [[r.ref for r in c] for c in chunks] == [[1, 2], [3]]


def test_chunk_refuses_more_than_100_keys() -> None:
    with pytest.raises(ValueError, match="between 1 and 100"):
        list(chunk_keys([], max_keys=101))


def test_read_units_per_4_kb_half_when_eventually_consistent() -> None:
    assert request(1, size=100).read_units(consistent=True) == 1
    assert request(1, size=4096).read_units(consistent=True) == 1
    assert request(1, size=4097).read_units(consistent=True) == 2
    assert request(1, size=409_600).read_units(consistent=True) == 100
    assert request(1, size=409_600).read_units(consistent=False) == 50
    assert request(1, size=0, expected=False).read_units(consistent=False) == 0.5


# --- the BatchGetItem loop -----------------------------------------------------------------


def client_error(code: str, status: int = 400, message: str = "boom") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "BatchGetItem"
    )


Reaction = Callable[[list[dict[str, Any]]], dict[str, Any]]


class FakeTable:
    """A table of items (DynamoDB JSON) answering BatchGetItem with scripted reactions."""

    def __init__(self, items: dict[str, dict[str, Any]], *reactions: Reaction) -> None:
        self.items = items
        self.reactions = list(reactions)
        self.calls: list[list[str]] = []
        self.consistent: list[bool] = []
        self.lock = threading.Lock()

    def batch_get_item(self, *, RequestItems: dict[str, Any], ReturnConsumedCapacity: str) -> dict[str, Any]:
        assert ReturnConsumedCapacity == "TOTAL"
        ((table, spec),) = RequestItems.items()
        assert table == TABLE
        keys = spec["Keys"]
        assert 1 <= len(keys) <= 100
        with self.lock:
            self.calls.append([k["pk"]["S"] for k in keys])
            self.consistent.append(spec["ConsistentRead"])
            reaction = self.reactions.pop(0) if self.reactions else self.answer
        return reaction(keys)

    def answer(self, keys: list[dict[str, Any]], unprocessed: tuple[str, ...] = ()) -> dict[str, Any]:
        found = [
            self.items[k["pk"]["S"]] for k in keys if k["pk"]["S"] in self.items and k["pk"]["S"] not in unprocessed
        ]
        left = [k for k in keys if k["pk"]["S"] in unprocessed]
        return {
            "Responses": {TABLE: found},
            "UnprocessedKeys": {TABLE: {"Keys": left, "ConsistentRead": True}} if left else {},
            "ConsumedCapacity": [{"TableName": TABLE, "CapacityUnits": float(len(keys) - len(left))}],
        }

    def leave(self, *names: str) -> Reaction:
        return lambda keys: self.answer(keys, names)


def raise_(exc: Exception) -> Reaction:
    def reaction(keys: list[dict[str, Any]]) -> dict[str, Any]:
        raise exc

    return reaction


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


class FakeLimiter:
    def __init__(self, background: float = 0.0) -> None:
        self.background = background
        self.acquired: list[float] = []
        self.recorded: list[tuple[float, float, bool]] = []
        self.lock = threading.Lock()

    def acquire(self, write_units: float) -> None:
        with self.lock:
            self.acquired.append(write_units)

    def record(self, *, consumed: float, refused: float = 0.0, fault: bool = False) -> None:
        with self.lock:
            self.recorded.append((consumed, refused, fault))

    def background_share(self) -> float:
        return self.background


def make_reader(table: FakeTable, clock: Clock | None = None, **options: Any) -> BatchReader:
    clock = clock or Clock()
    policy_options = {k: options.pop(k) for k in ("max_attempts", "max_elapsed") if k in options}
    backoff = Backoff(base=0.1, cap=2.0, random=lambda: 1.0)
    return BatchReader(
        table, TABLE, policy=WriterPolicy(backoff=backoff, **policy_options), sleep=clock.sleep, clock=clock, **options
    )


def stored(n: int, value: str | None = None) -> dict[str, Any]:
    return {"pk": {"S": f"k{n}"}, "v": {"N": value or str(n)}}


def by_ref(result: Any) -> dict[int, Any]:
    checks = {c.ref: c for c in result.checks}
    assert len(checks) == len(result.checks), "a key got two verdicts"
    return checks


def test_verified_missing_and_different_in_one_call() -> None:
    table = FakeTable({"k0": stored(0), "k1": stored(1, "1.0"), "k3": stored(3, "4")})
    result = make_reader(table).read([request(n) for n in range(4)])
    checks = by_ref(result)
    assert {ref: c.verdict for ref, c in checks.items()} == {0: VERIFIED, 1: VERIFIED, 2: MISSING, 3: DIFFERENT}
    assert checks[3].diff == [{"attribute": "v", "expected": '{"N":"3"}', "actual": '{"N":"4"}'}]
    assert table.consistent == [True]
    assert result.stats.calls == 1
    assert result.stats.consumed_rcu == 4


def test_eventually_consistent_when_asked() -> None:
    table = FakeTable({})
    make_reader(table, consistent_read=False).read([request(1)])
    assert table.consistent == [False]


def test_only_unprocessed_keys_are_read_again_after_a_backoff() -> None:
    clock = Clock()
    table = FakeTable({f"k{n}": stored(n) for n in range(10)})
    table.reactions = [table.leave("k3", "k7"), table.leave("k7")]
    result = make_reader(table, clock).read([request(n) for n in range(10)])
    assert table.calls[1] == ["k3", "k7"]
    assert table.calls[2] == ["k7"]
    checks = by_ref(result)
    assert all(c.verdict == VERIFIED for c in checks.values())
    assert (checks[7].attempts, checks[3].attempts, checks[0].attempts) == (3, 2, 1)
    # Both calls read some of their keys: the pause stays at its base, as the writer's does
    # (it doubled on every call before, and a steady share of unread keys left the last ones
    # of a batch waiting seconds).
    assert clock.sleeps == [0.1, 0.1]
    assert result.stats.unprocessed == 3
    assert result.stats.throttled_calls == 2


def test_a_key_left_unprocessed_is_not_mistaken_for_a_missing_item() -> None:
    # The item exists; DynamoDB returned its key unread. Missing would be a false alarm.
    table = FakeTable({"k1": stored(1)})
    table.reactions = [table.leave("k1")]
    assert by_ref(make_reader(table).read([request(1)]))[1].verdict == VERIFIED


@pytest.mark.parametrize(
    ("code", "status"),
    [("ProvisionedThroughputExceededException", 400), ("ThrottlingException", 400), ("InternalServerError", 500)],
)
def test_whole_call_retryable_errors_read_the_same_keys_again(code: str, status: int) -> None:
    clock = Clock()
    table = FakeTable({"k1": stored(1), "k2": stored(2)})
    table.reactions = [raise_(client_error(code, status)), raise_(client_error(code, status))]
    result = make_reader(table, clock).read([request(1), request(2)])
    assert table.calls == [["k1", "k2"]] * 3
    assert all(c.verdict == VERIFIED and c.attempts == 3 for c in result.checks)
    assert result.stats.error_codes[code] == 2
    assert len(clock.sleeps) == 2


@pytest.mark.parametrize(("background", "pauses"), [(0.0, [0.1, 0.2, 0.4]), (0.3, [0.1, 0.1, 0.1])])
def test_unread_keys_the_limiter_knows_as_background_do_not_lengthen_the_pause(
    background: float, pauses: list[float]
) -> None:
    clock = Clock()
    table = FakeTable({"k1": stored(1)})
    table.reactions = [table.leave("k1")] * 3
    result = make_reader(table, clock, limiter=FakeLimiter(background)).read([request(1)])
    assert [c.verdict for c in result.checks] == [VERIFIED]
    assert clock.sleeps == pauses


def test_gives_up_after_max_attempts_without_progress() -> None:
    clock = Clock()
    table = FakeTable({"k1": stored(1)})
    table.reactions = [table.leave("k1", "k2")] * 10
    result = make_reader(table, clock, max_attempts=4).read([request(1), request(2)])
    assert len(table.calls) == 4
    for check in result.checks:
        assert check.verdict == ERROR
        assert check.error_code == "UnprocessedKeys"
        assert (check.error_message or "").startswith("throttled: gave up reading after 4 attempts over ")
    assert clock.sleeps == [0.1, 0.2, 0.4]


def test_a_fatal_error_stops_with_the_keys_left_pending() -> None:
    table = FakeTable({}, raise_(client_error("ResourceNotFoundException", message="no table")))
    reader = make_reader(table)
    batches = [(n, [request(n * 100 + i) for i in range(100)]) for n in range(5)]
    result = reader.read_batches(batches, concurrency=1)
    assert result.fatal is not None
    assert result.fatal.code == "ResourceNotFoundException"
    assert "does not exist" in result.fatal.message
    assert result.checks == []
    assert len(table.calls) == 1  # no batch is pulled after a fatal error


def test_an_unreachable_endpoint_is_fatal_once_the_budget_is_spent() -> None:
    error = EndpointConnectionError(endpoint_url="http://nowhere:1")
    table = FakeTable({}, *([raise_(error)] * 5))
    result = make_reader(table, max_attempts=3, endpoint="http://nowhere:1").read([request(1)])
    assert result.fatal is not None
    assert result.fatal.code == CODE_CONNECTION
    assert result.checks == []


def test_a_key_dynamodb_rejects_is_isolated() -> None:
    def reject_k13(keys: list[dict[str, Any]]) -> dict[str, Any]:
        if any(k["pk"]["S"] == "k13" for k in keys):
            raise client_error("ValidationException", message="The provided key element does not match the schema")
        return table.answer(keys)

    table = FakeTable({f"k{n}": stored(n) for n in range(30)}, *([reject_k13] * 50))
    checks = by_ref(make_reader(table).read([request(n) for n in range(30)]))
    assert len(checks) == 30
    assert checks[13].verdict == ERROR
    assert checks[13].error_code == "ValidationException"
    assert "does not match the schema" in checks[13].error_message
    assert all(c.verdict == VERIFIED for ref, c in checks.items() if ref != 13)


def test_the_limiter_is_charged_in_read_units() -> None:
    limiter = FakeLimiter()
    table = FakeTable({"k1": stored(1)})
    table.reactions = [table.leave("k1"), raise_(client_error("ThrottlingException"))]
    requests = [request(1, size=10_000), request(2, size=100)]
    make_reader(table, limiter=limiter).read(requests)
    assert limiter.acquired == [3 + 1, 3, 3]  # ceil(10,000 / 4 KB) + 1, then the unprocessed key twice
    # (consumed, refused for capacity, fault): the unread key's 3 units refused, then the whole
    # throttled call's, then success.
    assert limiter.recorded == [(1.0, 3.0, False), (0.0, 3.0, False), (1.0, 0.0, False)]
    eventual = FakeLimiter()
    make_reader(FakeTable({}), limiter=eventual, consistent_read=False).read(requests)
    assert eventual.acquired == [2.0]


def test_a_server_error_is_a_fault_not_a_capacity_refusal() -> None:
    limiter = FakeLimiter()
    table = FakeTable({"k1": stored(1)}, raise_(client_error("InternalServerError", 500)))
    make_reader(table, limiter=limiter).read([request(1)])
    assert limiter.recorded == [(0.0, 0.0, True), (1.0, 0.0, False)]


def test_a_stop_request_leaves_keys_pending() -> None:
    table = FakeTable({})
    result = make_reader(table, should_stop=lambda: True).read([request(1)])
    assert result.stopped
    assert result.checks == []
    assert table.calls == []


def test_many_calls_in_flight_judge_every_key_once() -> None:
    table = FakeTable({f"k{n}": stored(n) for n in range(0, 1000, 2)})
    requests = [request(n) for n in range(1000)]
    batches = [(i, chunk) for i, chunk in enumerate(chunk_keys(requests))]
    seen: list[int] = []
    result = make_reader(table).read_batches(batches, concurrency=4, on_result=lambda tag, _: seen.append(tag))
    checks = by_ref(result)
    assert len(checks) == 1000
    assert sum(c.verdict == VERIFIED for c in checks.values()) == 500
    assert sum(c.verdict == MISSING for c in checks.values()) == 500
    assert sorted(seen) == list(range(10))
    assert len(table.calls) == 10


def test_delete_jobs_verify_absence() -> None:
    table = FakeTable({"k1": stored(1)})
    checks = by_ref(make_reader(table).read([request(1, expected=False), request(2, expected=False)]))
    assert checks[1].verdict == DIFFERENT
    assert checks[2].verdict == VERIFIED
