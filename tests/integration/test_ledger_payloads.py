"""Payloads kept apart from the items' outcome columns (ItemPayload): staged, read, exported, deleted, migrated."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from bulkwrites.dynamo.items import key_hash
from bulkwrites.dynamo.writer import CallStats, Outcome
from bulkwrites.models import Item, ItemPayload, ItemStatus, Job, SourceKind
from bulkwrites.resources import export_items
from bulkwrites.services import staging
from bulkwrites.sources.rows import SourceRow

pytestmark = pytest.mark.django_db(transaction=True)

PK_S = [{"name": "pk", "type": "S", "role": "HASH"}]
BEFORE, AFTER = ("bulkwrites", "0012_staging_progress_key_hash"), ("bulkwrites", "0013_item_payload_apart")


def staged_job(rows: list[dict[str, Any]]) -> Job:
    job = Job.objects.create(table_name="t", key_schema=PK_S, source_kind=SourceKind.FILE)
    staging.stage_job(job, [SourceRow(n, row) for n, row in enumerate(rows, start=1)], dynamodb_json=False)
    job.refresh_from_db()
    return job


def item_columns() -> set[str]:
    with connection.cursor() as cursor:
        return {c.name for c in connection.introspection.get_table_description(cursor, Item._meta.db_table)}


def test_staging_writes_each_readable_rows_payload_apart_from_its_item() -> None:
    job = staged_job([{"pk": "a", "n:N": "1"}, {"pk": "b", "n:N": "not a number"}, {"pk": "c", "n:N": "3"}])

    assert "payload" not in item_columns()  # the row an outcome rewrites holds no payload
    stored = dict(ItemPayload.objects.filter(job=job).values_list("position", "payload"))
    assert stored == {1: {"pk": {"S": "a"}, "n": {"N": "1"}}, 3: {"pk": {"S": "c"}, "n": {"N": "3"}}}
    a, b, c = Item.objects.filter(job=job).order_by("position")
    assert (a.payload, b.payload, c.payload) == (stored[1], None, stored[3])  # the unreadable row has none


def test_what_copy_text_must_escape_reaches_the_ledger_as_it_was() -> None:
    # Staging writes pending items as COPY text it builds itself (ledger_copy.PendingRows): a
    # backslash, tab, line break or "\\N" that were not escaped would shift or end a field.
    awkward = 'a\\b\tc\nd\r\ne \\N \\t \\\\ "q" é 😀'
    job = staged_job([{"pk": awkward, "v": awkward + "!"}, {"pk": "bad\t\\row", "n:N": "x\ty"}])

    good, bad = Item.objects.filter(job=job).order_by("position").with_payload()
    assert good.key == {"pk": {"S": awkward}}
    assert good.payload == {"pk": {"S": awkward}, "v": {"S": awkward + "!"}}
    assert (good.status, good.key_hash) == (ItemStatus.PENDING, key_hash({"pk": {"S": awkward}}))
    assert good.wire_bytes == len(json.dumps(good.payload, ensure_ascii=False, separators=(",", ":")).encode())
    assert (bad.status, bad.key, bad.payload) == (ItemStatus.FAILED, {"pk": {"S": "bad\t\\row"}}, None)


def test_recording_outcomes_leaves_payloads_alone_and_counts_each_item_once() -> None:
    job = staged_job([{"pk": f"k{n}", "v": "x" * 100} for n in range(5)])
    ids = list(Item.objects.filter(job=job).order_by("position").values_list("id", flat=True))
    before = dict(ItemPayload.objects.filter(job=job).values_list("position", "payload"))

    Item.objects.record_outcomes(job.pk, [Outcome(i, True, 1) for i in ids[:3]], CallStats(calls=1))
    Item.objects.record_outcomes(job.pk, [Outcome(i, True, 1) for i in ids], CallStats(calls=1))  # 3 again

    job.refresh_from_db()
    assert job.succeeded_items == 5
    assert Item.objects.filter(job=job, status=ItemStatus.SUCCEEDED).count() == 5
    assert dict(ItemPayload.objects.filter(job=job).values_list("position", "payload")) == before


def test_an_export_reads_the_payloads_with_the_items_not_one_by_one() -> None:
    job = staged_job([{"pk": f"k{n}"} for n in range(30)])

    with CaptureQueriesContext(connection) as queries:
        content, _ = export_items(Item.objects.filter(job=job).order_by("position"), "json")

    assert '"{\\"pk\\": {\\"S\\": \\"k29\\"}}"' in str(content)
    assert len([q for q in queries.captured_queries if ItemPayload._meta.db_table in q["sql"]]) == 1


def test_restaging_and_deleting_a_job_take_its_payloads_along() -> None:
    job = staged_job([{"pk": "a"}, {"pk": "b"}])
    other = staged_job([{"pk": "z"}])

    staging.stage_job(job, [SourceRow(1, {"pk": "c"})], dynamodb_json=False)
    assert list(ItemPayload.objects.filter(job=job).values_list("payload", flat=True)) == [{"pk": {"S": "c"}}]
    job.delete()

    assert not ItemPayload.objects.filter(job_id=job.pk).exists()
    assert ItemPayload.objects.filter(job=other).count() == 1


def test_the_migration_carries_existing_payloads_over_and_back() -> None:
    job = Job.objects.create(table_name="t", key_schema=PK_S)
    executor = MigrationExecutor(connection)
    executor.migrate([BEFORE])
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""INSERT INTO {Item._meta.db_table} (job_id, position, key, payload, raw, size, wire_bytes, status,
                    attempts, error_code, error_message, history, updated_at)
                SELECT %s, s, jsonb_build_object('pk', s), CASE WHEN s < 3 THEN jsonb_build_object('n', s) END,
                    '', 0, 0, 'pending', 0, '', '', '[]', now()
                FROM generate_series(1, 3) AS s""",
                [job.pk],
            )
        executor = MigrationExecutor(connection)
        executor.migrate([AFTER])
        assert dict(ItemPayload.objects.filter(job=job).values_list("position", "payload")) == {
            1: {"n": 1},
            2: {"n": 2},
        }  # the third never had one

        executor = MigrationExecutor(connection)
        executor.migrate([BEFORE])
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT position, payload FROM {Item._meta.db_table} WHERE job_id = %s", [job.pk])
            assert dict(cursor.fetchall()) == {1: '{"n": 1}', 2: '{"n": 2}', 3: None}
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())


def test_a_payload_is_read_by_its_primary_key_alone() -> None:
    """The per-row subquery a slice is read with probes ItemPayload's key, joining nothing else:
    ItemPayload's default ordering (by job) would join the job table once per row."""
    from django.db.models import OuterRef

    from bulkwrites.models import payload_of

    rows = Item.objects.order_by("position").annotate(
        item_json=payload_of(OuterRef("job_id"), OuterRef("position"), as_text=True)
    )
    sql = str(rows.query)

    assert sql.count("FROM") == 2  # the items, and the payload subquery
    assert f'"{Job._meta.db_table}"' not in sql
