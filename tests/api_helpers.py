"""Users with chosen permissions and their API tokens, for the API, metrics and CLI tests."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from bulkwrites.models import Item, ItemPayload, ItemStatus, Job, JobStatus, SourceKind
from bulkwrites.services import tokens


def staff_user(username: str, *codenames: str, email: str = "") -> Any:
    users = get_user_model()
    user = users.objects.create_user(username, email or f"{username}@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return users.objects.get(pk=user.pk)  # a fresh permission cache


def token_for(user: Any, **kwargs: Any) -> str:
    return tokens.token_create(user=user, **kwargs).secret


def api_client(token: str | None = None) -> Client:
    """A client that sends the token as a bearer (and never logs in: the API takes no sessions)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(headers=headers, enforce_csrf_checks=True)


def ledger_job(status: str = JobStatus.COMPLETED_WITH_FAILURES, *, table: str = "t", **counts: Any) -> Job:
    """A job row with counters and two items (one succeeded, one failed with a formula-like message)."""
    values = {"total_items": 3, "succeeded_items": 1, "failed_items": 1, **counts}
    job = Job.objects.create(
        table_name=table,
        key_schema=[{"name": "pk", "type": "S", "role": "HASH"}],
        source_kind=SourceKind.FILE,
        source_name="x.csv",
        status=status,
        **values,
    )
    Item.objects.create(job=job, position=1, key={"pk": {"S": "a"}}, status="succeeded")
    ItemPayload.objects.create(job=job, position=1, payload={"pk": {"S": "a"}})
    ItemPayload.objects.create(job=job, position=2, payload={"pk": {"S": "=1+1"}})
    Item.objects.create(
        job=job,
        position=2,
        key={"pk": {"S": "=1+1"}},
        status=ItemStatus.FAILED,
        error_code="ValidationException",
        error_message="@SUM(1)",
    )
    return job
