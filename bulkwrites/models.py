"""The ledger: jobs, their items, the slices workers claim, and the audit of each slice run.

State changes are small named methods and QuerySet methods that touch only their fields;
the rules that decide *when* to call them live in ``bulkwrites.services``.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

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
        return (cls.QUEUED, cls.RUNNING)

    @classmethod
    def finished(cls) -> tuple[str, ...]:
        return (cls.SUCCEEDED, cls.COMPLETED_WITH_FAILURES, cls.FAILED, cls.CANCELLED)


class Operation(models.TextChoices):
    PUT = "put", "put (insert or replace)"
    DELETE = "delete", "delete"


class SourceKind(models.TextChoices):
    FILE = "file", "uploaded file"
    QUERYSET = "queryset", "admin records"
    SQL = "sql", "PostgreSQL query"


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

    # Settings used for this job.
    batch_size = models.PositiveSmallIntegerField(default=25)
    max_attempts = models.PositiveSmallIntegerField(default=10)
    backoff_base = models.FloatField(default=0.05, help_text="seconds")
    backoff_cap = models.FloatField(default=10.0, help_text="seconds")
    concurrency = models.PositiveSmallIntegerField(default=DEFAULT_CONCURRENCY, help_text="calls in flight per worker")
    workers = models.PositiveSmallIntegerField(default=1, help_text="RQ jobs working on it at once")
    slice_size = models.PositiveIntegerField(default=1000, help_text="items a worker claims at once")
    duplicate_policy = models.CharField(max_length=16, choices=DuplicatePolicy.choices, default=DuplicatePolicy.LAST)
    rate_limit_wcu = models.FloatField(
        null=True, blank=True, help_text="write capacity units per second for the whole job; empty: no cap"
    )

    # Audit totals of the BatchWriteItem calls.
    calls = models.BigIntegerField(default=0)
    throttled_calls = models.BigIntegerField(default=0)
    unprocessed_returned = models.BigIntegerField(default=0)
    consumed_wcu = models.FloatField(default=0.0)

    queue = models.CharField(max_length=100, blank=True, help_text="the RQ queue its workers serve")
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    objects = JobQuerySet.as_manager()

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

    # --- transitions: each saves only what it touches ---------------------------------

    def mark_failed(self, code: str, message: str) -> None:
        self.status = JobStatus.FAILED
        self.error_code = code[:128]
        self.error_message = message
        self.finished_at = self.last_activity_at = timezone.now()
        self.save(update_fields=["status", "error_code", "error_message", "finished_at", "last_activity_at"])


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


class ItemStatus(models.TextChoices):
    PENDING = "pending", "pending"
    """Not written yet (or its outcome was not recorded before a crash: it is sent again)."""
    SUCCEEDED = "succeeded", "succeeded"
    """DynamoDB accepted the put or delete."""
    FAILED = "failed", "failed"
    """Invalid, rejected by DynamoDB, or given up after retries; see error_code/error_message."""
    SKIPPED = "skipped", "skipped"
    """Not sent: another row of the job has the same key and wins (duplicate policy)."""


class ItemQuerySet(models.QuerySet["Item"]):
    def pending(self) -> ItemQuerySet:
        return self.filter(status=ItemStatus.PENDING)

    def failed(self) -> ItemQuerySet:
        return self.filter(status=ItemStatus.FAILED)

    def in_positions(self, first: int, last: int) -> ItemQuerySet:
        return self.filter(position__gte=first, position__lte=last)


class Item(models.Model):
    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="items", db_index=False)
    position = models.BigIntegerField(help_text="row number in the source")
    key = models.JSONField(null=True, blank=True, help_text="DynamoDB key (DynamoDB JSON)")
    payload = models.JSONField(null=True, blank=True, help_text="the item as sent (DynamoDB JSON)")
    raw = models.TextField(blank=True, help_text="the source row as read, for rows that could not be used")
    size = models.IntegerField(default=0, help_text="DynamoDB item size in bytes")
    wire_bytes = models.IntegerField(default=0, help_text="bytes of the request in a call")
    status = models.CharField(max_length=16, choices=ItemStatus.choices, default=ItemStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    history = models.JSONField(default=list, blank=True, help_text="earlier outcomes, oldest first")
    updated_at = models.DateTimeField(default=timezone.now)

    objects = ItemQuerySet.as_manager()

    class Meta:
        ordering = ["job", "position"]
        constraints = [models.UniqueConstraint(fields=["job", "position"], name="item_job_position")]
        indexes = [
            models.Index(fields=["job", "status", "position"], name="item_job_status"),
            models.Index(fields=["job", "error_code"], name="item_job_failed_code", condition=Q(status="failed")),
        ]

    def __str__(self) -> str:
        return f"item {self.position} of job {self.job_id}"

    @property
    def key_text(self) -> str:
        """``pk=a, sk=1``, or a dash for a row that never had a key."""
        if not self.key:
            return "—"
        return ", ".join(f"{name}={next(iter(value.values()))}" for name, value in self.key.items())


class Slice(models.Model):
    """A range of a job's items that one worker claims at a time (lease + SKIP LOCKED)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="slices")
    first_position = models.BigIntegerField()
    last_position = models.BigIntegerField()
    done = models.BooleanField(default=False)
    leased_by = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "first_position"]
        indexes = [
            models.Index(fields=["job", "first_position"], name="slice_open", condition=Q(done=False)),
        ]

    def __str__(self) -> str:
        return f"slice {self.first_position}-{self.last_position} of job {self.job_id}"


class SliceRun(models.Model):
    """Audit of one worker's pass over one slice: the BatchWriteItem calls it made."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="runs")
    slice = models.ForeignKey(Slice, on_delete=models.CASCADE, related_name="runs")
    worker = models.CharField(max_length=255)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    items_sent = models.IntegerField(default=0)
    succeeded = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    calls = models.IntegerField(default=0)
    unprocessed = models.IntegerField(default=0)
    throttled_calls = models.IntegerField(default=0)
    consumed_wcu = models.FloatField(default=0.0)
    latency_ms = models.FloatField(default=0.0, help_text="total time waiting on DynamoDB")
    error_codes = models.JSONField(default=dict, blank=True)
    stopped_by = models.CharField(max_length=128, blank=True, help_text="why the pass ended early")

    class Meta:
        ordering = ["job", "started_at"]

    def __str__(self) -> str:
        return f"run of {self.slice} by {self.worker}"

    @property
    def duration(self) -> timedelta:
        return self.finished_at - self.started_at


class SqlSource(models.Model):
    """A saved PostgreSQL query (or table + columns) that jobs copy rows from.

    ``connection`` names a connection configured outside the database (a Django database
    alias, or ``BULKWRITES_SQL_<NAME>`` in the environment), so no password is ever stored.
    """

    name = models.CharField(max_length=120, unique=True)
    connection = models.CharField(max_length=64, help_text="connection name (see README: SQL sources)")
    query = models.TextField(blank=True, help_text="a single read-only SELECT; leave empty to pick a table")
    table = models.CharField(max_length=255, blank=True, help_text="schema.table, when no query is given")
    columns = models.TextField(blank=True, help_text="comma-separated columns of the table (empty: all)")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        verbose_name = "SQL source"
        permissions = [("manage_sources", "Can manage SQL sources")]

    def __str__(self) -> str:
        return self.name

    @property
    def column_list(self) -> list[str]:
        return [c.strip() for c in self.columns.split(",") if c.strip()]
