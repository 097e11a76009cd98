"""Deleting jobs: gone at once for everyone, their rows reclaimed by a worker in bounded batches.

Deleting a job is two steps:

1. :func:`jobs_delete` (the admin, the drafts' sweeper, the bench) marks the jobs
   (``Job.deleting_since``) in one ``UPDATE``: from then on ``Job.objects`` no longer holds them, so
   no page, API call, CLI command, worker or sweeper sees them, a writer on the job stops within a
   call (it finds its job gone), and deleting the same job again finds nothing. Its verifications
   still running are cancelled. A worker is asked (after commit) to reclaim the rows.
2. :func:`job_reclaim` (an RQ job, ``bulkwrites.tasks.reclaim_job``) deletes the job's rows with
   ``DELETE ... WHERE`` statements over ranges of positions, children first, each batch its own
   short transaction, every statement on an index: a job's size bounds neither memory nor the
   length of a transaction. The job's own row goes last, with its slices and verifications, in
   one transaction; its stored file once that has committed. A reclaim that dies half-way
   (killed worker, lost RQ job, database restart) leaves a job still marked, holding only what
   was not reached yet: :func:`reclaim_stalled_deletions` (the workers' sweeper) starts it again,
   and it carries on from the lowest position left.

Why not one ``DELETE`` in the request: Django's ``Model.delete()`` collects every related row in
Python (a 1M-item job: 137 s and 878 MB, ``bench/deletion.py``); set-based, a million items take
~8-13 s on the shared 2-core dev machine (the payloads alone are ~1 GB a million), so a 10M-item
job would hold a web request and one transaction for a minute or more.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from datetime import timedelta

from django.core.files.storage import Storage
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from bulkwrites.conf import app_settings
from bulkwrites.models import (
    CheckSlice,
    Item,
    ItemCheck,
    ItemPayload,
    Job,
    Slice,
    SliceRun,
    Verification,
    VerificationStatus,
)
from bulkwrites.services import dispatch

logger = logging.getLogger(__name__)

# Positions deleted per transaction: ~0.4 s of work on the 2-core dev machine (items and their
# ~1 KB payloads), ~6 MB of WAL; short enough for a worker's time slice and a replica.
RECLAIM_BATCH = 50_000
_RECLAIM_LOCK = 0x6264  # first key of the advisory lock a job is reclaimed under (the second is its id)

# What a job's rows are, children first. Every model holding a job's rows is here, in the order
# reclaimed; tests/integration/test_job_deletion.py fails when a model related to Job is not.
RECLAIMED_MODELS: tuple[type[Model], ...] = (
    ItemCheck, CheckSlice, Verification, ItemPayload, Item, SliceRun, Slice, Job,
)  # fmt: skip


VERIFICATION_CANCEL_SOURCES = (VerificationStatus.DRAFT, VerificationStatus.QUEUED, VerificationStatus.RUNNING)


def jobs_delete(*, job_ids: Iterable[int]) -> list[int]:
    """Mark jobs deleted (hidden everywhere at once) and ask a worker to reclaim their rows; the ids marked.

    A job already being deleted, or gone, is left out: deleting twice does nothing the second time.
    """
    ids = list(job_ids)
    if not ids:
        return []
    with transaction.atomic():
        jobs = list(Job.objects.filter(pk__in=ids).select_for_update().order_by("pk").only("pk", "source_file"))
        if not jobs:
            return []
        marked = [job.pk for job in jobs]
        now = timezone.now()
        Job.objects.filter(pk__in=marked).update(deleting_since=now, last_activity_at=now)
        # A verification reading the job back stops at its next poll; none starts later.
        for verification in Verification.objects.filter(job_id__in=marked, status__in=VERIFICATION_CANCEL_SOURCES):
            verification.cancel()
        for job in jobs:
            # After the commit; a Redis that does not answer leaves it to the sweeper (the job is gone
            # from every page already).
            dispatch.enqueue_reclaim(job.pk, robust=True)
            # Its stored file is of no use to anyone now (the reclaim tries again, should this not run).
            stored = job.source_file
            if stored.name:
                transaction.on_commit(functools.partial(_remove_stored_file, stored.storage, stored.name))
    logger.info("deleted job(s) %s; their rows are reclaimed by a worker", marked)
    return marked


def job_delete(*, job: Job) -> bool:
    """:func:`jobs_delete` for one job; False when it was already deleted."""
    return bool(jobs_delete(job_ids=[job.pk]))


def job_reclaim(job_id: int, *, budget_seconds: float | None = None, batch: int = RECLAIM_BATCH) -> bool | None:
    """Delete a deleted job's rows for ``budget_seconds`` (a batch at least): True once its row is gone too.

    False: time ran out (the caller re-enqueues). None: nothing to do here (another worker holds
    the job's reclaim, or the job is not being deleted). Each batch commits on its own.
    """
    budget = app_settings().run_slice_seconds if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_RECLAIM_LOCK, job_id])
        if not cursor.fetchone()[0]:
            return None
    try:
        if not Job.all_objects.being_deleted().filter(pk=job_id).exists():
            return None
        verifications = list(Verification.objects.filter(job_id=job_id).values_list("pk", flat=True))
        for verification_id in verifications:
            if not _reclaim_ranges((ItemCheck,), "verification_id", verification_id, batch, deadline, job_id):
                return False
        if not _reclaim_ranges((ItemPayload, Item), "job_id", job_id, batch, deadline, job_id):
            return False
        # A writer (or reader) that was on the job stops within a call and hands its slice back;
        # its last slice run must not find its slice gone.
        while _under_live_lease(job_id, verifications):
            if time.monotonic() >= deadline:
                return False
            time.sleep(LEASE_POLL_SECONDS)
        _reclaim_the_rest(job_id, verifications)
        return True
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_RECLAIM_LOCK, job_id])


LEASE_POLL_SECONDS = 0.5


def _under_live_lease(job_id: int, verifications: list[int]) -> bool:
    return (
        Slice.objects.under_live_lease().filter(job_id=job_id).exists()
        or CheckSlice.objects.under_live_lease().filter(verification_id__in=verifications).exists()
    )


def _reclaim_ranges(
    models: tuple[type[Model], ...], owner_column: str, owner_id: int, batch: int, deadline: float, job_id: int
) -> bool:
    """Delete the owner's rows of ``models`` a range of ``batch`` positions at a time; False if time ran out.

    Each range starts at the lowest position left (an index probe per table), so a reclaim that
    died half-way resumes where it stopped, and gaps in positions cost nothing.

    Every probe and every ``DELETE`` is bounded below by what this call has already deleted: the
    deleted rows' entries stay in the indexes, dead, until a vacuum, and a scan from the owner's
    first entry walked all of them again each batch, quadratic in the job's size: a 10M-item job
    took 48 s to reclaim that way, 12.5 s this way (``bench/staging.py --scale``, same machine).
    """
    tables = [model._meta.db_table for model in models]
    done_below: int | None = None  # every row of the owner below this position is gone
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            above = "" if done_below is None else " AND position >= %s"
            lowest = " UNION ALL ".join(
                f"(SELECT position FROM {table} WHERE {owner_column} = %s{above} ORDER BY position LIMIT 1)"
                for table in tables
            )
            probe_args = [owner_id] if done_below is None else [owner_id, done_below]
            cursor.execute(f"SELECT min(position) FROM ({lowest}) AS low", probe_args * len(tables))
            low = cursor.fetchone()[0]
            if low is None:
                return True
            for table in tables:  # children first: payloads before their items
                cursor.execute(
                    f"DELETE FROM {table} WHERE {owner_column} = %s AND position >= %s AND position < %s",
                    [owner_id, low, low + batch],
                )
            done_below = low + batch
            cursor.execute(f"UPDATE {Job._meta.db_table} SET last_activity_at = now() WHERE id = %s", [job_id])
        if time.monotonic() >= deadline:  # checked after a batch: every call makes progress
            return False


def _reclaim_the_rest(job_id: int, verifications: list[int]) -> None:
    """The job's row and its few per-slice and per-verification rows, in one transaction."""
    with transaction.atomic():
        job = Job.all_objects.select_for_update().filter(pk=job_id).only("pk", "source_file").first()
        if job is None:
            return
        with connection.cursor() as cursor:
            # A verification made after the reclaim began (none should: the job is hidden) still goes.
            cursor.execute(
                f"DELETE FROM {ItemCheck._meta.db_table} WHERE verification_id IN "
                f"(SELECT id FROM {Verification._meta.db_table} WHERE job_id = %s)",
                [job_id],
            )
            cursor.execute(
                f"DELETE FROM {CheckSlice._meta.db_table} WHERE verification_id IN "
                f"(SELECT id FROM {Verification._meta.db_table} WHERE job_id = %s)",
                [job_id],
            )
            cursor.execute(f"DELETE FROM {Verification._meta.db_table} WHERE job_id = %s", [job_id])
            # A job staged after the mark cannot exist (staging finds no job), but be exact.
            cursor.execute(f"DELETE FROM {ItemPayload._meta.db_table} WHERE job_id = %s", [job_id])
            cursor.execute(f"DELETE FROM {Item._meta.db_table} WHERE job_id = %s", [job_id])
            cursor.execute(f"DELETE FROM {SliceRun._meta.db_table} WHERE job_id = %s", [job_id])
            cursor.execute(f"DELETE FROM {Slice._meta.db_table} WHERE job_id = %s", [job_id])
            # Retries of this job keep their own ledger; only the link goes (Django's SET_NULL).
            cursor.execute(f"UPDATE {Job._meta.db_table} SET retry_of_id = NULL WHERE retry_of_id = %s", [job_id])
            cursor.execute(f"DELETE FROM {Job._meta.db_table} WHERE id = %s", [job_id])
        stored = job.source_file
        if stored.name:
            transaction.on_commit(functools.partial(_remove_stored_file, stored.storage, stored.name))
    logger.info("job %s reclaimed (%s verification(s))", job_id, len(verifications))


def _remove_stored_file(storage: Storage, name: str) -> None:
    try:
        storage.delete(name)
    except OSError:  # the job is gone either way; a leftover file is only disk
        logger.warning("could not delete %s of a deleted job", name, exc_info=True)


def reclaim_work(job_id: int) -> str:
    """One RQ job's share of a reclaim: a time slice, then hand over if rows are left."""
    done = job_reclaim(job_id)
    if done is False:
        dispatch.enqueue_reclaim(job_id)
        return f"job {job_id}: reclaim goes on"
    return f"job {job_id}: {'reclaimed' if done else 'nothing to reclaim here'}"


def reclaim_stalled_deletions() -> list[int]:
    """Ask a worker again to reclaim deleted jobs nobody has reclaimed for ``STALL_SECONDS``; their ids.

    Any deployment sharing the database may finish a reclaim: it needs only PostgreSQL.
    """
    stall = timedelta(seconds=app_settings().stall_seconds)
    now = timezone.now()
    recovered = []
    for job_id, seen in (
        Job.all_objects.being_deleted().filter(last_activity_at__lt=now - stall).values_list("pk", "last_activity_at")
    ):
        touched = Job.all_objects.filter(pk=job_id, last_activity_at=seen).update(last_activity_at=now)
        if touched:
            dispatch.enqueue_reclaim(job_id)
            recovered.append(job_id)
    if recovered:
        logger.warning("re-enqueued the reclaim of deleted jobs %s", recovered)
    return recovered
