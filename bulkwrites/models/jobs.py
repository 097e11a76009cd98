"""Jobs: their lifecycle (:data:`JOB_TRANSITIONS`), settings and queries; per-table defaults."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, URLValidator
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from bulkwrites.dynamo.backoff import Backoff
from bulkwrites.dynamo.batching import MAX_REQUESTS_PER_CALL
from bulkwrites.dynamo.writer import WriterPolicy
from bulkwrites.models.fields import clean_field_values
from bulkwrites.models.lifecycle import _guarded_update

if TYPE_CHECKING:
    from bulkwrites.models.verification import Verification


# Calls in flight per worker. make bench, one worker on DynamoDB Local: 4 in flight reached
# 0.72x the threaded ceiling, 8 0.79x, 16 ~1.0x; a call's latency, not the worker's CPU, sets
# the pace, and the rate limiter, not concurrency, keeps a capped job within its budget.
DEFAULT_CONCURRENCY = 16


class JobStatus(models.TextChoices):
    DRAFT = "draft", "draft"
    """Created, items staged or being staged; nothing sent yet."""
    QUEUED = "queued", "queued"
    """Waiting for a worker."""
    RUNNING = "running", "running"
    """A worker is sending items."""
    PAUSED = "paused", "paused"
    """Stopped by an operator; pending items wait for resume."""
    SUCCEEDED = "succeeded", "succeeded"
    """Every item was written (or skipped as superseded)."""
    COMPLETED_WITH_FAILURES = "completed_with_failures", "completed with failures"
    """Every item has an outcome, some failed."""
    FAILED = "failed", "failed"
    """The job itself could not go on (missing table, bad credentials...); items stay pending."""
    CANCELLED = "cancelled", "cancelled"
    """Stopped for good by an operator; unsent items stay pending."""

    @classmethod
    def active(cls) -> tuple[str, ...]:
        """A worker may be working on the job (or is about to)."""
        return (cls.QUEUED, cls.RUNNING)

    @classmethod
    def finished(cls) -> tuple[str, ...]:
        return (cls.SUCCEEDED, cls.COMPLETED_WITH_FAILURES, cls.FAILED, cls.CANCELLED)


@dataclass(frozen=True)
class JobTransition:
    """One allowed change of a job's status.

    ``operator`` transitions are the buttons and CLI commands; ``offered_when`` is the extra
    condition under which one is worth offering (resuming a job with nothing pending is not).
    """

    name: str
    sources: frozenset[str]
    target: str
    operator: bool = False
    offered_when: Callable[[Job], bool] | None = None

    def allows(self, status: str) -> bool:
        return status in self.sources


_ACTIVE = frozenset(JobStatus.active())
JOB_TRANSITIONS: Mapping[str, JobTransition] = {
    t.name: t
    for t in (
        JobTransition("start", frozenset({JobStatus.DRAFT}), JobStatus.QUEUED, operator=True),
        JobTransition("claim", _ACTIVE, JobStatus.RUNNING),
        JobTransition("pause", _ACTIVE, JobStatus.PAUSED, operator=True),
        JobTransition(
            "resume",
            frozenset({JobStatus.PAUSED, JobStatus.FAILED, JobStatus.CANCELLED}),
            JobStatus.QUEUED,
            operator=True,
            offered_when=lambda job: _has_pending(job),
        ),
        JobTransition(
            "retry_failed",
            frozenset({JobStatus.COMPLETED_WITH_FAILURES, JobStatus.FAILED, JobStatus.CANCELLED}),
            JobStatus.QUEUED,
            operator=True,
            offered_when=lambda job: _has_failed(job),
        ),
        JobTransition(
            "cancel",
            frozenset({JobStatus.DRAFT, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED}),
            JobStatus.CANCELLED,
            operator=True,
        ),
        JobTransition(
            "repair",
            frozenset({JobStatus.SUCCEEDED, JobStatus.COMPLETED_WITH_FAILURES, JobStatus.FAILED, JobStatus.CANCELLED}),
            JobStatus.QUEUED,
            operator=True,
            offered_when=lambda job: _has_mismatches(job),
        ),
        JobTransition("fail", _ACTIVE, JobStatus.FAILED),
        JobTransition("succeed", _ACTIVE, JobStatus.SUCCEEDED),
        JobTransition("complete_with_failures", _ACTIVE, JobStatus.COMPLETED_WITH_FAILURES),
    )
}


def _has_pending(job: Job) -> bool:
    return job.pending_items > 0


def _has_failed(job: Job) -> bool:
    """Whether retrying would reopen anything (the counter first: most jobs have no failures)."""
    from bulkwrites.models.items import Item  # at call time: items imports this module

    return job.failed_items > 0 and Item.objects.has_retryable_failures(job.pk)


def _has_mismatches(job: Job) -> bool:
    """The job's latest finished verification found items missing or different, and none runs now."""
    from bulkwrites.models.verification import VerificationStatus  # at call time: it imports this module

    latest = job.latest_verification() if job.pk is not None else None
    return latest is not None and latest.status == VerificationStatus.FINISHED and latest.mismatched_items > 0


OPERATOR_ACTIONS: tuple[str, ...] = tuple(name for name, t in JOB_TRANSITIONS.items() if t.operator)


class Operation(models.TextChoices):
    PUT = "put", "put (insert or replace)"
    DELETE = "delete", "delete"


class SourceKind(models.TextChoices):
    FILE = "file", "uploaded file"
    QUERYSET = "queryset", "admin records"
    SQL = "sql", "PostgreSQL query"
    S3 = "s3", "S3 object"
    """A file read from S3 (``source_spec``: bucket, key, ETag, size), re-checked when staged."""
    DYNAMODB_TABLE = "dynamodb_table", "DynamoDB table"
    """Another table, read with parallel Scan segments (``source_spec``: table, region, segments, mapping)."""


class DuplicatePolicy(models.TextChoices):
    LAST = "last", "last row wins (earlier ones skipped)"
    FIRST = "first", "first row wins (later ones skipped)"
    REJECT = "reject", "reject duplicates (all copies fail)"


class JobQuerySet(models.QuerySet["Job"]):
    def active(self) -> JobQuerySet:
        return self.filter(status__in=JobStatus.active())

    def stalled(self, *, older_than: timedelta) -> JobQuerySet:
        """Active jobs nobody has made progress on lately (a killed worker, a lost RQ job)."""
        return self.active().filter(last_activity_at__lt=timezone.now() - older_than)

    def in_queue(self, queue: str) -> JobQuerySet:
        return self.filter(queue=queue)

    def status_of(self, job_id: int) -> str | None:
        """The job's status now (None once it is deleted): one primary-key lookup."""
        return self.filter(pk=job_id).values_list("status", flat=True).first()

    def record_staging_progress(
        self, job_id: int, *, started_at: Any, rows_read: int, rows_estimate: int | None, on: Any
    ) -> None:
        """Rows read so far by the staging of a job not yet staged, written through connection ``on``.

        ``on`` is not the staging transaction's connection: the page must see this before staging
        commits. Touches ``last_activity_at`` too, so a long staging never looks stalled.
        """
        with on.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {Job._meta.db_table}
                SET staging_started_at = %s, staging_rows_read = %s, staging_rows_estimate = %s,
                    last_activity_at = now()
                WHERE id = %s AND staged_at IS NULL
                """,
                [started_at, rows_read, rows_estimate, job_id],
            )

    def key_schemas(self) -> list[list[dict[str, str]]]:
        """The distinct key schemas jobs have: a handful, however many jobs."""
        return [schema for schema in self.order_by().values_list("key_schema", flat=True).distinct() if schema]

    def expired_drafts(self, *, older_than: timedelta) -> JobQuerySet:
        """Drafts nobody started or discarded within ``older_than`` of their creation."""
        return self.filter(status=JobStatus.DRAFT, created_at__lt=timezone.now() - older_than)

    def being_deleted(self) -> JobQuerySet:
        """Jobs deleted whose rows a worker has not reclaimed yet (``Job.all_objects`` only)."""
        return self.filter(deleting_since__isnull=False)


_JobManagerBase = models.Manager.from_queryset(JobQuerySet)


class JobManager(_JobManagerBase["Job"]):
    """``Job.objects``: every job but those being deleted, which are gone for everyone at once.

    A deleted job keeps its row until a worker has reclaimed its items in bounded batches
    (``services.deletion``); until then no page, API, CLI command, worker or sweeper sees it.
    """

    def get_queryset(self) -> JobQuerySet:
        return JobQuerySet(self.model, using=self._db).filter(deleting_since__isnull=True)


class Job(models.Model):
    table_name = models.CharField(max_length=255)
    region = models.CharField(max_length=64, blank=True)
    endpoint = models.CharField(max_length=255, blank=True, help_text="custom endpoint, if not AWS")
    operation = models.CharField(max_length=16, choices=Operation.choices, default=Operation.PUT)
    key_schema = models.JSONField(default=list, help_text="the table's key, from DescribeTable")

    source_kind = models.CharField(max_length=16, choices=SourceKind.choices, default=SourceKind.FILE)
    source_name = models.CharField(max_length=255, blank=True, help_text="file name, query name or model")
    source_format = models.CharField(max_length=16, blank=True)
    source_size = models.BigIntegerField(null=True, blank=True)
    source_sha256 = models.CharField(max_length=64, blank=True)
    source_file = models.FileField(upload_to="bulkwrites/sources/%Y/%m/", blank=True)
    source_detail = models.TextField(blank=True, help_text="query text, or model and filter")
    source_spec = models.JSONField(
        default=dict, blank=True, help_text="how to read the source again (SQL: connection name and query); no secrets"
    )
    source_encoding = models.CharField(
        max_length=32, default="utf-8", blank=True, help_text="text encoding the file is read with"
    )
    source_compression = models.CharField(max_length=16, blank=True, help_text="gzip or zstd, when compressed")
    source_etag = models.CharField(
        max_length=128, blank=True, help_text="S3 object: its ETag when the job was created (checked when staged)"
    )
    source_read_units = models.FloatField(
        default=0.0, help_text="read capacity consumed reading the source (DynamoDB table copies)"
    )

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=32, choices=JobStatus.choices, default=JobStatus.DRAFT)
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)

    # Counters kept by the statements that record outcomes, never by counting items.
    total_items = models.BigIntegerField(default=0)
    succeeded_items = models.BigIntegerField(default=0)
    failed_items = models.BigIntegerField(default=0)
    skipped_items = models.BigIntegerField(default=0)

    staged_at = models.DateTimeField(null=True, blank=True, help_text="when its items were stored")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)

    # Settings used for this job: the bounds and defaults every way of creating a job obeys
    # (forms, CLI, services: see check_settings). The writer's own defaults are the source.
    batch_size = models.PositiveSmallIntegerField(
        default=MAX_REQUESTS_PER_CALL,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_REQUESTS_PER_CALL)],
        help_text=f"requests per call (at most {MAX_REQUESTS_PER_CALL}, DynamoDB's limit)",
    )
    max_attempts = models.PositiveSmallIntegerField(
        default=WriterPolicy.max_attempts,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="calls without progress before an item is given up",
    )
    backoff_base = models.FloatField(
        default=Backoff.base, validators=[MinValueValidator(0.001), MaxValueValidator(60.0)], help_text="seconds"
    )
    backoff_cap = models.FloatField(
        default=Backoff.cap, validators=[MinValueValidator(0.01), MaxValueValidator(3600.0)], help_text="seconds"
    )
    concurrency = models.PositiveSmallIntegerField(
        default=DEFAULT_CONCURRENCY,
        validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text="calls in flight per worker",
    )
    workers = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(32)], help_text="workers on this job at once"
    )
    slice_size = models.PositiveIntegerField(
        default=1000,
        validators=[MinValueValidator(1), MaxValueValidator(100_000)],
        help_text="items a worker claims at once",
    )
    duplicate_policy = models.CharField(max_length=16, choices=DuplicatePolicy.choices, default=DuplicatePolicy.LAST)
    rate_limit_wcu = models.FloatField(
        "rate cap (WCU/s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1), MaxValueValidator(10_000_000.0)],
        help_text="write capacity units per second for the whole job; empty: no cap",
    )

    # Audit totals of the BatchWriteItem calls.
    calls = models.BigIntegerField(default=0)
    throttled_calls = models.BigIntegerField(default=0)
    unprocessed_returned = models.BigIntegerField(default=0)
    consumed_wcu = models.FloatField(default=0.0)

    verify_when_done = models.BooleanField(
        "verify when done",
        default=False,
        help_text="read every item back (a sample above 1,000,000) once the job has ended",
    )

    queue = models.CharField(max_length=100, blank=True, help_text="the RQ queue its workers serve")
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    webhook_url = models.URLField(
        "webhook URL",
        max_length=2000,
        blank=True,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="POSTed a JSON summary when the job ends or fails (http or https; see README)",
    )

    # Staging progress, written every few thousand rows by the staging process on a connection
    # of its own (its own transaction commits only at the end): what the job page shows meanwhile.
    staging_started_at = models.DateTimeField(null=True, blank=True)
    staging_rows_read = models.BigIntegerField(default=0, help_text="source rows read so far while staging")
    staging_rows_estimate = models.BigIntegerField(
        null=True, blank=True, help_text="rows the whole source holds, estimated from the bytes read so far"
    )
    deleting_since = models.DateTimeField(
        null=True, blank=True, help_text="deleted then: hidden everywhere while a worker reclaims its rows"
    )

    objects = JobManager()
    all_objects = JobQuerySet.as_manager()  # deleted jobs included: the reclaimer's view

    SETTINGS: ClassVar[tuple[str, ...]] = (
        "rate_limit_wcu",
        "batch_size",
        "max_attempts",
        "backoff_base",
        "backoff_cap",
        "concurrency",
        "workers",
        "slice_size",
        "duplicate_policy",
        "webhook_url",
        "verify_when_done",
    )

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "last_activity_at"], name="job_status_activity")]
        permissions = [
            ("run_job", "Can create, start, resume and retry bulk-write jobs"),
            ("cancel_job", "Can cancel or pause bulk-write jobs"),
            ("export_items", "Can export bulk-write items"),
            ("use_sql_sources", "Can create jobs from PostgreSQL query sources"),
        ]

    def __str__(self) -> str:
        return f"job {self.pk} → {self.table_name}"

    # --- settings -----------------------------------------------------------------------

    @classmethod
    def check_settings(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The given settings, converted and checked against the fields' validators.

        None means "not given". Raises ``ValidationError`` with one message per bad setting,
        naming it; ``TypeError`` for a name that is not a setting (a programming error).
        """
        unknown = set(values) - set(cls.SETTINGS)
        if unknown:
            raise TypeError(f"unknown job settings: {sorted(unknown)}")
        clean, errors = clean_field_values(cls, values)
        if errors:
            raise ValidationError(errors)
        return clean

    # --- what the counters say ----------------------------------------------------------

    @property
    def pending_items(self) -> int:
        return max(0, self.total_items - self.succeeded_items - self.failed_items - self.skipped_items)

    @property
    def done_items(self) -> int:
        return self.total_items - self.pending_items

    @property
    def progress_percent(self) -> float:
        if not self.total_items:
            return 100.0 if self.status in JobStatus.finished() else 0.0
        return round(100.0 * self.done_items / self.total_items, 1)

    @property
    def is_finished(self) -> bool:
        return self.status in JobStatus.finished()

    @property
    def webhook_host(self) -> str | None:
        """The webhook's host, to show: the whole URL may carry a secret in its path."""
        return urlsplit(self.webhook_url).hostname if self.webhook_url else None

    # --- the lifecycle: every status change goes through JOB_TRANSITIONS ----------------

    def can(self, transition: str) -> bool:
        """Whether the transition is allowed from the status this instance holds, and worth offering."""
        rule = JOB_TRANSITIONS[transition]
        return rule.allows(self.status) and (rule.offered_when is None or rule.offered_when(self))

    def available_actions(self) -> list[str]:
        """The operator actions (buttons, CLI commands) that make sense for this job now."""
        return [name for name in OPERATOR_ACTIONS if self.can(name)]

    def _transition(self, name: str, *, condition: Q | None = None, **fields: Any) -> bool:
        """One conditional UPDATE: move to the transition's target if the status allows it.

        Saves only ``status`` and ``fields``; False (and nothing changed) when the job has
        meanwhile moved to a status the transition does not leave from.
        """
        return _guarded_update(self, JOB_TRANSITIONS[name], condition, fields)

    def start(self, *, queue: str) -> bool:
        """Draft → queued, for the workers of ``queue``."""
        now = timezone.now()
        return self._transition("start", queue=queue, last_activity_at=now)

    def claim(self) -> bool:
        """A worker begins a time slice of work: queued (or running) → running."""
        now = timezone.now()
        return self._transition("claim", started_at=Coalesce(F("started_at"), now), last_activity_at=now)

    def pause(self) -> bool:
        return self._transition("pause")

    def resume(self, *, queue: str) -> bool:
        """Paused, failed or cancelled → queued: its pending items are sent again."""
        return self._transition(
            "resume", queue=queue, error_code="", error_message="", finished_at=None, last_activity_at=timezone.now()
        )

    def requeue_failed(self, *, queue: str, reopened: int) -> bool:
        """After ``reopened`` failed items were made pending again: back to the queue."""
        return self._transition(
            "retry_failed",
            queue=queue,
            failed_items=F("failed_items") - reopened,
            error_code="",
            error_message="",
            finished_at=None,
            last_activity_at=timezone.now(),
        )

    def cancel(self) -> bool:
        return self._transition("cancel", finished_at=timezone.now())

    def requeue_for_repair(self, *, queue: str, reopened: int) -> bool:
        """After ``reopened`` items a verification found missing or different were made pending again."""
        return self._transition(
            "repair",
            queue=queue,
            succeeded_items=F("succeeded_items") - reopened,
            error_code="",
            error_message="",
            finished_at=None,
            last_activity_at=timezone.now(),
        )

    def latest_verification(self) -> Verification | None:
        return self.verifications.order_by("-id").first()

    def fail(self, code: str, message: str) -> bool:
        """The job cannot go on (missing table, unreadable source...). Only from an active status:
        a job an operator cancelled or paused meanwhile keeps the operator's word."""
        now = timezone.now()
        return self._transition(
            "fail", error_code=code[:128], error_message=message, finished_at=now, last_activity_at=now
        )

    def finish(self) -> bool:
        """Every item has an outcome: succeeded, or completed with failures (decided in the UPDATE)."""
        now = timezone.now()
        return self._transition(
            "succeed", condition=Q(failed_items=0), finished_at=now, last_activity_at=now
        ) or self._transition(
            "complete_with_failures", condition=Q(failed_items__gt=0), finished_at=now, last_activity_at=now
        )


class TableSetting(models.Model):
    """Defaults for jobs that write to one table (a table that also serves production traffic)."""

    table_name = models.CharField(max_length=255, unique=True)
    rate_limit_wcu = models.FloatField(
        null=True, blank=True, help_text="default cap in write capacity units per second for new jobs"
    )

    class Meta:
        ordering = ["table_name"]

    def __str__(self) -> str:
        return self.table_name
