"""Rows to ledger records, in this process and in worker processes (no server)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.common import descendants
from bulkwrites.dynamo.items import KeyAttribute, KeySchema, item_size
from bulkwrites.dynamo.records import Record, RecordConverter, convert_rows, pulled_ahead

SCHEMA = KeySchema((KeyAttribute("pk", "S", "HASH"), KeyAttribute("sk", "N", "RANGE")))


def row(n: int, **cells: Any) -> tuple[int, dict[str, Any], None]:
    return n, {"pk": f"k{n}", "sk": str(n), "note:S": "é" * (n % 5), **cells}, None


def test_a_valid_row_becomes_its_key_and_item_as_dynamodb_json() -> None:
    (record,) = convert_rows([row(7, **{"price:N": "9.50"})], SCHEMA, delete=False, dynamodb_json=False)
    item = {"pk": {"S": "k7"}, "sk": {"N": "7"}, "note": {"S": "éé"}, "price": {"N": "9.5"}}
    assert record.is_valid
    assert record.item_json is not None
    assert json.loads(record.item_json) == item
    assert record.key_json == '{"pk":{"S":"k7"},"sk":{"N":"7"}}'  # sorted: one text per key, for duplicates
    assert record.size == item_size(item)
    assert record.wire_bytes == len(record.item_json.encode("utf-8"))


def test_bad_and_unreadable_rows_keep_their_reason() -> None:
    records = convert_rows(
        [(1, {"pk": "a", "sk": "not a number"}, None), (2, None, "line 3: unclosed quote")],
        SCHEMA,
        delete=False,
        dynamodb_json=False,
    )
    assert [(r.position, r.is_valid, r.item_json) for r in records] == [(1, False, None), (2, False, None)]
    assert records[0].error is not None
    assert "not a number" in records[0].error
    assert records[1].error == "line 3: unclosed quote"


def test_a_delete_carries_only_the_key() -> None:
    (record,) = convert_rows([row(3, **{"bad:N": "x"})], SCHEMA, delete=True, dynamodb_json=False)
    assert record.is_valid  # a bad cell outside the key cannot fail a delete
    assert record.item_json is not None
    assert json.loads(record.item_json) == {"pk": {"S": "k3"}, "sk": {"N": "3"}}


def rows_with_companions(count: int) -> list[tuple[tuple[int, Any, Any], str]]:
    rows = [row(n) for n in range(count)]
    rows[17] = (17, {"pk": "", "sk": "1"}, None)  # invalid: empty key
    return [(r, f"source row {r[0]}") for r in rows]


@pytest.mark.parametrize("processes", [0, 2])
def test_the_converter_gives_every_row_its_record_in_order(processes: int) -> None:
    converter = RecordConverter(SCHEMA, delete=False, dynamodb_json=False, processes=processes, chunk_rows=50)
    out = list(converter.convert(rows_with_companions(1003)))
    expected = convert_rows([r for r, _ in rows_with_companions(1003)], SCHEMA, delete=False, dynamodb_json=False)
    assert [record for record, _ in out] == expected
    assert [companion for _, companion in out] == [f"source row {n}" for n in range(1003)]
    assert [r.position for r in expected if not r.is_valid] == [17]


class KillsTheWorker:
    """A cell that ends the process that unpickles it: a worker dying mid-staging."""

    def __reduce__(self) -> tuple[Any, ...]:
        return os._exit, (3,)

    def __str__(self) -> str:
        return "survivor"


def test_rows_are_still_converted_when_a_worker_process_dies(caplog: pytest.LogCaptureFixture) -> None:
    rows = rows_with_companions(600)
    rows[260] = ((260, {"pk": "k260", "sk": "260", "cell": KillsTheWorker()}, None), "source row 260")
    converter = RecordConverter(SCHEMA, delete=False, dynamodb_json=False, processes=2, chunk_rows=50)

    out = list(converter.convert(rows))

    assert [record.position for record, _ in out] == list(range(600))
    assert [companion for _, companion in out] == [c for _, c in rows]
    survivor: Record = out[260][0]
    assert survivor.item_json is not None
    assert json.loads(survivor.item_json)["cell"] == {"S": "survivor"}
    assert sum(1 for record, _ in out if record.is_valid) == 599
    assert "conversion processes failed" in caplog.text


def test_records_carry_the_key_hash_also_for_rows_that_cannot_be_sent() -> None:
    from bulkwrites.dynamo.items import key_hash

    valid, bad_price, no_key = convert_rows(
        [row(1), (2, {"pk": "k2", "sk": "2", "price:N": "abc"}, None), (3, {"sk": "3"}, None)],
        SCHEMA,
        delete=False,
        dynamodb_json=False,
    )
    assert valid.key_json is not None
    assert valid.key_hash == key_hash(json.loads(valid.key_json))
    assert not bad_price.is_valid
    assert bad_price.item_json is None
    assert bad_price.key_json is not None
    assert json.loads(bad_price.key_json) == {"pk": {"S": "k2"}, "sk": {"N": "2"}}
    assert bad_price.key_hash == key_hash({"pk": {"S": "k2"}, "sk": {"N": "2"}})
    assert (no_key.key_json, no_key.key_hash) == (None, None)


CONVERTING_FOREVER = """
import sys, time
from bulkwrites.dynamo.items import KeyAttribute, KeySchema
from bulkwrites.dynamo.records import RecordConverter

def rows():
    n = 0
    while True:
        n += 1
        yield (n, {"pk": f"k{n}"}, None), None

schema = KeySchema((KeyAttribute("pk", "S", "HASH"),))
converter = RecordConverter(schema, delete=False, dynamodb_json=False, processes=2, chunk_rows=50)
for record, _ in converter.convert(rows()):
    if record.position == 1000:
        print("converting", flush=True)
        time.sleep(600)  # the pool stays up, its processes waiting for chunks
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="walks /proc to find the conversion processes")
def test_conversion_processes_exit_when_the_staging_process_is_killed() -> None:
    staging = subprocess.Popen([sys.executable, "-c", CONVERTING_FOREVER], stdout=subprocess.PIPE, text=True)
    try:
        assert staging.stdout is not None
        assert staging.stdout.readline().strip() == "converting"
        # the forkserver, the 2 conversion processes it forked, multiprocessing's resource tracker
        below = set(descendants(staging.pid))
        assert len(below) >= 3  # what the test is about is running
    finally:
        staging.send_signal(signal.SIGKILL)  # no cleanup of its own: as RQ's timeout or the OOM killer
        staging.wait()
    left = below
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = {pid for pid in left if os.path.exists(f"/proc/{pid}") and not _zombie(pid)}
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"still running after the staging process was killed: {sorted(left)}"


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_pulled_ahead_hands_over_every_item_in_order_and_the_source_error_where_it_was_raised() -> None:
    def source() -> Iterator[int]:
        yield from range(100)
        raise ValueError("line 101: unclosed quote")

    got: list[int] = []
    with pytest.raises(ValueError, match="line 101"), pulled_ahead(source(), depth=3) as items:
        got.extend(items)
    assert got == list(range(100))


def test_pulled_ahead_stops_and_closes_its_source_when_the_caller_stops_early() -> None:
    pulled: list[int] = []
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            for n in itertools.count():
                pulled.append(n)
                yield n
        finally:
            closed.set()

    def copy_until_it_fails() -> None:
        with pulled_ahead(source(), depth=3) as items:
            for n in items:
                if n == 10:
                    raise RuntimeError("COPY failed")

    with pytest.raises(RuntimeError, match="COPY failed"):
        copy_until_it_fails()
    assert closed.is_set()  # the source's finally ran: a conversion pool in it shuts down
    assert len(pulled) <= 10 + 1 + 3 + 2  # what the caller took, the queue, one in hand: not the endless source
    assert not any(t.name == "read-ahead" for t in threading.enumerate())
