"""Settings for the bulkwrites project.

Everything that differs between a laptop and production comes from environment variables,
with defaults that point at the services ``make services`` starts under ``.local/``.
AWS credentials are never read here: boto3's standard chain finds them.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
import django_stubs_ext

# Lets the admin's and forms' generic classes be subscripted at run time (ModelAdmin[Job]),
# as django-stubs types them.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> list[str]:
    """A comma-separated variable as a list (empty entries dropped)."""
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


# Off unless asked for: `make run` and the dev tooling set DJANGO_DEBUG=1.
DEBUG = env_bool("DJANGO_DEBUG", False)
# Never a public constant. Without DJANGO_SECRET_KEY the process gets a random key of its own:
# fine for commands that serve nothing (migrate, the CLI, the tests); the web process and the
# worker refuse to start that way unless DEBUG is on (project/security.py). `make run` keeps a
# generated key in .local/secret_key.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# Production over HTTPS: DJANGO_HTTPS=1 (README, "Security model"). Behind a TLS-terminating
# proxy that sets X-Forwarded-Proto, also DJANGO_TLS_PROXY_HEADER=1.
HTTPS = env_bool("DJANGO_HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", 31_536_000 if HTTPS else 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
if env_bool("DJANGO_TLS_PROXY_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Error pages (DEBUG's technical page, the mails to ADMINS) also hide connection-string passwords.
DEFAULT_EXCEPTION_REPORTER_FILTER = "project.security.SecretScrubbingFilter"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_rq",
    "import_export",
    # Only for the API docs page's own Swagger UI files (served from here, never a CDN).
    "ninja",
    "bulkwrites",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://bulkwrites@127.0.0.1:54329/bulkwrites"),
        conn_max_age=60,
        # A connection dropped by a PostgreSQL restart is noticed before the next request uses it.
        conn_health_checks=True,
    )
}
# JIT compilation costs ~1.4 s on a scan of a million-item job and never pays off for the
# short, indexed queries this app makes.
DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
# One test database per test process, so two suites on one server never drop each other's.
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("BULKWRITES_TEST_DB") or f"test_bulkwrites_{os.getpid()}"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:63799/0")
BULKWRITES_QUEUE = os.environ.get("BULKWRITES_QUEUE", "bulkwrites")
RQ_QUEUES = {
    BULKWRITES_QUEUE: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 900},
}
RQ = {
    # Enqueue only after the transaction that created the job commits (django-rq's default
    # since 4.0; stated so nobody turns it off by accident).
    "COMMIT_MODE": "on_db_commit",
    "WORKER_CLASS": "bulkwrites.worker.Worker",
}
RQ_SHOW_ADMIN_LINK = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / ".local" / "static"
MEDIA_ROOT = Path(os.environ.get("BULKWRITES_MEDIA_ROOT", BASE_DIR / ".local" / "media"))
MEDIA_URL = "media/"

# Uploads: Django has no maximum upload size of its own. Bodies above this stream to a
# temporary file instead of memory; the product's own cap is BULKWRITES["MAX_UPLOAD_BYTES"].
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# Off on purpose: bulkwrites.resources neutralises every formula trigger instead of
# stripping one leading "=" (which is what this setting does).
IMPORT_EXPORT_ESCAPE_FORMULAE_ON_EXPORT = False


def env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


BULKWRITES = {
    # Uploads stream to disk and are read as a stream: the cap bounds disk use, not memory.
    # 1 GiB holds a million rows of ~1 KB (a 1M-row CSV of 150-byte rows is ~150 MB).
    "MAX_UPLOAD_BYTES": int(os.environ.get("BULKWRITES_MAX_UPLOAD_BYTES", 1024 * 1024 * 1024)),
    "QUEUE": BULKWRITES_QUEUE,
    # Seconds a worker holds a slice of items before another worker may take it over.
    "LEASE_SECONDS": int(os.environ.get("BULKWRITES_LEASE_SECONDS", 30)),
    # Seconds one RQ job works on a bulk-write job before handing over to a fresh RQ job,
    # so SIGTERM (finish the current job, then exit) never has to wait long.
    "RUN_SLICE_SECONDS": int(os.environ.get("BULKWRITES_RUN_SLICE_SECONDS", 60)),
    # A queued/running job with no progress for this long is re-enqueued by the sweeper,
    # which every worker runs this often (also while idle).
    "STALL_SECONDS": int(os.environ.get("BULKWRITES_STALL_SECONDS", 45)),
    "SWEEP_SECONDS": int(os.environ.get("BULKWRITES_SWEEP_SECONDS", 20)),
    # Processes converting source rows while staging COPYs them into PostgreSQL; 0 converts
    # in the staging process itself. Sources under 2,000 rows are always converted inline.
    "STAGING_PROCESSES": int(os.environ.get("BULKWRITES_STAGING_PROCESSES", os.cpu_count() or 1)),
    # What one row of an uploaded file may take, checked while reading (README, "Limits on files");
    # unset: the defaults of bulkwrites/sources/formats/limits.py (409,600 characters a cell, 2 MiB
    # a row, 16,384 cells a row, 256 MiB an unpacked XLSX part).
    "MAX_CELL_CHARS": env_int("BULKWRITES_MAX_CELL_CHARS"),
    "MAX_ROW_BYTES": env_int("BULKWRITES_MAX_ROW_BYTES"),
    "MAX_ROW_CELLS": env_int("BULKWRITES_MAX_ROW_CELLS"),
    "MAX_XLSX_PART_BYTES": env_int("BULKWRITES_MAX_XLSX_PART_BYTES"),
    # --- automation (README: "Automation: CLI, API, metrics, notifications") ---------------
    # Directories the API may create jobs from (server-side paths); empty: none. Paths are
    # resolved (symlinks followed) before the check, so a link cannot lead out of them.
    "API_SOURCE_DIRS": _env_list("BULKWRITES_API_SOURCE_DIRS"),
    # Who hears when a job ends or fails: its creator (if the user has an email address) and
    # these addresses.
    "NOTIFY_CREATOR": env_bool("BULKWRITES_NOTIFY_CREATOR", True),
    "NOTIFY_EMAILS": _env_list("BULKWRITES_NOTIFY_EMAILS"),
    # Webhooks: only these hosts when set (exact names, or ".example.com" for its subdomains);
    # private, loopback and link-local addresses are refused unless allowed here.
    "WEBHOOK_ALLOWED_HOSTS": _env_list("BULKWRITES_WEBHOOK_ALLOWED_HOSTS"),
    "WEBHOOK_ALLOW_PRIVATE": env_bool("BULKWRITES_WEBHOOK_ALLOW_PRIVATE", False),
    "WEBHOOK_TIMEOUT_SECONDS": float(os.environ.get("BULKWRITES_WEBHOOK_TIMEOUT_SECONDS", 5)),
    "WEBHOOK_ATTEMPTS": int(os.environ.get("BULKWRITES_WEBHOOK_ATTEMPTS", 4)),
    # When set, each webhook carries X-Bulkwrites-Signature: sha256=HMAC(secret, body).
    "WEBHOOK_SECRET": os.environ.get("BULKWRITES_WEBHOOK_SECRET", ""),
    # The admin's address as users reach it (https://bulkwrites.example.com), for links in
    # notifications; empty: no link.
    "BASE_URL": os.environ.get("BULKWRITES_BASE_URL", "").rstrip("/"),
    # Stream rules: the modules (dotted prefixes, comma-separated) a rule's callable may come from.
    # Empty by default: a staff user must never be able to point a rule at arbitrary code.
    "STREAM_CALLABLE_PREFIXES": tuple(
        p.strip() for p in os.environ.get("BULKWRITES_STREAM_CALLABLE_PREFIXES", "").split(",") if p.strip()
    ),
    # Records one GetRecords call asks for (at most 1,000, DynamoDB Streams' own limit).
    "STREAM_RECORDS_PER_READ": int(os.environ.get("BULKWRITES_STREAM_RECORDS_PER_READ", 1000)),
    # What a gzip or zstd file may decompress to (read as a stream; unset: 10 GiB).
    "MAX_DECOMPRESSED_BYTES": env_int("BULKWRITES_MAX_DECOMPRESSED_BYTES"),
    # Buckets ("bucket") and prefixes ("bucket/prefix") S3 sources may read, comma-separated; empty
    # (the default) switches S3 sources off (README, "Security model").
    "S3_ALLOWED": [entry.strip() for entry in os.environ.get("BULKWRITES_S3_ALLOWED", "").split(",") if entry.strip()],
    # --- pages (README: "Operator's guide") ------------------------------------------------
    # A draft nobody started or discarded expires after this many hours: hidden from the job
    # list by default, then deleted with its stored file by the workers' sweeper. 0: never.
    "DRAFT_TTL_HOURS": float(os.environ.get("BULKWRITES_DRAFT_TTL_HOURS", 24)),
    # The preview's cost estimate. Prices differ by region and change: the defaults are AWS's
    # us-east-1 prices for the Standard table class (checked 2025: on-demand $0.625 per million
    # write request units since the November 2024 cut; provisioned $0.00065 per WCU-hour).
    "PRICE_ON_DEMAND_PER_MILLION_WRITES": float(os.environ.get("BULKWRITES_PRICE_ON_DEMAND_PER_MILLION_WRITES", 0.625)),
    "PRICE_PROVISIONED_WCU_HOUR": float(os.environ.get("BULKWRITES_PRICE_PROVISIONED_WCU_HOUR", 0.00065)),
    # The write rate the estimate assumes for an on-demand table without a cap, when DescribeTable
    # gives no warm throughput: what a new on-demand table serves at once (4,000 WRU/s).
    "ON_DEMAND_ASSUMED_WCU": float(os.environ.get("BULKWRITES_ON_DEMAND_ASSUMED_WCU", 4000)),
}

# Notifications go out through Django's mailers (MAILERS, new in Django 6.1; the EMAIL_* settings
# are deprecated). Without a configured SMTP server the development default prints mails to
# the worker's log.
_MAIL_BACKEND = os.environ.get(
    "DJANGO_EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
)
MAILERS = {
    "default": {
        "BACKEND": _MAIL_BACKEND,
        "OPTIONS": {
            "host": os.environ.get("DJANGO_EMAIL_HOST", "localhost"),
            "port": int(os.environ.get("DJANGO_EMAIL_PORT", 25)),
            "username": os.environ.get("DJANGO_EMAIL_HOST_USER", ""),
            "password": os.environ.get("DJANGO_EMAIL_HOST_PASSWORD", ""),
            "use_tls": env_bool("DJANGO_EMAIL_USE_TLS", False),
            "timeout": 10,
        }
        if _MAIL_BACKEND.endswith("smtp.EmailBackend")
        else {},
    }
}
DEFAULT_FROM_EMAIL = os.environ.get("DJANGO_DEFAULT_FROM_EMAIL", "bulkwrites@localhost")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "bulkwrites": {"handlers": ["console"], "level": os.environ.get("BULKWRITES_LOG_LEVEL", "INFO")},
    },
}
