"""The dry run says what DynamoDB will say: every boundary item, judged by both.

Each case of ``tests/data/boundary_items.py`` is sent *as given* to DynamoDB Local's own
``PutItem`` over plain HTTP (no SDK to check or rewrite the values), and read through
bulkwrites' reader and converter (what the preview, ``--dry-run`` and staging use). They must
agree exactly: a row bulkwrites calls valid is one DynamoDB accepts, and what bulkwrites would
write is what DynamoDB stored (read back with ``GetItem``). A value DynamoDB refuses must be an
invalid row with a reason, never a value quietly changed into one DynamoDB accepts.

``python -m tests.integration.test_boundary_items`` prints the tally (with the services of
``make services`` running), e.g. to compare with an older tree.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest

from bulkwrites.dynamo.items import KeySchema
from bulkwrites.dynamo.records import Record, convert_rows
from bulkwrites.sources.formats import ROWS_ARE_DYNAMODB_JSON, read_rows
from tests.data.boundary_items import CASES, TABLES, Case


def _call(target: str, body: str) -> tuple[int, dict[str, Any]]:
    """One DynamoDB API call with a literal JSON body (DynamoDB Local does not check signatures)."""
    endpoint = urlsplit(os.environ["AWS_ENDPOINT_URL_DYNAMODB"])
    connection = http.client.HTTPConnection(endpoint.hostname or "127.0.0.1", endpoint.port or 80, timeout=60)
    try:
        connection.request(
            "POST",
            "/",
            body=body.encode("utf-8"),
            headers={
                "X-Amz-Target": f"DynamoDB_20120810.{target}",
                "Content-Type": "application/x-amz-json-1.0",
                "Authorization": "AWS4-HMAC-SHA256 Credential=local/20240101/us-east-1/dynamodb/aws4_request, "
                "SignedHeaders=host, Signature=0",
            },
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def create_tables() -> dict[str, str]:
    names = {}
    for short, keys in TABLES.items():
        name = f"boundary-{short}-{uuid.uuid4().hex[:8]}"
        status, body = _call(
            "CreateTable",
            json.dumps(
                {
                    "TableName": name,
                    "AttributeDefinitions": [{"AttributeName": n, "AttributeType": t} for n, t, _ in keys],
                    "KeySchema": [{"AttributeName": n, "KeyType": r} for n, _, r in keys],
                    "BillingMode": "PAY_PER_REQUEST",
                }
            ),
        )
        assert status == 200, body
        names[short] = name
    return names


def delete_tables(names: dict[str, str]) -> None:
    for name in names.values():
        _call("DeleteTable", json.dumps({"TableName": name}))


def key_schema(short: str) -> KeySchema:
    return KeySchema.from_json({"name": n, "type": t, "role": r} for n, t, r in TABLES[short])


def bulkwrites_record(case: Case) -> Record:
    """The row read as bulkwrites reads the file, converted as the dry run and staging do."""
    rows = list(read_rows(io.BytesIO(case.text.encode("utf-8")), case.fmt))
    assert len(rows) == 1, f"{case.id}: the case's file must hold one row"
    row = rows[0]
    records = convert_rows(
        [(row.position, row.values, row.error)],
        key_schema(case.table),
        delete=False,
        dynamodb_json=case.fmt in ROWS_ARE_DYNAMODB_JSON,
    )
    return records[0]


def put_and_get(table: str, short: str, item_text: str) -> tuple[bool, dict[str, Any] | None, str]:
    """PutItem then GetItem: (accepted, the item as stored, DynamoDB's message if refused).

    The key is deleted again afterwards, so the next put of the same key starts from nothing.
    """
    status, body = _call("PutItem", '{"TableName": ' + json.dumps(table) + ', "Item": ' + item_text + "}")
    if status != 200:
        return False, None, f"{body.get('__type', '').rsplit('#', 1)[-1]}: {body.get('message') or body.get('Message')}"
    given = json.loads(item_text)
    key = {name: given[name] for name, _, _ in TABLES[short]}
    status, body = _call("GetItem", json.dumps({"TableName": table, "Key": key, "ConsistentRead": True}))
    assert status == 200, body
    _call("DeleteItem", json.dumps({"TableName": table, "Key": key}))
    return True, body["Item"], ""


def canonical(value: Any) -> Any:
    """DynamoDB JSON with set members in a fixed order (DynamoDB returns them in any order)."""
    if isinstance(value, dict):
        return {
            k: sorted(v) if k in ("SS", "NS", "BS") and isinstance(v, list) else canonical(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


class Judgement(NamedTuple):
    accepted: bool  # DynamoDB Local accepted the row as given
    valid: bool  # bulkwrites' dry run called it valid
    same_end_state: bool  # the table ends the same whether the row is put as given or by bulkwrites
    written_as_stored: bool  # what bulkwrites sends is exactly what DynamoDB stores (valid rows)
    difference: str

    @property
    def agrees(self) -> bool:
        return self.accepted == self.valid and self.same_end_state and self.written_as_stored


def judge(case: Case, tables: dict[str, str]) -> Judgement:
    table = tables[case.table]
    accepted, stored_as_given, refusal = put_and_get(table, case.table, case.dynamodb)
    record = bulkwrites_record(case)
    if record.is_valid:
        assert record.item_json is not None
        written = json.loads(record.item_json)
        _, stored_by_bulkwrites, _ = put_and_get(table, case.table, record.item_json)
    else:
        written = stored_by_bulkwrites = None
    same_end_state = canonical(stored_as_given) == canonical(stored_by_bulkwrites)
    written_as_stored = written is None or canonical(written) == canonical(stored_by_bulkwrites)
    said = "accepted" if accepted else f"refused ({refusal})"
    thought = "valid" if record.is_valid else f"invalid ({record.error})"
    difference = f"DynamoDB {said}, bulkwrites' dry run: {thought}"
    if not same_end_state:
        difference += f"; as given DynamoDB stores {stored_as_given!r:.200}, bulkwrites {stored_by_bulkwrites!r:.200}"
    if not written_as_stored:
        difference += f"; bulkwrites sends {written!r:.200}, DynamoDB stores {stored_by_bulkwrites!r:.200}"
    return Judgement(accepted, record.is_valid, same_end_state, written_as_stored, difference)


@pytest.fixture(scope="module")
def tables() -> Iterator[dict[str, str]]:
    if not os.environ.get("AWS_ENDPOINT_URL_DYNAMODB"):
        pytest.fail("AWS_ENDPOINT_URL_DYNAMODB is not set: run the tests with `make test`", pytrace=False)
    names = create_tables()
    yield names
    delete_tables(names)


def test_the_corpus_is_big_and_two_sided() -> None:
    assert len(CASES) >= 45
    assert sum(c.accepted for c in CASES) >= 30
    assert sum(not c.accepted for c in CASES) >= 30
    assert {c.fmt for c in CASES} == {"csv", "jsonl", "ddbjson"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_dry_run_agrees_with_dynamodb(case: Case, tables: dict[str, str]) -> None:
    judgement = judge(case, tables)
    assert judgement.accepted == case.accepted, f"DynamoDB Local's verdict changed for {case.id!r} ({case.note})"
    assert judgement.agrees, f"{case.id} ({case.note}): {judgement.difference}"


@pytest.mark.parametrize("case", [c for c in CASES if not c.accepted], ids=lambda c: c.id)
def test_a_refused_row_says_why(case: Case) -> None:
    record = bulkwrites_record(case)
    assert record.error
    assert "Traceback" not in record.error
    assert len(record.error) < 400


def main() -> None:  # pragma: no cover - a tally for humans
    names = create_tables()
    try:
        verdicts = end_states = exact = 0
        for case in CASES:
            judgement = judge(case, names)
            verdicts += judgement.accepted == judgement.valid
            end_states += judgement.same_end_state
            exact += judgement.agrees
            if not judgement.agrees:
                print(f"  {case.id}: {judgement.difference[:300]}")
        total = len(CASES)
        print(
            f"dry run verdict agrees with DynamoDB Local on {verdicts} of {total}; end state on {end_states} of"
            f" {total}; everything (verdict, end state, what is sent = what is stored) on {exact} of {total}"
        )
    finally:
        delete_tables(names)


if __name__ == "__main__":  # pragma: no cover
    main()
