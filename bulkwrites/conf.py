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
    )
