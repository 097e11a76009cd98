"""The API's endpoints. Each checks the admin's permission for what it does, then calls a service.

Errors are JSON ``{"detail": "one line"}``: 401 no or bad token, 403 a permission the token's
user lacks, 404 no such job, 409 the job's status refuses the action, 400 a request the
services refuse (bad file, missing table, bad setting), 422 a malformed request. Never a
stack trace: anything unexpected is logged and answered 500 with one line.
"""

import logging
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from ninja import NinjaAPI, Query, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError

from bulkwrites import selectors
from bulkwrites.api.auth import TokenAuth, token_of
from bulkwrites.api.schemas import (
    Action,
    ErrorOut,
    ExportFormat,
    ItemStatusName,
    JobCreateIn,
    JobListOut,
    JobOut,
    JobSummaryOut,
    RateIn,
)
from bulkwrites.models import Job, JobStatus
from bulkwrites.resources import export_items
from bulkwrites.services import audit, control, dispatch, server_files
from bulkwrites.services.errors import JobError, QueueUnavailable
from bulkwrites.sources import formats

logger = logging.getLogger(__name__)

# The admin's permissions, checked with the token before the request is parsed.
VIEW = "bulkwrites.view_job"
RUN = control.ACTION_PERMISSIONS["start"]
EXPORT = "bulkwrites.export_items"
MAX_PAGE = 500
EXPORT_DEFAULT_ROWS = 10_000
EXPORT_MAX_ROWS = 100_000

api = NinjaAPI(
    title="bulkwrites",
    version="1",
    description="Bulk-write jobs into DynamoDB: list, create, start, follow, control, export. "
    "Authenticate with `Authorization: Bearer <token>` (README: Automation).",
    auth=TokenAuth(),
    urls_namespace="bulkwrites_api",
    openapi_url="/openapi.json",
    docs_url="/docs",
    # The schema and its docs page are for logged-in staff; the endpoints take tokens only.
    docs_decorator=staff_member_required,
)

ERRORS: dict[int, Any] = {401: ErrorOut, 403: ErrorOut, 404: ErrorOut}


def _action_permission(request: HttpRequest) -> str | None:
    """The control endpoint's permission depends on its action (an unknown one is refused as invalid)."""
    match = request.resolver_match
    return control.ACTION_PERMISSIONS.get(str(match.kwargs.get("action"))) if match else None


# --- errors: one line of JSON ---------------------------------------------------------------


def _detail(request: HttpRequest, message: str, status: int) -> HttpResponse:
    response = api.create_response(request, {"detail": message}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="bulkwrites"'
    return response


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    message = exc.message if exc.message != "Unauthorized" else "An API token is required."
    return _detail(request, message, 401)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return _detail(request, exc.message, exc.status_code)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _detail(request, str(exc) or "Not found.", 404)


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors]
    response = api.create_response(
        request, {"detail": "; ".join(problems) or "invalid request", "errors": problems}, status=422
    )
    return response


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("API %s %s failed", request.method, request.path)
    return _detail(request, "Internal error; the server's log has the details.", 500)


# --- reads ----------------------------------------------------------------------------------


def _job(job_id: int) -> Job:
    job = Job.objects.select_related("created_by").filter(pk=job_id).first()
    if job is None:
        raise HttpError(404, f"No job {job_id}.")
    return job


def _job_out(request: HttpRequest, job: Job, message: str | None = None) -> dict[str, Any]:
    user = request.user
    actions = [a for a in job.available_actions() if user.has_perm(control.ACTION_PERMISSIONS[a])]
    summary = JobSummaryOut.of(job)
    return {
        **selectors.job_progress(job),
        "table": summary["table"],
        "operation": summary["operation"],
        "source": summary["source"],
        "created_by": summary["created_by"],
        "created_at": summary["created_at"],
        "webhook_host": job.webhook_host,
        "actions": actions,
        "message": message,
    }


@api.get("/jobs", response={200: JobListOut, **ERRORS}, auth=TokenAuth(VIEW), summary="List jobs, newest first")
def list_jobs(
    request: HttpRequest,
    status: JobStatus | None = None,
    table: str | None = None,
    limit: int = Query(50, ge=1, le=MAX_PAGE),  # type: ignore[type-arg]
    offset: int = Query(0, ge=0),  # type: ignore[type-arg]
) -> dict[str, Any]:
    jobs = Job.objects.select_related("created_by").order_by("-id")
    if status:
        jobs = jobs.filter(status=status)
    if table:
        jobs = jobs.filter(table_name=table)
    page = list(jobs[offset : offset + limit + 1])
    more = len(page) > limit
    return {
        "jobs": [JobSummaryOut.of(job) for job in page[:limit]],
        "next_offset": offset + limit if more else None,
    }


@api.get(
    "/jobs/{int:job_id}", response={200: JobOut, **ERRORS}, auth=TokenAuth(VIEW), summary="A job's status and counts"
)
def job_status(request: HttpRequest, job_id: int) -> dict[str, Any]:
    return _job_out(request, _job(job_id))


# --- creating, controlling ------------------------------------------------------------------


@api.post(
    "/jobs",
    response={201: JobOut, 400: ErrorOut, 503: ErrorOut, **ERRORS},
    auth=TokenAuth(RUN),
    summary="Create a job from a server-side file or an S3 object",
)
def create_job(request: HttpRequest, payload: JobCreateIn) -> Status[dict[str, Any]]:
    if payload.format and payload.format not in formats.FORMATS:
        raise HttpError(400, f"Unknown format {payload.format!r}; choose one of {', '.join(formats.FORMATS)}.")
    settings = payload.model_dump(
        include={"webhook_url", "rate_limit_wcu", "concurrency", "workers", "max_attempts", "batch_size",
                 "duplicate_policy"}
    )  # fmt: skip
    token = token_of(request)
    try:
        if payload.start:
            dispatch.require_queue("start the job")  # before the job is made: no draft left behind
        job = server_files.job_create_from_location(
            location=payload.source,
            table_name=payload.table,
            operation=payload.operation,
            source_format=payload.format,
            created_by=token.user,
            **settings,
        )
    except QueueUnavailable as exc:
        raise HttpError(503, str(exc)) from None
    except JobError as exc:
        raise HttpError(400, str(exc)) from None
    message = f"job {job.pk} created as a draft"
    if payload.start:
        try:
            control.job_start(job=job)
        except QueueUnavailable as exc:  # Redis went away since it was asked, a moment ago
            raise HttpError(503, f"Job {job.pk} was created as a draft. {exc}") from None
        except JobError as exc:  # pragma: no cover - a new draft can always start
            raise HttpError(409, str(exc)) from None
        _record(request, job, f"start (status now {job.status})")
        message = f"job {job.pk} created and queued"
    return Status(201, _job_out(request, _job(job.pk), message))


@api.post(
    "/jobs/{int:job_id}/actions/{action}",
    response={200: JobOut, 409: ErrorOut, 503: ErrorOut, **ERRORS},
    auth=TokenAuth(_action_permission),
    summary="Start, pause, resume, cancel or retry failed items",
)
def job_action(request: HttpRequest, job_id: int, action: Action) -> dict[str, Any]:
    """The job page's buttons, with their permissions; 409 when the job's status refuses the action."""
    job = _job(job_id)
    try:
        result = control.ACTIONS[action](job=job)
    except QueueUnavailable as exc:
        raise HttpError(503, str(exc)) from None
    except JobError as exc:
        raise HttpError(409, str(exc)) from None
    job.refresh_from_db()
    _record(request, job, f"{action.replace('_', ' ')} (status now {job.status})")
    message = f"{result} failed item(s) queued again" if action == "retry_failed" else f"{action} done"
    return _job_out(request, job, message)


@api.post(
    "/jobs/{int:job_id}/rate",
    response={200: JobOut, 400: ErrorOut, 409: ErrorOut, **ERRORS},
    auth=TokenAuth(RUN),
    summary="Set or remove a job's rate cap",
)
def job_rate(request: HttpRequest, job_id: int, payload: RateIn) -> dict[str, Any]:
    job = _job(job_id)
    if job.is_finished:
        raise HttpError(409, f"Job {job.pk} is {job.status}; the rate cap of a finished job cannot change.")
    wcu = payload.wcu or None
    try:
        control.job_set_rate(job=job, wcu_per_second=wcu)
    except JobError as exc:
        raise HttpError(400, str(exc)) from None
    message = f"rate cap set to {wcu:g} WCU/s" if wcu else "rate cap removed"
    _record(request, job, message)
    return _job_out(request, job, message)


def _record(request: HttpRequest, job: Job, message: str) -> None:
    token = token_of(request)
    audit.record_job_change(job=job, user_id=token.user.pk, message=f"{message} through the API (token {token.prefix})")


# --- exports --------------------------------------------------------------------------------


@api.get(
    "/jobs/{int:job_id}/items",
    response={200: None, **ERRORS},
    auth=TokenAuth(EXPORT),
    summary="Export a job's items (failed by default)",
    openapi_extra={
        "responses": {
            200: {
                "description": "the items as CSV, JSON or XLSX, cells that start like a formula prefixed with '; "
                "header X-Next-After: pass as `after` for the next part, when there is one",
                "content": {"text/csv": {}, "application/json": {}, "application/vnd.ms-excel": {}},
            }
        }
    },
)
def export_job_items(
    request: HttpRequest,
    job_id: int,
    status: ItemStatusName = "failed",
    format: ExportFormat = "csv",
    limit: int = Query(EXPORT_DEFAULT_ROWS, ge=1, le=EXPORT_MAX_ROWS),  # type: ignore[type-arg]
    after: int = Query(0, ge=0, description="only items after this position"),  # type: ignore[type-arg]
) -> HttpResponse:
    """Bounded: at most ``limit`` items a call, in position order; follow ``X-Next-After`` for more."""
    job = _job(job_id)
    items = job.items.filter(status=status, position__gt=after).order_by("position").defer("history")
    page = list(items.with_payload()[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    content, content_type = export_items(page, format)
    response = HttpResponse(content, content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}-{status}-items-{stamp}.{format}"'
    if more:
        response["X-Next-After"] = str(page[-1].position)
    return response
