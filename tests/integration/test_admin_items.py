"""The item list: exact search by key through the key-hash index, filters, and honest counts on big jobs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.urls import reverse

from bulkwrites.admin import EstimatedCountPaginator
from bulkwrites.dynamo.items import KEY_HASH_SQL, key_hash
from bulkwrites.models import Item, ItemQuerySet, Job, SourceKind
from bulkwrites.selectors import search_items_by_key
from bulkwrites.services import staging
from bulkwrites.sources.rows import SourceRow

pytestmark = pytest.mark.django_db(transaction=True)

PK_S = [{"name": "pk", "type": "S", "role": "HASH"}]
PK_N = [{"name": "pk", "type": "N", "role": "HASH"}]
PK_SK = [{"name": "pk", "type": "S", "role": "HASH"}, {"name": "sk", "type": "N", "role": "RANGE"}]


def staged_job(key_schema: list[dict[str, str]], rows: list[dict[str, Any]]) -> Job:
    """A job staged the way workers stage files: rows -> records (with key hashes) -> COPY."""
    job = Job.objects.create(table_name="t", key_schema=key_schema, source_kind=SourceKind.FILE)
    staging.stage_job(job, [SourceRow(n, row) for n, row in enumerate(rows, start=1)], dynamodb_json=False)
    job.refresh_from_db()
    return job


def listed(client: Any, **params: Any) -> list[tuple[int, int]]:
    page = client.get(reverse("admin:bulkwrites_item_changelist"), params)
    assert page.status_code == 200
    return sorted((i.job_id, i.position) for i in page.context["cl"].result_list)


def test_search_by_key_is_exact_within_a_job_and_across_jobs(admin_client_tx: Any) -> None:
    first = staged_job(PK_S, [{"pk": f"k{n}"} for n in range(1, 31)])
    second = staged_job(PK_S, [{"pk": "k1"}, {"pk": "k10"}, {"pk": "other"}])

    assert listed(admin_client_tx, job__id__exact=first.pk, q="k1") == [(first.pk, 1)]  # not k10..k19
    # Across jobs: the same exact key in both jobs, never a substring (k10, k11...).
    assert listed(admin_client_tx, q="k1") == [(first.pk, 1), (second.pk, 1)]
    assert listed(admin_client_tx, q=" k10 ") == [(first.pk, 10), (second.pk, 2)]
    # As the item list prints keys.
    assert listed(admin_client_tx, q="pk=other") == [(second.pk, 3)]
    assert listed(admin_client_tx, q="k") == []


def test_a_number_key_is_found_whatever_way_the_number_is_written(admin_client_tx: Any) -> None:
    job = staged_job(PK_N, [{"pk": str(n)} for n in range(1, 11)] + [{"pk": "1.50"}])

    assert listed(admin_client_tx, job__id__exact=job.pk, q="7.0") == [(job.pk, 7)]
    assert listed(admin_client_tx, q="1.5") == [(job.pk, 11)]  # staged from "1.50"
    assert listed(admin_client_tx, q="1.500") == [(job.pk, 11)]
    assert listed(admin_client_tx, q="0.7E1") == [(job.pk, 7)]
    assert listed(admin_client_tx, q="seven") == []


def test_a_composite_key_by_its_whole_key_or_within_a_job_by_partition(admin_client_tx: Any) -> None:
    job = staged_job(PK_SK, [{"pk": "a", "sk": "1"}, {"pk": "a", "sk": "2"}, {"pk": "b", "sk": "1"}])

    assert listed(admin_client_tx, q="pk=a, sk=2") == [(job.pk, 2)]  # across jobs: the whole key
    assert listed(admin_client_tx, q="sk=2.0,pk=a") == [(job.pk, 2)]
    assert listed(admin_client_tx, job__id__exact=job.pk, q="a") == [(job.pk, 1), (job.pk, 2)]
    assert listed(admin_client_tx, job__id__exact=job.pk, q="pk=b") == [(job.pk, 3)]
    # Across jobs a partition key alone would be a scan of every item: refused, with how to ask.
    page = admin_client_tx.get(reverse("admin:bulkwrites_item_changelist"), {"q": "a"})
    assert list(page.context["cl"].result_list) == []
    assert "pk=…, sk=…" in page.content.decode()


def test_a_row_that_could_not_be_used_keeps_its_key_and_is_found_by_it(admin_client_tx: Any) -> None:
    job = staged_job(PK_S, [{"pk": "good"}, {"pk": "bad-price", "price:N": "abc"}, {"pk": "", "price:N": "1"}])
    bad, keyless = Item.objects.filter(job=job, status="failed").order_by("position")

    assert (bad.key, bad.key_text, bad.payload) == ({"pk": {"S": "bad-price"}}, "pk=bad-price", None)
    assert (keyless.key, keyless.key_hash, keyless.key_text) == (None, None, "—")
    assert listed(admin_client_tx, q="bad-price") == [(job.pk, 2)]
    page = admin_client_tx.get(reverse("admin:bulkwrites_job_change", args=[job.pk]))
    assert "<code>pk=bad-price</code>" in page.content.decode()  # the job page's failed items


@pytest.mark.parametrize(
    "key",
    [
        {"pk": {"S": "a"}},
        {"pk": {"N": "1.5"}},
        {"pk": {"N": "-0.000123"}},
        {"pk": {"B": "AAEC"}},
        {"pk": {"S": "é ü 日本"}, "sk": {"N": "100"}},
        {"zz": {"S": "x"}, "Ä": {"S": "y"}, "a b": {"N": "3"}},  # names sorted by code point
    ],
)
def test_postgresql_computes_the_same_key_hash_as_staging(key: dict[str, Any]) -> None:
    """What the migration fills older items with equals what staging writes for new ones."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {KEY_HASH_SQL.format(column='%s::jsonb')}", [json.dumps(key)])
        assert cursor.fetchone()[0] == key_hash(key)


def test_the_search_is_an_index_probe_per_job_not_a_scan() -> None:
    """On jobs of 20,000 items with fresh statistics, the planner answers through (job, key_hash)."""
    jobs = [Job.objects.create(table_name="t", key_schema=PK_S, source_kind=SourceKind.FILE) for _ in range(2)]
    key = "jsonb_build_object('pk', jsonb_build_object('S', 'k' || g))"
    hashed = KEY_HASH_SQL.format(column=key)
    with connection.cursor() as cursor:
        for job in jobs:
            cursor.execute(
                f"""INSERT INTO bulkwrites_item (job_id, position, key, raw, size, wire_bytes, status, attempts,
                        error_code, error_message, history, updated_at, key_hash)
                    SELECT %s, g, {key}, '', 1, 1, 'succeeded', 1, '', '', '[]', now(), {hashed}
                    FROM generate_series(1, 20000) AS g""",
                [job.pk],
            )
        cursor.execute("ANALYZE bulkwrites_item")
    for scope in (jobs[0], None):
        items = search_items_by_key(Item.objects.all(), "k777", job=scope).items.order_by("job_id", "position")
        assert [(i.job_id, i.position) for i in items] == [(j.pk, 777) for j in jobs if scope in (None, j)]
        sql, params = items.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN {sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "item_job_key_hash" in plan, plan
        assert "Seq Scan on bulkwrites_item" not in plan, plan  # the jobs table may be read whole


def test_an_estimated_count_is_said_to_be_one(admin_client_tx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    job = staged_job(PK_S, [{"pk": f"k{n}"} for n in range(1, 4)])
    url = reverse("admin:bulkwrites_item_changelist")
    exact = admin_client_tx.get(url, {"job__id__exact": job.pk}).content.decode()
    assert "3 items" in exact
    assert "about" not in exact

    monkeypatch.setattr(ItemQuerySet, "count_or_estimate", lambda self, **kw: (86, False))
    html = admin_client_tx.get(url, {"job__id__exact": job.pk}).content.decode()
    assert "about 86 items" in html
    assert "86 items" not in html.replace("about 86 items", "")
    html = admin_client_tx.get(url, {"job__id__exact": job.pk, "q": "k1"}).content.decode()
    assert "about 86 results" in html
    assert "86 results" not in html.replace("about 86 results", "")


def test_the_paginator_counts_exactly_when_it_is_cheap_and_estimates_otherwise() -> None:
    job = staged_job(PK_S, [{"pk": f"k{n}"} for n in range(1, 13)])
    paginator = EstimatedCountPaginator(Item.objects.filter(job=job).order_by("position"), 5)
    assert paginator.count == 12
    assert paginator.num_pages == 3
    assert not paginator.count_is_estimate

    # A count that cannot finish within the time allowed: 12 rows at 10 ms each, 1 ms allowed.
    slow = Item.objects.filter(job=job).extra(where=["pg_sleep(0.01) IS NOT NULL"])
    assert isinstance(slow, ItemQuerySet)
    count, exact = slow.count_or_estimate(exact_within_ms=1)
    assert not exact
    assert count >= 1
