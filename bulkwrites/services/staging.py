"""From source rows to the ledger: validate-only previews, and staging items of a job.

Staging streams rows into PostgreSQL with ``COPY`` (never the whole source in memory),
applies the job's duplicate-key policy in SQL, and cuts the job into slices that workers
claim. Every source row becomes exactly one item, so the ledger accounts for every row:
``succeeded + failed + skipped == rows read``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import OuterRef
from django.utils import timezone

from bulkwrites.conf import app_settings
from bulkwrites.dynamo.errors import CODE_DUPLICATE_KEY, CODE_INVALID_ROW, CODE_SUPERSEDED
from bulkwrites.dynamo.estimates import write_units
from bulkwrites.dynamo.items import KeySchema, PreparedItem, key_identity, prepare_item
from bulkwrites.dynamo.records import RecordConverter, pulled_ahead
from bulkwrites.ledger_copy import CopyChunk, PendingRows, unsendable_row
from bulkwrites.models import DuplicatePolicy, Item, ItemPayload, ItemStatus, Job, Operation, Slice, payload_of
from bulkwrites.services.errors import JobError
from bulkwrites.sources.rows import RAW_LIMIT, SourceRow

logger = logging.getLogger(__name__)

COPY_CHUNK_ROWS = 5000
COPY_CHUNKS_AHEAD = 4  # converted chunks (RecordConverter.chunk_rows each) read ahead of the COPYs


@dataclass(frozen=True)
class RowProblem:
    position: int
    message: str
    raw: str = ""

    def describe(self) -> str:
        """One line for a terminal; reader errors already say where they are ("line 7: ...")."""
        if self.message.startswith(("row ", "line ", "element ")):
            return self.message
        return f"row {self.position}: {self.message}"


@dataclass
class Preview:
    """What a job would send, computed without writing anything anywhere."""

    rows: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0  # rows whose key an earlier row already had
    write_units: int = 0  # what the valid rows cost to write, one copy per key (estimates.write_units)
    samples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    problems_truncated: bool = False
    note: str = ""  # what the operator should know about how far the preview read

    @property
    def ok(self) -> bool:
        return self.invalid == 0 and self.rows > 0


def prepared_rows(
    rows: Iterable[SourceRow], key_schema: KeySchema, *, operation: str, dynamodb_json: bool
) -> Iterator[tuple[SourceRow, PreparedItem]]:
    delete = operation == Operation.DELETE
    for row in rows:
        if row.values is None:
            yield row, PreparedItem(row.position, error=row.error or "the row could not be read")
        else:
            yield row, prepare_item(row.position, row.values, key_schema, delete=delete, dynamodb_json=dynamodb_json)


def preview_rows(
    rows: Iterable[SourceRow],
    key_schema: KeySchema,
    *,
    operation: str = Operation.PUT,
    dynamodb_json: bool = False,
    sample_size: int = 10,
    max_problems: int = 1000,
) -> Preview:
    preview = Preview()
    seen: set[int] = set()
    delete = operation == Operation.DELETE
    for row, prepared in prepared_rows(rows, key_schema, operation=operation, dynamodb_json=dynamodb_json):
        preview.rows += 1
        if not prepared.is_valid:
            preview.invalid += 1
            if len(preview.problems) < max_problems:
                preview.problems.append(RowProblem(prepared.position, prepared.error or "", _raw(row)))
            else:
                preview.problems_truncated = True
            continue
        preview.valid += 1
        assert prepared.key is not None
        assert prepared.item is not None
        fingerprint = hash(key_identity(prepared.key))
        if fingerprint in seen:
            preview.duplicates += 1
        else:
            preview.write_units += write_units(prepared.size, delete=delete)
        seen.add(fingerprint)
        if len(preview.samples) < sample_size:
            preview.samples.append(prepared.item)
    return preview


def _raw(row: SourceRow) -> str:
    if row.raw:
        return row.raw[:RAW_LIMIT]
    if row.values is not None:
        return json.dumps(row.values, default=str, ensure_ascii=False)[:RAW_LIMIT]
    return ""


class StagingProgress:
    """How far staging got, told to the job page while the staging transaction is still open.

    Staging runs in one transaction (a crash leaves nothing half-staged), so nothing it writes
    is visible before it commits. Progress goes through a connection of its own, in autocommit,
    at most once every ``every_seconds``: rows read so far, and the total estimated from the
    bytes read so far against the source's size (when the source is a file read in order).
    One UPDATE of the job row per second: ``make bench`` shows no cost in staging's rows/s.

    The job row is only ever updated here before the staging transaction writes it (its
    counters, at the end), so the two connections never wait for each other.
    """

    def __init__(self, job_id: int, *, every_seconds: float = 1.0) -> None:
        self.job_id = job_id
        self.every_seconds = every_seconds
        self.rows_read = 0
        self._bytes_read: Callable[[], int] | None = None
        self._total_bytes: int | None = None
        self._started_at = timezone.now()
        self._last = float("-inf")
        self._connection: BaseDatabaseWrapper | None = None

    def track_bytes(self, bytes_read: Callable[[], int], total_bytes: int | None) -> None:
        """Estimate the total from ``bytes_read()`` (the source's position) against ``total_bytes``."""
        if total_bytes:
            self._bytes_read, self._total_bytes = bytes_read, total_bytes

    def counted[T](self, rows: Iterable[T]) -> Iterator[T]:
        """The rows, counted as the reader hands them over."""
        for row in rows:
            self.rows_read += 1
            yield row

    @property
    def estimate(self) -> int | None:
        if self._bytes_read is None or self._total_bytes is None:
            return None
        try:
            done = self._bytes_read()
        except (OSError, ValueError):  # the reader closed its stream: the count is final
            return self.rows_read
        if done <= 0:
            return None
        return max(self.rows_read, round(self.rows_read * self._total_bytes / done))

    def tick(self, *, force: bool = False) -> None:
        """Write the progress if ``every_seconds`` passed since the last write (or ``force``)."""
        now = time.monotonic()
        if not force and now - self._last < self.every_seconds:
            return
        self._last = now
        if self._connection is None:
            self._connection = connections.create_connection(DEFAULT_DB_ALIAS)
        try:
            Job.objects.record_staging_progress(
                self.job_id,
                started_at=self._started_at,
                rows_read=self.rows_read,
                rows_estimate=self.estimate,
                on=self._connection,
            )
        except DatabaseError:  # progress is a courtesy: staging goes on without it
            logger.warning("job %s: could not record staging progress", self.job_id, exc_info=True)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class StagingResult:
    rows: int = 0
    invalid: int = 0
    superseded: int = 0
    rejected_duplicates: int = 0


def stage_job(
    job: Job,
    rows: Iterable[SourceRow],
    *,
    dynamodb_json: bool,
    progress: StagingProgress | None = None,
    read_ahead: bool = False,
) -> StagingResult:
    """Store the job's items from its source rows and mark it staged, in one transaction."""
    with transaction.atomic():
        result = stage_items(job, rows, dynamodb_json=dynamodb_json, progress=progress, read_ahead=read_ahead)
        job.staged_at = timezone.now()
        job.save(update_fields=["staged_at"])
    return result


def stage_items(
    job: Job,
    rows: Iterable[SourceRow],
    *,
    dynamodb_json: bool,
    progress: StagingProgress | None = None,
    read_ahead: bool = False,
) -> StagingResult:
    """Write one item per source row, then the duplicate policy, slices and counters.

    Runs in one transaction: a crash leaves no half-staged job, and staging can simply
    run again. ``progress`` hears of the rows read after each chunk. ``read_ahead``: the rows
    are read and converted on a thread of their own while PostgreSQL takes the COPYs
    (``records.pulled_ahead``); only for a source that does not read through this process's
    database connection.
    """
    key_schema = KeySchema.from_json(job.key_schema)
    result = StagingResult()
    now = timezone.now()
    converter = RecordConverter(
        key_schema,
        delete=job.operation == Operation.DELETE,
        dynamodb_json=dynamodb_json,
        processes=app_settings().staging_processes,
    )
    with transaction.atomic():
        Item.objects.filter(job=job).delete()
        ItemPayload.objects.filter(job=job).delete()
        Slice.objects.filter(job=job).delete()
        if progress is not None:
            progress.tick(force=True)
            rows = progress.counted(rows)
        chunks = converter.convert_chunks(
            (((row.position, row.values, row.error), row) for row in rows),
            PendingRows(job.pk, ItemStatus.PENDING.value, now.isoformat()),
        )
        with pulled_ahead(chunks, depth=COPY_CHUNKS_AHEAD) if read_ahead else nullcontext(chunks) as chunks:
            # COPY a few chunks at a time: a source that reads from this same connection (a
            # queryset's server-side cursor) fetches between two COPYs, never during one.
            while batch := _chunks_of_rows(chunks, COPY_CHUNK_ROWS):
                with Item.objects.copy_in() as copy:
                    for packed, source_rows in batch:
                        result.rows += packed.rows
                        copy.write_text(packed.items, packed.payloads)
                        for index, record in packed.invalid:
                            result.invalid += 1
                            raw = _raw(source_rows[index])
                            copy.write_row(
                                unsendable_row(
                                    job.pk, record, raw, status=ItemStatus.FAILED, code=CODE_INVALID_ROW, updated_at=now
                                )
                            )
                if progress is not None:
                    progress.tick()
        if progress is not None:
            progress.tick(force=True)  # every row read: what is left is the duplicate policy and slices
        result.superseded, result.rejected_duplicates = Item.objects.apply_duplicate_policy(
            job.pk,
            job.duplicate_policy,
            code=CODE_DUPLICATE_KEY if job.duplicate_policy == DuplicatePolicy.REJECT else CODE_SUPERSEDED,
        )
        Slice.objects.create_for_job(job.pk, slice_size=job.slice_size)
        # The job must still be there, and not being deleted (Job.objects hides those): no item
        # may outlive its job (Item.job has no constraint to say so). This UPDATE locks the row
        # until commit, so a deletion marks the job only once these rows are there to reclaim.
        counted = Job.objects.filter(pk=job.pk).update(
            total_items=result.rows,
            succeeded_items=0,
            failed_items=result.invalid + result.rejected_duplicates,
            skipped_items=result.superseded,
            last_activity_at=timezone.now(),
        )
        if not counted:
            raise JobError(f"job {job.pk} was deleted while its items were being staged")
    logger.info(
        "job %s staged: %s rows, %s invalid, %s superseded, %s rejected duplicates",
        job.pk, result.rows, result.invalid, result.superseded, result.rejected_duplicates,
    )  # fmt: skip
    return result


type _Packed = tuple[CopyChunk, list[SourceRow]]


def _chunks_of_rows(chunks: Iterator[_Packed], rows: int) -> list[_Packed]:
    """The next chunks, together at least ``rows`` rows (fewer at the end of the source)."""
    taken: list[_Packed] = []
    count = 0
    while count < rows and (chunk := next(chunks, None)) is not None:
        taken.append(chunk)
        count += chunk[0].rows
    return taken


def preview_from_ledger(job: Job, *, sample_size: int = 10, max_problems: int = 1000) -> Preview:
    """The preview of a job whose items are already staged (records and query sources)."""
    preview = Preview(rows=job.total_items)
    invalid = job.items.filter(status=ItemStatus.FAILED, error_code=CODE_INVALID_ROW)
    preview.invalid = invalid.count()
    preview.valid = preview.rows - preview.invalid
    preview.duplicates = job.items.filter(error_code__in=(CODE_SUPERSEDED, CODE_DUPLICATE_KEY)).count()
    preview.write_units = job.items.pending().write_units(delete=job.operation == Operation.DELETE)
    payloads = (
        job.items.pending()
        .order_by("position")
        .annotate(sample=payload_of(OuterRef("job_id"), OuterRef("position")))
        .values_list("sample", flat=True)[:sample_size]
    )
    preview.samples = [payload for payload in payloads if payload is not None]
    problems = invalid.order_by("position").values_list("position", "error_message", "raw")[: max_problems + 1]
    preview.problems = [RowProblem(position, message, raw) for position, message, raw in problems[:max_problems]]
    preview.problems_truncated = len(problems) > max_problems
    return preview
