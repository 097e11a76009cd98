"""The project's URLs: the admin (with django-rq's dashboard inside it) and django-rq at /admin/rq/.

Every view behind these patterns checks a permission; tests/integration/test_url_permissions.py
walks them all as an anonymous and as a view-only staff user.
"""

import django_rq.urls
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from bulkwrites.admin_rq import guard_patterns

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/rq/", include((guard_patterns(django_rq.urls.urlpatterns), "django_rq"))),
    path("admin/", admin.site.urls),
]
