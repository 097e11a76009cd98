"""The Prometheus endpoint (``GET /metrics``): the ledger's counters in the text exposition format.

Every value is read from PostgreSQL at scrape time (one aggregate over Job rows, see
``selectors.job_totals``), never kept in the web process: there are many web processes, and
the truth is the ledger. Items are never counted.

Protected like the API: ``Authorization: Bearer <token>`` of an active staff user who has
``bulkwrites.view_metrics`` (README: "Automation").

Extension point: another part of the app (DynamoDB Streams rules, for their lag) adds its
families with :func:`register_source`, a callable yielding ``prometheus_client`` metric
families, called at each scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bulkwrites import selectors
from bulkwrites.models import JobStatus
from bulkwrites.services import dispatch, tokens

logger = logging.getLogger(__name__)

METRICS_PERMISSION = "bulkwrites.view_metrics"
# Statuses whose pending items are waiting to be written (not given up on).
_WAITING = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)

_SOURCES: list[Callable[[], Iterable[Metric]]] = []


def register_source(source: Callable[[], Iterable[Metric]]) -> None:
    """Add metric families to every scrape (e.g. stream lag); ``source`` is called per scrape."""
    if source not in _SOURCES:
        _SOURCES.append(source)


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
        for source in list(_SOURCES):
            try:
                yield from source()
            except Exception:  # one broken source must not hide the ledger's metrics
                logger.exception("metrics source %r failed", source)


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
