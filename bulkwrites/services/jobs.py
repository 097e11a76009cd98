"""Jobs: create one from a source, preview it, start, work on, cancel, pause, resume, retry.

Each function is one use-case, with keyword-only arguments; admin views, the CLI and RQ
tasks call them. Status changes use conditional UPDATEs, so two operators (or an operator
and a worker) racing on a job cannot undo each other.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import IO, Any

from django.conf import settings
from django.core.files.base import File
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo import ratelimit
from bulkwrites.dynamo.errors import CODE_DUPLICATE_KEY
from bulkwrites.dynamo.items import KeySchema, parse_header
from bulkwrites.models import DEFAULT_CONCURRENCY, Job, JobStatus, Operation, Slice, SourceKind, TableSetting
from bulkwrites.services import dispatch, running, staging
from bulkwrites.services.tables import TableError, describe_key_schema
from bulkwrites.sources import files, querysets

logger = logging.getLogger(__name__)

JOB_SETTINGS = (
    "rate_limit_wcu",
    "batch_size",
    "max_attempts",
    "backoff_base",
    "backoff_cap",
    "concurrency",
    "workers",
    "slice_size",
    "duplicate_policy",
)


class JobError(Exception):
    """A job cannot be created or changed; the message is for an operator."""


# --- creating -------------------------------------------------------------------------


def job_create_from_file(
    *,
    upload: IO[bytes],
    file_name: str,
    table_name: str,
    operation: str = Operation.PUT,
    source_format: str | None = None,
    created_by: Any = None,
    **job_settings: Any,
) -> Job:
    """Store the uploaded file where every worker can read it, and make a draft job of it.

    Reads the table's key schema (DescribeTable) so a preview can validate keys; the file
    itself is parsed later, by the preview and by staging, each streaming it.
    """
    max_bytes = settings.BULKWRITES["MAX_UPLOAD_BYTES"]
    size = _stream_size(upload)
    if size > max_bytes:
        raise JobError(f"The file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.")
    if size == 0:
        raise JobError("The file is empty.")
    head = upload.read(4096)
    upload.seek(0)
    try:
        fmt = source_format or files.detect_format(file_name, head)
    except files.SourceError as exc:
        raise JobError(str(exc)) from None
    if fmt not in files.FORMATS:
        raise JobError(f"Unknown format {fmt!r}; choose one of {', '.join(files.FORMATS)}.")
    key_schema = _key_schema(table_name)
    digest = hashlib.sha256()
    for chunk in iter(lambda: upload.read(1 << 20), b""):
        digest.update(chunk)
    upload.seek(0)
    job = Job(
        **new_job_fields(table_name, operation, key_schema, created_by, job_settings),
        source_kind=SourceKind.FILE,
        source_name=file_name[:255],
        source_format=fmt,
        source_size=size,
        source_sha256=digest.hexdigest(),
    )
    job.source_file.save(file_name, File(upload, name=file_name), save=False)
    job.save()
    return job


def new_job_fields(
    table_name: str, operation: str, key_schema: KeySchema, created_by: Any, job_settings: dict[str, Any]
) -> dict[str, Any]:
    """What every new job records whatever its source: target, key, who, and checked settings."""
    return {
        "table_name": table_name,
        "region": dynamo_client.region(),
        "endpoint": dynamo_client.endpoint_url() or "",
        "operation": operation,
        "key_schema": key_schema.to_json(),
        "created_by": created_by,
        **_checked_settings({**default_settings(table_name), **_given(job_settings)}),
    }


def _stream_size(stream: IO[bytes]) -> int:
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    return size


def _key_schema(table_name: str) -> KeySchema:
    try:
        return describe_key_schema(table_name)
    except TableError as exc:
        raise JobError(exc.message) from None


def _checked_settings(values: dict[str, Any]) -> dict[str, Any]:
    unknown = set(values) - set(JOB_SETTINGS)
    if unknown:
        raise TypeError(f"unknown job settings: {sorted(unknown)}")
    clean = {k: v for k, v in values.items() if v is not None}
    if not 1 <= int(clean.get("batch_size", 25)) <= 25:
        raise JobError("The batch size must be between 1 and 25 (DynamoDB's limit per call).")
    if not 1 <= int(clean.get("concurrency", DEFAULT_CONCURRENCY)) <= 64:
        raise JobError("Concurrency must be between 1 and 64 calls in flight.")
    if not 1 <= int(clean.get("workers", 1)) <= 32:
        raise JobError("Workers must be between 1 and 32.")
    if not 1 <= int(clean.get("max_attempts", 10)) <= 100:
        raise JobError("Max attempts must be between 1 and 100.")
    if clean.get("rate_limit_wcu") is not None and not 0 < float(clean["rate_limit_wcu"]) < 1e7:
        raise JobError("The rate limit must be a positive number of write capacity units per second.")
    return clean


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def default_settings(table_name: str) -> dict[str, Any]:
    """Per-table defaults an operator set (TableSetting), used where a job gives none."""
    setting = TableSetting.objects.filter(table_name=table_name).first()
    return {"rate_limit_wcu": setting.rate_limit_wcu} if setting and setting.rate_limit_wcu else {}


def job_create_from_queryset(
    *,
    queryset: Any,
    table_name: str,
    mapping_text: str = "",
    operation: str = Operation.PUT,
    description: str = "",
    created_by: Any = None,
    **job_settings: Any,
) -> Job:
    """A draft job from admin records, staged at once (records are read in this request).

    The mapping says which field feeds which attribute; empty means every field under its
    own name, with the primary key feeding a key attribute the model has no field for.
    """
    model = queryset.model
    key_schema = _key_schema(table_name)
    try:
        mapping = (
            querysets.parse_mapping(mapping_text, model)
            if mapping_text.strip()
            else querysets.default_mapping(model, key_schema)
        )
    except querysets.MappingError as exc:
        raise JobError(str(exc)) from None
    mapped = {parse_header(header)[0] for _, header in mapping}
    for key in key_schema.attributes:
        if key.name not in mapped:
            raise JobError(
                f"No field is mapped to the key attribute {key.name!r} ({key.type}) of {table_name!r}; "
                f"add a line such as `id -> {key.name}`."
            )
    label = model._meta.label
    with transaction.atomic():
        job = Job.objects.create(
            **new_job_fields(table_name, operation, key_schema, created_by, job_settings),
            source_kind=SourceKind.QUERYSET,
            source_name=label,
            source_detail=f"{description}\nmapping:\n{querysets.format_mapping(mapping)}".strip(),
        )
        rows = querysets.rows_from_queryset(queryset.order_by("pk").iterator(chunk_size=2000), mapping)
        staging.stage_items(job, rows, dynamodb_json=False)
        job.staged_at = timezone.now()
        job.save(update_fields=["staged_at"])
    job.refresh_from_db()
    return job


# --- reading the source ---------------------------------------------------------------


@contextmanager
def job_source_rows(job: Job) -> Iterator[tuple[Iterator[files.SourceRow], bool]]:
    """The job's source rows, streamed, and whether they are DynamoDB JSON already."""
    if job.source_kind == SourceKind.SQL:
        from bulkwrites.services import sql

        yield sql.rows_for(job.source_spec), False
        return
    if job.source_kind != SourceKind.FILE:
        raise JobError(f"jobs from {job.get_source_kind_display()} are staged when they are created")
    if not job.source_file:
        raise JobError("The job's source file is missing.")
    with job.source_file.open("rb") as stream:
        rows = files.read_rows(stream, job.source_format, max_bytes=settings.BULKWRITES["MAX_UPLOAD_BYTES"])
        yield rows, job.source_format in files.ROWS_ARE_DYNAMODB_JSON


def job_preview(job: Job, **kwargs: Any) -> staging.Preview:
    """Validate every row of the job's source; writes nothing to DynamoDB."""
    if job.staged_at is not None:
        return staging.preview_from_ledger(job)
    try:
        with job_source_rows(job) as (rows, dynamodb_json):
            return staging.preview_rows(
                rows,
                KeySchema.from_json(job.key_schema),
                operation=job.operation,
                dynamodb_json=dynamodb_json,
                **kwargs,
            )
    except files.SourceError as exc:
        raise JobError(str(exc)) from None


def job_stage(job: Job) -> bool:
    """Store the job's items if nobody has yet. False when another worker is staging it."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [0x6277, job.pk])
            if not cursor.fetchone()[0]:
                return False
        job.refresh_from_db(fields=["staged_at"])
        if job.staged_at is not None:
            return True
        try:
            with job_source_rows(job) as (rows, dynamodb_json):
                staging.stage_items(job, rows, dynamodb_json=dynamodb_json)
        except (files.SourceError, JobError) as exc:
            job.mark_failed("SourceUnreadable", str(exc))
            return False
        job.staged_at = timezone.now()
        job.save(update_fields=["staged_at"])
    return True


# --- controlling ----------------------------------------------------------------------


def job_start(*, job: Job) -> None:
    """Queue a draft job; workers are asked after the transaction commits."""
    with transaction.atomic():
        updated = Job.objects.filter(pk=job.pk, status=JobStatus.DRAFT).update(
            status=JobStatus.QUEUED, last_activity_at=timezone.now()
        )
        if not updated:
            raise JobError(f"Job {job.pk} is {_status(job)}; only a draft job can be started.")
        dispatch.enqueue_run(job.pk, copies=job.workers)
    job.refresh_from_db()


def job_cancel(*, job: Job) -> None:
    """Stop for good: unsent items stay pending; a running writer stops within a call."""
    updated = Job.objects.filter(
        pk=job.pk, status__in=(JobStatus.DRAFT, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)
    ).update(status=JobStatus.CANCELLED, finished_at=timezone.now())
    if not updated:
        raise JobError(f"Job {job.pk} is {_status(job)}; it cannot be cancelled.")
    job.refresh_from_db()


def job_set_rate(*, job: Job, wcu_per_second: float | None) -> None:
    """Change a job's write-capacity cap; running workers follow within about a second."""
    _checked_settings({"rate_limit_wcu": wcu_per_second})
    Job.objects.filter(pk=job.pk).update(rate_limit_wcu=wcu_per_second)
    ratelimit.set_rate_cap(dispatch.redis_connection(), dispatch.rate_scope(job.pk), wcu_per_second)
    job.refresh_from_db()


def job_pause(*, job: Job) -> None:
    updated = Job.objects.filter(pk=job.pk, status__in=JobStatus.active()).update(status=JobStatus.PAUSED)
    if not updated:
        raise JobError(f"Job {job.pk} is {_status(job)}; only a queued or running job can be paused.")
    job.refresh_from_db()


def job_resume(*, job: Job) -> None:
    """Run the pending items of a paused, failed or cancelled job again."""
    with transaction.atomic():
        updated = Job.objects.filter(
            pk=job.pk, status__in=(JobStatus.PAUSED, JobStatus.FAILED, JobStatus.CANCELLED)
        ).update(status=JobStatus.QUEUED, error_code="", error_message="", finished_at=None,
                 last_activity_at=timezone.now())  # fmt: skip
        if not updated:
            raise JobError(f"Job {job.pk} is {_status(job)}; only a paused, failed or cancelled job can resume.")
        dispatch.enqueue_run(job.pk, copies=job.workers)
    job.refresh_from_db()


def job_retry_failed(*, job: Job) -> int:
    """Send the items that failed at sending once more; their first outcome stays in history.

    Rows that could not be read or converted are not retried: the same input fails the same way.
    """
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status not in (JobStatus.COMPLETED_WITH_FAILURES, JobStatus.FAILED, JobStatus.CANCELLED):
            raise JobError(f"Job {job.pk} is {_status(locked)}; retry failed items once it has finished.")
        with connection.cursor() as cursor:
            cursor.execute(
                """
                UPDATE bulkwrites_item SET status = 'pending',
                    history = history || jsonb_build_array(jsonb_build_object(
                        'status', status, 'attempts', attempts, 'error_code', error_code,
                        'error_message', error_message, 'at', updated_at)),
                    error_code = '', error_message = '', updated_at = now()
                WHERE job_id = %s AND status = 'failed' AND payload IS NOT NULL AND error_code <> %s
                RETURNING position
                """,
                [job.pk, CODE_DUPLICATE_KEY],
            )
            positions = [row[0] for row in cursor.fetchall()]
        if not positions:
            raise JobError(f"Job {job.pk} has no failed items that can be sent again.")
        _reopen_slices(job, positions)
        Job.objects.filter(pk=job.pk).update(
            status=JobStatus.QUEUED,
            failed_items=locked.failed_items - len(positions),
            error_code="",
            error_message="",
            finished_at=None,
            last_activity_at=timezone.now(),
        )
        dispatch.enqueue_run(job.pk, copies=job.workers)
    job.refresh_from_db()
    return len(positions)


def _reopen_slices(job: Job, positions: list[int]) -> None:
    condition = Q()
    for position in positions:
        condition |= Q(first_position__lte=position, last_position__gte=position)
    Slice.objects.filter(condition, job=job).update(done=False, leased_by="", lease_expires_at=None)


def _status(job: Job) -> str:
    return Job.objects.filter(pk=job.pk).values_list("status", flat=True).first() or "gone"


# --- working (called by the RQ task) --------------------------------------------------


def job_work(job_id: int, *, worker: str) -> str:
    """One RQ job's share of the work: stage if needed, run a time slice, hand over."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.status not in JobStatus.active():
        return f"job {job_id}: nothing to do ({job.status if job else 'deleted'})"
    if job.staged_at is None:
        if not job_stage(job):
            return f"job {job_id}: not staged here"
        if job.workers > 1:
            dispatch.enqueue_run(job_id, copies=job.workers - 1)
    report = running.job_run(job_id, worker=worker)
    if report.stopped_by == "budget":
        dispatch.enqueue_run(job_id)
    return f"job {job_id}: {report.items} items in {report.slices} slices, stopped by {report.stopped_by or 'done'}"


def recover_stalled_jobs() -> list[int]:
    """Re-enqueue active jobs nobody is working on (killed worker, flushed Redis).

    A job counts as stalled when it made no progress for ``STALL_SECONDS`` and no slice of
    it is under a live lease. Only jobs of this worker's queue: several deployments (or a
    benchmark) may share one database with their own queues and endpoints. Duplicated RQ
    jobs are harmless: slices are claimed with leases.
    """
    stall = timedelta(seconds=settings.BULKWRITES["STALL_SECONDS"])
    now = timezone.now()
    recovered = []
    for job in Job.objects.stalled(older_than=stall).filter(queue=settings.BULKWRITES["QUEUE"]):
        if Slice.objects.filter(job=job, done=False, lease_expires_at__gt=now).exists():
            continue
        if job.staged_at is not None and running.finish_if_done(job.pk):
            continue
        touched = Job.objects.filter(pk=job.pk, last_activity_at=job.last_activity_at).update(last_activity_at=now)
        if touched:
            logger.warning("job %s stalled since %s; re-enqueued", job.pk, job.last_activity_at)
            dispatch.enqueue_run(job.pk, copies=job.workers)
            recovered.append(job.pk)
    return recovered
