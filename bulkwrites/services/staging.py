"""From source rows to the ledger: validate-only previews, and staging items of a job.

Staging streams rows into PostgreSQL with ``COPY`` (never the whole source in memory),
applies the job's duplicate-key policy in SQL, and cuts the job into slices that workers
claim. Every source row becomes exactly one item, so the ledger accounts for every row:
``succeeded + failed + skipped == rows read``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from django.db import transaction
from django.utils import timezone

from bulkwrites.conf import app_settings
from bulkwrites.dynamo.errors import CODE_DUPLICATE_KEY, CODE_INVALID_ROW, CODE_SUPERSEDED
from bulkwrites.dynamo.items import KeySchema, PreparedItem, key_identity, prepare_item
from bulkwrites.dynamo.records import RecordConverter
from bulkwrites.models import DuplicatePolicy, Item, ItemStatus, Job, Operation, Slice
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


@dataclass
class StagingResult:
    rows: int = 0
    invalid: int = 0
    superseded: int = 0
    rejected_duplicates: int = 0


def stage_job(job: Job, rows: Iterable[SourceRow], *, dynamodb_json: bool) -> StagingResult:
    """Store the job's items from its source rows and mark it staged, in one transaction."""
    with transaction.atomic():
        result = stage_items(job, rows, dynamodb_json=dynamodb_json)
        job.staged_at = timezone.now()
        job.save(update_fields=["staged_at"])
    return result


def stage_items(job: Job, rows: Iterable[SourceRow], *, dynamodb_json: bool) -> StagingResult:
    """Write one item per source row, then the duplicate policy, slices and counters.

    Runs in one transaction: a crash leaves no half-staged job, and staging can simply
    run again.
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
        Slice.objects.filter(job=job).delete()
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
                             record.wire_bytes, ItemStatus.PENDING, 0, "", "", "[]", now)
                        )  # fmt: skip
                    else:
                        result.invalid += 1
                        copy.write_row(
                            (job.pk, record.position, None, None, _raw(row), 0, 0, ItemStatus.FAILED, 0,
                             CODE_INVALID_ROW, record.error, "[]", now)
                        )  # fmt: skip
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


def preview_from_ledger(job: Job, *, sample_size: int = 10, max_problems: int = 1000) -> Preview:
    """The preview of a job whose items are already staged (records and query sources)."""
    preview = Preview(rows=job.total_items)
    invalid = job.items.filter(status=ItemStatus.FAILED, error_code=CODE_INVALID_ROW)
    preview.invalid = invalid.count()
    preview.valid = preview.rows - preview.invalid
    preview.duplicates = job.items.filter(error_code__in=(CODE_SUPERSEDED, CODE_DUPLICATE_KEY)).count()
    payloads = job.items.pending().order_by("position").values_list("payload", flat=True)[:sample_size]
    preview.samples = [payload for payload in payloads if payload is not None]
    problems = invalid.order_by("position").values_list("position", "error_message", "raw")[: max_problems + 1]
    preview.problems = [RowProblem(position, message, raw) for position, message, raw in problems[:max_problems]]
    preview.problems_truncated = len(problems) > max_problems
    return preview
