"""The app's own settings, read from ``settings.BULKWRITES`` into one typed object.

``project/settings.py`` fills ``BULKWRITES`` from the environment; code reads it through
:func:`app_settings` (``app_settings().lease_seconds``) rather than indexing the dict, so a
misspelt or missing key fails in one place and every value has a type. It is read on each
call: tests change settings with ``override_settings`` and the object is cheap to make.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings


@dataclass(frozen=True)
class AppSettings:
    max_upload_bytes: int
    """Uploads stream to disk and are read as a stream: this bounds disk use, not memory."""
    queue: str
    """The RQ queue of this deployment (also scopes the rate budgets in Redis)."""
    lease_seconds: int
    """How long a worker holds a slice before another may take it over."""
    run_slice_seconds: int
    """How long one RQ job works on a bulk job before handing over to a fresh RQ job."""
    stall_seconds: int
    """An active job without progress for this long is re-enqueued by the sweeper."""
    sweep_seconds: int
    """How often every worker runs the sweeper (also while idle)."""
    staging_processes: int
    """Processes converting rows while a job is staged (0: in the staging process)."""
    api_source_dirs: tuple[str, ...] = ()
    """Directories the API may create jobs from (server-side paths); empty: none."""
    notify_creator: bool = True
    """Email a job's creator when the job ends or fails."""
    notify_emails: tuple[str, ...] = ()
    """Addresses that hear of every job that ends or fails."""
    webhook_allowed_hosts: tuple[str, ...] = ()
    """Only these webhook hosts when set (``.example.com``: any subdomain)."""
    webhook_allow_private: bool = False
    """Let webhooks reach private, loopback and link-local addresses."""
    webhook_timeout_seconds: float = 5.0
    webhook_attempts: int = 4
    webhook_secret: str = ""
    """Signs each webhook body (HMAC-SHA256) when set."""
    base_url: str = ""
    """The admin's address as users reach it, for links in notifications."""
    stream_callable_prefixes: tuple[str, ...] = ()
    """Modules a stream rule's callable may come from (empty: no callables): staff users pick the
    path, so it must not reach arbitrary code."""
    stream_records_per_read: int = 1000
    """Records one GetRecords call asks for (DynamoDB Streams' maximum is 1,000)."""
    s3_allowed: tuple[str, ...] = ()
    """Buckets (``bucket``) and prefixes (``bucket/prefix``) S3 sources may read; empty: S3 sources off."""
    draft_ttl_hours: float = 24.0
    """A draft older than this expires: hidden from the job list, then deleted by the sweeper (0: never)."""
    price_on_demand_per_million_writes: float = 0.625
    """USD per million write request units of an on-demand table (us-east-1, Standard class)."""
    price_provisioned_wcu_hour: float = 0.00065
    """USD per provisioned WCU-hour (us-east-1, Standard class)."""
    on_demand_assumed_wcu: float = 4000.0
    """WCU/s the preview's duration assumes for an on-demand table with neither a cap nor warm throughput."""


def app_settings() -> AppSettings:
    values: dict[str, Any] = settings.BULKWRITES
    return AppSettings(
        max_upload_bytes=int(values["MAX_UPLOAD_BYTES"]),
        queue=str(values["QUEUE"]),
        lease_seconds=int(values["LEASE_SECONDS"]),
        run_slice_seconds=int(values["RUN_SLICE_SECONDS"]),
        stall_seconds=int(values["STALL_SECONDS"]),
        sweep_seconds=int(values["SWEEP_SECONDS"]),
        staging_processes=int(values["STAGING_PROCESSES"]),
        api_source_dirs=tuple(values["API_SOURCE_DIRS"]),
        notify_creator=bool(values["NOTIFY_CREATOR"]),
        notify_emails=tuple(values["NOTIFY_EMAILS"]),
        webhook_allowed_hosts=tuple(h.lower() for h in values["WEBHOOK_ALLOWED_HOSTS"]),
        webhook_allow_private=bool(values["WEBHOOK_ALLOW_PRIVATE"]),
        webhook_timeout_seconds=float(values["WEBHOOK_TIMEOUT_SECONDS"]),
        webhook_attempts=max(1, int(values["WEBHOOK_ATTEMPTS"])),
        webhook_secret=str(values["WEBHOOK_SECRET"]),
        base_url=str(values["BASE_URL"]),
        stream_callable_prefixes=tuple(str(p) for p in values.get("STREAM_CALLABLE_PREFIXES", ())),
        stream_records_per_read=int(values.get("STREAM_RECORDS_PER_READ", 1000)),
        s3_allowed=tuple(values.get("S3_ALLOWED") or ()),
        draft_ttl_hours=float(values.get("DRAFT_TTL_HOURS", 24)),
        price_on_demand_per_million_writes=float(values.get("PRICE_ON_DEMAND_PER_MILLION_WRITES", 0.625)),
        price_provisioned_wcu_hour=float(values.get("PRICE_PROVISIONED_WCU_HOUR", 0.00065)),
        on_demand_assumed_wcu=float(values.get("ON_DEMAND_ASSUMED_WCU", 4000)),
    )
