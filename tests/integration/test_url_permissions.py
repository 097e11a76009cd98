"""Every URL the project registers, asked by an anonymous user and by a view-only staff user.

The patterns are enumerated from the URL resolver (recursively), never listed by hand: a view
added later without a permission check makes this test fail. Path parameters are filled with
real ids of objects the test creates; a parameter nobody knows fails the test, so a new pattern
cannot slip through with a made-up value. What a view-only user may legitimately read is the
allow-list below; everything else must answer 403, or 405 to GET and then 403 to POST.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.resolvers import RegexPattern, RoutePattern

from bulkwrites.models import (
    Item,
    ItemCheck,
    ItemPayload,
    ItemStatus,
    Job,
    JobStatus,
    SourceKind,
    SqlSource,
    StreamFailure,
    StreamRule,
    TableSetting,
    Verification,
    VerificationStatus,
)
from bulkwrites.services import tokens
from demo.models import Customer, Order

pytestmark = pytest.mark.django_db(transaction=True)

LOGIN_URL = "/admin/login/"

# GET 200 for a user with every view_* permission and no bulkwrites permission: the admin's
# read-only pages of models they may view, and pages about themselves.
VIEWER_MAY_READ = {
    "admin:index",
    "admin:app_list",
    "admin:jsi18n",
    "admin:password_change",
    "admin:password_change_done",
    "admin:bulkwrites_job_progress",  # the job page's live counts (the job page itself is readable)
    "bulkwrites_api:openapi-json",  # the API's schema and its docs page: for staff, like the admin
    "bulkwrites_api:openapi-view",
    "admin:bulkwrites_streamrule_shards",  # the stream rule page's live shard table (likewise)
}
# Model admins whose read-only pages (list, object, history) a viewer may see. Not SQL sources:
# they need manage_sources or use_sql_sources; not django-rq's dashboard: it needs run_job.
VIEWER_MAY_READ_MODELS = {
    "bulkwrites_job",
    "bulkwrites_item",
    "bulkwrites_tablesetting",
    "bulkwrites_verification",  # a job's verifications and their checks are part of its ledger
    "bulkwrites_itemcheck",
    "bulkwrites_streamrule",
    "bulkwrites_streamfailure",
    "demo_customer",
    "demo_order",
    "auth_user",
    "auth_group",
    "bulkwrites_apitoken",  # their own tokens only (prefixes; a secret is never stored)
}
# The JSON API's endpoints and /metrics take API tokens only, never a session: 401 to anonymous
# and to a logged-in viewer alike, or 405 to a method they do not serve (then 401 to the other).
# tests/integration/test_api_urls.py walks them with tokens too.
TOKEN_ROUTE = re.compile(r"^(api/jobs|metrics$)")
API_ROOT = "bulkwrites_api:api-root"  # no page: 404
# Answers other than 403 that are right whoever asks.
REDIRECTS = {
    "": "/admin/",  # the site root
    "admin:login": "/admin/",  # already logged in
}


@dataclass(frozen=True)
class Route:
    name: str  # "namespace:name", or the route itself when the pattern has no name
    route: str  # the pattern's text, e.g. admin/bulkwrites/job/<int:job_id>/preview/
    url: str  # a concrete URL with every parameter filled
    callback: Any


def walk(patterns: list[Any], prefix: list[Any], namespaces: list[str]) -> Iterator[tuple[list[Any], str, Any]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = [*namespaces, pattern.namespace] if pattern.namespace else namespaces
            yield from walk(pattern.url_patterns, [*prefix, pattern.pattern], inner)
        elif isinstance(pattern, URLPattern):
            name = ":".join([*namespaces, pattern.name]) if pattern.name else ""
            yield [*prefix, pattern.pattern], name, pattern.callback


_ROUTE_PARAM = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")
_REGEX_GROUP = re.compile(r"\(\?P<(?P<name>\w+)>(?:[^()]|\([^()]*\))*\)\??")


def concrete(parts: list[Any], value: Any) -> tuple[str, str]:
    """(route text, concrete URL) of a pattern chain; ``value(name, converter)`` fills parameters."""
    route, url = "", ""
    for part in parts:
        if isinstance(part, RoutePattern):
            text = str(part)
            route += text
            url += _ROUTE_PARAM.sub(lambda m: str(value(m["name"], m["converter"] or "str")), text)
        elif isinstance(part, RegexPattern):
            text = str(part)
            route += text
            filled = _REGEX_GROUP.sub(lambda m: str(value(m["name"], "regex")), text)
            filled = filled.removeprefix("^").removesuffix("$").replace("/?", "/").replace("\\", "")
            url += filled
        else:  # pragma: no cover - a new kind of pattern: teach this test to fill it
            pytest.fail(f"unknown pattern type {type(part).__name__}: {part}")
    return route, "/" + url


@pytest.fixture
def world(django_user_model: Any, rq_queue: Any) -> dict[str, Any]:
    """One real object of every kind a URL can name."""
    job = Job.objects.create(
        table_name="t",
        key_schema=[{"name": "pk", "type": "S", "role": "HASH"}],
        source_kind=SourceKind.FILE,
        source_name="x.csv",
        status=JobStatus.DRAFT,
        total_items=1,
    )
    item = Item.objects.create(job=job, position=1, key={"pk": {"S": "a"}}, status=ItemStatus.PENDING)
    ItemPayload.objects.create(job=job, position=1, payload={"pk": {"S": "a"}})
    verification = Verification.objects.create(job=job, status=VerificationStatus.FAILED, total_items=1)
    check = ItemCheck.objects.create(verification=verification, item=item, position=1)
    source = SqlSource.objects.create(name="s", connection="demo", query="SELECT 1 AS pk")
    setting = TableSetting.objects.create(table_name="t", rate_limit_wcu=10)
    rule = StreamRule.objects.create(
        name="r", source_table="a", stream_arn="arn:aws:dynamodb:us-east-1:1:table/a/stream/x",
        stream_view_type="KEYS_ONLY", target_table="b", events=["REMOVE"], operation="delete",
    )  # fmt: skip
    failure = StreamFailure.objects.create(rule=rule, shard_id="s", sequence_number="1", error_code="X")
    customer = Customer.objects.create(name="Ada", email="ada@example.com", country="GB")
    order = Order.objects.create(customer=customer, number="N-1", total=1, status="paid")
    group = Group.objects.create(name="g")
    viewer = django_user_model.objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    rq_job = rq_queue.enqueue("builtins.len", "abc")  # never run: nothing works this queue here
    objects = {
        "bulkwrites.job": job,
        "bulkwrites.item": item,
        "bulkwrites.verification": verification,
        "bulkwrites.itemcheck": check,
        "bulkwrites.sqlsource": source,
        "bulkwrites.tablesetting": setting,
        "bulkwrites.streamrule": rule,
        "bulkwrites.streamfailure": failure,
        "demo.customer": customer,
        "demo.order": order,
        "auth.user": viewer,
        "auth.group": group,
        "bulkwrites.apitoken": tokens.token_create(user=viewer).token,
    }
    return {
        "objects": objects,
        "job": job,
        "verification": verification,
        "source": source,
        "rule": rule,
        "viewer": viewer,
        "rq_job_id": rq_job.id,
    }


def routes(world: dict[str, Any]) -> list[Route]:
    found: list[Route] = []
    for parts, name, callback in walk(get_resolver().url_patterns, [], []):
        route_text = "".join(str(p) for p in parts)
        model_match = re.match(r"admin/(\w+)/(\w+)/", route_text)

        def value(param: str, converter: str, model_match: Any = model_match, route_text: str = route_text) -> Any:
            if param == "object_id":
                if model_match is None:  # admin/r/<content_type_id>/<object_id>/ (view on site)
                    return world["job"].pk
                label = f"{model_match[1]}.{model_match[2]}"
                if label == "django_rq.dashboard":
                    return 1  # not a table: django-rq's admin entry only
                apps.get_model(label)
                return world["objects"][label].pk
            if param == "job_id":
                return world["job"].pk if converter == "int" else world["rq_job_id"]
            known: dict[str, Any] = {
                "source_id": world["source"].pk,
                "verification_id": world["verification"].pk,
                "verification_action": "resume",
                "rule_id": world["rule"].pk,
                "id": world["viewer"].pk,  # auth's user password form
                "action": "start",
                "status": "failed",
                "fmt": "csv",
                "queue_index": 0,
                "scheduler_index": 0,
                "connection_index": 0,
                "scheduler_name": "scheduler",
                "cron_job_name": "cron-job",
                "result_id": "result",
                "key": "worker",
                "token": "token",
                "content_type_id": ContentType.objects.get_for_model(Job).pk,
                "app_label": "bulkwrites",
                "url": "no-such-page/",
            }
            if param not in known:
                pytest.fail(f"{route_text}: no value for the path parameter {param!r}; add a real one to this test")
            return known[param]

        route, url = concrete(parts, value)
        match = resolve(url)
        if match.func is not callback:
            # Only an earlier pattern with the same URL may take it (the later one is unreachable).
            assert match.route == route.replace("\\", ""), f"{route}: {url} resolves to {match.func} instead"
            continue
        found.append(Route(name=name or route, route=route, url=url, callback=callback))
    return found


def viewer_may_read(route: Route) -> bool:
    if route.name in VIEWER_MAY_READ:
        return True
    m = re.fullmatch(r"admin:(\w+?)_(changelist|change|history)", route.name)
    return bool(m and m[1] in VIEWER_MAY_READ_MODELS)


def object_redirect(route: Route) -> bool:
    """ModelAdmin's old-style object URL (admin/app/model/<id>/) redirects to the change page."""
    return route.route.endswith("<path:object_id>/") and route.name == route.route


def answer(client: Client, method: str, url: str) -> Any:
    return client.post(url) if method == "POST" else client.get(url)


def token_only(client: Client, route: Route) -> bool:
    """An API endpoint (or /metrics) asked without a token: 401, whatever the session says."""
    if route.name == API_ROOT:
        return bool(client.get(route.url).status_code == 404)
    answers = {answer(client, method, route.url).status_code for method in ("GET", "POST")}
    return answers in ({401}, {401, 405})


def test_every_url_as_anonymous_and_view_only_staff(world: dict[str, Any]) -> None:
    all_routes = routes(world)
    names = {r.name for r in all_routes}
    assert "admin:django_rq_home" in names, "django-rq's admin views are registered (RQ_SHOW_ADMIN_LINK)"
    assert "django_rq:home" in names
    assert names >= VIEWER_MAY_READ, f"allow-list entries no URL has: {VIEWER_MAY_READ - names}"

    problems: list[str] = []
    anonymous, viewer = Client(), Client()
    for route in all_routes:
        # --- anonymous: the login page, or nothing ------------------------------------------
        response = anonymous.get(route.url)
        location = response.get("Location", "")
        if TOKEN_ROUTE.match(route.route) or route.name == API_ROOT:
            ok = token_only(anonymous, route)
        elif route.name in REDIRECTS and route.name != "admin:login":
            ok = response.status_code == 302 and location == REDIRECTS[route.name]
        elif route.name == "admin:login":
            ok = response.status_code == 200
        elif route.name == "admin:logout":
            ok = response.status_code in (302, 405)  # POST only; nothing to log out of
        else:
            ok = response.status_code == 302 and location.startswith(LOGIN_URL)
        if not ok:
            problems.append(f"anonymous GET {route.url} ({route.name}): {response.status_code} {location}")

        # --- a staff user with every view_* permission and no other ------------------------
        viewer.force_login(world["viewer"])
        response = viewer.get(route.url)
        status, location = response.status_code, response.get("Location", "")
        if TOKEN_ROUTE.match(route.route) or route.name == API_ROOT:
            ok = token_only(viewer, route)
        elif route.name in REDIRECTS:
            ok = status == 302 and location == REDIRECTS[route.name]
        elif viewer_may_read(route):
            ok = status == 200
        elif object_redirect(route):
            ok = status == 403 or (status == 302 and location.endswith("/change/"))
        elif route.name == "admin:view_on_site":
            ok = status in (302, 404)  # Job has no get_absolute_url: 404; never a page of its own
        elif route.route.endswith("(?P<url>.*)$"):
            ok = status == 404  # the admin's catch-all
        elif status == 405:
            viewer.force_login(world["viewer"])
            posted = viewer.post(route.url)
            ok = posted.status_code == 403 or (route.name == "admin:logout" and posted.status_code in (200, 302))
            status = posted.status_code if not ok else status
        else:
            ok = status == 403
        if not ok:
            problems.append(f"view-only GET {route.url} ({route.name}): {status} {location}")
    assert not problems, "\n".join(problems)


def test_django_rq_admin_views_need_run_job(client: Client, world: dict[str, Any]) -> None:
    """The dashboard django-rq puts inside the admin: 403 without run_job, 200 with it."""
    viewer = world["viewer"]
    client.force_login(viewer)
    for url in ("/admin/django_rq/dashboard/", "/admin/django_rq/dashboard/queues/0/", "/admin/rq/"):
        assert client.get(url).status_code == 403, url
    index = client.get("/admin/").content.decode()
    assert "/admin/django_rq/" not in index  # no link to what the user may not open
    viewer.user_permissions.add(Permission.objects.get(codename="run_job"))
    client.force_login(type(viewer).objects.get(pk=viewer.pk))
    for url in ("/admin/django_rq/dashboard/", "/admin/django_rq/dashboard/queues/0/", "/admin/rq/"):
        assert client.get(url).status_code == 200, url
    assert "/admin/django_rq/" in client.get("/admin/").content.decode()
