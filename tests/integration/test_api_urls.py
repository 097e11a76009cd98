"""Every URL under /api/ and /metrics, enumerated from the resolver, asked with every kind of caller.

A route added later without an expectation here fails the test, so none slips through unchecked.
Callers: anonymous; a staff session with every view_* permission (the API takes no sessions); a
token of that user (reads only); a token whose user has no permission at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from bulkwrites.models import JobStatus
from tests.api_helpers import api_client, ledger_job, staff_user, token_for

pytestmark = pytest.mark.django_db(transaction=True)

# route -> {method: status for a token with every view_* permission}; None: the method is not served.
VIEW_ONLY_TOKEN = {
    "api/openapi.json": None,  # staff pages, not endpoints: see below
    "api/docs": None,
    "api/": None,
    "api/jobs": {"GET": 200, "POST": 403},
    "api/jobs/<int:job_id>": {"GET": 200, "POST": 405},
    "api/jobs/<int:job_id>/actions/<action>": {"GET": 405, "POST": 403},
    "api/jobs/<int:job_id>/rate": {"GET": 405, "POST": 403},
    "api/jobs/<int:job_id>/items": {"GET": 403, "POST": 405},
    "metrics": {"GET": 403, "POST": 405},
}


def walk(patterns: list[Any], prefix: str = "") -> Iterator[str]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern)


def automation_routes() -> list[str]:
    return [r for r in walk(get_resolver().url_patterns) if r.startswith(("api/", "metrics"))]


def concrete(route: str, job_id: int) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name == "job_id":
            return str(job_id)
        if name == "action":
            return "cancel"
        pytest.fail(f"{route}: no value for the path parameter {name!r}; add one to this test")

    return "/" + re.sub(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>", fill, route)


def ask(client: Client, method: str, url: str) -> Any:
    return client.get(url) if method == "GET" else client.post(url, data="{}", content_type="application/json")


def test_every_automation_url_with_every_caller() -> None:
    job = ledger_job(JobStatus.RUNNING)
    routes = automation_routes()
    assert set(routes) == set(VIEW_ONLY_TOKEN), "a new /api/ or /metrics route: add its expectations here"

    viewer = staff_user("viewer")
    viewer.user_permissions.set(
        Permission.objects.filter(codename__startswith="view_").exclude(codename="view_metrics")
    )
    viewer = type(viewer).objects.get(pk=viewer.pk)
    session = Client()
    session.force_login(viewer)
    nobody = api_client(token_for(staff_user("nobody")))
    reader = api_client(token_for(viewer))

    problems: list[str] = []
    for route in routes:
        url = concrete(route, job.pk)
        expected = VIEW_ONLY_TOKEN[route]
        if expected is None:
            # The schema and docs: staff pages behind the admin's login; the API root: nothing.
            anonymous = api_client().get(url)
            want = 404 if route == "api/" else 302
            if anonymous.status_code != want:
                problems.append(f"anonymous GET {url}: {anonymous.status_code}")
            continue
        for method, with_view in expected.items():
            served = with_view != 405
            checks = {
                "anonymous": (api_client(), 401 if served else 405),
                "staff session": (session, 401 if served else 405),
                "token without permissions": (nobody, 403 if served else 405),
                "view-only token": (reader, with_view),
            }
            for who, (client, want) in checks.items():
                got = ask(client, method, url).status_code
                if got != want:
                    problems.append(f"{who} {method} {url}: {got}, expected {want}")
    assert not problems, "\n".join(problems)
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING  # nobody changed anything
