"""Deleting a job (services.deletion): hidden at once, every related row reclaimed in batches, nothing left."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db import connection, models
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from bulkwrites.admin import JobAdmin
from bulkwrites.dynamo.writer import CallStats, Outcome
from bulkwrites.models import (
    CheckSlice,
    Item,
    ItemCheck,
    Job,
    JobStatus,
    Slice,
    SliceRun,
    SourceKind,
    Verification,
    VerificationStatus,
)
from bulkwrites.services import deletion, running, staging
from bulkwrites.services.errors import JobError
from bulkwrites.sources.rows import SourceRow

pytestmark = pytest.mark.django_db(transaction=True)

PK_S = [{"name": "pk", "type": "S", "role": "HASH"}]


def full_ledger(items: int, **fields: Any) -> Job:
    """A job with a row in every table a job owns: items, payloads, slices, a slice run, a verification."""
    job = Job.objects.create(table_name="t", key_schema=PK_S, source_kind=SourceKind.FILE, **fields)
    rows = [SourceRow(n, {"pk": f"k{n}", "v": "x" * 50}) for n in range(1, items + 1)]
    rows.append(SourceRow(items + 1, {"v": "no key"}))  # a row that could not be read: an item, no payload
    staging.stage_job(job, rows, dynamodb_json=False)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    ids = list(Item.objects.filter(job=job, status="pending").values_list("id", flat=True))
    Item.objects.record_outcomes(job.pk, [Outcome(i, True, 1) for i in ids], CallStats(calls=1))
    first = Slice.objects.filter(job=job).order_by("first_position").first()
    assert first is not None
    now = timezone.now()
    SliceRun.objects.create(job=job, slice=first, worker="w", started_at=now, finished_at=now)
    verification = Verification.objects.create(job=job, status=VerificationStatus.FINISHED)
    ItemCheck.objects.bulk_create(
        ItemCheck(verification=verification, item_id=item_id, position=n) for n, item_id in enumerate(ids, start=1)
    )
    CheckSlice.objects.cut(verification.pk, first=1, last=len(ids), size=4)
    job.refresh_from_db()
    return job


def rows_of(job_id: int) -> dict[str, int]:
    """Rows of every model that refers to the job, directly or through another row that does.

    Walks Django's relations from Job, so a model added later that hangs off a job (or off one of
    its items, slices, verifications...) is counted here without anyone listing it.
    """
    counts: dict[str, int] = {}

    def walk(model: type[models.Model], path: str, seen: tuple[type[models.Model], ...]) -> None:
        # Hidden relations too (related_name="+": ItemPayload's job, for one).
        for relation in model._meta.get_fields(include_hidden=True):
            if not (isinstance(relation, models.ForeignObjectRel) and relation.one_to_many):
                continue
            related = relation.related_model
            if not isinstance(related, type) or related in seen or related is Job:
                continue
            lookup = f"{relation.field.name}__{path}" if path else relation.field.name
            counts[related._meta.label] = counts.get(related._meta.label, 0) + (
                related._default_manager.filter(**{lookup if path else f"{lookup}_id": job_id}).count()
            )
            walk(related, lookup, (*seen, related))

    walk(Job, "", (Job,))
    counts["bulkwrites.Job"] = Job.all_objects.filter(pk=job_id).count()
    return counts


def test_every_model_that_holds_a_jobs_rows_is_reclaimed() -> None:
    related = set(rows_of(0))
    assert related == {model._meta.label for model in deletion.RECLAIMED_MODELS}


def test_a_deleted_job_is_gone_at_once_and_its_rows_reclaimed_leaving_others_alone() -> None:
    job = full_ledger(25)
    other = full_ledger(7, retry_of=job)
    before = rows_of(job.pk)
    assert all(before.values()), before  # the fixture has a row in every table
    others_before = rows_of(other.pk)

    assert deletion.jobs_delete(job_ids=[job.pk]) == [job.pk]

    assert not Job.objects.filter(pk=job.pk).exists()  # hidden everywhere at once
    assert Job.all_objects.filter(pk=job.pk, deleting_since__isnull=False).exists()
    assert deletion.jobs_delete(job_ids=[job.pk]) == []  # deleting twice does nothing
    assert not deletion.job_delete(job=job)

    assert deletion.job_reclaim(job.pk, batch=4) is True

    assert rows_of(job.pk) == dict.fromkeys(before, 0)
    assert rows_of(other.pk) == others_before
    other.refresh_from_db()
    assert other.retry_of_id is None
    assert deletion.job_reclaim(job.pk) is None  # nothing left to do


def test_a_reclaim_cut_short_resumes_where_it_stopped_and_the_sweeper_finishes_it(run_worker: Any) -> None:
    job = full_ledger(30)
    deletion.job_delete(job=job)

    assert deletion.job_reclaim(job.pk, budget_seconds=0, batch=5) is False  # one batch, then "time is up"
    # What a worker killed here leaves behind: the rest, still hidden.
    assert ItemCheck.objects.filter(verification__job_id=job.pk).count() == 25
    assert Item.objects.filter(job_id=job.pk).count() == 31
    assert not Job.objects.filter(pk=job.pk).exists()  # still hidden

    # Nobody reclaimed it for longer than STALL_SECONDS: the sweeper asks a worker again.
    Job.all_objects.filter(pk=job.pk).update(last_activity_at=timezone.now() - timedelta(hours=1))
    assert deletion.reclaim_stalled_deletions() == [job.pk]
    assert deletion.reclaim_stalled_deletions() == []  # asked once per stall period
    run_worker()

    assert set(rows_of(job.pk).values()) == {0}


def index_blocks_accessed(*indexes: str) -> int:
    """Index pages read or found in the buffer cache so far, by every session (this one's counts flushed)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # this session's counts, once it is idle
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT coalesce(sum(idx_blks_read + idx_blks_hit), 0) FROM pg_statio_user_indexes"
            " WHERE indexrelname = ANY(%s)",
            [list(indexes)],
        )
        return int(cursor.fetchone()[0])


def test_a_reclaim_reads_each_index_page_a_bounded_number_of_times() -> None:
    """The rows a reclaim deleted stay in the indexes, dead, until a vacuum: a batch that scanned
    from the job's first entry stepped over every earlier batch's entries again (a 10M-item job:
    48 s, then 12.5 s once each batch starts where the last one ended)."""
    job = Job.objects.create(table_name="t", key_schema=PK_S, source_kind=SourceKind.FILE)
    staging.stage_job(job, (SourceRow(n, {"pk": f"k{n}"}) for n in range(1, 20_001)), dynamodb_json=False)
    indexes = ("item_job_position", "bulkwrites_itempayload_pkey")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sum(pg_relation_size(c.oid) / current_setting('block_size')::int) FROM pg_class c"
            " WHERE c.relname = ANY(%s)",
            [list(indexes)],
        )
        pages = int(cursor.fetchone()[0])
    deletion.job_delete(job=job)
    before = index_blocks_accessed(*indexes)

    batches = 200
    assert deletion.job_reclaim(job.pk, batch=20_000 // batches) is True

    accessed = index_blocks_accessed(*indexes) - before
    # Each batch: a probe and a DELETE per index, each a descent from the root (a few pages) and
    # the leaves holding its range. Stepping over the earlier batches' entries each time reads
    # ~batches / 2 x the leaves instead (here ~32,000 pages against ~1,900; the bound is ~3,800).
    assert accessed < 4 * pages + 2 * 2 * 4 * batches, (accessed, pages)


def test_a_second_reclaimer_of_the_same_job_stands_aside() -> None:
    job = full_ledger(3)
    deletion.job_delete(job=job)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [deletion._RECLAIM_LOCK, job.pk])
    # Another session holds it (a lock taken by this session would be re-entrant: use a second one).
    from django.db import connections

    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [deletion._RECLAIM_LOCK, job.pk])
            assert cursor.fetchone()[0] is False
    finally:
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [deletion._RECLAIM_LOCK, job.pk])
    assert deletion.job_reclaim(job.pk) is True


def test_a_job_deleted_while_its_items_are_staged_keeps_none_of_them() -> None:
    """Items have no constraint on their job (it cost staging a lookup per row): staging checks
    the job as it ends, and a job deleted meanwhile gets none of its rows."""
    job = Job.objects.create(table_name="t", key_schema=PK_S, source_kind=SourceKind.FILE)
    deleted: list[list[int]] = []

    def delete_elsewhere() -> None:  # another session, as the admin or the drafts' sweeper would
        from django.db import connection as thread_connection

        try:
            deleted.append(deletion.jobs_delete(job_ids=[job.pk]))
        finally:
            thread_connection.close()

    def rows() -> Iterator[SourceRow]:
        for n in range(1, 5001):
            if n == 2500:
                thread = threading.Thread(target=delete_elsewhere)
                thread.start()
                thread.join(timeout=30)
                assert deleted == [[job.pk]]  # the mark did not wait for staging: it holds no lock yet
            yield SourceRow(n, {"pk": f"k{n}"})

    with pytest.raises(JobError, match="deleted while its items were being staged"):
        staging.stage_job(job, rows(), dynamodb_json=False)

    assert deletion.job_reclaim(job.pk) is True
    assert set(rows_of(job.pk).values()) == {0}


def test_a_writer_on_a_deleted_job_stops_and_its_verifications_are_cancelled() -> None:
    job = full_ledger(3)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING)
    queued = Verification.objects.create(job=job, status=VerificationStatus.QUEUED)
    control = running.JobControl(job.pk)

    deletion.job_delete(job=job)

    control.poll(force=True)
    assert control.should_stop()
    assert control.stop_reason == "deleted"
    queued.refresh_from_db()
    assert queued.status == VerificationStatus.CANCELLED


def test_the_admin_never_collects_a_jobs_rows_and_a_view_only_user_cannot_delete(
    client: Any, django_user_model: Any, admin_user: Any
) -> None:
    job = full_ledger(20)
    viewer = django_user_model.objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__in=["view_job", "view_item"]))
    client.force_login(django_user_model.objects.get(pk=viewer.pk))

    assert client.post(reverse("admin:bulkwrites_job_delete", args=[job.pk]), {"post": "yes"}).status_code == 403
    changelist = client.get(reverse("admin:bulkwrites_job_changelist"))
    assert "delete_selected" not in changelist.content.decode()
    response = client.post(
        reverse("admin:bulkwrites_job_changelist"), {"action": "delete_selected", "_selected_action": [job.pk]}
    )
    assert Job.objects.filter(pk=job.pk).exists()
    assert response.status_code in (200, 302, 403)
    assert rows_of(job.pk)["bulkwrites.Item"] == 21

    # Were deleting allowed, the confirmation page would name the job and count from its
    # counters, never load its rows; deleting goes through the service.
    model_admin = JobAdmin(Job, admin.site)
    request = RequestFactory().post("/")
    request.user = admin_user
    with CaptureQueriesContext(connection) as queries:
        described, counts, perms_needed, protected = model_admin.get_deleted_objects([job], request)
    assert not any(Item._meta.db_table in q["sql"] for q in queries.captured_queries)
    assert counts == {"jobs": 1, "items": 21}
    assert (perms_needed, protected) == (set(), [])
    assert "21 items" in described[0]
    model_admin.delete_queryset(request, Job.objects.filter(pk=job.pk))
    assert not Job.objects.filter(pk=job.pk).exists()
    assert deletion.job_reclaim(job.pk) is True
    assert set(rows_of(job.pk).values()) == {0}
