"""django-rq's dashboard, behind the permission to run jobs.

django-rq's own views check ``is_staff`` only, and from its dashboard a user can empty a queue,
delete, requeue and stop jobs. Both places they appear are guarded here, by one decorator:

* ``/admin/rq/`` (``project/urls.py``), and
* ``/admin/django_rq/dashboard/...``, which django-rq registers in the admin itself when
  ``RQ_SHOW_ADMIN_LINK`` is on: its ``QueueAdmin`` is replaced by :class:`RunJobQueueAdmin`.

Anonymous and non-staff users are sent to the login page (``admin_view``); staff without
``bulkwrites.run_job`` get 403, also for the JSON stats view django-rq leaves unwrapped. While
Redis does not answer, every page of it is a 503 that says so (django-rq's views raise).
"""

from __future__ import annotations

from functools import wraps
from typing import Any

import django_rq.admin  # registers django-rq's own (is_staff-only) QueueAdmin, replaced below
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver
from django_rq.models import Dashboard

from bulkwrites.dependencies import REDIS_DOWN

RUN_PERMISSION = "bulkwrites.run_job"


def requires_run_permission(view: Any) -> Any:
    """The admin's login and staff checks, then ``bulkwrites.run_job`` (403 without it)."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if not request.user.has_perm(RUN_PERMISSION):
            raise PermissionDenied
        try:
            response = view(request, *args, **kwargs)
            if isinstance(response, TemplateResponse):
                response.render()  # a lazy response reads Redis here, still inside the try
            return response
        except REDIS_DOWN:
            context = {**admin.site.each_context(request), "title": "The job queue does not answer"}
            return TemplateResponse(request, "admin/bulkwrites/queue_unavailable.html", context, status=503)

    return admin.site.admin_view(guarded)


def guard_patterns(patterns: list[Any]) -> list[Any]:
    """The same URL patterns, every view behind :func:`requires_run_permission`."""
    guarded: list[Any] = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            guarded.append(
                URLResolver(
                    pattern.pattern,
                    guard_patterns(pattern.url_patterns),
                    pattern.default_kwargs,
                    app_name=pattern.app_name,
                    namespace=pattern.namespace,
                )
            )
        else:
            view = requires_run_permission(pattern.callback)
            guarded.append(URLPattern(pattern.pattern, view, pattern.default_args, pattern.name))
    return guarded


class RunJobQueueAdmin(django_rq.admin.QueueAdmin):
    """django-rq's admin integration, shown to and usable by users who may run jobs only."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RUN_PERMISSION)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(RUN_PERMISSION)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(RUN_PERMISSION)

    def get_urls(self) -> list[URLPattern]:
        return guard_patterns(super().get_urls())  # type: ignore[no-untyped-call]


if admin.site.is_registered(Dashboard):  # RQ_SHOW_ADMIN_LINK is on
    admin.site.unregister(Dashboard)
    admin.site.register(Dashboard, RunJobQueueAdmin)
