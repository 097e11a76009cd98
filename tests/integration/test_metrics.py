"""GET /metrics: the ledger's counters for Prometheus, read from PostgreSQL at scrape time, behind a token."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from bulkwrites.models import JobStatus, StreamRule, StreamRuleStatus, StreamShard
from tests.api_helpers import api_client, ledger_job, staff_user, token_for

pytestmark = pytest.mark.django_db(transaction=True)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_anonymous_and_tokens_without_the_permission_are_refused() -> None:
    anonymous = api_client().get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"].startswith("Bearer")
    viewer = api_client(token_for(staff_user("viewer", "view_job", "run_job", "export_items", "cancel_job")))
    forbidden = viewer.get("/metrics")
    assert forbidden.status_code == 403
    assert forbidden.json()["detail"] == "The token's user lacks the permission bulkwrites.view_metrics."
    assert "bulkwrites_jobs" not in forbidden.content.decode()


def test_the_counters_are_the_ledgers(rq_queue: Any) -> None:
    ledger_job(JobStatus.SUCCEEDED, table="orders", total_items=100, succeeded_items=98, failed_items=0,
               skipped_items=2, calls=5, throttled_calls=1, unprocessed_returned=7, consumed_wcu=120.5)  # fmt: skip
    ledger_job(JobStatus.RUNNING, table="orders", total_items=50, succeeded_items=10, failed_items=5,
               calls=2, consumed_wcu=10.0)  # fmt: skip
    ledger_job(JobStatus.FAILED, table="users", total_items=40, succeeded_items=0, failed_items=0)
    scraper = api_client(token_for(staff_user("prometheus", "view_metrics")))
    with CaptureQueriesContext(connection) as queries:
        response = scraper.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    got = samples(response.content.decode())
    assert got[("bulkwrites_jobs", (("status", "succeeded"),))] == 1
    assert got[("bulkwrites_jobs", (("status", "running"),))] == 1
    assert got[("bulkwrites_jobs", (("status", "paused"),))] == 0
    orders, users = (("table", "orders"),), (("table", "users"),)
    assert got[("bulkwrites_items_written_total", orders)] == 108
    assert got[("bulkwrites_items_skipped_total", orders)] == 2
    assert got[("bulkwrites_items_failed", orders)] == 5
    assert got[("bulkwrites_items_pending", orders)] == 35  # only the running job's: 50 - 10 - 5
    assert got[("bulkwrites_items_pending", users)] == 0  # a failed job's items wait for nobody
    assert got[("bulkwrites_batch_write_calls_total", orders)] == 7
    assert got[("bulkwrites_throttled_calls_total", orders)] == 1
    assert got[("bulkwrites_unprocessed_items_total", orders)] == 7
    assert got[("bulkwrites_consumed_wcu_total", orders)] == 130.5
    assert got[("bulkwrites_redis_up", ())] == 1
    assert ("bulkwrites_workers_live", ()) in got
    item_queries = [q["sql"] for q in queries.captured_queries if "bulkwrites_item" in q["sql"]]
    assert item_queries == []  # never a count over items

    ledger_job(JobStatus.SUCCEEDED, table="orders", total_items=1, succeeded_items=1, failed_items=0)
    again = samples(scraper.get("/metrics").content.decode())
    assert again[("bulkwrites_items_written_total", orders)] == 109  # read afresh at each scrape


def test_stream_rules_report_their_lag_and_counters() -> None:
    common: dict[str, Any] = {
        "stream_arn": "arn:aws:dynamodb:us-east-1:1:table/a/stream/x",
        "stream_view_type": "KEYS_ONLY",
        "events": ["REMOVE"],
        "mapping": "pk -> pk",
    }
    scavenge = StreamRule.objects.create(name="scavenge", source_table="a", target_table="b", **common)
    now = timezone.now()
    StreamShard.objects.create(rule=scavenge, shard_id="s1", records_read=10, writes_succeeded=9, writes_failed=1,
                               records_failed=1, lag_seconds=42.5, last_read_at=now)  # fmt: skip
    StreamShard.objects.create(rule=scavenge, shard_id="s2", records_read=5, writes_succeeded=5, lag_seconds=3.0,
                               last_read_at=now)  # fmt: skip
    StreamShard.objects.create(rule=scavenge, shard_id="s0", records_read=7, lag_seconds=900.0, finished=True,
                               last_read_at=now)  # a closed shard read to its end lags no more  # fmt: skip
    caught_up = StreamRule.objects.create(name="mirror", source_table="c", target_table="d",
                                          status=StreamRuleStatus.PAUSED, **common)  # fmt: skip
    StreamShard.objects.create(rule=caught_up, shard_id="s1", lag_seconds=8.0, caught_up=True, last_read_at=now)
    StreamRule.objects.create(name="new", source_table="e", target_table="f", **common)  # nothing read yet

    got = samples(api_client(token_for(staff_user("prometheus", "view_metrics"))).get("/metrics").content.decode())

    labels = (("rule", "scavenge"), ("source_table", "a"), ("target_table", "b"))
    assert got[("bulkwrites_stream_lag_seconds", labels)] == 42.5
    assert got[("bulkwrites_stream_records_read_total", labels)] == 22
    assert got[("bulkwrites_stream_writes_succeeded_total", labels)] == 14
    assert got[("bulkwrites_stream_writes_failed_total", labels)] == 1
    assert got[("bulkwrites_stream_records_failed_total", labels)] == 1
    assert got[("bulkwrites_stream_rule_active", labels)] == 1
    mirror = (("rule", "mirror"), ("source_table", "c"), ("target_table", "d"))
    assert (got[("bulkwrites_stream_lag_seconds", mirror)], got[("bulkwrites_stream_rule_active", mirror)]) == (0, 0)
    new = (("rule", "new"), ("source_table", "e"), ("target_table", "f"))
    assert ("bulkwrites_stream_lag_seconds", new) not in got
    assert got[("bulkwrites_stream_records_read_total", new)] == 0


def test_post_is_not_allowed() -> None:
    scraper = api_client(token_for(staff_user("prometheus", "view_metrics")))
    assert scraper.post("/metrics").status_code == 405
