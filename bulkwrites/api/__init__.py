"""The JSON API for automation (django-ninja): list, create, start, follow, control and export jobs.

``views.api`` is mounted at ``/api/`` (``project/urls.py``); its OpenAPI schema is
``/api/openapi.json`` and its docs page ``/api/docs``. Thin like the admin: every endpoint
checks the permission the admin would, calls one service or selector, and answers JSON.
"""
