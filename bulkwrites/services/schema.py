"""Is the database's schema the code's? Asked when the CLI and a worker start.

Without it, a fresh clone's first command (``eval "$(make -s services)"``, then any
``manage.py bulkwrite ...``) died on a raw ``column ... does not exist`` from deep inside a
query. One line naming the fix is what an operator needs.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.utils import DatabaseError

MIGRATE_HINT = "run `python manage.py migrate`"


class SchemaError(Exception):
    """The database cannot serve this code yet; the message says what to do, in one line."""


def pending_migrations(alias: str = DEFAULT_DB_ALIAS) -> list[str]:
    """``app.migration`` names the database has not applied yet, in the order they would run."""
    connection = connections[alias]
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{migration.app_label}.{migration.name}" for migration, backwards in plan if not backwards]


def check_schema(alias: str = DEFAULT_DB_ALIAS) -> None:
    """Raise :class:`SchemaError` when migrations are pending or the database cannot be reached."""
    try:
        pending = pending_migrations(alias)
    except DatabaseError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise SchemaError(f"cannot read the database: {first_line}") from None
    if pending:
        raise SchemaError(
            f"the database lacks {len(pending)} migration(s) of this code (first: {pending[0]}); {MIGRATE_HINT}"
        )
