"""Per-user API tokens for django-ninja: ``Authorization: Bearer bwt_...``; never a session cookie.

Only tokens are accepted, so no state-changing call can ride on a browser's session (no CSRF
to defend). A refused token answers 401 with the reason in one line; the header's value is
never logged (ninja's own ``HttpBearer`` logs an unexpected header in DEBUG, hence this class).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from ninja.errors import AuthenticationError, AuthorizationError
from ninja.security.base import AuthBase

from bulkwrites.models import ApiToken
from bulkwrites.services import tokens


class TokenAuth(AuthBase):
    """The token, and (when given) the permission the endpoint needs: both before the request is parsed.

    ``permission`` is a permission name, or a function of the request naming it (the control
    endpoint's depends on its action); None asks only for a valid token.
    """

    openapi_type = "http"
    openapi_scheme = "bearer"
    openapi_bearerFormat = "bwt_<prefix>_<secret>"

    def __init__(self, permission: str | Callable[[HttpRequest], str | None] | None = None) -> None:
        self.permission = permission
        super().__init__()

    def __call__(self, request: HttpRequest) -> ApiToken:
        try:
            token = tokens.token_from_header(request.headers.get("Authorization"))
        except tokens.TokenError as exc:
            raise AuthenticationError(401, str(exc)) from None
        request.user = token.user
        permission = self.permission(request) if callable(self.permission) else self.permission
        if permission:
            require(request, permission)
        return token


def require(request: HttpRequest, permission: str) -> None:
    """403 unless the token's user has ``permission`` (the admin's own permission names)."""
    if not request.user.has_perm(permission):
        raise AuthorizationError(403, f"The token's user lacks the permission {permission}.")


def token_of(request: HttpRequest) -> ApiToken:
    auth: Any = getattr(request, "auth", None)
    assert isinstance(auth, ApiToken)  # every endpoint runs behind TokenAuth
    return auth
