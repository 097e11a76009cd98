"""Staged items as COPY text, built in the conversion processes (no server: PostgreSQL reads it in
tests/integration/test_ledger_payloads.py)."""

from __future__ import annotations

import json

import pytest

from bulkwrites.dynamo.records import RecordConverter, convert_rows
from bulkwrites.ledger_copy import ITEM_COLUMNS, PAYLOAD_COLUMNS, CopyChunk, PendingRows, copy_text
from tests.unit.dynamo.test_records import SCHEMA, rows_with_companions


def test_copy_text_escapes_what_would_end_a_field_or_a_row() -> None:
    assert copy_text('{"a":"b"}') == '{"a":"b"}'
    assert copy_text("a\\b\tc\nd\re \\N") == "a\\\\b\\tc\\nd\\re \\\\N"


@pytest.mark.parametrize("processes", [0, 2])
def test_pending_rows_pack_every_valid_record_and_hand_back_the_others(processes: int) -> None:
    converter = RecordConverter(SCHEMA, delete=False, dynamodb_json=False, processes=processes, chunk_rows=50)
    pack = PendingRows(job_id=42, status="pending", updated_at="2026-12-03T20:00:00+00:00")

    chunks: list[tuple[CopyChunk, list[str]]] = list(converter.convert_chunks(rows_with_companions(1003), pack))

    assert sum(chunk.rows for chunk, _ in chunks) == 1003
    assert [len(companions) for chunk, companions in chunks] == [chunk.rows for chunk, _ in chunks]
    invalid = [(companions[index], record.position) for chunk, companions in chunks for index, record in chunk.invalid]
    assert invalid == [("source row 17", 17)]
    records = {r.position: r for r in convert_rows([r for r, _ in rows_with_companions(1003)], SCHEMA,
                                                  delete=False, dynamodb_json=False)}  # fmt: skip
    items = [line.split("\t") for chunk, _ in chunks for line in chunk.items.splitlines()]
    payloads = [line.split("\t") for chunk, _ in chunks for line in chunk.payloads.splitlines()]
    assert [int(fields[1]) for fields in items] == [n for n in range(1003) if n != 17]
    for fields in items:
        row = dict(zip(ITEM_COLUMNS, fields, strict=True))
        record = records[int(row["position"])]
        assert row == {
            "job_id": "42", "position": str(record.position), "key": record.key_json, "raw": "",
            "size": str(record.size), "wire_bytes": str(record.wire_bytes), "status": "pending", "attempts": "0",
            "error_code": "", "error_message": "", "history": "[]", "updated_at": "2026-12-03T20:00:00+00:00",
            "key_hash": str(record.key_hash),
        }  # fmt: skip
    for fields in payloads:
        row = dict(zip(PAYLOAD_COLUMNS, fields, strict=True))
        assert json.loads(row["payload"]) == json.loads(records[int(row["position"])].item_json or "")
    assert len(payloads) == len(items) == 1002
