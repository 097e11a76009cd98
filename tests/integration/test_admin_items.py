"""The item list: search by key, filters, and counts that stay cheap on big jobs."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from bulkwrites.admin import EstimatedCountPaginator
from bulkwrites.models import Item, Job, SourceKind

pytestmark = pytest.mark.django_db(transaction=True)


def job_with_items(key_type: str = "S", count: int = 30) -> Job:
    job = Job.objects.create(
        table_name="t",
        key_schema=[{"name": "pk", "type": key_type, "role": "HASH"}],
        source_kind=SourceKind.FILE,
        total_items=count,
    )
    Item.objects.bulk_create(
        Item(job=job, position=n, key={"pk": {key_type: f"k{n}" if key_type == "S" else str(n)}}, status="succeeded")
        for n in range(1, count + 1)
    )
    return job


def test_search_by_key_within_a_job_is_an_exact_match(admin_client_tx: Any) -> None:
    job = job_with_items()
    url = reverse("admin:bulkwrites_item_changelist")
    page = admin_client_tx.get(url, {"job__id__exact": job.pk, "q": "k1"})
    assert [i.position for i in page.context["cl"].result_list] == [1]  # not k10..k19
    page = admin_client_tx.get(url, {"q": "k1"})  # across jobs: a substring
    assert len(page.context["cl"].result_list) == 11


def test_search_a_number_key(admin_client_tx: Any) -> None:
    job = job_with_items("N")
    page = admin_client_tx.get(reverse("admin:bulkwrites_item_changelist"), {"job__id__exact": job.pk, "q": "7.0"})
    assert [i.position for i in page.context["cl"].result_list] == [7]


def test_the_paginator_counts_exactly_when_it_is_cheap() -> None:
    job = job_with_items(count=12)
    paginator = EstimatedCountPaginator(Item.objects.filter(job=job).order_by("position"), 5)
    assert paginator.count == 12
    assert paginator.num_pages == 3
