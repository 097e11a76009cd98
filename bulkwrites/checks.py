"""System checks for a deployment (``manage.py check --deploy``)."""

from __future__ import annotations

import os
from typing import Any

from django.core.checks import CheckMessage, Tags, Warning, register


@register(Tags.security, deploy=True)
def secret_key_from_environment(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Without DJANGO_SECRET_KEY each process makes up its own key: sessions would not survive."""
    if os.environ.get("DJANGO_SECRET_KEY"):
        return []
    return [
        Warning(
            "DJANGO_SECRET_KEY is not set: this process uses a random key of its own, and the web "
            "process and the worker refuse to start with DEBUG off.",
            hint="Set DJANGO_SECRET_KEY to a long random value, the same for every web process.",
            id="bulkwrites.W001",
        )
    ]
