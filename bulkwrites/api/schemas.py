"""What the API takes and gives, as pydantic models (they are also its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ninja import Schema
from pydantic import Field

from bulkwrites.models import Job

Action = Literal["start", "pause", "resume", "cancel", "retry_failed", "repair"]
ExportFormat = Literal["csv", "json", "xlsx"]
ItemStatusName = Literal["pending", "succeeded", "failed", "skipped"]


class ErrorOut(Schema):
    detail: str = Field(description="what went wrong, in one line")


class JobSummaryOut(Schema):
    id: int
    status: str
    table: str
    operation: str
    source: str
    total: int
    succeeded: int
    failed: int
    skipped: int
    pending: int
    percent: float
    rate_limit_wcu: float | None
    error_code: str
    error_message: str
    created_at: datetime
    created_by: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def of(job: Job) -> dict[str, Any]:
        creator = job.created_by
        return {
            "id": job.pk,
            "status": job.status,
            "table": job.table_name,
            "operation": job.operation,
            "source": f"{job.source_kind}: {job.source_name}",
            "total": job.total_items,
            "succeeded": job.succeeded_items,
            "failed": job.failed_items,
            "skipped": job.skipped_items,
            "pending": job.pending_items,
            "percent": job.progress_percent,
            "rate_limit_wcu": job.rate_limit_wcu,
            "error_code": job.error_code,
            "error_message": job.error_message,
            "created_at": job.created_at,
            "created_by": creator.get_username() if creator is not None else None,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
        }


class JobListOut(Schema):
    jobs: list[JobSummaryOut]
    next_offset: int | None = Field(description="pass as offset for the next page; null: this was the last")


class VerificationOut(Schema):
    """A job's latest read-back verification, as the job page shows it."""

    id: int
    status: str
    status_label: str
    active: bool
    scope: str
    sampled: bool
    eligible: int = Field(description="written items a full verification checks")
    total: int = Field(description="items this verification checks")
    checked: int
    verified: int
    missing: int
    different: int
    errored: int = Field(description="items that could not be read back")
    consistent_read: bool
    rate_limit_rcu: float | None
    calls: int
    throttled_calls: int
    unprocessed_returned: int
    consumed_rcu: float
    duration_seconds: float | None
    items_per_second: float
    error_code: str
    error_message: str


class JobOut(Schema):
    """The job page's live fields (its ``progress.json``), plus what the job is and what may be done to it."""

    id: int
    status: str
    status_label: str
    finished: bool
    total: int
    succeeded: int
    failed: int
    skipped: int
    pending: int
    percent: float
    items_per_second: float
    eta_seconds: int | None
    calls: int
    throttled_calls: int
    throttled_share: float
    unprocessed_returned: int
    consumed_wcu: float
    error_code: str
    error_message: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    rate_limit_wcu: float | None
    allowed_wcu: float | None = Field(description="the rate the shared limiter allows now (active jobs)")
    observed_wcu: float | None = Field(description="WCU/s consumed lately (active jobs)")
    rate_reason: str = Field(default="", description="why the allowed rate is what it is (the limiter's last decision)")
    history: list[list[float]] = Field(
        description="[seconds since start, items/s, WCU/s, throttled share of calls] per time bucket"
    )
    verification: VerificationOut | None = Field(description="the latest read-back verification; null: never verified")
    state: str = Field(
        default="", description="what the job is doing, in words (e.g. staging: 12,000 of ~60,000 rows read)"
    )
    live_workers: int | None = Field(default=None, description="workers listening on the queue (active jobs)")
    worker_warning: str = Field(default="", description="set when no worker serves the job's queue")
    staging_rows_read: int = Field(default=0, description="source rows read so far while the job is staged")
    staging_rows_estimate: int | None = Field(
        default=None, description="rows the source holds, estimated while staging"
    )
    created_at: datetime
    created_by: str | None
    table: str
    operation: str
    source: str
    webhook_host: str | None = Field(description="the webhook's host (its URL may hold a secret)")
    actions: list[str] = Field(description="control actions this job offers and the token's user may take")
    message: str | None = Field(default=None, description="what the call did, for a control call")


class JobCreateIn(Schema):
    source: str = Field(
        description="absolute path of a file on the server, inside BULKWRITES_API_SOURCE_DIRS, "
        "or s3://bucket/key of an object inside BULKWRITES_S3_ALLOWED (streamed by the workers, never copied)"
    )
    table: str = Field(description="the DynamoDB table")
    format: str | None = Field(default=None, description="csv, tsv, json, jsonl, xlsx, dynamodb; default: detected")
    operation: Literal["put", "delete"] = "put"
    start: bool = Field(default=False, description="queue it at once instead of leaving a draft to preview")
    webhook_url: str | None = Field(default=None, description="POSTed a JSON summary when the job ends or fails")
    rate_limit_wcu: float | None = None
    concurrency: int | None = None
    workers: int | None = None
    max_attempts: int | None = None
    batch_size: int | None = None
    duplicate_policy: Literal["last", "first", "reject"] | None = None


class RateIn(Schema):
    wcu: float | None = Field(description="write capacity units per second; null or 0 removes the cap")
