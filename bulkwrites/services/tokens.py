"""API tokens: made, checked and revoked here; the JSON API, the metrics endpoint, the admin and the CLI call these.

A token reads ``bwt_<prefix>_<secret>``: the prefix (8 hex digits) is public and names the
token in lists and logs; the secret is 32 random bytes. Only the SHA-256 of the whole token
is stored: with 256 bits of randomness a plain hash cannot be reversed or guessed, and a
lookup by hash needs no constant-time comparison. The token is returned once, by
:func:`token_create`, and never logged.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from bulkwrites.models import ApiToken

TOKEN_PREFIX = "bwt_"  # noqa: S105 - the public marker every token starts with, not a secret
LAST_USED_PRECISION = timedelta(minutes=1)  # at most one UPDATE per token and minute
MAX_EXPIRY_DAYS = 3650


class TokenError(Exception):
    """A token is refused; the message says why in one line (never the token itself)."""


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    secret: str
    """The whole token, to show once. Not stored anywhere."""


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def token_create(*, user: Any, name: str = "", expires_in_days: int | None = None) -> NewToken:
    """A new token for ``user``; its secret is in the result and nowhere else."""
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise TokenError(f"A token expires in 1 to {MAX_EXPIRY_DAYS} days (or never).")
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    for _ in range(5):  # a prefix collision (1 in 4 billion) just draws again
        prefix = secrets.token_hex(4)
        raw = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        try:
            with transaction.atomic():
                token = ApiToken.objects.create(
                    user=user, name=name[:100], prefix=prefix, secret_hash=hash_token(raw), expires_at=expires_at
                )
        except IntegrityError:
            continue
        return NewToken(token, raw)
    raise TokenError("Could not draw a unique token prefix; try again.")  # pragma: no cover


def token_authenticate(raw: str) -> ApiToken:
    """The token ``raw`` names, if it may be used now; ``TokenError`` says why not.

    Its user must be active and staff, as for the admin; what it may do is the user's
    permissions, checked per endpoint.
    """
    raw = raw.strip()
    if not raw.startswith(TOKEN_PREFIX):
        raise TokenError("Not a bulkwrites API token (they start with 'bwt_').")
    token = ApiToken.objects.select_related("user").filter(secret_hash=hash_token(raw)).first()
    if token is None:
        raise TokenError("Unknown API token.")
    if token.is_revoked:
        raise TokenError(f"API token {token.prefix} was revoked.")
    if token.is_expired:
        raise TokenError(f"API token {token.prefix} expired.")
    user = token.user
    if not (user.is_active and user.is_staff):
        raise TokenError(f"The user of API token {token.prefix} is not an active staff user.")
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_PRECISION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def token_from_header(authorization: str | None) -> ApiToken:
    """The token of an ``Authorization: Bearer bwt_...`` header (what the API and /metrics accept)."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise TokenError("An API token is required: send the header 'Authorization: Bearer bwt_...'.")
    return token_authenticate(credentials)


def token_revoke(*, prefix: str) -> ApiToken:
    """Revoke the token with this prefix (the ``bwt_`` may be given); revoking twice is harmless."""
    prefix = prefix.strip().removeprefix(TOKEN_PREFIX).split("_", 1)[0]
    token = ApiToken.objects.filter(prefix=prefix).first()
    if token is None:
        raise TokenError(f"No API token with prefix {prefix!r}.")
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db()
    return token
