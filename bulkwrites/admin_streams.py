"""The admin of stream rules: add a rule, its live page (shards, lag, failures), and its controls.

Thin, like ``bulkwrites.admin``: each view checks a permission, calls one service and says what
happened. Who may do what:

- ``bulkwrites.view_streamrule`` (and ``view_streamfailure``): see rules, shards and failures;
- ``bulkwrites.manage_streams``: add, delete, pause, resume, set the rate, change the mapping,
  retry failed writes;
- ``bulkwrites.export_items``: export the failed-writes ledger (as for job items).

Every control is POST-only and recorded in Django's admin log with the user.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, Q, QuerySet, Sum
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from import_export.admin import ExportActionMixin

from bulkwrites import selectors, selectors_streams
from bulkwrites.forms_streams import StreamMappingForm, StreamRateForm, StreamRuleForm
from bulkwrites.models import StreamFailure, StreamFailureStatus, StreamRule
from bulkwrites.resources import EXPORT_FORMATS, FORMATS_BY_NAME, StreamFailureExportResource, export_stream_failures
from bulkwrites.services.errors import JobError
from bulkwrites.services.streams import rules

MANAGE = "bulkwrites.manage_streams"
EXPORT = "bulkwrites.export_items"

# The rule page's buttons: operator transitions (models.STREAM_RULE_TRANSITIONS) and their messages.
RULE_ACTIONS: dict[str, tuple[str, str]] = {
    "pause": ("Pause", "Stream rule {name} paused: workers stop before their next call."),
    "resume": ("Resume", "Stream rule {name} resumed from every shard's checkpoint."),
}


def log_rule(request: HttpRequest, rule: StreamRule, message: str, *, flag: int = CHANGE) -> None:
    """Record an operator's action on a rule in Django's admin log, with the user."""
    assert request.user.pk is not None  # admin views only serve logged-in staff
    LogEntry.objects.log_actions(
        user_id=request.user.pk, queryset=[rule], action_flag=flag, change_message=message, single_object=True
    )


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied


@admin.register(StreamRule)
class StreamRuleAdmin(admin.ModelAdmin[StreamRule]):
    list_display = ("name", "status", "lag", "what", "records", "writes", "failures")
    list_filter = ("status", "operation")
    search_fields = ("name", "source_table", "target_table")

    class Media:
        css = {"all": ["bulkwrites/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[StreamRule]:
        open_shards = Q(shards__finished=False)
        return (
            super()
            .get_queryset(request)
            .annotate(
                max_lag=Max("shards__lag_seconds", filter=open_shards & Q(shards__caught_up=False)),
                shards_read=Count("shards__last_read_at", filter=open_shards),
                records_read=Sum("shards__records_read"),
                succeeded=Sum("shards__writes_succeeded"),
                failed=Sum("shards__writes_failed"),
            )
        )

    @admin.display(description="lag")
    def lag(self, rule: Any) -> str:
        if not rule.shards_read:
            return "—"
        return "caught up" if not rule.max_lag else f"{rule.max_lag:,.1f} s"

    @admin.display(description="rule")
    def what(self, rule: StreamRule) -> str:
        return f"{rule.source_table} {'/'.join(rule.events)} → {rule.operation} in {rule.target_table}"

    @admin.display(description="records read")
    def records(self, rule: Any) -> str:
        return f"{rule.records_read or 0:,}"

    @admin.display(description="writes succeeded / failed")
    def writes(self, rule: Any) -> str:
        return f"{rule.succeeded or 0:,} / {rule.failed or 0:,}"

    @admin.display(description="failed writes")
    def failures(self, rule: StreamRule) -> str:
        url = reverse("admin:bulkwrites_streamfailure_changelist") + f"?rule__id__exact={rule.pk}&status__exact=failed"
        return format_html('<a href="{}">ledger</a>', url)

    # Rules are added through their form and changed only through the controls below.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(MANAGE)

    def has_change_permission(self, request: HttpRequest, obj: StreamRule | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: StreamRule | None = None) -> bool:
        return request.user.has_perm(MANAGE)

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<int:rule_id>/shards/", wrap(self.shards_view), name="bulkwrites_streamrule_shards"),
            path("<int:rule_id>/action/<str:action>/", wrap(self.action_view), name="bulkwrites_streamrule_action"),
            path("<int:rule_id>/rate/", wrap(self.rate_view), name="bulkwrites_streamrule_rate"),
            path("<int:rule_id>/mapping/", wrap(self.mapping_view), name="bulkwrites_streamrule_mapping"),
            path("<int:rule_id>/retry/", wrap(self.retry_view), name="bulkwrites_streamrule_retry"),
            path(
                "<int:rule_id>/export/<str:status>.<str:fmt>",
                wrap(self.export_view),
                name="bulkwrites_streamrule_export",
            ),
            *super().get_urls(),
        ]

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {**self.admin_site.each_context(request), "opts": self.model._meta, "title": title, **extra}

    # --- a new rule --------------------------------------------------------------------

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        _require(request, MANAGE)
        form = StreamRuleForm(request.POST or None, tables=selectors.table_listing())
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                rule = rules.stream_rule_create(
                    name=data["name"],
                    source_table=data["source_table"],
                    target_table=data["target_table"],
                    events=data["events"],
                    operation=data["operation"],
                    mapping_text=data["mapping"],
                    callable_path=data["callable_path"],
                    start_position=data["start_position"],
                    rate_limit_wcu=data["rate_limit_wcu"],
                    created_by=request.user,
                )
            except JobError as exc:
                form.add_error(None, str(exc))
            else:
                log_rule(request, rule, "created the rule", flag=ADDITION)
                messages.success(request, f"Stream rule {rule.name} created; workers consume its stream.")
                return HttpResponseRedirect(reverse("admin:bulkwrites_streamrule_change", args=[rule.pk]))
        return TemplateResponse(
            request, "admin/bulkwrites/streamrule/add.html", self._context(request, "New stream rule", form=form)
        )

    # --- the rule page -----------------------------------------------------------------

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        rule = get_object_or_404(StreamRule, pk=object_id)
        if not self.has_view_permission(request, rule):
            raise PermissionDenied
        may_manage = request.user.has_perm(MANAGE)
        context = self._context(
            request,
            f"Stream rule {rule.name}",
            rule=rule,
            shards=selectors_streams.shard_rows(rule),
            totals=selectors_streams.rule_totals(rule),
            failures=selectors_streams.recent_failures(rule),
            actions=[{"name": a, "label": RULE_ACTIONS[a][0]} for a in rule.available_actions()] if may_manage else [],
            can_manage=may_manage,
            can_export=request.user.has_perm(EXPORT),
            history=LogEntry.objects.filter(
                content_type=ContentType.objects.get_for_model(StreamRule), object_id=str(rule.pk)
            )
            .select_related("user")
            .order_by("action_time")[:50],
            failures_url=reverse("admin:bulkwrites_streamfailure_changelist") + f"?rule__id__exact={rule.pk}",
            original=rule,
        )
        return TemplateResponse(request, "admin/bulkwrites/streamrule/rule_page.html", context)

    def shards_view(self, request: HttpRequest, rule_id: int) -> HttpResponse:
        """The shard table alone, for the rule page to refresh itself."""
        rule = get_object_or_404(StreamRule, pk=rule_id)
        if not self.has_view_permission(request, rule):
            raise PermissionDenied
        context = {
            "rule": rule,
            "shards": selectors_streams.shard_rows(rule),
            "totals": selectors_streams.rule_totals(rule),
        }
        return TemplateResponse(request, "admin/bulkwrites/streamrule/_shards.html", context)

    def action_view(self, request: HttpRequest, rule_id: int, action: str) -> HttpResponse:
        """Pause or resume: POST only, manage_streams, logged."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        _require(request, MANAGE)  # before anything else: an unknown action tells nothing either
        if action not in RULE_ACTIONS:
            raise Http404("unknown action")
        rule = get_object_or_404(StreamRule, pk=rule_id)
        try:
            rules.ACTIONS[action](rule=rule)
        except JobError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, RULE_ACTIONS[action][1].format(name=rule.name))
            log_rule(request, rule, f"{action} (status now {rule.status})")
        return HttpResponseRedirect(reverse("admin:bulkwrites_streamrule_change", args=[rule.pk]))

    def rate_view(self, request: HttpRequest, rule_id: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        _require(request, MANAGE)
        rule = get_object_or_404(StreamRule, pk=rule_id)
        form = StreamRateForm(request.POST)
        if form.is_valid():
            rate = form.cleaned_data["rate_limit_wcu"]
            rules.stream_rule_set_rate(rule=rule, wcu_per_second=rate)
            message = f"rate cap set to {rate:g} WCU/s" if rate else "rate cap removed"
            messages.success(request, f"Stream rule {rule.name}: {message}.")
            log_rule(request, rule, message)
        else:
            messages.error(request, "The rate must be a positive number of WCU/s (empty: no cap).")
        return HttpResponseRedirect(reverse("admin:bulkwrites_streamrule_change", args=[rule.pk]))

    def mapping_view(self, request: HttpRequest, rule_id: int) -> HttpResponse:
        """Change the rule's mapping and callable (POST, manage_streams, logged with the old one)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        _require(request, MANAGE)
        rule = get_object_or_404(StreamRule, pk=rule_id)
        form = StreamMappingForm(request.POST)
        before = f"{rule.mapping!r} {rule.callable_path!r}"
        if not form.is_valid():
            messages.error(request, "The mapping could not be read.")
        else:
            try:
                rules.stream_rule_set_mapping(
                    rule=rule,
                    mapping_text=form.cleaned_data["mapping"],
                    callable_path=form.cleaned_data["callable_path"],
                )
            except JobError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, f"Stream rule {rule.name}: mapping changed (workers take it within a slice).")
                log_rule(request, rule, f"mapping changed from {before} to {rule.mapping!r} {rule.callable_path!r}")
        return HttpResponseRedirect(reverse("admin:bulkwrites_streamrule_change", args=[rule.pk]))

    def retry_view(self, request: HttpRequest, rule_id: int) -> HttpResponse:
        """Send the failed writes again, mapped as the rule maps now (POST, manage_streams, logged)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        _require(request, MANAGE)
        rule = get_object_or_404(StreamRule, pk=rule_id)
        try:
            queued = rules.stream_rule_retry_failures(rule=rule)
        except JobError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"{queued} failed writes of {rule.name} queued to be sent again.")
            log_rule(request, rule, f"retry of {queued} failed writes")
        return HttpResponseRedirect(reverse("admin:bulkwrites_streamrule_change", args=[rule.pk]))

    def export_view(self, request: HttpRequest, rule_id: int, status: str, fmt: str) -> HttpResponse:
        _require(request, EXPORT)
        rule = get_object_or_404(StreamRule, pk=rule_id)
        if fmt not in FORMATS_BY_NAME or status not in StreamFailureStatus.values:
            raise Http404("unknown export")
        content, content_type = export_stream_failures(
            StreamFailure.objects.filter(rule=rule, status=status).order_by("pk"), fmt
        )
        response = HttpResponse(content, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="stream-{rule.pk}-{status}-writes.{fmt}"'
        return response


@admin.register(StreamFailure)
class StreamFailureAdmin(ExportActionMixin, admin.ModelAdmin[StreamFailure]):  # type: ignore[misc]
    """The failed-writes ledger: read-only, filtered by rule, status and error code, exportable."""

    resource_classes = [StreamFailureExportResource]
    export_formats = EXPORT_FORMATS
    list_display = ("id", "rule", "shard_id", "sequence_number", "event_name", "key_text", "status", "error_code")
    list_filter = ("status", "error_code", "rule")
    search_fields = ("sequence_number", "keys__icontains")
    list_select_related = ("rule",)
    readonly_fields = [f.name for f in StreamFailure._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[StreamFailure]:
        return super().get_queryset(request).defer("record", "history")

    @admin.display(description="key")
    def key_text(self, failure: StreamFailure) -> str:
        return failure.key_text

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: StreamFailure | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: StreamFailure | None = None) -> bool:
        return False

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(EXPORT)
