"""Tests of bulkwrites.dynamo.backoff: full jitter, delay uniform in [0, min(cap, base * 2**n)]."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from bulkwrites.dynamo.backoff import Backoff


def test_ceiling_doubles_from_base_and_caps() -> None:
    backoff = Backoff(base=0.05, cap=10.0)
    # 0.05 * 2**n: 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, then 12.8 > 10 -> 10
    expected = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    assert [backoff.ceiling(n) for n in range(11)] == pytest.approx(expected)


def test_defaults() -> None:
    backoff = Backoff()
    assert backoff.ceiling(0) == pytest.approx(0.05)
    assert backoff.ceiling(50) == pytest.approx(10.0)


def test_ceiling_other_parameters() -> None:
    backoff = Backoff(base=1.0, cap=5.0)
    assert [backoff.ceiling(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_ceiling_equal_to_cap_exactly() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    assert backoff.ceiling(3) == 4.0  # 0.5 * 8 == cap
    assert backoff.ceiling(2) == 2.0


@pytest.mark.parametrize("retry", [63, 64, 1_000, 1_024, 1_025, 10_000, 10**9])
def test_no_overflow_for_huge_retry_numbers(retry: int) -> None:
    backoff = Backoff(base=0.05, cap=10.0, random=lambda: 0.5)
    assert backoff.ceiling(retry) == 10.0
    assert backoff.delay(retry) == pytest.approx(5.0)
    assert math.isfinite(backoff.delay(retry))


def test_ceiling_reaches_cap_even_with_a_tiny_base() -> None:
    backoff = Backoff(base=1e-30, cap=1.0)  # 1e-30 * 2**100 ≈ 1.27 > 1
    assert backoff.ceiling(100) == 1.0


def test_delay_uses_injected_random() -> None:
    backoff = Backoff(base=0.1, cap=10.0, random=lambda: 0.0)
    assert [backoff.delay(n) for n in range(10)] == [0.0] * 10

    half = Backoff(base=0.1, cap=10.0, random=lambda: 0.5)
    assert half.delay(0) == pytest.approx(0.05)
    assert half.delay(3) == pytest.approx(0.4)  # half of 0.1 * 8
    assert half.delay(20) == pytest.approx(5.0)  # half of the cap

    just_below = 1.0 - 2**-53  # the largest value random.random() returns
    top = Backoff(base=0.1, cap=10.0, random=lambda: just_below)
    for n in (0, 3, 20):
        delay = top.delay(n)
        assert delay < top.ceiling(n)
        assert delay == pytest.approx(top.ceiling(n))


def test_delay_calls_random_once_per_delay() -> None:
    values = iter([0.25, 0.75])
    backoff = Backoff(base=1.0, cap=100.0, random=lambda: next(values))
    assert backoff.delay(2) == pytest.approx(1.0)  # 0.25 * 4
    assert backoff.delay(2) == pytest.approx(3.0)  # 0.75 * 4


def test_delay_with_real_random_stays_in_range_and_spreads() -> None:
    rng = random.Random(7)
    backoff = Backoff(base=0.05, cap=10.0, random=rng.random)
    delays = [backoff.delay(4) for _ in range(2_000)]  # ceiling 0.8
    assert all(0.0 <= d <= 0.8 for d in delays)
    # full jitter, not "equal jitter": values near 0 and near the ceiling both occur
    assert min(delays) < 0.05
    assert max(delays) > 0.75
    assert sum(delays) / len(delays) == pytest.approx(0.4, abs=0.03)


def test_frozen_dataclass() -> None:
    backoff = Backoff()
    assert dataclasses.is_dataclass(backoff)
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.base = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.cap = 1.0  # type: ignore[misc]


def test_random_is_not_part_of_equality_or_repr() -> None:
    assert Backoff(base=1.0, cap=2.0, random=lambda: 0.0) == Backoff(base=1.0, cap=2.0, random=lambda: 1.0)
    assert Backoff(base=1.0, cap=2.0) != Backoff(base=1.0, cap=3.0)
    assert "random" not in repr(Backoff())
