"""Reads: a job's progress, its failures, item search, the tables a form offers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from bulkwrites.conf import app_settings
from bulkwrites.dynamo.estimates import Prices, WriteEstimate, estimate_writes
from bulkwrites.dynamo.items import KeySchema, key_hash, key_search
from bulkwrites.dynamo.ratelimit import read_status
from bulkwrites.models import Item, ItemCheck, ItemStatus, Job, JobStatus, Operation, SliceRun, Verification
from bulkwrites.services import sql
from bulkwrites.services.dispatch import current_queue, live_worker_count, rate_scope, redis_connection
from bulkwrites.services.errors import JobError
from bulkwrites.services.tables import TableError, describe_capacity, list_table_names
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
        **job_state(job),
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


def job_state(job: Job) -> dict[str, Any]:
    """What the job is doing beyond its status, in words: staging's progress, a queue no worker serves.

    ``live_workers`` is asked of Redis only while the job waits for or uses workers (None when
    Redis does not answer, or the job is not active).
    """
    state = job.get_status_display()
    if job.status in JobStatus.active() and job.staged_at is None and job.staging_started_at is not None:
        read = f"{job.staging_rows_read:,}"
        estimate = job.staging_rows_estimate
        state = f"staging: {read} of ~{estimate:,} rows read" if estimate else f"staging: {read} rows read"
    elif job.status == JobStatus.QUEUED:
        state = "queued: waiting for a worker"
    live: int | None = None
    warning = ""
    if job.status in JobStatus.active():
        queue = current_queue()
        try:
            live = live_worker_count()
        except Exception:  # noqa: BLE001 - the page must render even when Redis is down
            warning = "Cannot tell whether a worker is listening: Redis does not answer."
        else:
            if live == 0:
                warning = (
                    f"No worker is listening on queue '{queue}': the job waits until one starts "
                    f"(python manage.py rqworker {queue})."
                )
    return {
        "state": state,
        "live_workers": live,
        "worker_warning": warning,
        "staging_rows_read": job.staging_rows_read,
        "staging_rows_estimate": job.staging_rows_estimate,
    }


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


CHART_POINTS = 120


def throughput_series(job: Job, *, points: int = CHART_POINTS) -> list[list[float]]:
    """The job page's chart: [seconds since start, items/s, WCU/s, throttled share of calls] per bucket.

    From the workers' passes (``SliceRun``): each pass's items, consumed units and calls spread
    over its own span, summed per bucket of ``span / points`` seconds (whole seconds; 0.2 s at least), empty
    buckets as zeros, so the line drops where nothing was written. The same after the job ended.
    """
    if job.started_at is None:
        return []
    end = job.finished_at or timezone.now()
    span = max((end - job.started_at).total_seconds(), 1.0)
    # Whole seconds for a long job, down to 0.2 s for one of seconds (a pass spreads over its span).
    width = float(math.ceil(span / points)) if span > points else max(0.2, round(span / points, 1))
    buckets = {b.number: b for b in SliceRun.objects.throughput(job.pk, since=job.started_at, bucket_seconds=width)}
    if not buckets:
        return []
    series = []
    for n in range(min(0, min(buckets)), max(buckets) + 1):
        bucket = buckets.get(n)
        if bucket is None:
            series.append([n * width, 0.0, 0.0, 0.0])
            continue
        share = bucket.throttled_calls / bucket.calls if bucket.calls else 0.0
        # The last bucket is cut short by now (or by the end): per second of what it covers.
        seconds = min(width, span - n * width) if span - n * width >= width / 2 else width
        series.append(
            [n * width, round(bucket.items / seconds, 1), round(bucket.consumed_wcu / seconds, 1), round(share, 4)]
        )
    return series


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
    return job.items.failed().defer("history").order_by("position")


def failures_by_code(job: Job) -> list[dict[str, Any]]:
    rows = job.items.failed().values("error_code").annotate(count=Count("id")).order_by("-count", "error_code")
    return [dict(row) for row in rows]


def error_codes(job_id: int | None = None) -> list[str]:
    items = Item.objects.filter(status=ItemStatus.FAILED)
    if job_id is not None:
        items = items.filter(job_id=job_id)
    return list(items.order_by().values_list("error_code", flat=True).distinct()[:50])


@dataclass(frozen=True)
class ItemSearch:
    """Items whose key matches an operator's search, and a note when part of it was not searched."""

    items: QuerySet[Item]
    note: str = ""


SEARCH_COMPOSITE_ACROSS_JOBS = (
    "Across jobs, an item of a table with a sort key is found by its whole key, written as the "
    "item list shows it ({example}); open one job's items to search by partition key alone."
)


def search_items_by_key(queryset: QuerySet[Item], term: str, *, job: Job | None = None) -> ItemSearch:
    """Items whose key is exactly what ``term`` names, within a job or across jobs.

    Whole keys are looked up through the (job, key hash) index, then compared whole: one index
    probe per job whose key schema can hold the key, milliseconds at any ledger size. ``term``
    is read against the job's key schema, or across jobs against each key schema jobs have.
    Within a job, a partition key alone (a table with a sort key) is matched by containment
    over that job's items; across jobs that would read every item, so the note says how to ask.
    """
    schemas = [job.key_schema] if job is not None else Job.objects.key_schemas()
    condition = Q()
    partial: dict[str, Any] | None = None
    composite_example = ""
    for schema in schemas:
        search = key_search(term, KeySchema.from_json(schema))
        # The jobs to probe: this one, or every job with this key schema (a subquery the planner
        # runs as a nested loop of index probes: 25 ms over 20,000 jobs, bench/search.py).
        jobs = Q(job_id=job.pk) if job is not None else Q(job_id__in=Job.objects.filter(key_schema=schema).values("pk"))
        for key in search.keys:
            condition |= jobs & Q(key_hash=key_hash(key), key=key)
        if search.partial is not None:
            partial = search.partial
            composite_example = ", ".join(f"{a['name']}=…" for a in schema)
    if partial is not None and job is not None:
        condition |= Q(job_id=job.pk, key__contains=partial)
    matches = queryset.filter(condition) if condition else queryset.none()
    note = SEARCH_COMPOSITE_ACROSS_JOBS.format(example=composite_example) if partial and job is None else ""
    return ItemSearch(matches, note)


# --- the preview of a draft -------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewColumn:
    name: str
    types: tuple[str, ...]  # the DynamoDB types this attribute has in the sample, in order seen
    key: bool


@dataclass(frozen=True)
class PreviewCell:
    type: str  # "" when the row has no such attribute
    text: str
    show_type: bool = False  # the column holds several types: each cell says its own


@dataclass(frozen=True)
class PreviewTable:
    """The first items as columns, like django-import-export's preview, with each item's raw JSON."""

    columns: tuple[PreviewColumn, ...]
    rows: tuple[tuple[tuple[PreviewCell, ...], str], ...]  # (cells in column order, the item's DynamoDB JSON)


PREVIEW_CELL_CHARS = 200


def preview_table(samples: list[dict[str, Any]], key_schema: list[dict[str, str]]) -> PreviewTable:
    """Columns: the key attributes first, then the others in the order they first appear."""
    key_names = [attribute["name"] for attribute in key_schema]
    names: dict[str, list[str]] = {name: [] for name in key_names}
    for item in samples:
        for name, value in item.items():
            types = names.setdefault(name, [])
            ((type_name, _),) = value.items()
            if type_name not in types:
                types.append(type_name)
    columns = tuple(PreviewColumn(name, tuple(types), name in key_names) for name, types in names.items())
    rows = []
    for item in samples:
        cells = tuple(_cell(item.get(column.name), mixed=len(column.types) > 1) for column in columns)
        rows.append((cells, json.dumps(item, ensure_ascii=False, indent=1)))
    return PreviewTable(columns, tuple(rows))


def _cell(value: dict[str, Any] | None, *, mixed: bool) -> PreviewCell:
    if value is None:
        return PreviewCell("", "")
    ((type_name, inner),) = value.items()
    if type_name in ("S", "N", "B"):
        text = str(inner)
    elif type_name in ("SS", "NS", "BS"):
        text = "{" + ", ".join(str(member) for member in inner) + "}"
    else:  # BOOL, NULL, and lists and maps as plain JSON (the item's DynamoDB JSON is one click away)
        text = _plain(value)
    if len(text) > PREVIEW_CELL_CHARS:
        text = text[: PREVIEW_CELL_CHARS - 1] + "…"
    return PreviewCell(type_name, text, mixed)


def _plain(value: dict[str, Any]) -> str:
    """A DynamoDB JSON value written as the plain JSON it stands for; numbers keep their exact text."""
    ((type_name, inner),) = value.items()
    if type_name == "M":
        members = ", ".join(f"{json.dumps(name, ensure_ascii=False)}: {_plain(v)}" for name, v in inner.items())
        return "{" + members + "}"
    if type_name == "L":
        return "[" + ", ".join(_plain(member) for member in inner) + "]"
    if type_name in ("N", "NS"):
        return inner if type_name == "N" else "[" + ", ".join(inner) + "]"
    if type_name == "BOOL":
        return "true" if inner else "false"
    if type_name == "NULL":
        return "null"
    return json.dumps(inner, ensure_ascii=False)  # S, B (base64), SS, BS


@dataclass(frozen=True)
class PreviewEstimate:
    """The write units a draft will use, and its cost and duration at the rate it will get (or why not)."""

    write_units: int
    estimate: WriteEstimate | None = None
    error: str = ""

    @property
    def duration_text(self) -> str:
        seconds = self.estimate.seconds if self.estimate else None
        if seconds is None:
            return "—"
        return "under 1 s" if seconds < 1 else f"~{human_duration(seconds)}"

    @property
    def cost_text(self) -> str:
        if self.estimate is None:
            return "—"
        cost = self.estimate.cost_usd
        return f"${cost:,.2f}" if cost >= 1 else f"${cost:.4f}"


def human_duration(seconds: float) -> str:
    """``45 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def preview_estimate(job: Job, write_units: int) -> PreviewEstimate:
    """From the table's billing mode (DescribeTable) and the price settings: an estimate, labelled as one."""
    try:
        capacity = describe_capacity(job.table_name)
    except TableError as exc:
        return PreviewEstimate(write_units, error=f"No cost estimate: {exc.message}")
    config = app_settings()
    prices = Prices(
        on_demand_per_million_writes=config.price_on_demand_per_million_writes,
        provisioned_wcu_hour=config.price_provisioned_wcu_hour,
        on_demand_assumed_wcu=config.on_demand_assumed_wcu,
    )
    estimate = estimate_writes(
        write_units,
        capacity,
        rate_cap=job.rate_limit_wcu,
        prices=prices,
        deletes=job.operation == Operation.DELETE,
    )
    return PreviewEstimate(write_units, estimate)


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
