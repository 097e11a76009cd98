"""Tests of bulkwrites.dynamo.batching: BatchWriteItem calls of ≤ 25 requests, ≤ 16 MB, unique keys."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from bulkwrites.dynamo.batching import (
    CALL_OVERHEAD_BYTES,
    MAX_BYTES_PER_CALL,
    MAX_REQUESTS_PER_CALL,
    chunk_requests,
)
from bulkwrites.dynamo.writer import WriteRequest

BUDGET = MAX_BYTES_PER_CALL - CALL_OVERHEAD_BYTES  # bytes of requests one call may carry


def request(ref: int, key: str | None = None, wire_bytes: int = 100, *, number_key: str | None = None) -> WriteRequest:
    if number_key is not None:
        key_value = {"pk": {"S": "p"}, "sk": {"N": number_key}}
    else:
        key_value = {"pk": {"S": key if key is not None else f"k{ref}"}}
    return WriteRequest(ref=ref, key=key_value, item=dict(key_value), wire_bytes=wire_bytes, size=wire_bytes)


def refs(chunks: list[list[WriteRequest]]) -> list[list[int]]:
    return [[r.ref for r in chunk] for chunk in chunks]


def test_limits_are_dynamodbs() -> None:
    assert MAX_REQUESTS_PER_CALL == 25
    assert MAX_BYTES_PER_CALL == 16 * 1024 * 1024


def test_sixty_requests_make_25_25_10_in_order() -> None:
    requests = [request(i) for i in range(60)]
    chunks = list(chunk_requests(requests))
    assert [len(c) for c in chunks] == [25, 25, 10]
    assert refs(chunks) == [list(range(25)), list(range(25, 50)), list(range(50, 60))]
    assert all(a is b for a, b in zip([r for c in chunks for r in c], requests, strict=True))


def test_max_requests_ten() -> None:
    chunks = list(chunk_requests((request(i) for i in range(35)), max_requests=10))
    assert [len(c) for c in chunks] == [10, 10, 10, 5]
    assert [r.ref for c in chunks for r in c] == list(range(35))


def test_max_requests_one() -> None:
    assert refs(list(chunk_requests([request(i) for i in range(3)], max_requests=1))) == [[0], [1], [2]]


def test_byte_budget_splits_large_requests() -> None:
    # 23 x 700,000 = 16,100,000 <= 16,711,680; 24 x 700,000 = 16,800,000 > 16,711,680
    requests = [request(i, wire_bytes=700_000) for i in range(50)]
    chunks = list(chunk_requests(requests))
    assert [len(c) for c in chunks] == [23, 23, 4]
    for chunk in chunks:
        assert sum(r.wire_bytes for r in chunk) <= MAX_BYTES_PER_CALL - CALL_OVERHEAD_BYTES
    assert [r.ref for c in chunks for r in c] == list(range(50))


def test_byte_budget_exactly_full() -> None:
    # Two requests filling the budget exactly fit; one more byte does not.
    half = BUDGET // 2
    assert [len(c) for c in chunk_requests([request(0, wire_bytes=half), request(1, wire_bytes=BUDGET - half)])] == [2]
    over = [request(0, wire_bytes=half), request(1, wire_bytes=BUDGET - half + 1)]
    assert [len(c) for c in chunk_requests(over)] == [1, 1]


def test_custom_max_bytes() -> None:
    max_bytes = CALL_OVERHEAD_BYTES + 1_000
    chunks = list(chunk_requests([request(i, wire_bytes=300) for i in range(7)], max_bytes=max_bytes))
    assert [len(c) for c in chunks] == [3, 3, 1]


def test_request_over_budget_is_sent_alone_not_dropped() -> None:
    requests = [request(0), request(1, wire_bytes=BUDGET + 1), request(2)]
    assert refs(list(chunk_requests(requests))) == [[0], [1], [2]]


def test_duplicate_key_splits_the_chunk_and_keeps_order() -> None:
    requests = [request(0, "a"), request(1, "b"), request(2, "a"), request(3, "c"), request(4, "b")]
    assert refs(list(chunk_requests(requests))) == [[0, 1], [2, 3, 4]]


def test_duplicate_number_key_written_differently_splits() -> None:
    requests = [request(0, number_key="1"), request(1, number_key="2"), request(2, number_key="1.0")]
    assert refs(list(chunk_requests(requests))) == [[0, 1], [2]]


def test_same_key_in_different_chunks_is_fine() -> None:
    # After a split for size, the same key may reappear; only per-chunk uniqueness matters.
    requests = [request(i, "same") for i in range(4)]
    assert refs(list(chunk_requests(requests))) == [[0], [1], [2], [3]]


@pytest.mark.parametrize("max_requests", [0, -1, 26, 100])
def test_invalid_max_requests(max_requests: int) -> None:
    with pytest.raises(ValueError, match="max_requests"):
        list(chunk_requests([request(0)], max_requests=max_requests))


def test_empty_input_yields_nothing() -> None:
    assert list(chunk_requests([])) == []
    assert list(chunk_requests(iter(()))) == []


def test_lazy_over_a_generator() -> None:
    consumed: list[int] = []

    def source() -> Iterator[WriteRequest]:
        for i in range(100):
            consumed.append(i)
            yield request(i)

    first = next(chunk_requests(source()))
    assert [r.ref for r in first] == list(range(25))
    assert len(consumed) == 26  # the 26th request is read to know the chunk is full, no more


def test_invariants_on_seeded_random_inputs() -> None:
    rng = random.Random(20240229)
    for _ in range(150):
        max_requests = rng.randint(1, MAX_REQUESTS_PER_CALL)
        max_bytes = CALL_OVERHEAD_BYTES + rng.choice([500, 2_000, 50_000, BUDGET])
        budget = max_bytes - CALL_OVERHEAD_BYTES
        key_space = rng.choice([1, 3, 10, 1_000])
        requests = []
        for ref in range(rng.randint(0, 120)):
            wire_bytes = rng.randint(1, budget) if rng.random() < 0.2 else rng.randint(1, max(1, budget // 10))
            if rng.random() < 0.02:
                wire_bytes = budget + rng.randint(1, 100)  # a request too big even alone
            if rng.random() < 0.5:
                req = request(ref, f"k{rng.randrange(key_space)}", wire_bytes)
            else:
                req = request(ref, wire_bytes=wire_bytes, number_key=rng.choice(["1", "1.0", "2", "2.00", "3"]))
            requests.append(req)

        chunks = list(chunk_requests(requests, max_requests=max_requests, max_bytes=max_bytes))

        assert [r for c in chunks for r in c] == requests  # nothing lost, duplicated or reordered
        for index, chunk in enumerate(chunks):
            assert 1 <= len(chunk) <= max_requests
            assert len(chunk) == 1 or sum(r.wire_bytes for r in chunk) <= budget
            identities = [r.identity for r in chunk]
            assert len(set(identities)) == len(identities)
            # Greedy: a chunk is only closed when the next request could not have joined it.
            if index + 1 < len(chunks):
                following = chunks[index + 1][0]
                assert (
                    len(chunk) == max_requests
                    or sum(r.wire_bytes for r in chunk) + following.wire_bytes > budget
                    or following.identity in identities
                )
