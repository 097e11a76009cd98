"""The operator's admin: new jobs from files, the live job page, read-only outcomes.

Thin by design: every view validates its input with a form, calls one service, and tells
the operator what happened. Nothing here talks to boto3 or to RQ.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.timezone import localtime
from import_export.admin import ExportActionMixin

from bulkwrites import (  # noqa: F401 - the other admin modules register themselves when imported:
    admin_rq,  # django-rq's dashboard behind run_job
    admin_streams,  # stream rules and their failed writes
    admin_tokens,  # API tokens
    selectors,
)
from bulkwrites.conf import app_settings
from bulkwrites.forms import FileJobForm, RateForm, SqlSourceForm, TableCopyForm, TargetForm, VerifyForm
from bulkwrites.models import (
    CheckOutcome,
    EstimatedCountQuerySet,
    Item,
    ItemCheck,
    ItemStatus,
    Job,
    JobStatus,
    SqlSource,
    TableSetting,
    Verification,
    VerificationStatus,
)
from bulkwrites.resources import EXPORT_FORMATS, FORMATS_BY_NAME, ItemExportResource, export_items
from bulkwrites.services import control, create, deletion, verifying
from bulkwrites.services.errors import JobError
from bulkwrites.services.sql import SqlSpec

# The job list's bar: one segment per outcome, so a job with failures is never one red block and a
# job that wrote nothing shows no bar at all (progress_cell).
PROGRESS_BAR = (
    '<div class="bw-nowrap"><div class="bw-progress" title="{title}">'
    '<div class="bw-seg bw-seg-succeeded" style="width:{succeeded}%"></div>'
    '<div class="bw-seg bw-seg-failed" style="width:{failed}%"></div>'
    '<div class="bw-seg bw-seg-skipped" style="width:{skipped}%"></div></div>'
    '<span class="bw-pct">{pct}%</span></div>'
    '<div class="bw-sub bw-counts-line">{succeeded_count} / {failed_count} / {skipped_count} of {total}</div>'
)

# The job page's buttons: operator transitions of Job (models.JOB_TRANSITIONS), each with the
# permission it needs, its label and what the operator is told once it is done.
JOB_ACTIONS: dict[str, tuple[str, str, str]] = {
    "start": (control.ACTION_PERMISSIONS["start"], "Start", "Job {id} queued."),
    "resume": (control.ACTION_PERMISSIONS["resume"], "Resume", "Job {id} resumed."),
    "retry_failed": (
        control.ACTION_PERMISSIONS["retry_failed"],
        "Retry failed items",
        "Failed items of job {id} queued again.",
    ),
    "pause": (control.ACTION_PERMISSIONS["pause"], "Pause", "Job {id} paused."),
    "cancel": (control.ACTION_PERMISSIONS["cancel"], "Cancel", "Job {id} cancelled."),
    "repair": (
        control.ACTION_PERMISSIONS["repair"],
        "Repair",
        "Job {id}: the items its verification found missing or different are sent again, then verified again.",
    ),
}
# A verification's own controls on the job page.
VERIFICATION_ACTIONS: dict[str, tuple[str, Any, str]] = {
    "cancel": (
        control.ACTION_PERMISSIONS["cancel_verification"],
        verifying.verification_cancel,
        "Verification {id} cancelled.",
    ),
    "resume": (
        control.ACTION_PERMISSIONS["resume_verification"],
        verifying.verification_resume,
        "Verification {id} resumed.",
    ),
}


# Actions whose button asks for confirmation on a page of its own before anything happens.
CONFIRMED_ACTIONS = frozenset({"cancel"})


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def progress_cell(job: Job) -> str:
    """The job list's progress: outcome segments, or in words what a job without items is at."""
    total = job.total_items
    if not total:
        return format_html('<span class="bw-nothing">{}</span>', _without_items(job))

    def share(count: int) -> str:
        return f"{100.0 * count / total:.2f}"

    return format_html(
        PROGRESS_BAR,
        title=f"{job.succeeded_items:,} succeeded, {job.failed_items:,} failed, {job.skipped_items:,} skipped, "
        f"{job.pending_items:,} pending of {total:,}",
        succeeded=share(job.succeeded_items),
        failed=share(job.failed_items),
        skipped=share(job.skipped_items),
        pct=job.progress_percent,
        succeeded_count=f"{job.succeeded_items:,}",
        failed_count=f"{job.failed_items:,}",
        skipped_count=f"{job.skipped_items:,}",
        total=f"{total:,}",
    )


def _without_items(job: Job) -> str:
    if job.status in JobStatus.active():
        if job.staging_started_at is not None:
            return f"staging: {job.staging_rows_read:,} rows read"
        return "waiting to be staged"
    if job.status == JobStatus.DRAFT:
        return "draft: nothing sent"
    if job.status == JobStatus.CANCELLED and job.started_at is None:
        return "discarded: nothing sent"
    return "nothing written"


class DraftExpiryFilter(admin.SimpleListFilter):
    """Expired drafts (BULKWRITES_DRAFT_TTL_HOURS) are hidden unless asked for; the sweeper deletes them."""

    title = "drafts"
    parameter_name = "drafts"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("all", "include expired drafts"), ("expired", "expired drafts only")]

    def choices(self, changelist: Any) -> Any:
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "hide expired drafts",
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        hours = app_settings().draft_ttl_hours
        if self.value() == "all":
            return queryset
        if hours <= 0:  # drafts never expire
            return queryset.none() if self.value() == "expired" else queryset
        expired = Job.objects.expired_drafts(older_than=timedelta(hours=hours)).values("pk")
        if self.value() == "expired":
            return queryset.filter(pk__in=expired)
        return queryset.exclude(pk__in=expired)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin[Job]):
    # Few, narrow columns: with the navigation and the filters beside it the list has ~620 px at
    # 1280 px, and a column past that edge is cut off (the counts were).
    list_display = ("id", "target", "source", "status", "progress", "created")
    list_filter = (DraftExpiryFilter, "status", "operation", "source_kind", "table_name")
    search_fields = ("table_name", "source_name", "source_sha256")
    list_per_page = 50
    show_full_result_count = False

    class Media:
        css = {"all": ["bulkwrites/admin.css"]}

    @admin.display(description="created", ordering="created_at")
    def created(self, job: Job) -> str:
        moment = localtime(job.created_at)
        return format_html(
            "<div class='bw-nowrap'>{}</div><div class='bw-sub'>{}</div>",
            moment.strftime("%Y-%m-%d"),
            moment.strftime("%H:%M:%S"),
        )

    @admin.display(description="table", ordering="table_name")
    def target(self, job: Job) -> str:
        return format_html('{}<div class="bw-sub">{}</div>', job.table_name, job.operation)

    @admin.display(description="source")
    def source(self, job: Job) -> str:
        return f"{job.get_source_kind_display()}: {job.source_name}"

    @admin.display(description="progress: succeeded / failed / skipped of total")
    def progress(self, job: Job) -> str:
        return progress_cell(job)

    # Jobs are created through the upload flow and never edited: the ledger is an audit trail.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("bulkwrites.run_job")

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    # Should deleting ever be allowed here (the page's delete, the list's "delete selected"), a
    # job never goes through Django's collector, which loads every related row (a 1M-item job:
    # 112 s, 575 MB) and lists each one on the confirmation page: the page names the jobs with
    # their item counts, and the deletion service hides them at once and reclaims their rows.
    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[str], dict[str, int], set[str], list[str]]:
        jobs = list(objs)
        items = sum(job.total_items for job in jobs)
        described = [f"{job} and its ledger: {job.total_items:,} items" for job in jobs]
        # The ledger (items, payloads, slices, verifications) is the job's own: it goes with it.
        return described, {"jobs": len(jobs), "items": items}, set(), []

    def delete_model(self, request: HttpRequest, obj: Job) -> None:
        deletion.job_delete(job=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        deletion.jobs_delete(job_ids=queryset.values_list("pk", flat=True))

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("new-from-file/", wrap(self.new_from_file_view), name="bulkwrites_job_new_from_file"),
            path("new-from-table/", wrap(self.new_from_table_view), name="bulkwrites_job_new_from_table"),
            path("<int:job_id>/preview/", wrap(self.preview_view), name="bulkwrites_job_preview"),
            path("<int:job_id>/progress.json", wrap(self.progress_view), name="bulkwrites_job_progress"),
            path("<int:job_id>/action/<str:action>/", wrap(self.action_view), name="bulkwrites_job_action"),
            path("<int:job_id>/export/<str:status>.<str:fmt>", wrap(self.export_view), name="bulkwrites_job_export"),
            path("<int:job_id>/rate/", wrap(self.rate_view), name="bulkwrites_job_rate"),
            path("<int:job_id>/verify/", wrap(self.verify_view), name="bulkwrites_job_verify"),
            path(
                "<int:job_id>/verification/<int:verification_id>/<str:verification_action>/",
                wrap(self.verification_action_view),
                name="bulkwrites_job_verification_action",
            ),
            *super().get_urls(),
        ]

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        return HttpResponseRedirect(reverse("admin:bulkwrites_job_new_from_file"))

    def _require(self, request: HttpRequest, permission: str) -> None:
        if not request.user.has_perm(permission):
            raise PermissionDenied

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {**self.admin_site.each_context(request), "opts": self.model._meta, "title": title, **extra}

    # --- new job from a file ------------------------------------------------------------

    def new_from_file_view(self, request: HttpRequest) -> HttpResponse:
        self._require(request, "bulkwrites.run_job")
        if request.method == "POST" and _declared_length(request) > app_settings().max_upload_bytes + (1 << 20):
            # Refuse before Django reads the body: a 10 GB upload never reaches the disk.
            return TemplateResponse(
                request,
                "admin/bulkwrites/job/new_from_file.html",
                self._context(
                    request,
                    "New job from a file",
                    form=FileJobForm(),
                    error=create.upload_too_large(_declared_length(request)),
                ),
                status=413,
            )
        form = FileJobForm(request.POST or None, request.FILES or None, tables=selectors.table_listing())
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            common = {
                "table_name": form.cleaned_data["table_name"],
                "operation": form.cleaned_data["operation"],
                "source_format": form.cleaned_data["source_format"] or None,
                "encoding": form.cleaned_data["encoding"],
                "created_by": request.user,
                **form.job_settings(),
            }
            try:
                if upload:
                    job = create.job_create_from_file(upload=upload.file, file_name=upload.name, **common)
                else:
                    job = create.job_create_from_s3(url=form.cleaned_data["s3_url"].strip(), **common)
            except JobError as exc:
                form.add_error(None, str(exc))
            else:
                return HttpResponseRedirect(reverse("admin:bulkwrites_job_preview", args=[job.pk]))
        return TemplateResponse(
            request, "admin/bulkwrites/job/new_from_file.html", self._context(request, "New job from a file", form=form)
        )

    def new_from_table_view(self, request: HttpRequest) -> HttpResponse:
        """A job copying another DynamoDB table; then the same preview as files (its first items)."""
        self._require(request, "bulkwrites.run_job")
        form = TableCopyForm(request.POST or None, tables=selectors.table_listing())
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                job = create.job_create_from_table(
                    source_table=data["source_table"].strip(),
                    source_region=data["source_region"] or "",
                    segments=data["segments"],
                    mapping_text=data["mapping"],
                    table_name=data["table_name"],
                    operation=data["operation"],
                    created_by=request.user,
                    **form.job_settings(),
                )
            except JobError as exc:
                form.add_error(None, str(exc))
            else:
                return HttpResponseRedirect(reverse("admin:bulkwrites_job_preview", args=[job.pk]))
        context = self._context(request, "New job from a DynamoDB table", form=form)
        return TemplateResponse(request, "admin/bulkwrites/job/new_from_table.html", context)

    def preview_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        self._require(request, "bulkwrites.run_job")
        job = get_object_or_404(Job, pk=job_id)
        if job.status != JobStatus.DRAFT:
            return HttpResponseRedirect(reverse("admin:bulkwrites_job_change", args=[job.pk]))
        preview = error = None
        try:
            preview = create.job_preview(job)
        except JobError as exc:
            error = str(exc)
        return TemplateResponse(
            request,
            "admin/bulkwrites/job/preview.html",
            self._context(
                request,
                f"Preview of job {job.pk}",
                job=job,
                preview=preview,
                error=error,
                table=selectors.preview_table(preview.samples, job.key_schema) if preview else None,
                estimate=selectors.preview_estimate(job, preview.write_units) if preview and preview.valid else None,
            ),
        )

    # --- the job page -------------------------------------------------------------------

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        job = get_object_or_404(Job, pk=object_id)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        user = request.user
        allowed = {name for name, (permission, _, _) in JOB_ACTIONS.items() if user.has_perm(permission)}
        latest = job.latest_verification()
        context = self._context(
            request,
            f"Job {job.pk}: {job.source_name} → {job.table_name}",
            job=job,
            progress=selectors.job_progress(job),
            failed_items=selectors.failed_items(job)[:50],
            failures_by_code=selectors.failures_by_code(job),
            actions=[
                {"name": a, "label": JOB_ACTIONS[a][1], "confirm": a in CONFIRMED_ACTIONS}
                for a in job.available_actions()
                if a in allowed
            ],
            can_export=user.has_perm("bulkwrites.export_items"),
            can_set_rate=user.has_perm("bulkwrites.run_job") and not job.is_finished,
            runs=selectors.run_totals(job),
            history=log_entry_for(job).select_related("user").order_by("action_time")[:50],
            items_url=reverse("admin:bulkwrites_item_changelist") + f"?job__id__exact={job.pk}",
            verification=selectors.verification_progress(latest),
            verifications=selectors.verifications(job),
            mismatches=selectors.mismatched_checks(latest, limit=50),
            checks_url=(
                reverse("admin:bulkwrites_itemcheck_changelist") + f"?verification__id__exact={latest.pk}"
                if latest
                else ""
            ),
            can_verify=user.has_perm(control.ACTION_PERMISSIONS["verify"])
            and job.is_finished
            and not (latest and latest.is_active),
            verify_form=VerifyForm(),
            verification_actions=_verification_actions(request, latest),
            original=job,
        )
        return TemplateResponse(request, "admin/bulkwrites/job/job_page.html", context)

    def progress_view(self, request: HttpRequest, job_id: int) -> JsonResponse:
        job = get_object_or_404(Job, pk=job_id)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        return JsonResponse(selectors.job_progress(job))

    def action_view(self, request: HttpRequest, job_id: int, action: str) -> HttpResponse:
        """Start, pause, resume, cancel or retry: POST only, permission-checked, logged.

        Cancel asks first: its button posts without ``confirmed`` and gets a page saying what
        cancelling will do, whose own button posts again with ``confirmed=yes``.
        """
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if action not in JOB_ACTIONS:
            raise Http404("unknown action")
        permission, _, message = JOB_ACTIONS[action]
        self._require(request, permission)
        job = get_object_or_404(Job, pk=job_id)
        if action in CONFIRMED_ACTIONS and request.POST.get("confirmed") != "yes" and job.can(action):
            return TemplateResponse(
                request,
                "admin/bulkwrites/job/confirm_cancel.html",
                self._context(request, f"Cancel job {job.pk}?", job=job, progress=selectors.job_progress(job)),
            )
        try:
            control.ACTIONS[action](job=job)
        except JobError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, message.format(id=job.pk))
            log_change(request, job, f"{action.replace('_', ' ')} (status now {job.status})")
        return HttpResponseRedirect(reverse("admin:bulkwrites_job_change", args=[job.pk]))

    def rate_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        """Change the job's write-capacity cap, also while it runs (POST, run_job, logged)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self._require(request, "bulkwrites.run_job")
        job = get_object_or_404(Job, pk=job_id)
        form = RateForm(request.POST)
        if form.is_valid():
            rate = form.cleaned_data["rate_limit_wcu"]
            control.job_set_rate(job=job, wcu_per_second=rate)
            message = f"rate cap set to {rate:g} WCU/s" if rate else "rate cap removed"
            messages.success(request, f"Job {job.pk}: {message}.")
            log_change(request, job, message)
        else:
            messages.error(request, "The rate must be a positive number of WCU/s (empty: no cap).")
        return HttpResponseRedirect(reverse("admin:bulkwrites_job_change", args=[job.pk]))

    def verify_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        """Queue a verification of the job's written items (POST, run_job, logged); workers read them back."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self._require(request, control.ACTION_PERMISSIONS["verify"])
        job = get_object_or_404(Job, pk=job_id)
        form = VerifyForm(request.POST)
        if not form.is_valid():
            messages.error(request, " ".join(str(m) for errors in form.errors.values() for m in errors))
        else:
            try:
                verification = verifying.verification_create(
                    job=job, created_by=request.user, **form.verification_settings()
                )
            except JobError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(
                    request, f"Verification {verification.pk} of job {job.pk} queued: {verification.scope()}."
                )
                log_change(request, job, f"verify (verification {verification.pk}: {verification.scope()})")
        return HttpResponseRedirect(reverse("admin:bulkwrites_job_change", args=[job.pk]))

    def verification_action_view(
        self, request: HttpRequest, job_id: int, verification_id: int, verification_action: str
    ) -> HttpResponse:
        """Cancel or resume a verification: POST only, permission-checked, logged on the job."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        action = verification_action
        if action not in VERIFICATION_ACTIONS:
            raise Http404("unknown action")
        permission, service, message = VERIFICATION_ACTIONS[action]
        self._require(request, permission)
        verification = get_object_or_404(Verification, pk=verification_id, job_id=job_id)
        try:
            service(verification=verification)
        except JobError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, message.format(id=verification.pk))
            log_change(request, verification.job, f"{action} verification {verification.pk}")
        return HttpResponseRedirect(reverse("admin:bulkwrites_job_change", args=[job_id]))

    def export_view(self, request: HttpRequest, job_id: int, status: str, fmt: str) -> HttpResponse:
        """Download a job's items of one status (usually ``failed``) as CSV, XLSX, TSV or JSON."""
        self._require(request, "bulkwrites.export_items")
        job = get_object_or_404(Job, pk=job_id)
        if fmt not in FORMATS_BY_NAME or status not in ItemStatus.values:
            raise Http404("unknown export")
        content, content_type = export_items(job.items.filter(status=status).order_by("position"), fmt)
        response = HttpResponse(content, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="job-{job.pk}-{status}-items.{fmt}"'
        return response


class FailedErrorCodeFilter(admin.SimpleListFilter):
    title = "error code"
    parameter_name = "error_code"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        job_id = request.GET.get("job__id__exact")
        codes = selectors.error_codes(int(job_id) if job_id and job_id.isdigit() else None)
        return [(code, code) for code in codes]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Item]) -> QuerySet[Item]:
        return queryset.filter(error_code=self.value()) if self.value() else queryset


class EstimatedCountPaginator(Paginator[Any]):
    """Exact counts up to what PostgreSQL counts in 200 ms, the planner's estimate beyond.

    COUNT(*) over a million-item job takes seconds; a page of 100 rows takes milliseconds.
    ``count_is_estimate`` tells the item list's templates to say "about N", never "N results".
    """

    count_is_estimate = False

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if isinstance(rows, EstimatedCountQuerySet):
            count, exact = rows.count_or_estimate()
            self.count_is_estimate = not exact
            return count
        # The admin pages other lists with the same paginator (an item's history: LogEntry rows).
        return rows.count() if isinstance(rows, QuerySet) else len(rows)


@admin.register(Item)
class ItemAdmin(ExportActionMixin, admin.ModelAdmin[Item]):  # type: ignore[misc]
    resource_classes = [ItemExportResource]
    paginator = EstimatedCountPaginator
    # job_id, not job: ordering by the relation would join Job and sort a million rows.
    ordering = ("job_id", "position")
    export_formats = EXPORT_FORMATS
    list_display = ("position", "job_link", "key_text", "status", "attempts", "error_code", "short_error", "updated_at")
    list_filter = ("status", FailedErrorCodeFilter)
    search_fields = ("key",)  # searched by get_search_results: exact keys through the key-hash index
    search_help_text = "An exact key: its value (pk value), or every key attribute as the list shows it: pk=a, sk=1."
    list_select_related = False
    list_per_page = 100
    show_full_result_count = False
    readonly_fields = [f.name for f in Item._meta.fields] + ["payload_text"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Item]:
        # The list never needs the raw row or the history (nor the payload, kept apart in
        # ItemPayload): keep pages fast on big jobs.
        return super().get_queryset(request).defer("raw", "history")

    @admin.display(description="payload")
    def payload_text(self, item: Item) -> str:
        """The item as sent (DynamoDB JSON), read from its own table; a dash for a row never read."""
        payload = item.payload
        return "—" if payload is None else json.dumps(payload, ensure_ascii=False, sort_keys=True)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Item], search_term: str) -> Any:
        if not search_term:
            return queryset, False
        job_id = request.GET.get("job__id__exact", "")
        job = Job.objects.filter(pk=job_id).first() if job_id.isdigit() else None
        search = selectors.search_items_by_key(queryset, search_term.strip(), job=job)
        if search.note:
            messages.info(request, search.note)
        return search.items, False

    @admin.display(description="job", ordering="job")
    def job_link(self, item: Item) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:bulkwrites_job_change", args=[item.job_id]), item.job_id
        )

    @admin.display(description="key")
    def key_text(self, item: Item) -> str:
        return item.key_text

    @admin.display(description="error")
    def short_error(self, item: Item) -> str:
        return item.error_message[:120]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Item | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Item | None = None) -> bool:
        return False

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("bulkwrites.export_items")


def _verification_actions(request: HttpRequest, verification: Verification | None) -> list[dict[str, Any]]:
    """The controls the latest verification offers this user (cancel while it runs, resume after)."""
    if verification is None:
        return []
    offered = []
    if verification.status in (VerificationStatus.DRAFT, *VerificationStatus.active()):
        offered.append("cancel")
    if verification.status in (VerificationStatus.FAILED, VerificationStatus.CANCELLED):
        offered.append("resume")
    return [
        {"name": name, "label": f"{name.title()} verification"}
        for name in offered
        if request.user.has_perm(VERIFICATION_ACTIONS[name][0])
    ]


class CheckOutcomeFilter(admin.SimpleListFilter):
    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("mismatched", "missing or different"), *CheckOutcome.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ItemCheck]) -> QuerySet[ItemCheck]:
        value = self.value()
        if value == "mismatched":
            return queryset.filter(outcome__in=CheckOutcome.mismatches())
        return queryset.filter(outcome=value) if value else queryset


@admin.register(ItemCheck)
class ItemCheckAdmin(admin.ModelAdmin[ItemCheck]):
    """What verifications found, item by item: read-only, filtered by outcome."""

    paginator = EstimatedCountPaginator
    ordering = ("verification_id", "position")
    list_display = ("position", "verification_link", "item_link", "key_text", "outcome", "short_diff", "attempts")
    list_filter = (CheckOutcomeFilter,)
    list_select_related = ("item",)
    list_per_page = 100
    show_full_result_count = False
    readonly_fields = [f.name for f in ItemCheck._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ItemCheck]:
        return super().get_queryset(request).defer("item__raw", "item__history")

    @admin.display(description="verification")
    def verification_link(self, check: ItemCheck) -> str:
        job_id = check.item.job_id
        url = reverse("admin:bulkwrites_job_change", args=[job_id])
        return format_html('<a href="{}">{} (job {})</a>', url, check.verification_id, job_id)

    @admin.display(description="row")
    def item_link(self, check: ItemCheck) -> str:
        url = reverse("admin:bulkwrites_item_change", args=[check.item_id])
        return format_html('<a href="{}">{}</a>', url, check.item.position)

    @admin.display(description="key")
    def key_text(self, check: ItemCheck) -> str:
        return check.item.key_text

    @admin.display(description="what differs")
    def short_diff(self, check: ItemCheck) -> str:
        if check.error_message:
            return f"{check.error_code}: {check.error_message}"[:200]
        return "; ".join(f"{d['attribute']}: {d['expected']} → {d['actual']}" for d in check.diff or [])[:300]

    # The outcomes of a job are part of its ledger: whoever may see the job may see them.
    def has_view_permission(self, request: HttpRequest, obj: ItemCheck | None = None) -> bool:
        return request.user.has_perm("bulkwrites.view_job")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ItemCheck | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ItemCheck | None = None) -> bool:
        return False


@admin.register(Verification)
class VerificationAdmin(admin.ModelAdmin[Verification]):
    """Every verification, read-only; they are started from the job page or the CLI."""

    list_display = (
        "id", "job_link", "status", "scope", "total_items", "verified_items", "missing_items", "different_items",
        "errored_items", "consumed_rcu", "started_at", "finished_at",
    )  # fmt: skip
    list_filter = ("status", "sampled", "consistent_read")
    list_select_related = ("job",)
    readonly_fields = [f.name for f in Verification._meta.fields]

    @admin.display(description="job")
    def job_link(self, verification: Verification) -> str:
        url = reverse("admin:bulkwrites_job_change", args=[verification.job_id])
        return format_html('<a href="{}">{}</a>', url, verification.job)

    def has_view_permission(self, request: HttpRequest, obj: Verification | None = None) -> bool:
        return request.user.has_perm("bulkwrites.view_job")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Verification | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Verification | None = None) -> bool:
        return False


def log_change(request: HttpRequest, job: Job, message: str) -> None:
    """Record an operator's control action in Django's admin log, with the user."""
    assert request.user.pk is not None  # admin views only serve logged-in staff
    LogEntry.objects.log_actions(
        user_id=request.user.pk, queryset=[job], action_flag=CHANGE, change_message=message, single_object=True
    )


def log_entry_for(job: Job) -> QuerySet[LogEntry]:
    return LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(Job), object_id=str(job.pk))


@admin.register(SqlSource)
class SqlSourceAdmin(admin.ModelAdmin[SqlSource]):
    """Saved PostgreSQL sources: managed with manage_sources, used with use_sql_sources + run_job."""

    form = SqlSourceForm
    list_display = ("name", "connection", "what", "created_by", "created_at")
    search_fields = ("name", "query", "table")
    readonly_fields = ("created_by", "created_at")

    @admin.display(description="reads")
    def what(self, source: SqlSource) -> str:
        return (source.query or f"table {source.table}")[:100]

    def has_view_permission(self, request: HttpRequest, obj: SqlSource | None = None) -> bool:
        user = request.user
        return user.has_perm("bulkwrites.manage_sources") or user.has_perm("bulkwrites.use_sql_sources")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("bulkwrites.manage_sources")

    def has_change_permission(self, request: HttpRequest, obj: SqlSource | None = None) -> bool:
        return request.user.has_perm("bulkwrites.manage_sources")

    def has_delete_permission(self, request: HttpRequest, obj: SqlSource | None = None) -> bool:
        return request.user.has_perm("bulkwrites.manage_sources")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def get_form(self, request: HttpRequest, obj: SqlSource | None = None, change: bool = False, **kwargs: Any) -> Any:
        """The form with the catalog of its connection: the lists are read here, by the view."""
        form = super().get_form(request, obj, change=change, **kwargs)
        asked = request.POST if request.method == "POST" else request.GET

        def chosen(name: str) -> str:
            return str(asked.get(name) or (getattr(obj, name) if obj is not None else "") or "")

        catalog = selectors.source_catalog(chosen("connection"), chosen("table"))
        return type(form.__name__, (form,), {"catalog": catalog})

    def save_model(self, request: HttpRequest, obj: SqlSource, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user  # type: ignore[assignment]  # admin views: a logged-in user
        super().save_model(request, obj, form, change)

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<int:source_id>/new-job/", wrap(self.new_job_view), name="bulkwrites_sqlsource_new_job"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_start_job": _may_use_sql(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def new_job_view(self, request: HttpRequest, source_id: int) -> HttpResponse:
        """A job from this source: pick the target, then the same preview as files."""
        if not _may_use_sql(request):
            raise PermissionDenied
        source = get_object_or_404(SqlSource, pk=source_id)
        form = TargetForm(request.POST or None, tables=selectors.table_listing())
        if request.method == "POST" and form.is_valid():
            try:
                job = create.job_create_from_sql(
                    spec=SqlSpec.for_source(source),
                    table_name=form.cleaned_data["table_name"],
                    operation=form.cleaned_data["operation"],
                    source_name=source.name,
                    created_by=request.user,
                    **form.job_settings(),
                )
            except JobError as exc:
                form.add_error(None, str(exc))
            else:
                return HttpResponseRedirect(reverse("admin:bulkwrites_job_preview", args=[job.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"New job from {source.name}",
            "form": form,
            "source": source,
        }
        return TemplateResponse(request, "admin/bulkwrites/sqlsource/new_job.html", context)


def _may_use_sql(request: HttpRequest) -> bool:
    return request.user.has_perm("bulkwrites.run_job") and request.user.has_perm("bulkwrites.use_sql_sources")


@admin.register(TableSetting)
class TableSettingAdmin(admin.ModelAdmin[TableSetting]):
    list_display = ("table_name", "rate_limit_wcu")
    search_fields = ("table_name",)
