"""Saved PostgreSQL queries (or tables) that jobs copy rows from; no password is stored."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class SqlSource(models.Model):
    """A saved PostgreSQL query (or table + columns) that jobs copy rows from.

    ``connection`` names a connection configured outside the database (a Django database
    alias, or ``BULKWRITES_SQL_<NAME>`` in the environment), so no password is ever stored.
    """

    name = models.CharField(max_length=120, unique=True)
    connection = models.CharField(max_length=64, help_text="connection name (see README: SQL sources)")
    query = models.TextField(blank=True, help_text="a single read-only SELECT; leave empty to pick a table")
    table = models.CharField(max_length=255, blank=True, help_text="schema.table, when no query is given")
    columns = models.TextField(blank=True, help_text="comma-separated columns of the table (empty: all)")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        verbose_name = "SQL source"
        permissions = [("manage_sources", "Can manage SQL sources")]

    def __str__(self) -> str:
        return self.name

    @property
    def column_list(self) -> list[str]:
        return [c.strip() for c in self.columns.split(",") if c.strip()]
