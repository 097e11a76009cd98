"""The "Copy to DynamoDB" admin action, for any model admin that opts in.

Opting in is one line: put ``CopyToDynamoDBMixin`` first in the model admin's bases.
The action works on the selected records, or on every record matching the current filters
when the operator selects all of them.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import ActionLocation
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from bulkwrites.forms import CopyRecordsForm
from bulkwrites.selectors import table_listing
from bulkwrites.services import create
from bulkwrites.services.errors import JobError
from bulkwrites.sources.querysets import format_mapping, model_fields

RUN_PERMISSION = "bulkwrites.run_job"


@admin.action(description="Copy to DynamoDB")
def copy_to_dynamodb(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]
) -> HttpResponse | None:
    if not request.user.has_perm(RUN_PERMISSION):
        raise PermissionDenied
    model = queryset.model
    select_across = request.POST.get("select_across") == "1"
    count = queryset.count()
    if "copy_apply" in request.POST:
        form = CopyRecordsForm(request.POST, tables=table_listing())
        if form.is_valid():
            description = (
                f"all {count} {model._meta.verbose_name_plural} matching the filters"
                f" {request.GET.urlencode() or '(none)'}"
                if select_across
                else f"{count} selected {model._meta.verbose_name_plural}"
            )
            try:
                job = create.job_create_from_queryset(
                    queryset=queryset,
                    table_name=form.cleaned_data["table_name"],
                    operation=form.cleaned_data["operation"],
                    mapping_text=form.cleaned_data["mapping"],
                    description=description,
                    created_by=request.user,
                    **form.job_settings(),
                )
            except JobError as exc:
                form.add_error(None, str(exc))
            else:
                messages.info(request, f"Job {job.pk}: {count} records read; check the preview and confirm.")
                return HttpResponseRedirect(reverse("admin:bulkwrites_job_preview", args=[job.pk]))
    else:
        form = CopyRecordsForm(tables=table_listing())
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Copy {count} {model._meta.verbose_name_plural} to DynamoDB",
        "opts": model._meta,
        "form": form,
        "count": count,
        "select_across": select_across,
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "fields": format_mapping([(name, name) for _, name in model_fields(model)]),
        "media": model_admin.media,
    }
    return TemplateResponse(request, "admin/bulkwrites/copy_to_dynamodb.html", context)


class CopyToDynamoDBMixin:
    """Adds "Copy to DynamoDB" to a ModelAdmin's actions, shown only to users who may run jobs."""

    def get_actions(
        self, request: HttpRequest, action_location: ActionLocation = ActionLocation.CHANGE_LIST
    ) -> dict[str, Any]:
        actions: dict[str, Any] = super().get_actions(request, action_location)  # type: ignore[misc]
        if action_location == ActionLocation.CHANGE_LIST and request.user.has_perm(RUN_PERMISSION):
            actions["copy_to_dynamodb"] = self.get_action(copy_to_dynamodb)  # type: ignore[attr-defined]
        return actions
