"""The ledger: jobs, their items, the slices workers claim, and the audit of each slice run.

The one home of three kinds of rules:

- **The job lifecycle**: :data:`JOB_TRANSITIONS` says which status each transition leaves
  from and goes to. Every status change is one of :class:`Job`'s transition methods, a
  conditional ``UPDATE ... WHERE status IN (...)`` that saves only its fields, so two
  operators (or an operator and a worker) racing on a job never undo each other; the
  operator actions a job offers are derived from the same table.
- **Job settings**: bounds and defaults are the fields' validators and defaults
  (:meth:`Job.check_settings`); forms, the CLI and the services all go through them.
- **The ledger's SQL**: statements over many rows (staging, outcomes, duplicate keys,
  retries) are methods of the QuerySets below, named after what they do.

The services decide *when* to call these; nothing else writes a status.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Protocol, Self
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, URLValidator
from django.db import OperationalError, connection, models, transaction
from django.db.models import Exists, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from bulkwrites import ledger_copy
from bulkwrites.dynamo import verify
from bulkwrites.dynamo.backoff import Backoff
from bulkwrites.dynamo.batching import MAX_REQUESTS_PER_CALL
from bulkwrites.dynamo.errors import CODE_DUPLICATE_KEY, CODE_INVALID_ROW
from bulkwrites.dynamo.writer import CallStats, Outcome, WriterPolicy
from bulkwrites.models.sql_sources import SqlSource as SqlSource
from bulkwrites.models.tokens import ApiToken as ApiToken
from bulkwrites.models.tokens import ApiTokenQuerySet as ApiTokenQuerySet

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
    return job.failed_items > 0 and Item.objects.has_retryable_failures(job.pk)


def _has_mismatches(job: Job) -> bool:
    """The job's latest finished verification found items missing or different, and none runs now."""
    latest = job.latest_verification() if job.pk is not None else None
    return latest is not None and latest.status == VerificationStatus.FINISHED and latest.mismatched_items > 0


OPERATOR_ACTIONS: tuple[str, ...] = tuple(name for name, t in JOB_TRANSITIONS.items() if t.operator)


class _Transition(Protocol):
    @property
    def sources(self) -> frozenset[str]: ...

    @property
    def target(self) -> str: ...


def _guarded_update(instance: models.Model, rule: _Transition, condition: Q | None, fields: dict[str, Any]) -> bool:
    """``UPDATE ... SET status = target, <fields> WHERE pk = ... AND status IN (sources)``.

    Saves only ``status`` and ``fields`` and refreshes them on ``instance``; False (and nothing
    changed) when the row has meanwhile moved to a status the transition does not leave from.
    """
    rows = type(instance)._default_manager.filter(pk=instance.pk, status__in=rule.sources)
    if condition is not None:
        rows = rows.filter(condition)
    if not rows.update(status=rule.target, **fields):
        return False
    instance.refresh_from_db(fields=["status", *fields])
    return True


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
        clean: dict[str, Any] = {}
        errors: list[str] = []
        for name, value in values.items():
            if value is None:
                continue
            field = cls._meta.get_field(name)
            assert isinstance(field, models.Field)
            try:
                clean[name] = field.clean(value, None)
            except ValidationError as exc:
                errors.extend(f"{field.verbose_name}: {message}" for message in exc.messages)
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


class ItemStatus(models.TextChoices):
    PENDING = "pending", "pending"
    """Not written yet (or its outcome was not recorded before a crash: it is sent again)."""
    SUCCEEDED = "succeeded", "succeeded"
    """DynamoDB accepted the put or delete."""
    FAILED = "failed", "failed"
    """Invalid, rejected by DynamoDB, or given up after retries; see error_code/error_message."""
    SKIPPED = "skipped", "skipped"
    """Not sent: another row of the job has the same key and wins (duplicate policy)."""


class EstimatedCountQuerySet[M: models.Model](models.QuerySet[M]):
    """A QuerySet whose admin pages count the way big tables need."""

    def estimated_count(self, *, exact_within_ms: int = 200) -> int:
        """COUNT(*) if PostgreSQL manages it within ``exact_within_ms``, else the planner's estimate.

        Counting a million-item job takes seconds; the page of 100 rows it is for takes milliseconds.
        """
        return self.count_or_estimate(exact_within_ms=exact_within_ms)[0]

    def count_or_estimate(self, *, exact_within_ms: int = 200) -> tuple[int, bool]:
        """(count, exact): :meth:`estimated_count`, saying whether it counted or estimated."""
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = %s", [exact_within_ms])
                return self.count(), True
        except OperationalError:
            sql, params = self.query.sql_with_params()
            with connection.cursor() as cursor:
                cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
                return int(cursor.fetchone()[0][0]["Plan"]["Plan Rows"]), False


# Failures that retrying cannot mend: the same input fails the same way. A row that could not be
# read or converted, and the copies of a key the duplicate policy "reject" refused.
NOT_RETRIED_CODES: tuple[str, ...] = (CODE_DUPLICATE_KEY, CODE_INVALID_ROW)


def payload_of(job_id: Any, position: Any, *, as_text: bool = False) -> Subquery[Any] | Cast:
    """The payload of the item at (``job_id``, ``position``), for ``annotate``: a primary-key probe.

    ``as_text``: the JSON text as stored (sent in a call's body as it is, never parsed).
    """
    payload = Subquery(
        # At most one row (the primary key): no ordering, which would join the job to each row.
        ItemPayload.objects.filter(job_id=job_id, position=position).order_by().values("payload")[:1],
        output_field=models.JSONField(),
    )
    return Cast(payload, models.TextField()) if as_text else payload


@contextmanager
def server_bound_cursor() -> Iterator[Any]:
    """A psycopg cursor on Django's connection that binds parameters on the server, in binary (``%b``).

    Django's own cursors bind on the client: psycopg quotes every element of an array in Python.
    Errors come out as Django's (``connection.wrap_database_errors``), so the callers' retries
    through an outage (``dependencies.DATABASE_DOWN``) see what they expect; the transaction is the
    connection's, as for any cursor. Not logged in ``connection.queries``.
    """
    import psycopg

    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


@contextmanager
def planner_without(cursor: Any, method: str) -> Iterator[None]:
    """One of PostgreSQL's plan methods off for the statements inside, in the caller's transaction.

    For the ledger's statements whose right plan never depends on statistics that can be stale
    (rows just copied, or an ANALYZE taken while no item was pending). Back to the default after
    them: a caller's outer transaction plans its next statements as usual.
    """
    if method not in ("enable_nestloop", "enable_seqscan"):
        raise ValueError(f"not a plan method switched off here: {method!r}")
    cursor.execute(f"SET LOCAL {method} = off")
    yield
    cursor.execute(f"SET LOCAL {method} = DEFAULT")


class ItemQuerySet(EstimatedCountQuerySet["Item"]):
    def pending(self) -> ItemQuerySet:
        return self.filter(status=ItemStatus.PENDING)

    def failed(self) -> ItemQuerySet:
        return self.filter(status=ItemStatus.FAILED)

    def in_positions(self, first: int, last: int) -> ItemQuerySet:
        return self.filter(position__gte=first, position__lte=last)

    def write_units(self, *, delete: bool) -> int:
        """What writing these items costs (dynamo.estimates.write_units): ceil(size / 1 KB) a put, 1 a delete."""
        if delete:
            return self.count()
        return int(self.aggregate(units=Coalesce(Sum((F("size") + 1023) / 1024), 0))["units"])

    # --- statements over many rows: the ledger's SQL lives here and nowhere else --------

    @contextmanager
    def copy_in(self) -> Iterator[ItemCopy]:
        """``COPY ... FROM STDIN`` into the items table, then into their payloads' (:class:`ItemPayload`).

        Items as :data:`ledger_copy.ITEM_COLUMNS`, as rows or as COPY text. One connection runs
        one COPY at a time: the payloads' text is kept (references to the caller's strings, not
        copies) and copied when the items' COPY has ended.
        """
        payloads: list[str] = []
        with connection.cursor() as cursor:
            columns = ", ".join(ledger_copy.ITEM_COLUMNS)
            with cursor.cursor.copy(f"COPY {Item._meta.db_table} ({columns}) FROM STDIN") as copy:
                yield ItemCopy(copy, payloads)
            if payloads:
                table, columns = ItemPayload._meta.db_table, ", ".join(ledger_copy.PAYLOAD_COLUMNS)
                with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for text in payloads:
                        copy.write(text)

    def with_payload(self) -> ItemQuerySet:
        """The items, each with its payload (``Item.payload``) fetched in the same statement."""
        return self.annotate(payload_json=payload_of(OuterRef("job_id"), OuterRef("position")))

    def apply_duplicate_policy(self, job_id: int, policy: str, *, code: str) -> tuple[int, int]:
        """Mark pending items of a job that share a key: (superseded, rejected).

        In SQL, so a million keys never sit in Python memory. ``last`` and ``first`` keep one
        row per key and mark the others ``skipped`` with ``code``; ``reject`` fails every copy.

        Rows are grouped by (``key_hash``, ``key``): sorting a million bigints is much cheaper
        than sorting a million jsonb keys, and the key itself still decides (a hash collision
        never merges two keys). Only rows whose hash occurs more than once are ranked: most jobs
        have few duplicates or none, and the window over every row sorted the keys themselves
        (1M rows: 1.7 s, 80 MB spilled to disk; the hashes alone, then the few rows that share
        one: 0.7 s). The statement runs inside the staging transaction, right after
        the COPY, so the planner's statistics have never seen these rows: it estimates one row
        and, given a nested loop, re-runs the whole window per item (measured: a 1M-row staging
        into an empty ledger did not finish in 8 minutes). A nested loop is never right here.
        """
        table = Item._meta.db_table
        # The key hashes that more than one pending item of the job has (params: job, status).
        shared = (
            f"shared AS (SELECT key_hash FROM {table} WHERE job_id = %s AND status = %s "
            "GROUP BY key_hash HAVING count(*) > 1)"
        )
        if policy == DuplicatePolicy.REJECT:
            sql = f"""
                WITH {shared}, ranked AS (
                    SELECT id, count(*) OVER (PARTITION BY key_hash, key) AS copies
                    FROM {table} WHERE job_id = %s AND status = %s AND key_hash IN (SELECT key_hash FROM shared)
                )
                UPDATE {table} AS i
                SET status = %s, error_code = %s,
                    error_message = 'the key appears ' || r.copies || ' times in the source (duplicate policy: reject)'
                FROM ranked AS r WHERE i.id = r.id AND i.job_id = %s AND r.copies > 1
            """
            with transaction.atomic(), connection.cursor() as cursor:
                with planner_without(cursor, "enable_nestloop"):
                    cursor.execute(
                        sql, [job_id, ItemStatus.PENDING, job_id, ItemStatus.PENDING, ItemStatus.FAILED, code, job_id]
                    )
                    rejected = cursor.rowcount  # before the planner's setting is put back
                return 0, rejected
        order, winner = ("DESC", "last") if policy == DuplicatePolicy.LAST else ("ASC", "first")
        sql = f"""
            WITH {shared}, ranked AS (
                SELECT id,
                       row_number() OVER (PARTITION BY key_hash, key ORDER BY position {order}) AS rank,
                       first_value(position) OVER (PARTITION BY key_hash, key ORDER BY position {order}) AS winner
                FROM {table} WHERE job_id = %s AND status = %s AND key_hash IN (SELECT key_hash FROM shared)
            )
            UPDATE {table} AS i
            SET status = %s, error_code = %s,
                error_message = 'superseded by row ' || r.winner || ' with the same key ({winner} row wins)'
            FROM ranked AS r WHERE i.id = r.id AND i.job_id = %s AND r.rank > 1
        """
        with transaction.atomic(), connection.cursor() as cursor:
            with planner_without(cursor, "enable_nestloop"):
                cursor.execute(
                    sql, [job_id, ItemStatus.PENDING, job_id, ItemStatus.PENDING, ItemStatus.SKIPPED, code, job_id]
                )
                superseded = cursor.rowcount  # before the planner's setting is put back
            return superseded, 0

    def record_outcomes(self, job_id: int, outcomes: Sequence[Outcome], stats: CallStats) -> None:
        """One statement: update the items still pending, and add what changed to the job's counters.

        The ``status = pending`` guard makes recording idempotent: an item re-sent after a
        crash, or recorded by two workers, is counted once.
        """
        if not outcomes and not stats.calls:
            return
        # Arrays, not a VALUES list of 5 x 250 placeholders: the statement text stays the same for
        # every flush, and psycopg no longer splits a thousand-placeholder query in Python on each
        # one (measured: ~65 µs of the worker's CPU per item, under the GIL). The arrays travel
        # bound on the server and in binary (psycopg's C dumpers: Django's client-side binding
        # quoted each element in Python, ~4 ms a flush of 250), and a failure's code and message
        # only for failures: most flushes are all successes, whose arrays are two of integers.
        ids: list[int] = []
        attempts: list[int] = []
        failed_ids: list[int] = []
        codes: list[str] = []
        messages: list[str] = []
        for o in outcomes:
            ids.append(o.ref)
            attempts.append(o.attempts)
            if not o.succeeded:
                failed_ids.append(o.ref)
                codes.append(o.error_code or "")
                messages.append(o.error_message or "")
        params = {
            "ids": ids, "attempts": attempts, "failed_ids": failed_ids, "codes": codes, "messages": messages,
            "succeeded": ItemStatus.SUCCEEDED.value, "failed": ItemStatus.FAILED.value,
            "pending": ItemStatus.PENDING.value, "calls": stats.calls, "throttled": stats.throttled_calls,
            "unprocessed": stats.unprocessed, "wcu": float(stats.consumed_wcu), "job": job_id,
        }  # fmt: skip
        # Items are found by primary key, one probe per outcome, whatever the statistics say. An
        # ANALYZE taken while a job had no pending items estimates `status = 'pending'` at one
        # row, and the planner then scanned the whole table once per outcome in a nested loop:
        # 4.4 s a flush, a job standing still for 20-35 s (bench sink runs, auto_explain).
        with transaction.atomic(), server_bound_cursor() as cursor, planner_without(cursor, "enable_seqscan"):
            cursor.execute(RECORD_OUTCOMES_SQL, params)

    def has_retryable_failures(self, job_id: int) -> bool:
        """Whether :meth:`reopen_failed` would reopen any item of the job.

        A few probes of the failed items' partial index, one per range of error codes between
        the codes never retried, each stopping at its first row: a job with a million invalid
        rows and nothing to retry answers as fast as one with none.
        """
        bounds: list[str | None] = [None, *sorted(NOT_RETRIED_CODES), None]
        # Its source row could be read: only an item with a payload can be sent again.
        has_payload = Exists(ItemPayload.objects.filter(job_id=OuterRef("job_id"), position=OuterRef("position")))
        probes = Q()
        for low, high in itertools.pairwise(bounds):
            between = Q()
            if low is not None:
                between &= Q(error_code__gt=low)
            if high is not None:
                between &= Q(error_code__lt=high)
            failed = Item.objects.filter(between, job_id=job_id, status=ItemStatus.FAILED).filter(has_payload)
            probes |= Q(Exists(failed))
        return Job.objects.filter(probes, pk=job_id).exists()

    def reopen_failed(self, job_id: int) -> list[int]:
        """Make a job's failed items that can be sent again pending; their positions.

        Each item's outcome so far is appended to its ``history``. Rows that could not be read
        (no payload) and items failed with one of :data:`NOT_RETRIED_CODES` are left as they are.
        """
        table = Item._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {table} SET status = %s,
                    history = history || jsonb_build_array(jsonb_build_object(
                        'status', status, 'attempts', attempts, 'error_code', error_code,
                        'error_message', error_message, 'at', updated_at)),
                    error_code = '', error_message = '', updated_at = now()
                WHERE job_id = %s AND status = %s AND error_code <> ALL(%s)
                    AND EXISTS (SELECT FROM {ItemPayload._meta.db_table} AS p
                                WHERE p.job_id = {table}.job_id AND p.position = {table}.position)
                RETURNING position
                """,
                [ItemStatus.PENDING, job_id, ItemStatus.FAILED, list(NOT_RETRIED_CODES)],
            )
            return [row[0] for row in cursor.fetchall()]

    def reopen_mismatched(self, job_id: int, *, verification_id: int) -> int:
        """Make pending again the written items a verification found missing or different; how many.

        Each item's outcome so far, with the verdict and its diff, is appended to its ``history``.
        """
        checks = ItemCheck._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {Item._meta.db_table} AS i SET status = %s,
                    history = i.history || jsonb_build_array(jsonb_build_object(
                        'status', i.status, 'attempts', i.attempts, 'error_code', i.error_code,
                        'error_message', i.error_message, 'at', i.updated_at,
                        'verification', c.verification_id, 'verdict', c.outcome, 'diff', c.diff)),
                    error_code = '', error_message = '', updated_at = now()
                FROM {checks} AS c
                WHERE c.verification_id = %s AND c.outcome IN (%s, %s) AND i.id = c.item_id
                    AND i.job_id = %s AND i.status = %s
                """,
                [ItemStatus.PENDING, verification_id, *CheckOutcome.mismatches(), job_id, ItemStatus.SUCCEEDED],
            )
            return int(cursor.rowcount)


class ItemCopy:
    """Items for :meth:`ItemQuerySet.copy_in`: rows in the order of ``ledger_copy.ITEM_COLUMNS``, or COPY text."""

    def __init__(self, copy: Any, payloads: list[str]) -> None:
        self._copy = copy
        self._payloads = payloads

    def write_row(self, row: Sequence[Any]) -> None:
        """One item that cannot be sent: no payload (only pending items have one, written as text)."""
        self._copy.write_row(row)

    def write_text(self, items: str, payloads: str) -> None:
        """Items, and their payloads, already in COPY's text format (``ledger_copy.PendingRows``)."""
        if items:
            self._copy.write(items)
        if payloads:
            self._payloads.append(payloads)


class Item(models.Model):
    id = models.BigAutoField(primary_key=True)
    # No constraint, as for ItemPayload: PostgreSQL checks a deferred one once per staged row at
    # commit, each check a lookup of the job row, which staging's progress updates (one a second,
    # from their own connection) leave with a longer chain of versions to walk every second. A
    # 10M-row staging spent over 7 minutes in its COMMIT; 1M rows with no progress updates ~6 s.
    # What the constraint guaranteed, that no item outlives its job, staging proves on the job
    # row at the end of its transaction (staging.stage_items) and deletion reclaims children
    # first (services/deletion.py).
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="items", db_index=False, db_constraint=False)
    position = models.BigIntegerField(help_text="row number in the source")
    key = models.JSONField(null=True, blank=True, help_text="DynamoDB key (DynamoDB JSON)")
    raw = models.TextField(blank=True, help_text="the source row as read, for rows that could not be used")
    size = models.IntegerField(default=0, help_text="DynamoDB item size in bytes")
    wire_bytes = models.IntegerField(default=0, help_text="bytes of the request in a call")
    status = models.CharField(max_length=16, choices=ItemStatus.choices, default=ItemStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    history = models.JSONField(default=list, blank=True, help_text="earlier outcomes, oldest first")
    updated_at = models.DateTimeField(default=timezone.now)
    key_hash = models.BigIntegerField(
        null=True, blank=True, help_text="hash of the key's identity (dynamo.items.key_hash), to find an item by key"
    )

    objects = ItemQuerySet.as_manager()

    class Meta:
        ordering = ["job", "position"]
        constraints = [models.UniqueConstraint(fields=["job", "position"], name="item_job_position")]
        indexes = [
            models.Index(fields=["job", "status", "position"], name="item_job_status"),
            models.Index(fields=["job", "error_code"], name="item_job_failed_code", condition=Q(status="failed")),
            # An item found by its key: one probe per job (selectors.search_items_by_key). Job first,
            # so a job's staging inserts only into its own part of the index (a global index on
            # key_hash took every page of it in turn: 1M rows staged 3.5 s slower, 0 s this way).
            models.Index(fields=["job", "key_hash"], name="item_job_key_hash", condition=Q(key_hash__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"item {self.position} of job {self.job_id}"

    @property
    def key_text(self) -> str:
        """``pk=a, sk=1``, or a dash for a row that never had a key."""
        if not self.key:
            return "—"
        return ", ".join(f"{name}={next(iter(value.values()))}" for name, value in self.key.items())

    @property
    def payload(self) -> Any:
        """The item as sent (DynamoDB JSON), None for a row that could not be read.

        From :meth:`ItemQuerySet.with_payload`'s annotation when the item came with it (exports:
        one statement for any number of items), else one primary-key lookup in :class:`ItemPayload`.
        """
        if hasattr(self, "payload_json"):
            return self.payload_json
        return (
            ItemPayload.objects.filter(job_id=self.job_id, position=self.position)
            .values_list("payload", flat=True)
            .first()
        )


class ItemPayload(models.Model):
    """An item as sent (DynamoDB JSON), kept apart from its :class:`Item`: written once by staging.

    Recording an outcome rewrites the item's row (PostgreSQL writes a new version of a row on
    every UPDATE, and ``status`` is indexed, so never in place): with the ~1 KB payload in it,
    each outcome wrote the payload again, and the ledger recorded ~28,000 outcomes/s; apart, the
    row rewritten is ~150 bytes (bench/ledger.py, README "Performance"). The payload is read
    to send (running), to compare (verifying), to preview and to export, always by
    (job, position), the primary key. Rows that could not be read have none.
    """

    pk = models.CompositePrimaryKey("job_id", "position")
    # No constraint: its check would cost every staged row a lookup of the job; the rows go with
    # their job (Django's cascade, one DELETE ... WHERE job_id) and with a re-staging.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False)
    position = models.BigIntegerField(help_text="the item's row number in the source")
    payload = models.JSONField(help_text="the item as sent (DynamoDB JSON)")

    class Meta:
        ordering = ["job", "position"]

    def __str__(self) -> str:
        return f"payload of item {self.position} of job {self.job_id}"


# ItemQuerySet.record_outcomes: ids and attempts, one per outcome; failed ids, codes and messages,
# one per failure; the item statuses; the calls' stats; the job.
RECORD_OUTCOMES_SQL = f"""
    WITH v AS (
        SELECT u.id, u.attempts, coalesce(f.code, '') AS code, coalesce(f.message, '') AS message,
               CASE WHEN f.id IS NULL THEN %(succeeded)b ELSE %(failed)b END AS status
        FROM unnest(%(ids)b::bigint[], %(attempts)b::int[]) AS u(id, attempts)
        LEFT JOIN unnest(%(failed_ids)b::bigint[], %(codes)b::text[], %(messages)b::text[])
            AS f(id, code, message) ON f.id = u.id
    ),
    changed AS (
        UPDATE {Item._meta.db_table} AS i
        SET status = v.status, attempts = i.attempts + v.attempts, error_code = v.code,
            error_message = v.message, updated_at = now()
        FROM v WHERE i.id = v.id AND i.status = %(pending)b
        RETURNING i.status
    )
    UPDATE {Job._meta.db_table} SET
        succeeded_items = succeeded_items + (SELECT count(*) FROM changed WHERE status = %(succeeded)b),
        failed_items = failed_items + (SELECT count(*) FROM changed WHERE status = %(failed)b),
        calls = calls + %(calls)b, throttled_calls = throttled_calls + %(throttled)b,
        unprocessed_returned = unprocessed_returned + %(unprocessed)b, consumed_wcu = consumed_wcu + %(wcu)b,
        last_activity_at = now()
    WHERE id = %(job)b
"""


class LeasedRangeQuerySet[R: LeasedRange](models.QuerySet[R]):
    """Ranges of positions workers claim one at a time with a lease (``SELECT ... FOR UPDATE SKIP LOCKED``).

    The same machinery for a job's slices (owner ``job_id``) and a verification's
    (``verification_id``): ``owner_field`` names the owner's column.
    """

    owner_field: ClassVar[str]

    def _of(self, owner_id: int) -> Self:
        return self.filter(**{self.owner_field: owner_id})

    def open(self) -> Self:
        return self.filter(done=False)

    def under_live_lease(self) -> Self:
        return self.open().filter(lease_expires_at__gt=timezone.now())

    def claim(self, owner_id: int, *, worker: str, lease: timedelta) -> R | None:
        """Lease the owner's next open range nobody holds (or whose holder's lease ran out)."""
        now = timezone.now()
        with transaction.atomic():
            leased = (
                self.select_for_update(skip_locked=True)
                ._of(owner_id)
                .filter(done=False)
                .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
                .order_by("first_position")
                .first()
            )
            if leased is None:
                return None
            leased.leased_by = worker
            leased.lease_expires_at = now + lease
            leased.save(update_fields=["leased_by", "lease_expires_at"])
        return leased

    def renew(self, owner_id: int, *, worker: str, lease: timedelta) -> int:
        return self._of(owner_id).filter(leased_by=worker, done=False).update(lease_expires_at=timezone.now() + lease)

    def release(self, owner_id: int, *, worker: str) -> int:
        """Hand back the open ranges a worker holds (stopped, or claimed ahead and never started)."""
        return self._of(owner_id).filter(leased_by=worker, done=False).update(leased_by="", lease_expires_at=None)

    def close(self, range_id: int, *, done: bool) -> None:
        """A pass over the range ended: done if every item got an outcome, else handed back."""
        self.filter(pk=range_id).update(done=done, leased_by="", lease_expires_at=None)

    def cut(self, owner_id: int, *, first: int, last: int, size: int) -> None:
        """Cut positions ``first..last`` into open ranges of ``size`` (one INSERT ... SELECT)."""
        if last < first:
            return
        table = self.model._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {table} ({self.owner_field}, first_position, last_position, done, leased_by)
                SELECT %s, s, s + %s - 1, false, '' FROM generate_series(%s::bigint, %s::bigint, %s::bigint) AS s
                """,
                [owner_id, size, first, last, size],
            )


class LeasedRange(models.Model):
    """A range of positions one worker works on at a time, under a lease."""

    first_position = models.BigIntegerField()
    last_position = models.BigIntegerField()
    done = models.BooleanField(default=False)
    leased_by = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class SliceQuerySet(LeasedRangeQuerySet["Slice"]):
    owner_field = "job_id"

    def create_for_job(self, job_id: int, *, slice_size: int) -> None:
        """Cut the job's positions into slices of ``slice_size``."""
        bounds = Item.objects.filter(job_id=job_id).aggregate(lo=models.Min("position"), hi=models.Max("position"))
        if bounds["lo"] is not None:
            self.cut(job_id, first=bounds["lo"], last=bounds["hi"], size=slice_size)

    def reopen_positions(self, job_id: int, positions: Sequence[int]) -> None:
        """Open again the slices holding these positions (their items are pending again)."""
        condition = Q()
        for position in positions:
            condition |= Q(first_position__lte=position, last_position__gte=position)
        self.filter(condition, job_id=job_id).update(done=False, leased_by="", lease_expires_at=None)

    def reopen_with_pending(self, job_id: int) -> int:
        """Open again every slice of the job that holds a pending item (one statement, any number of items)."""
        pending = Item.objects.filter(
            job_id=job_id,
            status=ItemStatus.PENDING,
            position__gte=models.OuterRef("first_position"),
            position__lte=models.OuterRef("last_position"),
        )
        return (
            self.filter(job_id=job_id, done=True)
            .filter(models.Exists(pending))
            .update(done=False, leased_by="", lease_expires_at=None)
        )


class Slice(LeasedRange):
    """A range of a job's items that one worker claims at a time (lease + SKIP LOCKED)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="slices")

    objects = SliceQuerySet.as_manager()

    class Meta:
        ordering = ["job", "first_position"]
        indexes = [
            models.Index(fields=["job", "first_position"], name="slice_open", condition=Q(done=False)),
        ]

    def __str__(self) -> str:
        return f"slice {self.first_position}-{self.last_position} of job {self.job_id}"


@dataclass(frozen=True)
class ThroughputBucket:
    """What the passes of a job's workers did within one time bucket (shares of passes that straddle it)."""

    number: int  # the bucket's index since the start: it covers [number x width, (number + 1) x width) seconds
    items: float  # items given an outcome
    consumed_wcu: float
    calls: float
    throttled_calls: float


class SliceRunQuerySet(models.QuerySet["SliceRun"]):
    def throughput(self, job_id: int, *, since: Any, bucket_seconds: float) -> list[ThroughputBucket]:
        """The job's passes summed per ``bucket_seconds`` since ``since``, in order; empty buckets left out.

        A pass's items, units and calls are spread evenly over its own time span: a slice a capped
        job writes over a minute shows as the rate it ran at, not as a spike when it ended.
        """
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                WITH runs AS (
                    SELECT extract(epoch FROM started_at - %(since)s) AS s,
                           greatest(extract(epoch FROM finished_at - %(since)s),
                                    extract(epoch FROM started_at - %(since)s) + 0.001) AS e,
                           succeeded + failed AS items, consumed_wcu, calls, throttled_calls
                    FROM {SliceRun._meta.db_table} WHERE job_id = %(job)s
                )
                SELECT b, sum(items * w), sum(consumed_wcu * w), sum(calls * w), sum(throttled_calls * w)
                FROM runs
                CROSS JOIN LATERAL generate_series(
                    floor(s / %(width)s)::int, floor((e - 0.000001) / %(width)s)::int) AS b
                CROSS JOIN LATERAL (
                    SELECT (least(e, (b + 1) * %(width)s) - greatest(s, b * %(width)s)) / (e - s) AS w
                ) AS share
                GROUP BY b ORDER BY b
                """,
                {"since": since, "job": job_id, "width": bucket_seconds},
            )
            return [
                ThroughputBucket(int(n), float(items), float(wcu), float(calls), float(throttled))
                for n, items, wcu, calls, throttled in cursor.fetchall()
            ]


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

    objects = SliceRunQuerySet.as_manager()

    class Meta:
        ordering = ["job", "started_at"]

    def __str__(self) -> str:
        return f"run of {self.slice} by {self.worker}"

    @property
    def duration(self) -> timedelta:
        return self.finished_at - self.started_at


# --- read-back verification -------------------------------------------------------------


class VerificationStatus(models.TextChoices):
    DRAFT = "draft", "draft"
    """Waiting: for its job to end (automatic checks, re-checks after a repair), or to be started."""
    QUEUED = "queued", "queued"
    """Waiting for a worker."""
    RUNNING = "running", "running"
    """A worker is reading items back."""
    FINISHED = "finished", "finished"
    """Every chosen item has a verdict (``errored_items`` could not be read: see their error)."""
    FAILED = "failed", "failed"
    """Could not go on (missing table, access denied...); unchecked items stay pending; resume once fixed."""
    CANCELLED = "cancelled", "cancelled"
    """Stopped by an operator; unchecked items stay pending."""

    @classmethod
    def active(cls) -> tuple[str, ...]:
        return (cls.QUEUED, cls.RUNNING)


@dataclass(frozen=True)
class VerificationTransition:
    name: str
    sources: frozenset[str]
    target: str


_VERIFYING = frozenset(VerificationStatus.active())
VERIFICATION_TRANSITIONS: Mapping[str, VerificationTransition] = {
    t.name: t
    for t in (
        VerificationTransition("start", frozenset({VerificationStatus.DRAFT}), VerificationStatus.QUEUED),
        VerificationTransition("claim", _VERIFYING, VerificationStatus.RUNNING),
        VerificationTransition("finish", _VERIFYING, VerificationStatus.FINISHED),
        VerificationTransition("fail", _VERIFYING, VerificationStatus.FAILED),
        VerificationTransition(
            "resume", frozenset({VerificationStatus.FAILED, VerificationStatus.CANCELLED}), VerificationStatus.QUEUED
        ),
        VerificationTransition(
            "cancel",
            frozenset({VerificationStatus.DRAFT, VerificationStatus.QUEUED, VerificationStatus.RUNNING}),
            VerificationStatus.CANCELLED,
        ),
    )
}


class CheckOutcome(models.TextChoices):
    """The verdict on one item read back (the values are ``bulkwrites.dynamo.verify``'s)."""

    PENDING = "pending", "pending"
    """Not read back yet."""
    VERIFIED = verify.VERIFIED, "verified"
    """The table holds the item as written (for a delete: no item under the key)."""
    MISSING = verify.MISSING, "missing"
    """No item under the key."""
    DIFFERENT = verify.DIFFERENT, "different"
    """An item under the key, not as written (for a delete: an item is there); ``diff`` says how."""
    ERROR = verify.ERROR, "error"
    """Could not be read (gave up after retries, or DynamoDB refused the key); ``error_message`` says why."""

    @classmethod
    def mismatches(cls) -> tuple[str, ...]:
        return (cls.MISSING, cls.DIFFERENT)


class VerificationQuerySet(models.QuerySet["Verification"]):
    def active(self) -> VerificationQuerySet:
        return self.filter(status__in=VerificationStatus.active())

    def stalled(self, *, older_than: timedelta) -> VerificationQuerySet:
        return self.active().filter(last_activity_at__lt=timezone.now() - older_than)

    def due(self) -> VerificationQuerySet:
        """Drafts waiting for their job's end, whose job has ended with items written."""
        return self.filter(
            status=VerificationStatus.DRAFT,
            start_when_job_ends=True,
            job__status__in=(JobStatus.SUCCEEDED, JobStatus.COMPLETED_WITH_FAILURES),
        )

    def waiting_for_job(self, job_id: int) -> VerificationQuerySet:
        return self.filter(job_id=job_id, status=VerificationStatus.DRAFT, start_when_job_ends=True)

    def status_of(self, verification_id: int) -> str | None:
        return self.filter(pk=verification_id).values_list("status", flat=True).first()


# Verify every item of a job up to this many; above it, a random sample (unless asked otherwise).
# Reading back costs about as much as writing (1 RCU per 4 KB, strongly consistent); a sample of
# 100,000 that finds nothing wrong says, with 95 % confidence, that fewer than 3 in 100,000 items
# are wrong (the "rule of three": 3 / n).
FULL_VERIFICATION_MAX_ITEMS = 1_000_000
DEFAULT_SAMPLE_SIZE = 100_000


class Verification(models.Model):
    """Reading a job's items back from the table and judging each against what the job wrote."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="verifications")
    status = models.CharField(max_length=16, choices=VerificationStatus.choices, default=VerificationStatus.DRAFT)
    recheck_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="a repair's re-check: the items this verification found missing or different",
    )
    start_when_job_ends = models.BooleanField(default=False)

    # What to check: the default (None, None) is every written item up to
    # FULL_VERIFICATION_MAX_ITEMS, a sample of DEFAULT_SAMPLE_SIZE above.
    sample_fraction = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(1e-9), MaxValueValidator(1.0)], help_text="0 < f ≤ 1"
    )
    sample_size = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    consistent_read = models.BooleanField(default=True, help_text="strongly consistent reads (twice the read units)")
    rate_limit_rcu = models.FloatField(
        "rate cap (RCU/s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1), MaxValueValidator(10_000_000.0)],
        help_text="read capacity units per second for the whole verification; empty: no cap",
    )
    concurrency = models.PositiveSmallIntegerField(
        default=DEFAULT_CONCURRENCY, validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    slice_size = models.PositiveIntegerField(default=1000, validators=[MinValueValidator(1)])

    # Set when its items are chosen (staged).
    eligible_items = models.BigIntegerField(default=0, help_text="written items a full verification checks")
    total_items = models.BigIntegerField(default=0, help_text="items this verification checks")
    sampled = models.BooleanField(default=False)

    verified_items = models.BigIntegerField(default=0)
    missing_items = models.BigIntegerField(default=0)
    different_items = models.BigIntegerField(default=0)
    errored_items = models.BigIntegerField(default=0)

    calls = models.BigIntegerField(default=0)
    throttled_calls = models.BigIntegerField(default=0)
    unprocessed_returned = models.BigIntegerField(default=0)
    consumed_rcu = models.FloatField(default=0.0)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    staged_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    queue = models.CharField(max_length=100, blank=True)

    objects = VerificationQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "last_activity_at"], name="verification_status_activity")]

    def __str__(self) -> str:
        return f"verification {self.pk} of job {self.job_id}"

    @property
    def checked_items(self) -> int:
        return self.verified_items + self.missing_items + self.different_items + self.errored_items

    @property
    def pending_items(self) -> int:
        return max(0, self.total_items - self.checked_items)

    @property
    def mismatched_items(self) -> int:
        return self.missing_items + self.different_items

    @property
    def is_active(self) -> bool:
        return self.status in VerificationStatus.active()

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()

    def sample_size_for(self, written: int) -> int | None:
        """How many of ``written`` items to check at random; None: all of them."""
        if self.sample_fraction is not None:
            wanted = math.ceil(self.sample_fraction * written)
        elif self.sample_size is not None:
            wanted = self.sample_size
        elif written <= FULL_VERIFICATION_MAX_ITEMS:
            return None
        else:
            wanted = DEFAULT_SAMPLE_SIZE
        return None if wanted >= written else wanted

    def scope(self) -> str:
        """What it checks, in words."""
        if self.recheck_of_id:
            return f"re-check of verification {self.recheck_of_id}'s mismatches"
        if self.sample_fraction is not None:
            return f"a random {self.sample_fraction:.4g} of the written items"
        if self.sample_size is not None:
            return f"a random {self.sample_size:,} of the written items"
        return f"every written item (a sample of {DEFAULT_SAMPLE_SIZE:,} above {FULL_VERIFICATION_MAX_ITEMS:,})"

    # --- the lifecycle: every status change goes through VERIFICATION_TRANSITIONS ---------

    def _transition(self, name: str, *, condition: Q | None = None, **fields: Any) -> bool:
        return _guarded_update(self, VERIFICATION_TRANSITIONS[name], condition, fields)

    def start(self, *, queue: str) -> bool:
        return self._transition("start", queue=queue, last_activity_at=timezone.now())

    def claim(self) -> bool:
        now = timezone.now()
        return self._transition("claim", started_at=Coalesce(F("started_at"), now), last_activity_at=now)

    def finish(self) -> bool:
        now = timezone.now()
        return self._transition("finish", finished_at=now, last_activity_at=now)

    def fail(self, code: str, message: str) -> bool:
        now = timezone.now()
        return self._transition(
            "fail", error_code=code[:128], error_message=message, finished_at=now, last_activity_at=now
        )

    def resume(self, *, queue: str) -> bool:
        return self._transition(
            "resume", queue=queue, error_code="", error_message="", finished_at=None, last_activity_at=timezone.now()
        )

    def cancel(self) -> bool:
        return self._transition("cancel", finished_at=timezone.now())


class ItemCheckQuerySet(EstimatedCountQuerySet["ItemCheck"]):
    def pending(self) -> ItemCheckQuerySet:
        return self.filter(outcome=CheckOutcome.PENDING)

    def mismatched(self) -> ItemCheckQuerySet:
        return self.filter(outcome__in=CheckOutcome.mismatches())

    def in_positions(self, first: int, last: int) -> ItemCheckQuerySet:
        return self.filter(position__gte=first, position__lte=last)

    # --- statements over many rows ----------------------------------------------------------

    def stage(self, verification: Verification, *, sample_size: int | None) -> int:
        """Choose the items to check and record them: one row each, numbered 1..n.

        Written items are those with the status ``succeeded`` (a skipped item's key is checked
        through the item that superseded it). ``sample_size`` None: all of them; else that many
        chosen at random, once: a restarted verification checks the same ones.
        """
        sample = "" if sample_size is None else "ORDER BY random() LIMIT %s"
        params: list[Any] = [verification.job_id, ItemStatus.SUCCEEDED]
        if sample_size is not None:
            params.append(sample_size)
        return self._insert_checks(
            verification.pk,
            f"SELECT id, position FROM {Item._meta.db_table} WHERE job_id = %s AND status = %s {sample}",
            params,
        )

    def stage_recheck(self, verification: Verification, *, of: int) -> int:
        """The items verification ``of`` found missing or different (and that are written again)."""
        sql = f"""
            SELECT i.id, i.position FROM {ItemCheck._meta.db_table} AS c
            JOIN {Item._meta.db_table} AS i ON i.id = c.item_id
            WHERE c.verification_id = %s AND c.outcome IN (%s, %s) AND i.status = %s
        """
        return self._insert_checks(verification.pk, sql, [of, *CheckOutcome.mismatches(), ItemStatus.SUCCEEDED])

    def _insert_checks(self, verification_id: int, chosen_sql: str, params: list[Any]) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {ItemCheck._meta.db_table} (verification_id, item_id, position, outcome, attempts,
                    error_code, error_message)
                SELECT %s, chosen.id, row_number() OVER (ORDER BY chosen.position), %s, 0, '', ''
                FROM ({chosen_sql}) AS chosen
                """,
                [verification_id, CheckOutcome.PENDING, *params],
            )
            return int(cursor.rowcount)

    def record_checks(self, verification_id: int, checks: Sequence[verify.Check], stats: verify.ReadStats) -> None:
        """One statement: the verdicts of checks still pending, added to the verification's counters.

        The ``outcome = pending`` guard makes recording idempotent: a key read again after a
        crash, or by two workers, is counted once.
        """
        if not checks and not stats.calls:
            return
        # The plan is pinned, whatever the table's statistics say: "c.id = ANY(ids)" fetches the
        # rows by primary key, and no nested loop joins them to the unnest. Joined on the unnest
        # alone, a table just staged (its statistics still saying "no pending check") was
        # planned as a nested loop over every row: 3.3 s a flush, 900 items/s; with ANY but a
        # nested loop, the 250 rows were compared with the 250 values: 44 ms; hash join: 5 ms.
        ids: list[int] = []
        outcomes: list[str] = []
        attempts: list[int] = []
        diffs: list[str | None] = []
        codes: list[str] = []
        messages: list[str] = []
        for check in checks:
            ids.append(check.ref)
            outcomes.append(check.verdict)
            attempts.append(check.attempts)
            diffs.append(json.dumps(check.diff, ensure_ascii=False) if check.diff else None)
            codes.append(check.error_code or "")
            messages.append(check.error_message or "")
        sql = f"""
            WITH v AS (
                SELECT * FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[], %s::text[])
                    AS v(id, outcome, attempts, diff, code, message)
            ),
            changed AS (
                UPDATE {ItemCheck._meta.db_table} AS c
                SET outcome = v.outcome, attempts = c.attempts + v.attempts, diff = v.diff::jsonb,
                    error_code = v.code, error_message = v.message, checked_at = now()
                FROM v WHERE c.id = ANY(%s::bigint[]) AND c.id = v.id AND c.outcome = %s
                RETURNING c.outcome
            )
            UPDATE {Verification._meta.db_table} SET
                verified_items = verified_items + (SELECT count(*) FROM changed WHERE outcome = %s),
                missing_items = missing_items + (SELECT count(*) FROM changed WHERE outcome = %s),
                different_items = different_items + (SELECT count(*) FROM changed WHERE outcome = %s),
                errored_items = errored_items + (SELECT count(*) FROM changed WHERE outcome = %s),
                calls = calls + %s, throttled_calls = throttled_calls + %s,
                unprocessed_returned = unprocessed_returned + %s, consumed_rcu = consumed_rcu + %s,
                last_activity_at = now()
            WHERE id = %s
        """
        params: list[Any] = [
            ids, outcomes, attempts, diffs, codes, messages, ids, CheckOutcome.PENDING,
            CheckOutcome.VERIFIED, CheckOutcome.MISSING, CheckOutcome.DIFFERENT, CheckOutcome.ERROR,
            stats.calls, stats.throttled_calls, stats.unprocessed, stats.consumed_rcu, verification_id,
        ]  # fmt: skip
        with transaction.atomic(), connection.cursor() as cursor, planner_without(cursor, "enable_nestloop"):
            cursor.execute(sql, params)


class ItemCheck(models.Model):
    """One item of a job read back by one verification, and the verdict."""

    id = models.BigAutoField(primary_key=True)
    verification = models.ForeignKey(Verification, on_delete=models.CASCADE, related_name="checks", db_index=False)
    # No index of its own: checks are reached through their verification; items are never
    # deleted but with their job (and its verifications). No constraint either: its check ran
    # once for every item deleted, ~15 µs each (15.8 s of the 17 s a 1M-item job's items took);
    # a job's checks are deleted before its items (services.deletion).
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="checks", db_index=False, db_constraint=False)
    position = models.BigIntegerField(help_text="1..n within the verification")
    outcome = models.CharField(max_length=16, choices=CheckOutcome.choices, default=CheckOutcome.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    diff = models.JSONField(null=True, blank=True, help_text="the attributes that differ: expected and actual")
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    objects = ItemCheckQuerySet.as_manager()

    class Meta:
        ordering = ["verification", "position"]
        constraints = [models.UniqueConstraint(fields=["verification", "position"], name="check_position")]
        indexes = [models.Index(fields=["verification", "outcome", "position"], name="check_outcome")]

    def __str__(self) -> str:
        return f"check {self.position} of verification {self.verification_id}"


class CheckSliceQuerySet(LeasedRangeQuerySet["CheckSlice"]):
    owner_field = "verification_id"


class CheckSlice(LeasedRange):
    """A range of a verification's checks that one worker reads back at a time."""

    verification = models.ForeignKey(Verification, on_delete=models.CASCADE, related_name="slices")

    objects = CheckSliceQuerySet.as_manager()

    class Meta:
        ordering = ["verification", "first_position"]
        indexes = [
            models.Index(fields=["verification", "first_position"], name="check_slice_open", condition=Q(done=False))
        ]

    def __str__(self) -> str:
        return f"slice {self.first_position}-{self.last_position} of verification {self.verification_id}"


# --- DynamoDB Streams rules: a stream's records written to another table ---------------------


class StreamRuleStatus(models.TextChoices):
    ACTIVE = "active", "active"
    """Workers consume the source's stream."""
    PAUSED = "paused", "paused"
    """Stopped by an operator; every shard keeps its checkpoint for resume."""
    FAILED = "failed", "failed"
    """Stopped by an error no retry fixes (stream gone, target missing, access denied); see error_message."""


class StreamStartPosition(models.TextChoices):
    TRIM_HORIZON = "TRIM_HORIZON", "the oldest record kept (TRIM_HORIZON, up to 24 h back)"
    LATEST = "LATEST", "new records only (LATEST)"


@dataclass(frozen=True)
class StreamRuleTransition:
    """One allowed change of a stream rule's status; ``operator`` ones are buttons and CLI commands."""

    name: str
    sources: frozenset[str]
    target: str
    operator: bool = False

    def allows(self, status: str) -> bool:
        return status in self.sources


STREAM_RULE_TRANSITIONS: Mapping[str, StreamRuleTransition] = {
    t.name: t
    for t in (
        StreamRuleTransition("pause", frozenset({StreamRuleStatus.ACTIVE}), StreamRuleStatus.PAUSED, operator=True),
        StreamRuleTransition(
            "resume",
            frozenset({StreamRuleStatus.PAUSED, StreamRuleStatus.FAILED}),
            StreamRuleStatus.ACTIVE,
            operator=True,
        ),
        StreamRuleTransition("fail", frozenset({StreamRuleStatus.ACTIVE}), StreamRuleStatus.FAILED),
    )
}
STREAM_RULE_ACTIONS: tuple[str, ...] = tuple(name for name, t in STREAM_RULE_TRANSITIONS.items() if t.operator)


class StreamRuleQuerySet(models.QuerySet["StreamRule"]):
    def active(self) -> StreamRuleQuerySet:
        return self.filter(status=StreamRuleStatus.ACTIVE)

    def in_queue(self, queue: str) -> StreamRuleQuerySet:
        return self.filter(queue=queue)

    def stalled(self, *, older_than: timedelta) -> StreamRuleQuerySet:
        """Active rules no worker has reported on lately (a killed worker, a lost RQ job)."""
        cutoff = timezone.now() - older_than
        return self.active().filter(Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=cutoff))

    def status_of(self, rule_id: int) -> str | None:
        return self.filter(pk=rule_id).values_list("status", flat=True).first()


class StreamRule(models.Model):
    """Consume a table's DynamoDB Stream and write what its records map to into another table.

    The classic rule is scavenging: when an item is removed from table A, delete the item with
    the same key (or a mapped one) from table B.
    """

    name = models.CharField(max_length=120, unique=True)
    status = models.CharField(max_length=16, choices=StreamRuleStatus.choices, default=StreamRuleStatus.ACTIVE)
    source_table = models.CharField(max_length=255)
    stream_arn = models.CharField(max_length=1024, help_text="the source's stream, from DescribeTable")
    stream_view_type = models.CharField(max_length=32, help_text="what the stream's records carry")
    source_key_schema = models.JSONField(default=list)
    target_table = models.CharField(max_length=255)
    target_key_schema = models.JSONField(default=list)
    events = models.JSONField(default=list, help_text="INSERT, MODIFY and/or REMOVE")
    operation = models.CharField(max_length=16, choices=Operation.choices, default=Operation.DELETE)
    mapping = models.TextField(
        blank=True, help_text="'source -> target[:S|N]' per line; empty: the record's keys (delete) or image (put)"
    )
    callable_path = models.CharField(
        "callable", max_length=255, blank=True, help_text="module.function for the rest (an allowed module only)"
    )
    start_position = models.CharField(
        max_length=16, choices=StreamStartPosition.choices, default=StreamStartPosition.TRIM_HORIZON
    )
    rate_limit_wcu = models.FloatField(
        "rate cap (WCU/s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1), MaxValueValidator(10_000_000.0)],
        help_text="write capacity units per second on the target; empty: no cap",
    )
    queue = models.CharField(max_length=100, blank=True, help_text="the RQ queue its workers serve")
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_activity_at = models.DateTimeField(null=True, blank=True, help_text="last report of a worker consuming it")

    objects = StreamRuleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        permissions = [("manage_streams", "Can add, pause, resume, rate-cap and retry stream rules")]

    def __str__(self) -> str:
        return self.name

    def can(self, transition: str) -> bool:
        return STREAM_RULE_TRANSITIONS[transition].allows(self.status)

    def available_actions(self) -> list[str]:
        return [name for name in STREAM_RULE_ACTIONS if self.can(name)]

    def _transition(self, name: str, **fields: Any) -> bool:
        """One conditional UPDATE, as for jobs: False (nothing changed) if the status moved meanwhile."""
        rule = STREAM_RULE_TRANSITIONS[name]
        if not StreamRule.objects.filter(pk=self.pk, status__in=rule.sources).update(status=rule.target, **fields):
            return False
        self.refresh_from_db(fields=["status", *fields])
        return True

    def pause(self) -> bool:
        return self._transition("pause")

    def resume(self, *, queue: str) -> bool:
        return self._transition("resume", queue=queue, error_code="", error_message="", last_activity_at=timezone.now())

    def fail(self, code: str, message: str) -> bool:
        return self._transition("fail", error_code=code[:128], error_message=message)


class StreamShardQuerySet(models.QuerySet["StreamShard"]):
    def open(self) -> StreamShardQuerySet:
        return self.filter(finished=False)

    def under_live_lease(self) -> StreamShardQuerySet:
        return self.open().filter(lease_expires_at__gt=timezone.now())

    def claim(self, rule_id: int, *, worker: str, lease: timedelta) -> list[StreamShard]:
        """Lease every shard of the rule that is free and ready; the shards ``worker`` holds now.

        Ready: not finished, and its parent (if we know it) read to its end, so the changes to a
        key are applied in their order. ``SKIP LOCKED``: two workers claiming at once take
        different shards, and neither waits for the other.
        """
        now = timezone.now()
        unfinished_parent = StreamShard.objects.filter(
            rule_id=OuterRef("rule_id"), shard_id=OuterRef("parent_shard_id"), finished=False
        )
        with transaction.atomic():
            free = (
                self.select_for_update(skip_locked=True)
                .filter(rule_id=rule_id, finished=False)
                .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now) | Q(leased_by=worker))
                .exclude(Exists(unfinished_parent))
            )
            ids = list(free.values_list("pk", flat=True))
            if ids:
                StreamShard.objects.filter(pk__in=ids).update(leased_by=worker, lease_expires_at=now + lease)
        return list(self.filter(rule_id=rule_id, leased_by=worker, finished=False).order_by("discovered_at", "pk"))

    def renew(self, rule_id: int, *, worker: str, lease: timedelta) -> int:
        return self.filter(rule_id=rule_id, leased_by=worker, finished=False).update(
            lease_expires_at=timezone.now() + lease
        )

    def release(self, rule_id: int, *, worker: str) -> int:
        return self.filter(rule_id=rule_id, leased_by=worker).update(leased_by="", lease_expires_at=None)

    def checkpoint(self, shard_id: int, *, worker: str, **fields: Any) -> bool:
        """Move the shard's checkpoint and counters, only while ``worker`` still holds its lease.

        False when the lease was lost (another worker took the shard over): the caller's reading
        is then abandoned, and the other worker reads again from the last checkpoint.
        """
        return bool(self.filter(pk=shard_id, leased_by=worker, finished=False).update(**fields))


class StreamShard(models.Model):
    """One shard of a rule's stream: who reads it (lease), how far (checkpoint), and its counters."""

    rule = models.ForeignKey(StreamRule, on_delete=models.CASCADE, related_name="shards")
    shard_id = models.CharField(max_length=128)
    parent_shard_id = models.CharField(max_length=128, blank=True)
    starting_sequence = models.CharField(max_length=64, blank=True)
    ending_sequence = models.CharField(max_length=64, blank=True, help_text="set once the shard is closed")
    initial_position = models.CharField(
        max_length=16, choices=StreamStartPosition.choices, default=StreamStartPosition.TRIM_HORIZON
    )
    checkpoint = models.CharField(
        max_length=64, blank=True, help_text="sequence number of the last record whose writes are recorded"
    )
    finished = models.BooleanField(default=False, help_text="closed and read to its end")
    # A LATEST shard has no sequence number to resume from until its first record: its iterator
    # (good for 15 minutes) is kept instead, so the next worker starts where this one stopped.
    resume_iterator = models.TextField(blank=True)
    resume_iterator_at = models.DateTimeField(null=True, blank=True)
    leased_by = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    records_read = models.BigIntegerField(default=0)
    records_failed = models.BigIntegerField(default=0, help_text="records kept in the failed-writes ledger")
    writes_succeeded = models.BigIntegerField(default=0)
    writes_failed = models.BigIntegerField(default=0)
    records_per_second = models.FloatField(default=0.0, help_text="records read per second, recent average")
    lag_seconds = models.FloatField(null=True, blank=True, help_text="age of the last record when it was read")
    caught_up = models.BooleanField(default=False, help_text="the last read found no new record")
    last_record_at = models.DateTimeField(null=True, blank=True, help_text="when the last record read was written")
    last_read_at = models.DateTimeField(null=True, blank=True)
    last_checkpoint_at = models.DateTimeField(null=True, blank=True)
    discovered_at = models.DateTimeField(default=timezone.now)

    objects = StreamShardQuerySet.as_manager()

    class Meta:
        ordering = ["rule", "discovered_at", "id"]
        constraints = [models.UniqueConstraint(fields=["rule", "shard_id"], name="stream_shard_rule_shard")]
        indexes = [
            models.Index(fields=["rule", "lease_expires_at"], name="stream_shard_open", condition=Q(finished=False))
        ]

    def __str__(self) -> str:
        return f"{self.shard_id} of {self.rule_id}"

    @property
    def closed(self) -> bool:
        return bool(self.ending_sequence)

    @property
    def lag(self) -> float | None:
        """Seconds behind the stream: 0 once a read found nothing new, else the last record's age when read."""
        if self.finished or self.caught_up:
            return 0.0
        return self.lag_seconds


class StreamFailureStatus(models.TextChoices):
    FAILED = "failed", "failed"
    """The record's write failed (or the record could not be mapped); see error_code/error_message."""
    RETRYING = "retrying", "queued for retry"
    """An operator asked to send it again; a worker will."""
    RESOLVED = "resolved", "written on retry"
    """Sent again and written; the first outcome is in ``history``."""


class StreamFailureQuerySet(models.QuerySet["StreamFailure"]):
    def failed(self) -> StreamFailureQuerySet:
        return self.filter(status=StreamFailureStatus.FAILED)

    def retrying(self) -> StreamFailureQuerySet:
        return self.filter(status=StreamFailureStatus.RETRYING)

    def queue_for_retry(self, rule_id: int) -> int:
        """Mark the rule's failed records to be sent again (one UPDATE); how many.

        Entries without a record (records lost to the stream's retention) have nothing to send."""
        return (
            self.filter(rule_id=rule_id, status=StreamFailureStatus.FAILED)
            .exclude(record={})
            .update(status=StreamFailureStatus.RETRYING, updated_at=timezone.now())
        )

    def record_retry(self, failure_id: int, *, succeeded: bool, code: str = "", message: str = "") -> None:
        """The outcome of one retry; the earlier outcome is appended to ``history``."""
        table = StreamFailure._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {table} SET
                    history = history || jsonb_build_array(jsonb_build_object(
                        'status', %s, 'error_code', error_code, 'error_message', error_message, 'at', updated_at)),
                    status = %s, attempts = attempts + 1, updated_at = now(),
                    error_code = CASE WHEN %s THEN error_code ELSE %s END,
                    error_message = CASE WHEN %s THEN error_message ELSE %s END
                WHERE id = %s AND status = %s
                """,
                [
                    StreamFailureStatus.FAILED.value,
                    StreamFailureStatus.RESOLVED.value if succeeded else StreamFailureStatus.FAILED.value,
                    succeeded, code, succeeded, message, failure_id, StreamFailureStatus.RETRYING.value,
                ],
            )  # fmt: skip


class StreamFailure(models.Model):
    """A stream record that led to a failed write (or could not be mapped): the failed-writes ledger."""

    rule = models.ForeignKey(StreamRule, on_delete=models.CASCADE, related_name="failures")
    shard_id = models.CharField(max_length=128)
    sequence_number = models.CharField(max_length=64)
    event_name = models.CharField(max_length=16, blank=True)
    keys = models.JSONField(default=dict, blank=True, help_text="the record's keys (DynamoDB JSON)")
    record = models.JSONField(default=dict, blank=True, help_text="the stream record as read")
    status = models.CharField(max_length=16, choices=StreamFailureStatus.choices, default=StreamFailureStatus.FAILED)
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1)
    history = models.JSONField(default=list, blank=True, help_text="earlier outcomes, oldest first")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = StreamFailureQuerySet.as_manager()

    class Meta:
        ordering = ["rule", "id"]
        verbose_name = "stream failed write"
        indexes = [models.Index(fields=["rule", "status"], name="stream_failure_rule_status")]

    def __str__(self) -> str:
        return f"{self.event_name} {self.sequence_number} of {self.rule_id}"

    @property
    def key_text(self) -> str:
        if not self.keys:
            return "—"
        return ", ".join(f"{name}={next(iter(value.values()))}" for name, value in self.keys.items())
