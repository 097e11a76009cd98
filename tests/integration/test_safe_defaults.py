"""Safe by default: DEBUG off, no public secret key, no password or key on any error page.

The processes are started for real (``manage.py``, the WSGI module, the worker class) with a
clean environment, the way an operator would start them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import RequestFactory, override_settings
from django.views.debug import technical_500_response

ROOT = Path(__file__).resolve().parents[2]
DB_PASSWORD = "db-S3cret-pw"
REDIS_PASSWORD = "redis-S3cret-pw"
SQL_PASSWORD = "sql-S3cret-pw"


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the Django knobs under test (a fresh shell, as an operator has)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DJANGO_HTTPS")}
    env.update(DJANGO_SETTINGS_MODULE="project.settings", PYTHONPATH=str(ROOT), **extra)
    return env


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


def test_debug_is_off_unless_asked_for() -> None:
    show = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    assert run(show).stdout.strip() == "False"
    assert run(show, DJANGO_DEBUG="1").stdout.strip() == "True"


def test_no_secret_key_is_a_public_constant() -> None:
    show = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"
    first, second = run(show).stdout.strip(), run(show).stdout.strip()
    assert len(first) >= 50
    assert first != second  # made for each process: nothing signed by one is accepted by another
    assert run(show, DJANGO_SECRET_KEY="k" * 60).stdout.strip() == "k" * 60


@pytest.mark.parametrize(
    ("what", "code"),
    [
        ("web process", "import project.wsgi"),
        ("web process", "import project.asgi"),
        ("worker", "import django; django.setup(); from bulkwrites.worker import Worker; Worker(['q'])"),
    ],
)
def test_serving_processes_refuse_to_start_without_a_key(what: str, code: str) -> None:
    result = run(code)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"bulkwrites: refusing to start the {what}: DEBUG is off and DJANGO_SECRET_KEY is not set. "
        "Set DJANGO_SECRET_KEY to a long random value (python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
        "or DJANGO_DEBUG=1 on a development machine."
    ]


@pytest.mark.parametrize("command", ["runserver", "rqworker"])
def test_manage_py_serving_commands_refuse_to_start_without_a_key(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", command, "--help"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"bulkwrites: refusing to start the {command} process: DEBUG is off")
    assert len(result.stderr.strip().splitlines()) == 1


def test_commands_that_serve_nothing_run_without_a_key() -> None:
    """migrate, check, the CLI: no key needed (a random one per process), so CI and scripts just work."""
    result = subprocess.run(
        [sys.executable, "manage.py", "bulkwrite", "--help"], cwd=ROOT, env=clean_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert run("import project.wsgi", DJANGO_SECRET_KEY="k" * 60).returncode == 0
    assert run("import project.wsgi", DJANGO_DEBUG="1").returncode == 0


def test_check_deploy_with_the_readme_production_settings() -> None:
    """What the README's "Security model" sets: only the HSTS preload warning it explains remains."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=clean_env(
            DJANGO_SECRET_KEY="k9-Vq2xR7tL0pZ4mW8sB3nD6fH1jY5cE-aGuIoKeT-rS8wX0zQ3vN7bM1",
            DJANGO_HTTPS="1",
            DJANGO_ALLOWED_HOSTS="bulkwrites.example.com",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    warnings = [line.split(")")[0] + ")" for line in result.stderr.splitlines() if line.startswith("?: (")]
    assert warnings == ["?: (security.W021)"], result.stderr
    without_key = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=clean_env(DJANGO_HTTPS="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "(bulkwrites.W001) DJANGO_SECRET_KEY is not set" in without_key.stderr


def test_database_connections_are_health_checked() -> None:
    assert settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] is True


def test_the_debug_error_page_shows_no_password() -> None:
    """Django hides settings by name (KEY, PASS...); DATABASE_URL, REDIS_URL, RQ_QUEUES[...]["URL"] slipped through."""
    database_url = f"postgres://app:{DB_PASSWORD}@db.internal:5432/bulkwrites"
    redis_url = f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0"
    request = RequestFactory().get("/admin/")
    request.META["DATABASE_URL"] = database_url  # runserver puts the environment in META
    request.META["BULKWRITES_SQL_SHOP"] = f"host=shop user=reader password={SQL_PASSWORD}"
    queues = {"bulkwrites": {"URL": redis_url, "DEFAULT_TIMEOUT": 900}}
    with override_settings(DEBUG=True, REDIS_URL=redis_url, RQ_QUEUES=queues, SOURCE_DSN=database_url):
        try:
            dsn = database_url  # a local variable of the failing frame, shown on the page
            raise RuntimeError(f"boom while connecting (dsn length {len(dsn)})")
        except RuntimeError:
            response: Any = technical_500_response(request, *sys.exc_info())
    page = response.content.decode()
    assert "db.internal" in page  # the page does show these settings and variables...
    assert "cache.internal" in page
    for secret in (DB_PASSWORD, REDIS_PASSWORD, SQL_PASSWORD):
        assert secret not in page  # ...without their passwords
