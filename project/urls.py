"""The project's URLs: the admin (with django-rq's dashboard inside it), django-rq at /admin/rq/,
the JSON API at /api/ and Prometheus' /metrics.

Every view behind these patterns checks a permission; tests/integration/test_url_permissions.py
walks them all as an anonymous and as a view-only staff user (tests/integration/test_api_urls.py
also with API tokens).
"""

import django_rq.urls
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from bulkwrites.admin_rq import guard_patterns
from bulkwrites.api.views import api as bulkwrites_api
from bulkwrites.metrics import metrics_view

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/rq/", include((guard_patterns(django_rq.urls.urlpatterns), "django_rq"))),
    path("admin/", admin.site.urls),
    # The JSON API (token auth; schema at /api/openapi.json, docs at /api/docs) and Prometheus' /metrics.
    path("api/", bulkwrites_api.urls),
    path("metrics", metrics_view, name="bulkwrites_metrics"),
]
