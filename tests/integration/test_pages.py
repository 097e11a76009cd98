"""What the admin's pages say, against the real services: staging progress, a queue without workers,
the throughput series, cancel's confirmation, expiring drafts, the preview's estimate.

The browser tests (tests/browser/test_pages_browser.py) look at the same pages in Chromium.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from bulkwrites import selectors
from bulkwrites.models import Job, JobStatus, Slice, SliceRun, SourceKind
from bulkwrites.services import create, staging, work
from bulkwrites.sources.rows import SourceRow
from tests.conftest import test_db_dsn
from tests.rq_helpers import registered_worker

pytestmark = pytest.mark.django_db(transaction=True)

PK_S = [{"name": "pk", "type": "S", "role": "HASH"}]


def committed_job(**fields: Any) -> Job:
    defaults: dict[str, Any] = {"table_name": "t", "key_schema": PK_S, "source_kind": SourceKind.FILE}
    return Job.objects.create(**{**defaults, **fields})


# --- staging progress ------------------------------------------------------------------------


def test_staging_progress_is_visible_to_other_sessions_while_the_staging_transaction_is_open() -> None:
    """The job row says how far staging got before staging commits (it runs in one transaction)."""
    job = committed_job(status=JobStatus.QUEUED)
    rows_total = 6 * staging.COPY_CHUNK_ROWS + 100
    seen: list[tuple[Any, ...]] = []
    progress = staging.StagingProgress(job.pk, every_seconds=0)
    progress.track_bytes(lambda: progress.rows_read * 40, rows_total * 40)  # as a file of 40-byte rows

    def rows() -> Iterator[SourceRow]:
        with psycopg.connect(test_db_dsn(), autocommit=True) as other:  # another session, like the job page's
            for n in range(1, rows_total + 1):
                # Conversion reads up to ~10,000 rows ahead of the COPY: by this row, 3 chunks are in.
                if n == 5 * staging.COPY_CHUNK_ROWS + 50:
                    row = other.execute(
                        "SELECT staging_rows_read, staging_rows_estimate, staging_started_at IS NOT NULL,"
                        " total_items, (SELECT count(*) FROM bulkwrites_item WHERE job_id = %s)"
                        " FROM bulkwrites_job WHERE id = %s",
                        [job.pk, job.pk],
                    ).fetchone()
                    assert row is not None
                    seen.append(row)
                yield SourceRow(n, {"pk": f"k{n}"})

    staging.stage_job(job, rows(), dynamodb_json=False, progress=progress)
    progress.close()

    ((read, estimate, started, total, items_visible),) = seen
    assert read >= 2 * staging.COPY_CHUNK_ROWS  # at least the two chunks already copied
    assert estimate == rows_total  # rows read x file size / bytes read
    assert started
    assert (total, items_visible) == (0, 0)  # the items themselves are not visible before the commit
    job.refresh_from_db()
    assert (job.total_items, job.staging_rows_read, job.staging_rows_estimate) == (rows_total,) * 3


def test_a_worker_staging_a_file_records_rows_read_and_the_estimate(tmp_path: Path, make_table: Any) -> None:
    table = make_table()
    content = "pk,n:N\n" + "".join(f"k{i},{i}\n" for i in range(12_000))
    job = create.job_create_from_file(upload=io.BytesIO(content.encode()), file_name="rows.csv", table_name=table)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)

    assert work.job_stage(job)

    job.refresh_from_db()
    assert job.total_items == job.staging_rows_read == 12_000
    assert job.staging_rows_estimate == 12_000  # the whole file read: the estimate is the count
    assert job.staging_started_at is not None
    assert job.staged_at is not None
    assert job.staging_started_at <= job.staged_at


# --- what the job page says beside the status ------------------------------------------------------


def test_the_state_says_staging_progress_and_a_queue_nobody_serves(rq_queue: Any) -> None:
    job = committed_job(
        status=JobStatus.QUEUED,
        staging_started_at=timezone.now(),
        staging_rows_read=12_000,
        staging_rows_estimate=60_000,
    )
    state = selectors.job_state(job)
    assert state["state"] == "staging: 12,000 of ~60,000 rows read"
    assert state["live_workers"] == 0
    assert f"No worker is listening on queue '{rq_queue.name}'" in state["worker_warning"]

    with registered_worker(rq_queue, f"page-test-{job.pk}"):
        state = selectors.job_state(job)
    assert (state["live_workers"], state["worker_warning"]) == (1, "")

    job.staging_rows_estimate = None
    assert selectors.job_state(job)["state"] == "staging: 12,000 rows read"  # a query: no size to go by
    waiting = committed_job(status=JobStatus.QUEUED)
    assert selectors.job_state(waiting)["state"] == "queued: waiting for a worker"
    finished = committed_job(status=JobStatus.SUCCEEDED)
    assert selectors.job_state(finished) == {
        "state": "succeeded",
        "live_workers": None,  # Redis is not asked about finished jobs
        "worker_warning": "",
        "staging_rows_read": 0,
        "staging_rows_estimate": None,
    }


def test_the_job_page_shows_the_staging_state_and_the_total_as_staging(admin_client_tx: Any, rq_queue: Any) -> None:
    job = committed_job(
        status=JobStatus.QUEUED,
        staging_started_at=timezone.now(),
        staging_rows_read=12_000,
        staging_rows_estimate=60_000,
    )
    page = admin_client_tx.get(reverse("admin:bulkwrites_job_change", args=[job.pk])).content.decode()
    assert "— staging: 12,000 of ~60,000 rows read" in page
    assert '<td id="count-total">staging…</td>' in page
    assert "No worker is listening" in page
    progress = admin_client_tx.get(reverse("admin:bulkwrites_job_progress", args=[job.pk])).json()
    assert progress["state"] == "staging: 12,000 of ~60,000 rows read"
    assert progress["live_workers"] == 0


# --- the throughput chart's series ------------------------------------------------------------------


def test_the_throughput_series_spreads_each_pass_over_its_span() -> None:
    start = timezone.now() - timedelta(seconds=200)
    job = committed_job(status=JobStatus.SUCCEEDED, started_at=start, finished_at=start + timedelta(seconds=120))
    job_slice = Slice.objects.create(job=job, first_position=1, last_position=1000, done=True)

    def run(begin: float, end: float, items: int, wcu: float, calls: int, throttled: int) -> None:
        SliceRun.objects.create(
            job=job,
            slice=job_slice,
            worker="w",
            started_at=start + timedelta(seconds=begin),
            finished_at=start + timedelta(seconds=end),
            succeeded=items,
            consumed_wcu=wcu,
            calls=calls,
            throttled_calls=throttled,
        )

    run(0, 60, 600, 1200.0, 40, 10)  # 10 items/s, 20 WCU/s for a minute, a quarter of calls throttled
    run(90, 120, 900, 900.0, 36, 0)  # 30 items/s, 30 WCU/s for half a minute, after a 30 s gap

    series = selectors.throughput_series(job, points=120)  # one bucket a second

    assert len(series) == 120
    by_second = {int(point[0]): point[1:] for point in series}
    assert by_second[0] == by_second[59] == [10.0, 20.0, 0.25]
    assert by_second[75] == [0.0, 0.0, 0.0]  # nothing was written: the line drops
    assert by_second[90] == by_second[119] == [30.0, 30.0, 0.0]
    assert sum(p[1] for p in series) == pytest.approx(1500)  # every item, once
    assert selectors.throughput_series(committed_job(status=JobStatus.QUEUED)) == []


# --- cancel asks first -------------------------------------------------------------------------


def test_cancel_shows_what_it_will_do_before_it_does_it(admin_client_tx: Any) -> None:
    job = committed_job(status=JobStatus.PAUSED, total_items=10, succeeded_items=4)
    url = reverse("admin:bulkwrites_job_action", args=[job.pk, "cancel"])

    page = admin_client_tx.post(url)

    assert page.status_code == 200
    html = page.content.decode()
    assert f"Cancel job {job.pk}?" in html
    assert "6 not sent yet" in html
    assert 'name="confirmed" value="yes"' in html
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED  # nothing happened yet

    response = admin_client_tx.post(url, {"confirmed": "yes"})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    # A job that cannot be cancelled any more gets no confirmation page, but the reason.
    again = admin_client_tx.post(url, follow=True)
    assert "it cannot be cancelled" in again.content.decode()


def test_the_preview_discard_button_needs_no_second_page(admin_client_tx: Any) -> None:
    job = committed_job(status=JobStatus.DRAFT)
    preview_html = admin_client_tx.get(reverse("admin:bulkwrites_job_preview", args=[job.pk])).content.decode()
    assert 'name="confirmed" value="yes"' in preview_html
    admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "cancel"]), {"confirmed": "yes"})
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED


# --- drafts expire ----------------------------------------------------------------------------------


def test_expired_drafts_are_hidden_then_deleted_with_their_file(admin_client_tx: Any, make_table: Any) -> None:
    table = make_table()

    def draft(name: str, *, hours_old: float) -> Job:
        job = create.job_create_from_file(upload=io.BytesIO(b"pk\na\n"), file_name=name, table_name=table)
        Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(hours=hours_old))
        job.refresh_from_db()
        return job

    old, fresh = draft("old.csv", hours_old=30), draft("fresh.csv", hours_old=1)
    old_started = draft("started.csv", hours_old=30)
    Job.objects.filter(pk=old_started.pk).update(status=JobStatus.SUCCEEDED)
    old_file, fresh_file = old.source_file.name, fresh.source_file.name
    assert old_file
    assert fresh_file
    assert default_storage.exists(old_file)

    def listed(**params: str) -> set[int]:
        page = admin_client_tx.get(reverse("admin:bulkwrites_job_changelist"), params)
        return {job.pk for job in page.context["cl"].result_list}

    assert listed() == {fresh.pk, old_started.pk}  # the expired draft is hidden by default
    assert listed(drafts="all") == {old.pk, fresh.pk, old_started.pk}
    assert listed(drafts="expired") == {old.pk}
    with override_settings(BULKWRITES={**settings.BULKWRITES, "DRAFT_TTL_HOURS": 0}):
        assert listed() == {old.pk, fresh.pk, old_started.pk}  # 0: drafts never expire
        assert work.delete_expired_drafts() == []

    assert work.delete_expired_drafts() == [old.pk]

    assert set(Job.objects.values_list("pk", flat=True)) == {fresh.pk, old_started.pk}
    assert not default_storage.exists(old_file)
    assert default_storage.exists(fresh_file)


def test_a_draft_being_started_is_not_deleted_under_the_operator() -> None:
    job = committed_job(status=JobStatus.DRAFT)
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(days=3))
    locked = threading.Event()
    release = threading.Event()

    def operator() -> None:  # holds the row as Job.start's UPDATE would, then starts it
        from django.db import connection, transaction

        with transaction.atomic():
            Job.objects.select_for_update().get(pk=job.pk)
            locked.set()
            release.wait(10)
            Job.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)
        connection.close()

    thread = threading.Thread(target=operator)
    thread.start()
    assert locked.wait(10)
    try:
        assert work.delete_expired_drafts() == []  # skipped, not waited for
    finally:
        release.set()
        thread.join()
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


# --- the preview's estimate --------------------------------------------------------------------------


@pytest.fixture
def provisioned_table(dynamodb: Any) -> Iterator[str]:
    name = f"test-prov-{timezone.now().strftime('%H%M%S%f')}"
    dynamodb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 10},
    )
    yield name
    dynamodb.delete_table(TableName=name)


def test_the_preview_estimates_units_duration_and_cost_from_the_billing_mode(
    admin_client_tx: Any, make_table: Any, provisioned_table: str
) -> None:
    # 3 rows of ~1.5 KB (2 units each), one repeated key (not counted twice), one invalid row.
    big = "x" * 1500
    content = f"pk,body\na,{big}\nb,{big}\nc,{big}\na,{big}\n,{big}\n".encode()

    def preview(table: str, **job: Any) -> Any:
        created = create.job_create_from_file(upload=io.BytesIO(content), file_name="e.csv", table_name=table, **job)
        return admin_client_tx.get(reverse("admin:bulkwrites_job_preview", args=[created.pk]))

    on_demand = preview(make_table())
    estimate = on_demand.context["estimate"]
    assert estimate.write_units == 6
    assert estimate.estimate.rate_wcu == 4000
    html = on_demand.content.decode()
    assert "an assumed 4,000 WCU/s" in html
    assert "$0.625 per million write request units" in html
    assert "not a quote" in html

    provisioned = preview(provisioned_table).context["estimate"]
    assert (provisioned.write_units, provisioned.estimate.rate_wcu, provisioned.duration_text) == (6, 10, "under 1 s")
    assert "provisioned 10 WCU/s" in provisioned.estimate.rate_basis

    capped = preview(make_table(), rate_limit_wcu=0.5).context["estimate"]
    assert (capped.estimate.seconds, capped.duration_text) == (12, "~12 s")
    assert capped.estimate.rate_basis == "the job's cap of 0.5 WCU/s"

    missing = create.job_create_from_file(upload=io.BytesIO(content), file_name="e.csv", table_name=make_table())
    Job.objects.filter(pk=missing.pk).update(table_name="no-such-table")
    page = admin_client_tx.get(reverse("admin:bulkwrites_job_preview", args=[missing.pk]))
    assert page.context["estimate"].error.startswith("No cost estimate:")


def test_the_preview_shows_the_first_items_as_typed_columns(admin_client_tx: Any, make_table: Any) -> None:
    content = b'pk,n:N,flag:BOOL,tags:SS,doc:M,mixed\na,1.50,true,"[""x""]","{""k"": [1, null]}",text\nb,2,false,,,\n'
    job = create.job_create_from_file(upload=io.BytesIO(content), file_name="t.csv", table_name=make_table())
    table = admin_client_tx.get(reverse("admin:bulkwrites_job_preview", args=[job.pk])).context["table"]

    assert [(c.name, c.types, c.key) for c in table.columns] == [
        ("pk", ("S",), True),
        ("n", ("N",), False),
        ("flag", ("BOOL",), False),
        ("tags", ("SS",), False),
        ("doc", ("M",), False),
        ("mixed", ("S",), False),
    ]
    (first, first_json), (second, _) = table.rows
    assert [c.text for c in first] == ["a", "1.5", "true", "{x}", '{"k": [1, null]}', "text"]
    assert [c.type for c in second] == ["S", "N", "BOOL", "", "", ""]  # empty cells are left out of the item
    assert '"N": "1.5"' in first_json
