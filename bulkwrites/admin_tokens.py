"""The admin of API tokens: make one (its secret shown once, on the page that made it), list, revoke.

A token acts with its user's permissions, so a staff user makes tokens for themselves only;
a superuser may make them for anyone. Tokens are never edited or deleted: revoked ones stay
as the record of what could reach the API. Registered from ``bulkwrites.admin``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from bulkwrites.models import ApiToken
from bulkwrites.services import tokens


class NewTokenForm(forms.Form):
    user = forms.ModelChoiceField(queryset=get_user_model().objects.none(), help_text="the token acts as this user")
    name = forms.CharField(max_length=100, required=False, help_text="what it is for (a script, a scraper...)")
    expires_in_days = forms.IntegerField(
        min_value=1, max_value=tokens.MAX_EXPIRY_DAYS, required=False, help_text="empty: never expires"
    )

    def __init__(self, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        users = get_user_model().objects.filter(is_active=True, is_staff=True)
        if not request.user.is_superuser:
            users = users.filter(pk=request.user.pk or 0)
        field = self.fields["user"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = users.order_by("username")
        field.initial = request.user.pk


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    list_display = ("prefix", "user", "name", "state", "created_at", "last_used_at", "expires_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    readonly_fields = ("prefix", "user", "name", "created_at", "last_used_at", "expires_at", "revoked_at")
    exclude = ("secret_hash",)
    actions = ["revoke"]

    @admin.display(description="state")
    def state(self, token: ApiToken) -> str:
        return "revoked" if token.is_revoked else "expired" if token.is_expired else "active"

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        tokens_seen = super().get_queryset(request).select_related("user")
        return tokens_seen if request.user.is_superuser else tokens_seen.filter(user_id=request.user.pk or 0)

    def has_view_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        user = request.user
        return user.has_perm("bulkwrites.view_apitoken") or user.has_perm("bulkwrites.add_apitoken")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("bulkwrites.add_apitoken")

    def has_change_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)  # of the tokens get_queryset shows: their own

    @admin.action(description="Revoke the selected tokens", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = []
        for token in queryset.filter(revoked_at__isnull=True):
            tokens.token_revoke(prefix=token.prefix)
            self.log_change(request, token, "revoked")
            revoked.append(token.prefix)
        messages.success(request, f"Revoked: {', '.join(revoked) or 'nothing (already revoked)'}.")

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        """Make a token and show its secret on this response only: it is stored nowhere."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = NewTokenForm(request.POST or None, request=request)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "title": "New API token"}
        if request.method == "POST" and form.is_valid():
            try:
                made = tokens.token_create(
                    user=form.cleaned_data["user"],
                    name=form.cleaned_data["name"],
                    expires_in_days=form.cleaned_data["expires_in_days"],
                )
            except tokens.TokenError as exc:
                form.add_error(None, str(exc))
            else:
                assert request.user.pk is not None
                LogEntry.objects.log_actions(
                    user_id=request.user.pk,
                    queryset=[made.token],
                    action_flag=ADDITION,
                    change_message=f"token {made.token.prefix} for {made.token.user}",
                    single_object=True,
                )
                response = TemplateResponse(
                    request,
                    "admin/bulkwrites/apitoken/created.html",
                    {**context, "title": "API token created", "token": made.token, "secret": made.secret},
                )
                response["Cache-Control"] = "no-store"  # the secret must not sit in a cache
                return response
        return TemplateResponse(request, "admin/bulkwrites/apitoken/add.html", {**context, "form": form})
