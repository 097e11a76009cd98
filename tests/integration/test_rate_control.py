"""A job's write-capacity cap: set at creation or from the table's default, changed while running."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from django.urls import reverse

from bulkwrites.dynamo import ratelimit
from bulkwrites.models import Job, JobStatus, TableSetting
from bulkwrites.services import control, create, dispatch

pytestmark = pytest.mark.django_db(transaction=True)


def small_rows(count: int) -> io.BytesIO:
    # Each item is well under 1 KB: exactly 1 WCU per put.
    return io.BytesIO(("pk,n:N\n" + "".join(f"k{i},{i}\n" for i in range(count))).encode())


def test_the_cap_paces_a_job(make_table: Any, scan: Any, run_worker: Any) -> None:
    table = make_table()
    job = create.job_create_from_file(
        upload=small_rows(150), file_name="r.csv", table_name=table, rate_limit_wcu=50, concurrency=4
    )
    control.job_start(job=job)
    started = time.monotonic()
    run_worker()
    elapsed = time.monotonic() - started
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert len(scan(table)) == 150
    # Paced at 48.75 WCU/s with a bucket of a quarter second: the last ~138 units cannot all be
    # paid in under 2.8 s. A lower bound the limiter guarantees, not a speed claim.
    assert elapsed >= 1.9
    assert ratelimit.get_rate_cap(dispatch.redis_connection(), dispatch.rate_scope(job.pk)) == 50


def test_a_table_default_applies_unless_the_job_sets_its_own(make_table: Any) -> None:
    table = make_table()
    TableSetting.objects.create(table_name=table, rate_limit_wcu=25)
    default = create.job_create_from_file(upload=small_rows(1), file_name="a.csv", table_name=table)
    own = create.job_create_from_file(upload=small_rows(1), file_name="b.csv", table_name=table, rate_limit_wcu=400)
    assert default.rate_limit_wcu == 25
    assert own.rate_limit_wcu == 400


def test_the_operator_changes_the_rate_of_a_running_job(admin_client_tx: Any, make_table: Any) -> None:
    table = make_table()
    job = create.job_create_from_file(upload=small_rows(10), file_name="r.csv", table_name=table, rate_limit_wcu=10)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING)
    page = admin_client_tx.get(reverse("admin:bulkwrites_job_change", args=[job.pk])).content.decode()
    assert 'id="rate-form"' in page
    response = admin_client_tx.post(reverse("admin:bulkwrites_job_rate", args=[job.pk]), {"rate_limit_wcu": "250"})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.rate_limit_wcu == 250
    assert (
        ratelimit.get_rate_cap(dispatch.redis_connection(), dispatch.rate_scope(job.pk)) == 250
    )  # what running workers read
    progress = admin_client_tx.get(reverse("admin:bulkwrites_job_progress", args=[job.pk])).json()
    assert progress["rate_limit_wcu"] == 250
    # Paced a little below the cap, so that no 10 s window gets more than the cap; the page says so.
    assert progress["allowed_wcu"] == round(ratelimit.RatePolicy().paced_cap(250), 1)
    assert "the cap of 250 WCU/s, paced at 244" in progress["rate_reason"]

    admin_client_tx.post(reverse("admin:bulkwrites_job_rate", args=[job.pk]), {"rate_limit_wcu": ""})
    # Read again as a new instance: across a refresh_from_db(), mypy keeps rate_limit_wcu narrowed
    # to int by the `== 250` above, and takes the check below for one that cannot pass.
    job = Job.objects.get(pk=job.pk)
    assert job.rate_limit_wcu is None
    assert ratelimit.get_rate_cap(dispatch.redis_connection(), dispatch.rate_scope(job.pk)) is None
