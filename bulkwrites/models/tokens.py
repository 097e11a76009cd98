"""API tokens: a user's tokens for the JSON API and the metrics endpoint; only their hash is stored."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def usable(self) -> ApiTokenQuerySet:
        """Not revoked and not expired (the user's own state is checked where it is used)."""
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))


class ApiToken(models.Model):
    """A user's token for the JSON API and the metrics endpoint; it acts with the user's permissions.

    Only the SHA-256 of the token is stored: the token itself is shown once, when it is made
    (``bulkwrites.services.tokens``). ``prefix`` is its first, public part, to tell tokens apart
    in lists and logs and to revoke one.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100, blank=True, help_text="what it is for (a script, a scraper...)")
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the token")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="empty: never")
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"
        permissions = [("view_metrics", "Can read the Prometheus metrics")]

    def __str__(self) -> str:
        return f"token {self.prefix} of {self.user}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()
