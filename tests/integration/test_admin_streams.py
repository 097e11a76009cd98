"""Stream rules in the admin: add a rule, its page, its controls, and who may do what."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.urls import reverse

from bulkwrites.models import StreamFailure, StreamRule, StreamRuleStatus, StreamShard
from bulkwrites.services.streams import consume

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stream_table(dynamodb: Any) -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def make() -> str:
        name = f"test-src-{uuid.uuid4().hex[:12]}"
        dynamodb.create_table(
            TableName=name,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        created.append(name)
        return name

    yield make
    for name in created:
        dynamodb.delete_table(TableName=name)


def a_rule(**fields: Any) -> StreamRule:
    values: dict[str, Any] = {
        "name": "scavenge",
        "source_table": "a",
        "stream_arn": "arn:aws:dynamodb:us-east-1:1:table/a/stream/x",
        "stream_view_type": "NEW_AND_OLD_IMAGES",
        "source_key_schema": [{"name": "pk", "type": "S", "role": "HASH"}],
        "target_table": "b",
        "target_key_schema": [{"name": "pk", "type": "S", "role": "HASH"}],
        "events": ["REMOVE"],
        "operation": "delete",
        "mapping": "pk -> pk",
        **fields,
    }
    rule = StreamRule.objects.create(**values)
    StreamShard.objects.create(rule=rule, shard_id="shardId-1", records_read=10, writes_succeeded=4, lag_seconds=2.5)
    StreamFailure.objects.create(
        rule=rule,
        shard_id="shardId-1",
        sequence_number="000000000000000000007",
        event_name="REMOVE",
        keys={"pk": {"S": "=1+1"}},
        record={"eventName": "REMOVE", "dynamodb": {"Keys": {"pk": {"S": "=1+1"}}}},
        error_code="ValidationException",
        error_message="@SUM(1)",
    )
    return rule


def staff(django_user_model: Any, *codenames: str) -> Any:
    user = django_user_model.objects.create_user(f"staff-{uuid.uuid4().hex[:6]}", "s@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)  # fresh permission cache


def test_an_operator_adds_a_rule_in_the_admin_and_watches_its_shards(
    admin_client_tx: Any, admin_user: Any, dynamodb: Any, stream_table: Any, make_table: Any, scan: Any, rq_queue: Any
) -> None:
    source, target, plain = stream_table(), make_table(), make_table()
    for key in ("a", "b", "c"):
        dynamodb.put_item(TableName=source, Item={"pk": {"S": key}})
        dynamodb.put_item(TableName=target, Item={"pk": {"S": key}})
    dynamodb.delete_item(TableName=source, Key={"pk": {"S": "b"}})

    page = admin_client_tx.get(reverse("admin:bulkwrites_streamrule_add"))
    assert page.status_code == 200
    assert source in page.content.decode()  # tables listed for the select
    form = {
        "name": "scavenge-b",
        "source_table": source,
        "target_table": target,
        "events": ["REMOVE"],
        "operation": "delete",
        "mapping": "pk -> pk",
        "callable_path": "",
        "start_position": "TRIM_HORIZON",
        "rate_limit_wcu": "",
    }
    refused = admin_client_tx.post(reverse("admin:bulkwrites_streamrule_add"), {**form, "source_table": plain})
    assert refused.status_code == 200
    assert "has no DynamoDB Stream" in refused.content.decode()

    response = admin_client_tx.post(reverse("admin:bulkwrites_streamrule_add"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    rule = StreamRule.objects.get(name="scavenge-b")
    assert rq_queue.count == 1  # a worker is asked to consume it
    rq_queue.empty()
    assert LogEntry.objects.filter(object_id=str(rule.pk), user=admin_user).exists()

    consume.stream_rule_consume(rule, worker="test", until_caught_up=True)
    assert {i["pk"]["S"] for i in scan(target)} == {"a", "c"}
    page = admin_client_tx.get(reverse("admin:bulkwrites_streamrule_change", args=[rule.pk])).content.decode()
    assert 'id="stream-shards"' in page
    assert "caught up" in page
    assert '<td id="total-records">4</td>' in page
    assert '<td id="total-succeeded">1</td>' in page
    listing = admin_client_tx.get(reverse("admin:bulkwrites_streamrule_changelist")).content.decode()
    assert "scavenge-b" in listing
    assert "caught up" in listing


def test_pause_resume_and_rate_are_post_only_logged_and_reach_the_rule(admin_client_tx: Any, rq_queue: Any) -> None:
    rule = a_rule()
    pause = reverse("admin:bulkwrites_streamrule_action", args=[rule.pk, "pause"])
    assert admin_client_tx.get(pause).status_code == 405
    assert admin_client_tx.post(pause).status_code == 302
    rule.refresh_from_db()
    assert rule.status == StreamRuleStatus.PAUSED
    assert (
        admin_client_tx.post(reverse("admin:bulkwrites_streamrule_action", args=[rule.pk, "resume"])).status_code == 302
    )
    rule.refresh_from_db()
    assert rule.status == StreamRuleStatus.ACTIVE
    assert rq_queue.count == 1
    response = admin_client_tx.post(
        reverse("admin:bulkwrites_streamrule_rate", args=[rule.pk]), {"rate_limit_wcu": "50"}
    )
    assert response.status_code == 302
    rule.refresh_from_db()
    assert rule.rate_limit_wcu == 50
    messages = list(
        LogEntry.objects.filter(object_id=str(rule.pk)).order_by("action_time").values_list("change_message", flat=True)
    )
    assert messages == ["pause (status now paused)", "resume (status now active)", "rate cap set to 50 WCU/s"]
    page = admin_client_tx.get(reverse("admin:bulkwrites_streamrule_change", args=[rule.pk])).content.decode()
    assert "rate cap set to 50 WCU/s" in page  # the page shows who did what

    refused = admin_client_tx.post(
        reverse("admin:bulkwrites_streamrule_mapping", args=[rule.pk]),
        {"mapping": "owner -> other", "callable_path": ""},
    )
    assert refused.status_code == 302
    rule.refresh_from_db()
    assert rule.mapping == "pk -> pk"  # nothing maps to the target's key: refused, unchanged
    changed = admin_client_tx.post(
        reverse("admin:bulkwrites_streamrule_mapping", args=[rule.pk]),
        {"mapping": "Keys.pk -> pk", "callable_path": ""},
    )
    assert changed.status_code == 302
    rule.refresh_from_db()
    assert rule.mapping == "Keys.pk -> pk"
    assert LogEntry.objects.filter(object_id=str(rule.pk), change_message__startswith="mapping changed").exists()

    retry = admin_client_tx.post(reverse("admin:bulkwrites_streamrule_retry", args=[rule.pk]))
    assert retry.status_code == 302
    assert StreamFailure.objects.get(rule=rule).status == "retrying"


def test_the_failed_writes_export_is_spreadsheet_safe(admin_client_tx: Any) -> None:
    rule = a_rule()
    response = admin_client_tx.get(reverse("admin:bulkwrites_streamrule_export", args=[rule.pk, "failed", "csv"]))
    assert response.status_code == 200
    (row,) = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert row["error_message"] == "'@SUM(1)"
    assert row["sequence_number"] == "000000000000000000007"
    assert row["rule"] == "scavenge"


def stream_urls(rule: StreamRule) -> dict[str, tuple[str, str]]:
    """Every stream URL of the admin: name -> (method, url)."""
    failure = StreamFailure.objects.get(rule=rule)
    return {
        "changelist": ("get", reverse("admin:bulkwrites_streamrule_changelist")),
        "rule page": ("get", reverse("admin:bulkwrites_streamrule_change", args=[rule.pk])),
        "shards": ("get", reverse("admin:bulkwrites_streamrule_shards", args=[rule.pk])),
        "history": ("get", reverse("admin:bulkwrites_streamrule_history", args=[rule.pk])),
        "add": ("get", reverse("admin:bulkwrites_streamrule_add")),
        "delete": ("post", reverse("admin:bulkwrites_streamrule_delete", args=[rule.pk])),
        "pause": ("post", reverse("admin:bulkwrites_streamrule_action", args=[rule.pk, "pause"])),
        "resume": ("post", reverse("admin:bulkwrites_streamrule_action", args=[rule.pk, "resume"])),
        "rate": ("post", reverse("admin:bulkwrites_streamrule_rate", args=[rule.pk])),
        "mapping": ("post", reverse("admin:bulkwrites_streamrule_mapping", args=[rule.pk])),
        "retry": ("post", reverse("admin:bulkwrites_streamrule_retry", args=[rule.pk])),
        "export": ("get", reverse("admin:bulkwrites_streamrule_export", args=[rule.pk, "failed", "csv"])),
        "failures": ("get", reverse("admin:bulkwrites_streamfailure_changelist")),
        "failure": ("get", reverse("admin:bulkwrites_streamfailure_change", args=[failure.pk])),
        "failure delete": ("post", reverse("admin:bulkwrites_streamfailure_delete", args=[failure.pk])),
    }


READABLE = {"changelist", "rule page", "shards", "history", "failures", "failure"}


def test_a_view_only_user_sees_every_stream_page_and_can_change_nothing(client: Any, django_user_model: Any) -> None:
    rule = a_rule()
    client.force_login(staff(django_user_model, "view_streamrule", "view_streamfailure"))
    for name, (method, url) in stream_urls(rule).items():
        data = {"rate": {"rate_limit_wcu": "5"}, "mapping": {"mapping": "x -> pk"}}.get(name, {})
        response = getattr(client, method)(url, data)
        expected = 200 if name in READABLE else 403
        assert response.status_code == expected, f"{name}: {method.upper()} {url} -> {response.status_code}"
    rule.refresh_from_db()
    assert (rule.status, rule.rate_limit_wcu, rule.mapping) == (StreamRuleStatus.ACTIVE, None, "pk -> pk")
    assert StreamFailure.objects.get(rule=rule).status == "failed"
    page = client.get(reverse("admin:bulkwrites_streamrule_change", args=[rule.pk])).content.decode()
    for control in (
        'id="action-pause"',
        'id="set-rate"',
        'id="set-mapping"',
        'id="action-retry"',
        'id="export-failed-csv"',
    ):
        assert control not in page


def test_staff_without_the_view_permissions_see_nothing(client: Any, django_user_model: Any) -> None:
    rule = a_rule()
    client.force_login(staff(django_user_model))
    for name, (method, url) in stream_urls(rule).items():
        assert getattr(client, method)(url).status_code == 403, name


def test_manage_streams_shows_and_allows_the_controls(client: Any, django_user_model: Any, rq_queue: Any) -> None:
    rule = a_rule()
    client.force_login(staff(django_user_model, "view_streamrule", "manage_streams", "export_items"))
    page = client.get(reverse("admin:bulkwrites_streamrule_change", args=[rule.pk])).content.decode()
    for control in (
        'id="action-pause"',
        'id="set-rate"',
        'id="set-mapping"',
        'id="action-retry"',
        'id="export-failed-csv"',
    ):
        assert control in page
    assert 'id="action-resume"' not in page  # only what the status allows
    assert client.post(reverse("admin:bulkwrites_streamrule_action", args=[rule.pk, "pause"])).status_code == 302
    assert client.post(reverse("admin:bulkwrites_streamrule_action", args=[rule.pk, "pause"])).status_code == 302
    rule.refresh_from_db()
    assert rule.status == StreamRuleStatus.PAUSED
    assert client.get(reverse("admin:bulkwrites_streamrule_export", args=[rule.pk, "failed", "csv"])).status_code == 200
