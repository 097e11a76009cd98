"""The Prometheus endpoint (``GET /metrics``): the ledger's counters in the text exposition format.

Every value is read from PostgreSQL at scrape time (one aggregate over Job rows, see
``selectors.job_totals``), never kept in the web process: there are many web processes, and
the truth is the ledger. Items are never counted.

Protected like the API: ``Authorization: Bearer <token>`` of an active staff user who has
``bulkwrites.view_metrics`` (README: "Automation").

Stream rules report their lag and counters from their shards' rows
(``selectors_streams.totals_by_rule``), read the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bulkwrites import selectors, selectors_streams
from bulkwrites.models import JobStatus, StreamRuleStatus
from bulkwrites.services import dispatch, tokens

logger = logging.getLogger(__name__)

METRICS_PERMISSION = "bulkwrites.view_metrics"
# Statuses whose pending items are waiting to be written (not given up on).
_WAITING = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)


class LedgerCollector(Collector):
    """Jobs by status and the items, calls and capacity they recorded, per table."""

    def collect(self) -> Iterator[Metric]:
        rows = selectors.job_totals()
        jobs = GaugeMetricFamily("bulkwrites_jobs", "Jobs by status.", labels=["status"])
        by_status = dict.fromkeys(JobStatus.values, 0)
        for row in rows:
            by_status[row["status"]] += row["jobs"]
        for status, count in by_status.items():
            jobs.add_metric([status], count)
        yield jobs

        per_table: dict[str, dict[str, float]] = {}
        for row in rows:
            table = per_table.setdefault(row["table_name"], dict.fromkeys(_FIELDS, 0.0))
            for field in _FIELDS:
                if field == "pending":
                    if row["status"] in _WAITING:
                        table[field] += (row["total"] or 0) - sum(
                            row[f] or 0 for f in ("succeeded", "failed", "skipped")
                        )
                else:
                    table[field] += row[field] or 0
        for name, field, help_text, kind in _FAMILIES:
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name, help_text, labels=["table"])
            else:
                family = GaugeMetricFamily(name, help_text, labels=["table"])
            for table_name, values in sorted(per_table.items()):
                family.add_metric([table_name], max(0.0, values[field]))
            yield family

        yield from _worker_families()
        yield from _stream_families()


_FIELDS = ("succeeded", "failed", "skipped", "pending", "calls", "throttled_calls", "unprocessed", "consumed_wcu")
_FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("bulkwrites_items_written", "succeeded", "Items DynamoDB accepted (put or delete).", "counter"),
    ("bulkwrites_items_skipped", "skipped", "Items not sent: a later row with the same key won.", "counter"),
    (
        "bulkwrites_items_failed",
        "failed",
        "Items whose latest outcome is a failure (falls when failed items are retried).",
        "gauge",
    ),
    ("bulkwrites_items_pending", "pending", "Items of queued, running or paused jobs not written yet.", "gauge"),
    ("bulkwrites_batch_write_calls", "calls", "BatchWriteItem calls made.", "counter"),
    ("bulkwrites_throttled_calls", "throttled_calls", "BatchWriteItem calls DynamoDB throttled.", "counter"),
    (
        "bulkwrites_unprocessed_items",
        "unprocessed",
        "Items DynamoDB returned as UnprocessedItems (sent again).",
        "counter",
    ),
    ("bulkwrites_consumed_wcu", "consumed_wcu", "Write capacity units consumed.", "counter"),
)


_STREAM_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("bulkwrites_stream_records_read", "records_read", "Stream records read by the rule's workers."),
    ("bulkwrites_stream_writes_succeeded", "writes_succeeded", "Writes to the target table DynamoDB accepted."),
    ("bulkwrites_stream_writes_failed", "writes_failed", "Writes to the target table given up on."),
    ("bulkwrites_stream_records_failed", "records_failed", "Records kept in the failed-writes ledger."),
)


def _stream_families() -> Iterator[Metric]:
    """Per stream rule: its lag (the oldest unread change, across its open shards) and counters."""
    rules = selectors_streams.totals_by_rule()
    labels = ["rule", "source_table", "target_table"]
    lag = GaugeMetricFamily(
        "bulkwrites_stream_lag_seconds",
        "Age of the last record read, largest over the rule's open shards (0: caught up).",
        labels=labels,
    )
    active = GaugeMetricFamily("bulkwrites_stream_rule_active", "1 while the rule is active.", labels=labels)
    counters = {
        field: CounterMetricFamily(name, help_text, labels=labels) for name, field, help_text in _STREAM_FAMILIES
    }
    for rule in rules:
        values = [rule["name"], rule["source_table"], rule["target_table"]]
        if rule["lag_seconds"] is not None:  # nothing read yet: no lag to report, rather than a false 0
            lag.add_metric(values, rule["lag_seconds"])
        active.add_metric(values, 1 if rule["status"] == StreamRuleStatus.ACTIVE else 0)
        for field, family in counters.items():
            family.add_metric(values, rule[field])
    yield lag
    yield active
    yield from counters.values()


def _worker_families() -> Iterator[Metric]:
    """Live workers on this deployment's queue (from Redis; absent when Redis does not answer)."""
    redis_up = GaugeMetricFamily("bulkwrites_redis_up", "1 when the job queue's Redis answered this scrape.")
    try:
        live = dispatch.live_worker_count()
    except Exception:  # noqa: BLE001 - a scrape reports Redis down instead of failing
        redis_up.add_metric([], 0)
        yield redis_up
        return
    redis_up.add_metric([], 1)
    yield redis_up
    workers = GaugeMetricFamily("bulkwrites_workers_live", "Workers on the queue with a fresh heartbeat.")
    workers.add_metric([], live)
    yield workers


def exposition() -> bytes:
    """The metrics in Prometheus' text format, read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector())
    return generate_latest(registry)


@csrf_exempt  # GET only, token only, changes nothing: a POST gets 405, not a CSRF page
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    try:
        token = tokens.token_from_header(request.headers.get("Authorization"))
    except tokens.TokenError as exc:
        response: HttpResponse = JsonResponse({"detail": str(exc)}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="bulkwrites"'
        return response
    if not token.user.has_perm(METRICS_PERMISSION):
        return JsonResponse({"detail": f"The token's user lacks the permission {METRICS_PERMISSION}."}, status=403)
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
