"""Reads: a job's progress, its failures, item search, the tables a form offers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from bulkwrites.dynamo.items import ItemError, normalize_number
from bulkwrites.dynamo.ratelimit import read_status
from bulkwrites.models import Item, ItemCheck, ItemStatus, Job, JobStatus, SliceRun, Verification
from bulkwrites.services import sql
from bulkwrites.services.dispatch import rate_scope, redis_connection
from bulkwrites.services.errors import JobError
from bulkwrites.services.tables import TableError, list_table_names
from bulkwrites.sources import postgres


def job_progress(job: Job) -> dict[str, Any]:
    """Everything the live job page shows; counters come from the job row, not a COUNT(*)."""
    now = timezone.now()
    rate = recent_rate(job, now=now)
    pending = job.pending_items
    running = job.status == JobStatus.RUNNING
    return {
        "id": job.pk,
        "status": job.status,
        "status_label": job.get_status_display(),
        "finished": job.is_finished,
        "total": job.total_items,
        "succeeded": job.succeeded_items,
        "failed": job.failed_items,
        "skipped": job.skipped_items,
        "pending": pending,
        "percent": job.progress_percent,
        "items_per_second": round(rate, 1),
        "eta_seconds": round(pending / rate) if running and rate > 0 else None,
        "calls": job.calls,
        "throttled_calls": job.throttled_calls,
        "throttled_share": round(job.throttled_calls / job.calls, 4) if job.calls else 0.0,
        "unprocessed_returned": job.unprocessed_returned,
        "consumed_wcu": round(job.consumed_wcu, 1),
        "error_code": job.error_code,
        "error_message": job.error_message,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "duration_seconds": _duration(job, now),
        "rate_limit_wcu": job.rate_limit_wcu,
        **capacity_rates(job),
        "history": throughput_series(job),
        "verification": verification_progress(job.latest_verification()),
    }


def verification_progress(verification: Verification | None) -> dict[str, Any] | None:
    """A job's latest verification as the job page shows it (None: never verified)."""
    if verification is None:
        return None
    duration = verification.duration_seconds
    checked = verification.checked_items
    return {
        "id": verification.pk,
        "status": verification.status,
        "status_label": verification.get_status_display(),
        "active": verification.is_active,
        "scope": verification.scope(),
        "sampled": verification.sampled,
        "eligible": verification.eligible_items,
        "total": verification.total_items,
        "checked": checked,
        "verified": verification.verified_items,
        "missing": verification.missing_items,
        "different": verification.different_items,
        "errored": verification.errored_items,
        "consistent_read": verification.consistent_read,
        "rate_limit_rcu": verification.rate_limit_rcu,
        "calls": verification.calls,
        "throttled_calls": verification.throttled_calls,
        "unprocessed_returned": verification.unprocessed_returned,
        "consumed_rcu": round(verification.consumed_rcu, 1),
        "duration_seconds": None if duration is None else round(duration, 1),
        "items_per_second": round(checked / duration, 1) if duration and checked else 0.0,
        "error_code": verification.error_code,
        "error_message": verification.error_message,
    }


def verifications(job: Job, *, limit: int = 10) -> QuerySet[Verification]:
    return job.verifications.order_by("-id")[:limit]


def mismatched_checks(verification: Verification | None, *, limit: int = 50) -> list[ItemCheck]:
    """The first items a verification found missing or different, with their diffs."""
    if verification is None:
        return []
    return list(
        ItemCheck.objects.filter(verification=verification)
        .mismatched()
        .select_related("item")
        .only("position", "outcome", "diff", "verification_id", "item__key", "item__position")
        .order_by("position")[:limit]
    )


def capacity_rates(job: Job) -> dict[str, Any]:
    """The write rate allowed now (cap, or lower while the adaptive rate backs off), the rate
    consumed, and why the rate is what it is (the limiter's last decision, in words)."""
    none = {"allowed_wcu": None, "observed_wcu": None, "rate_reason": ""}
    if job.status not in JobStatus.active():
        return none
    try:
        status = read_status(redis_connection(), rate_scope(job.pk))
    except Exception:  # noqa: BLE001 - the page must render even when Redis is down
        return {**none, "rate_reason": "unknown: Redis does not answer"}
    allowed = None if status.allowed is None else round(status.allowed, 1)
    return {"allowed_wcu": allowed, "observed_wcu": round(status.observed, 1), "rate_reason": status.reason}


def throughput_series(job: Job, *, points: int = 60) -> list[list[float]]:
    """[seconds since start, items/s] per time bucket, for the job page's chart."""
    if job.started_at is None:
        return []
    end = job.finished_at or timezone.now()
    span = max((end - job.started_at).total_seconds(), 1.0)
    # Buckets of at least 5 s: outcomes are recorded per slice, so finer buckets show the
    # slices, not the rate.
    bucket = max(5, int(span // points) + 1)
    rows = SliceRun.objects.throughput(job.pk, since=job.started_at, bucket_seconds=bucket)
    return [[n * bucket, round(count / bucket, 1)] for n, count in rows]


def _duration(job: Job, now: Any) -> float | None:
    if job.started_at is None:
        return None
    return round(((job.finished_at or now) - job.started_at).total_seconds(), 1)


def recent_rate(job: Job, *, now: Any) -> float:
    """Items with an outcome per second since the job started (from the job's counters).

    An average, on purpose: outcomes are recorded per slice, so a short window jumps.
    """
    if job.started_at is None:
        return 0.0
    elapsed = ((job.finished_at or now) - job.started_at).total_seconds()
    return job.done_items / max(elapsed, 0.001)


def run_totals(job: Job) -> dict[str, Any]:
    """Audit totals over every pass of every worker: who worked on it, calls, latency."""
    totals = job.runs.aggregate(
        passes=Count("id"), calls=Sum("calls"), latency_ms=Sum("latency_ms"), items=Sum("items_sent")
    )
    totals["workers"] = list(job.runs.order_by().values_list("worker", flat=True).distinct()[:20])
    calls = totals["calls"] or 0
    totals["mean_call_ms"] = round((totals["latency_ms"] or 0) / calls, 1) if calls else None
    return totals


def failed_items(job: Job) -> QuerySet[Item]:
    return job.items.failed().defer("payload", "history").order_by("position")


def failures_by_code(job: Job) -> list[dict[str, Any]]:
    rows = job.items.failed().values("error_code").annotate(count=Count("id")).order_by("-count", "error_code")
    return [dict(row) for row in rows]


def error_codes(job_id: int | None = None) -> list[str]:
    items = Item.objects.filter(status=ItemStatus.FAILED)
    if job_id is not None:
        items = items.filter(job_id=job_id)
    return list(items.order_by().values_list("error_code", flat=True).distinct()[:50])


def search_items_by_key(queryset: QuerySet[Item], term: str, *, job: Job | None = None) -> QuerySet[Item]:
    """Items of a job whose key attribute equals ``term``; without a job, keys containing it.

    Within a job the key schema is known, so the search is a jsonb containment per key
    attribute (no text cast of every key); across jobs it is a case-insensitive substring.
    """
    if job is None or not job.key_schema:
        return queryset.filter(key__icontains=term)
    condition = Q()
    for attribute in job.key_schema:
        value = term
        if attribute["type"] == "N":
            try:
                value = normalize_number(term)
            except ItemError:
                continue
        condition |= Q(key__contains={attribute["name"]: {attribute["type"]: value}})
    return queryset.filter(condition) if condition else queryset.none()


@dataclass(frozen=True)
class TableListing:
    """The tables DynamoDB listed for a form's select, or why it could not list them."""

    names: tuple[str, ...] = ()
    error: str = ""


def table_listing() -> TableListing:
    """The target tables to offer (ListTables), asked when a page needs them, never at import."""
    try:
        return TableListing(tuple(list_table_names()))
    except TableError as exc:
        return TableListing(error=exc.message)


@dataclass(frozen=True)
class SourceCatalog:
    """What a SQL source's form offers: the connections, and the tables and columns one may read."""

    connections: tuple[str, ...] = ()
    connection: str = ""
    tables: tuple[str, ...] = ()  # "schema.table"
    columns: tuple[tuple[str, str], ...] = ()  # (name, type) of the chosen table


def source_catalog(connection: str = "", table: str = "") -> SourceCatalog:
    """Asked by the view when a page needs it (a PostgreSQL connection each), never by a form itself."""
    names = tuple(sql.connection_names())
    connection = connection if connection in names else (names[0] if names else "")
    if not connection:
        return SourceCatalog()
    try:
        dsn = sql.resolve_dsn(connection)
        tables = tuple(f"{schema}.{name}" for schema, name in postgres.list_tables(dsn))
        schema, _, name = table.rpartition(".")
        columns = tuple(postgres.list_columns(dsn, schema or "public", name)) if name else ()
    except (JobError, postgres.QueryError):
        return SourceCatalog(names, connection)
    return SourceCatalog(names, connection, tables, columns)


def job_totals() -> list[dict[str, Any]]:
    """The ledger's counters summed per (status, table): one aggregate over Job rows, never over items.

    What the Prometheus endpoint serves; cheap at any number of items, so every scrape asks
    PostgreSQL afresh and web processes keep no counters of their own.
    """
    rows = (
        Job.objects.order_by()
        .values("status", "table_name")
        .annotate(
            jobs=Count("id"),
            total=Sum("total_items"),
            succeeded=Sum("succeeded_items"),
            failed=Sum("failed_items"),
            skipped=Sum("skipped_items"),
            calls=Sum("calls"),
            throttled_calls=Sum("throttled_calls"),
            unprocessed=Sum("unprocessed_returned"),
            consumed_wcu=Sum("consumed_wcu"),
        )
    )
    return [dict(row) for row in rows]
