"""GET /metrics: the ledger's counters for Prometheus, read from PostgreSQL at scrape time, behind a token."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from bulkwrites import metrics
from bulkwrites.models import JobStatus
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


def test_an_extension_point_for_more_families(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client.core import GaugeMetricFamily

    def stream_lag() -> Any:
        family = GaugeMetricFamily("bulkwrites_stream_lag_seconds", "test", labels=["rule"])
        family.add_metric(["r1"], 3.0)
        yield family

    def broken() -> Any:
        raise RuntimeError("a broken source")

    monkeypatch.setattr(metrics, "_SOURCES", [])
    metrics.register_source(broken)
    metrics.register_source(stream_lag)
    got = samples(api_client(token_for(staff_user("prometheus", "view_metrics"))).get("/metrics").content.decode())
    assert got[("bulkwrites_stream_lag_seconds", (("rule", "r1"),))] == 3.0
    assert ("bulkwrites_redis_up", ()) in got


def test_post_is_not_allowed() -> None:
    scraper = api_client(token_for(staff_user("prometheus", "view_metrics")))
    assert scraper.post("/metrics").status_code == 405
