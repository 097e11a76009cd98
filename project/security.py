"""Safe defaults the project enforces: a secret key before serving, and error pages without secrets.

* :func:`require_secret_key` - the web process (WSGI, ASGI, ``runserver``) and the worker
  (``rqworker``, :class:`bulkwrites.worker.Worker`) refuse to start with ``DEBUG`` off and no
  ``DJANGO_SECRET_KEY``. Commands that serve nothing (``migrate``, ``check``, the ``bulkwrite``
  CLI, the tests) run with a random key made for the process (see ``project/settings.py``):
  nothing they sign outlives them, and no key is ever a public constant.
* :class:`SecretScrubbingFilter` - Django's ``SafeExceptionReporterFilter`` hides settings and
  request metadata by *name* (API, TOKEN, KEY, SECRET, PASS, SIGNATURE); ``DATABASE_URL``,
  ``REDIS_URL``, ``RQ_QUEUES[...]["URL"]`` and ``BULKWRITES_SQL_<NAME>`` carry passwords under
  names that do not match. This filter also scrubs by *value*: the password of any URL
  (``scheme://user:password@host``) and any ``password=...`` of a libpq connection string.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

SECRET_KEY_ENV = "DJANGO_SECRET_KEY"  # noqa: S105 - a variable name
SERVING_COMMANDS = frozenset({"runserver", "rqworker", "rqworker-pool"})
MISSING_KEY_MESSAGE = (
    "bulkwrites: refusing to start the {what}: DEBUG is off and DJANGO_SECRET_KEY is not set. "
    "Set DJANGO_SECRET_KEY to a long random value (python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
    "or DJANGO_DEBUG=1 on a development machine."
)


def secret_key_missing() -> bool:
    """DEBUG off and no DJANGO_SECRET_KEY in the environment: the process has only a throwaway key."""
    from django.conf import settings

    return not settings.DEBUG and not os.environ.get(SECRET_KEY_ENV)


def require_secret_key(what: str) -> None:
    """Exit with one line on stderr when a serving process would run without a real secret key."""
    if secret_key_missing():
        sys.stderr.write(MISSING_KEY_MESSAGE.format(what=what) + "\n")
        sys.stderr.flush()
        raise SystemExit(1)


def require_secret_key_for_command(argv: list[str]) -> None:
    """``manage.py runserver`` / ``rqworker`` serve: they need the key; other commands do not."""
    command = argv[1] if len(argv) > 1 else ""
    if command in SERVING_COMMANDS:
        require_secret_key(f"{command} process")


# --- error pages ----------------------------------------------------------------------------

REDACTED = "********************"  # what Django's own filter shows
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^@/\s]*)(?P<tail>@)", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)
_URL_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:ssl)?password=)(?P<secret>[^&#\s]*)", re.IGNORECASE)


def scrub_secrets(text: str) -> str:
    """``text`` with the password of every URL and of every ``password=...`` replaced."""
    for pattern in (_URL_PASSWORD, _URL_QUERY_PASSWORD, _KV_PASSWORD):
        text = pattern.sub(lambda m: m.group("head") + REDACTED + (m.groupdict().get("tail") or ""), text)
    return text


class SecretScrubbingFilter(SafeExceptionReporterFilter):
    """Django's filter, plus: names that hold connection strings, and passwords found in any value."""

    hidden_settings = re.compile(r"API|TOKEN|KEY|SECRET|PASS|SIGNATURE|DSN|CREDENTIAL|AUTH", flags=re.IGNORECASE)

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        return _scrub_value(cleansed)

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        return [(name, _scrub_value(value)) for name, value in super().get_traceback_frame_variables(request, tb_frame)]


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_secrets(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_scrub_value(v) for v in value)
    return value
