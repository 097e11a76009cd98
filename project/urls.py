from functools import wraps
from typing import Any

import django_rq.urls
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path
from django.views.generic import RedirectView


def requires_run_permission(view: Any) -> Any:
    """django-rq's dashboard only checks is_staff; here it needs the permission to run jobs."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return admin.site.login(request)
        if not request.user.has_perm("bulkwrites.run_job"):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return guarded


def guard(patterns: list[Any]) -> list[Any]:
    guarded: list[Any] = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            guarded.append(URLResolver(pattern.pattern, guard(pattern.url_patterns), app_name=pattern.app_name))
        elif isinstance(pattern, URLPattern):
            guarded.append(URLPattern(pattern.pattern, requires_run_permission(pattern.callback), name=pattern.name))
    return guarded


urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/rq/", include((guard(django_rq.urls.urlpatterns), "django_rq"))),
    path("admin/", admin.site.urls),
]
