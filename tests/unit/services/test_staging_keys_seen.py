"""The bitmap that tells staging which keys it may have met before (staging.KeysSeen)."""

from __future__ import annotations

import random

from bulkwrites.services.staging import KEYS_SEEN_MAX_BITS, KEYS_SEEN_MIN_BITS, KeysSeen


def test_a_key_met_again_is_always_reported() -> None:
    seen = KeysSeen(1 << 20)
    hashes = [random.Random(1).getrandbits(64) - (1 << 63) for _ in range(5_000)]  # signed, as stored
    for h in hashes:
        seen.add(h)
    assert all(seen.add(h) for h in hashes)  # never a false "not seen"


def test_unseen_keys_are_mostly_reported_unseen_and_the_size_is_bounded() -> None:
    seen = KeysSeen.for_source(150 * 100_000)  # a 100,000-row file of ~150-byte rows
    rng = random.Random(2)
    for _ in range(100_000):
        seen.add(rng.getrandbits(64))
    false_alarms = sum(seen.add(rng.getrandbits(64)) for _ in range(10_000))
    assert false_alarms < 100  # < 1 %: those rows are only looked up in SQL for nothing
    assert len(KeysSeen(1)._bits) * 8 == KEYS_SEEN_MIN_BITS
    assert len(KeysSeen.for_source(10**12)._bits) * 8 == KEYS_SEEN_MAX_BITS  # 32 MB whatever the file
