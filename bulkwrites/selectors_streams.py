"""Reads for stream rules: per-shard progress, totals, lag, the failures an operator looks at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Max, Q, QuerySet, Sum
from django.utils import timezone

from bulkwrites.dynamo.ratelimit import read_status
from bulkwrites.models import StreamFailure, StreamFailureStatus, StreamRule, StreamRuleStatus, StreamShard
from bulkwrites.services.dispatch import redis_connection
from bulkwrites.services.streams.rules import rate_scope


@dataclass(frozen=True)
class ShardRow:
    shard_id: str
    parent_shard_id: str
    state: str  # reading, waiting for parent, finished, idle
    leased_by: str
    lag_seconds: float | None
    records_per_second: float
    records_read: int
    writes_succeeded: int
    writes_failed: int
    records_failed: int
    checkpoint: str
    last_checkpoint_at: Any
    last_read_at: Any


def shard_rows(rule: StreamRule) -> list[ShardRow]:
    shards = list(StreamShard.objects.filter(rule=rule).order_by("discovered_at", "pk"))
    finished = {s.shard_id for s in shards if s.finished}
    known = {s.shard_id for s in shards}
    now = timezone.now()
    rows = []
    for shard in shards:
        if shard.finished:
            state = "finished"
        elif shard.parent_shard_id and shard.parent_shard_id in known and shard.parent_shard_id not in finished:
            state = "waiting for its parent"
        elif shard.leased_by and shard.lease_expires_at and shard.lease_expires_at > now:
            state = "reading"
        else:
            state = "not leased"
        rows.append(
            ShardRow(
                shard_id=shard.shard_id,
                parent_shard_id=shard.parent_shard_id,
                state=state,
                leased_by=shard.leased_by if state == "reading" else "",
                lag_seconds=None if shard.lag is None else round(shard.lag, 1),
                records_per_second=round(shard.records_per_second, 1),
                records_read=shard.records_read,
                writes_succeeded=shard.writes_succeeded,
                writes_failed=shard.writes_failed,
                records_failed=shard.records_failed,
                checkpoint=shard.checkpoint,
                last_checkpoint_at=shard.last_checkpoint_at,
                last_read_at=shard.last_read_at,
            )
        )
    return rows


def rule_totals(rule: StreamRule) -> dict[str, Any]:
    totals = StreamShard.objects.filter(rule=rule).aggregate(
        records=Sum("records_read"),
        succeeded=Sum("writes_succeeded"),
        failed=Sum("writes_failed"),
        shards=Count("id"),
        open_shards=Count("id", filter=Q(finished=False)),
    )
    failures = StreamFailure.objects.filter(rule=rule).aggregate(
        failed=Count("id", filter=Q(status=StreamFailureStatus.FAILED)),
        retrying=Count("id", filter=Q(status=StreamFailureStatus.RETRYING)),
        resolved=Count("id", filter=Q(status=StreamFailureStatus.RESOLVED)),
    )
    return {
        "records": totals["records"] or 0,
        "writes_succeeded": totals["succeeded"] or 0,
        "writes_failed": totals["failed"] or 0,
        "shards": totals["shards"],
        "open_shards": totals["open_shards"],
        "lag_seconds": rule_lag(rule),
        **{f"failures_{name}": count for name, count in failures.items()},
        **capacity_rates(rule),
    }


def rule_lag(rule: StreamRule) -> float | None:
    """The rule's lag: the largest among its open shards (None before anything was read)."""
    lags = [s.lag for s in StreamShard.objects.open().filter(rule=rule) if s.lag is not None]
    return round(max(lags), 1) if lags else None


def lags_by_rule(rule_ids: list[int]) -> dict[int, float | None]:
    """Lag per rule, for the rule list, in one query."""
    lags: dict[int, float | None] = dict.fromkeys(rule_ids)
    rows = (
        StreamShard.objects.open()
        .filter(rule_id__in=rule_ids)
        .values("rule_id")
        .annotate(max_lag=Max("lag_seconds", filter=Q(caught_up=False)), read=Count("last_read_at"))
    )
    for row in rows:
        if row["read"]:
            lags[row["rule_id"]] = round(row["max_lag"] or 0.0, 1)
    return lags


def totals_by_rule() -> list[dict[str, Any]]:
    """Per rule: name, status, tables, the sums of its shards' counters and its lag, in one query.

    For the metrics endpoint: shards are few (a stream has a handful per table), items are never
    read. ``lag_seconds`` is None before any shard was read, 0 once every open shard caught up.
    """
    rows = (
        StreamRule.objects.values("pk", "name", "status", "source_table", "target_table")
        .annotate(
            records_read=Sum("shards__records_read", default=0),
            records_failed=Sum("shards__records_failed", default=0),
            writes_succeeded=Sum("shards__writes_succeeded", default=0),
            writes_failed=Sum("shards__writes_failed", default=0),
            open_lag=Max("shards__lag_seconds", filter=Q(shards__finished=False, shards__caught_up=False)),
            open_read=Count("shards", filter=Q(shards__finished=False, shards__last_read_at__isnull=False)),
        )
        .order_by("name")
    )
    totals: list[dict[str, Any]] = []
    for row in rows:
        total = dict(row)
        read, lag = total.pop("open_read"), total.pop("open_lag")
        total["lag_seconds"] = (lag or 0.0) if read else None
        totals.append(total)
    return totals


def capacity_rates(rule: StreamRule) -> dict[str, Any]:
    """The write rate allowed now, the rate consumed, and why (the limiter's last decision)."""
    none = {"allowed_wcu": None, "observed_wcu": None, "rate_reason": ""}
    if rule.status != StreamRuleStatus.ACTIVE:
        return none
    try:
        status = read_status(redis_connection(), rate_scope(rule.pk))
    except Exception:  # noqa: BLE001 - the page must render even when Redis is down
        return {**none, "rate_reason": "unknown: Redis does not answer"}
    allowed = None if status.allowed is None else round(status.allowed, 1)
    return {"allowed_wcu": allowed, "observed_wcu": round(status.observed, 1), "rate_reason": status.reason}


def recent_failures(rule: StreamRule, *, limit: int = 50) -> QuerySet[StreamFailure]:
    return StreamFailure.objects.filter(rule=rule).defer("record", "history").order_by("-id")[:limit]
