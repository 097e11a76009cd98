"""From source rows to the ledger: validate-only previews, and staging items of a job.

Staging streams rows into PostgreSQL with ``COPY`` (never the whole source in memory),
applies the job's duplicate-key policy in SQL, and cuts the job into slices that workers
claim. Every source row becomes exactly one item, so the ledger accounts for every row:
``succeeded + failed + skipped == rows read``. A job from a file with the policy ``first`` or
``last`` is staged in committed chunks that its workers write meanwhile (:func:`stage_in_chunks`);
others in one transaction (:func:`stage_job`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, Max, OuterRef
from django.utils import timezone

from bulkwrites.conf import app_settings
from bulkwrites.dynamo.errors import CODE_DUPLICATE_KEY, CODE_INVALID_ROW, CODE_SUPERSEDED
from bulkwrites.dynamo.estimates import write_units
from bulkwrites.dynamo.items import KeySchema, PreparedItem, key_identity, prepare_item
from bulkwrites.dynamo.records import Record, RecordConverter
from bulkwrites.models import (
    DuplicatePolicy,
    Item,
    ItemPayload,
    ItemStatus,
    Job,
    JobStatus,
    Operation,
    Slice,
    SourceKind,
    payload_of,
)
from bulkwrites.sources.rows import RAW_LIMIT, SourceRow

logger = logging.getLogger(__name__)

COPY_CHUNK_ROWS = 5000


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
    job: Job, rows: Iterable[SourceRow], *, dynamodb_json: bool, progress: StagingProgress | None = None
) -> StagingResult:
    """Store the job's items from its source rows and mark it staged, in one transaction."""
    with transaction.atomic():
        result = stage_items(job, rows, dynamodb_json=dynamodb_json, progress=progress)
        job.staged_at = timezone.now()
        job.save(update_fields=["staged_at"])
    return result


def stage_items(
    job: Job, rows: Iterable[SourceRow], *, dynamodb_json: bool, progress: StagingProgress | None = None
) -> StagingResult:
    """Write one item per source row, then the duplicate policy, slices and counters.

    Runs in one transaction: a crash leaves no half-staged job, and staging can simply
    run again. ``progress`` hears of the rows read after each chunk.
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
        records = converter.convert(((row.position, row.values, row.error), row) for row in rows)
        # COPY in chunks: a source that reads from this same connection (a queryset's
        # server-side cursor) fetches between two COPYs, never during one.
        while chunk := list(islice(records, COPY_CHUNK_ROWS)):
            with Item.objects.copy_in() as copy:
                for record, row in chunk:
                    result.rows += 1
                    if record.error is None:
                        copy.write_row(
                            (job.pk, record.position, record.key_json, record.item_json, "", record.size,
                             record.wire_bytes, ItemStatus.PENDING, 0, "", "", "[]", now, record.key_hash)
                        )  # fmt: skip
                    else:
                        result.invalid += 1
                        copy.write_row(
                            (job.pk, record.position, record.key_json, None, _raw(row), 0, 0, ItemStatus.FAILED,
                             0, CODE_INVALID_ROW, record.error, "[]", now, record.key_hash)
                        )  # fmt: skip
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
        Job.objects.filter(pk=job.pk).update(
            total_items=result.rows,
            succeeded_items=0,
            failed_items=result.invalid + result.rejected_duplicates,
            skipped_items=result.superseded,
            last_activity_at=timezone.now(),
        )
    logger.info(
        "job %s staged: %s rows, %s invalid, %s superseded, %s rejected duplicates",
        job.pk, result.rows, result.invalid, result.superseded, result.rejected_duplicates,
    )  # fmt: skip
    return result


# --- staging while writing -------------------------------------------------------------------

# Sources read again row for row the same (positions included) when staging resumes after a crash:
# a stored file, or an S3 object read If-Match its ETag. A query or a table scan may come back in
# another order, so those are staged in one transaction, before any write.
REREADABLE_SOURCES = (SourceKind.FILE, SourceKind.S3)
# Policies decidable chunk by chunk; "reject" fails every copy of a key, which only the last row
# read can tell, so a job with it is staged whole before its first write.
CHUNKED_POLICIES = (DuplicatePolicy.FIRST, DuplicatePolicy.LAST)
KEYS_SEEN_MIN_BITS = 1 << 20
KEYS_SEEN_MAX_BITS = 1 << 28  # 32 MB: ~27 bits a row for 10M rows, ~4 % of rows looked up for nothing


def stages_while_writing(job: Job) -> bool:
    """Whether the job is staged in committed chunks that workers write while later rows are read."""
    return job.source_kind in REREADABLE_SOURCES and job.duplicate_policy in CHUNKED_POLICIES


class KeysSeen:
    """Which key hashes staging has met, as a bitmap: "maybe seen" or "certainly not".

    Only rows whose bit is already set are looked up in the ledger by the duplicate policy (a
    source without duplicates costs no SQL at all). A set of 10M Python ints would take ~600 MB;
    the bitmap takes at most 32 MB whatever the size.
    """

    def __init__(self, bits: int) -> None:
        size = KEYS_SEEN_MIN_BITS
        while size < bits and size < KEYS_SEEN_MAX_BITS:
            size <<= 1
        self._mask = size - 1
        self._bits = bytearray(size >> 3)

    @classmethod
    def for_source(cls, size_bytes: int | None) -> KeysSeen:
        # A row takes at least ~8 bytes of a file: 2 bits per byte is >= 16 bits a row.
        return cls(2 * (size_bytes or 0))

    def add(self, key_hash: int) -> bool:
        """Mark ``key_hash`` seen; whether it (or a hash sharing its bit) was seen before."""
        bit = key_hash & self._mask
        byte, flag = bit >> 3, 1 << (bit & 7)
        seen = self._bits[byte] & flag
        self._bits[byte] |= flag
        return bool(seen)


def stage_in_chunks(
    job: Job,
    rows: Iterable[SourceRow],
    *,
    dynamodb_json: bool,
    progress: StagingProgress | None = None,
    chunk_rows: int | None = None,
) -> StagingResult | None:
    """Stage the job chunk by chunk, each chunk committed with its slices so workers write it at once.

    Each chunk's items, payloads, duplicate decisions (:meth:`ItemQuerySet.apply_duplicate_policy_to_chunk`),
    slices and counters commit in one transaction: a crash loses at most the chunk in progress,
    and staging run again resumes after the last committed position (rows up to it are read
    and passed over, the source being read the same again). ``staged_at`` is set once every row
    is committed. Returns None, not staged, when the job stopped being active (paused,
    cancelled, failed): staging resumes with the job. A draft is staged too (the bench stages
    one without writers).
    """
    key_schema = KeySchema.from_json(job.key_schema)
    result = StagingResult()
    converter = RecordConverter(
        key_schema,
        delete=job.operation == Operation.DELETE,
        dynamodb_json=dynamodb_json,
        processes=app_settings().staging_processes,
    )
    code = CODE_SUPERSEDED
    keys_seen = KeysSeen.for_source(job.source_size)
    committed = Item.objects.filter(job=job).aggregate(last=Max("position"))["last"]
    if committed is None:
        with transaction.atomic():
            Slice.objects.filter(job=job).delete()
            Job.objects.filter(pk=job.pk).update(
                total_items=0, succeeded_items=0, failed_items=0, skipped_items=0, last_activity_at=timezone.now()
            )
    else:
        logger.info("job %s: staging resumes after position %s", job.pk, committed)
        valid = Item.objects.filter(job=job, key_hash__isnull=False).exclude(error_code=CODE_INVALID_ROW)
        for key_hash in valid.values_list("key_hash", flat=True).iterator(chunk_size=20_000):
            if key_hash is not None:
                keys_seen.add(key_hash)
    if progress is not None:
        progress.tick(force=True)
        rows = progress.counted(rows)
    if committed is not None:
        rows = (row for row in rows if row.position > committed)
    records = converter.convert(((row.position, row.values, row.error), row) for row in rows)
    while chunk := list(islice(records, chunk_rows or COPY_CHUNK_ROWS)):
        if Job.objects.status_of(job.pk) not in (JobStatus.DRAFT, *JobStatus.active()):
            logger.info("job %s: staging stopped (the job is no longer active)", job.pk)
            return None
        seen_before = [
            record.key_hash
            for record, _ in chunk
            if record.error is None and record.key_hash is not None and keys_seen.add(record.key_hash)
        ]
        _commit_chunk(job, chunk, seen_before, code=code, result=result)
        if progress is not None:
            progress.tick()
    if progress is not None:
        progress.tick(force=True)
    Job.objects.filter(pk=job.pk, staged_at__isnull=True).update(staged_at=timezone.now())
    logger.info(
        "job %s staged while writing: %s rows, %s invalid, %s superseded",
        job.pk, result.rows, result.invalid, result.superseded,
    )  # fmt: skip
    return result


def _commit_chunk(
    job: Job, chunk: list[tuple[Record, SourceRow]], seen_before: list[int], *, code: str, result: StagingResult
) -> None:
    now = timezone.now()
    first, last = chunk[0][0].position, chunk[-1][0].position
    invalid = 0
    with transaction.atomic():
        with Item.objects.copy_in() as copy:
            for record, row in chunk:
                if record.error is None:
                    copy.write_row(
                        (job.pk, record.position, record.key_json, record.item_json, "", record.size,
                         record.wire_bytes, ItemStatus.PENDING, 0, "", "", "[]", now, record.key_hash)
                    )  # fmt: skip
                else:
                    invalid += 1
                    copy.write_row(
                        (job.pk, record.position, record.key_json, None, _raw(row), 0, 0, ItemStatus.FAILED,
                         0, CODE_INVALID_ROW, record.error, "[]", now, record.key_hash)
                    )  # fmt: skip
        superseded, held = Item.objects.apply_duplicate_policy_to_chunk(
            job.pk, job.duplicate_policy, first=first, last=last, key_hashes=sorted(set(seen_before)), code=code
        )
        Slice.objects.cut_staged(job.pk, first=first, last=last, size=job.slice_size, held=held)
        # Last, so the job row is locked only for the commit: recorders update it on every flush.
        Job.objects.filter(pk=job.pk).update(
            total_items=F("total_items") + len(chunk),
            failed_items=F("failed_items") + invalid,
            skipped_items=F("skipped_items") + superseded,
            last_activity_at=now,
        )
    result.rows += len(chunk)
    result.invalid += invalid
    result.superseded += superseded


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
