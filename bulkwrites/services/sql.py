"""PostgreSQL sources: named connections, saved queries, and jobs that copy their rows.

A connection is named, never stored with its password: a Django database alias
(``default`` copies from this app's own database) or ``BULKWRITES_SQL_<NAME>=postgres://...``
in the environment of the web server and the workers. Rows are streamed by
``bulkwrites.sources.postgres`` inside a read-only transaction with a statement timeout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from psycopg import sql as pg_sql

from bulkwrites.models import Job, Operation, SourceKind, SqlSource
from bulkwrites.services import staging
from bulkwrites.services.jobs import JobError, _key_schema, new_job_fields
from bulkwrites.sources import postgres
from bulkwrites.sources.files import SourceRow

ENV_PREFIX = "BULKWRITES_SQL_"
STATEMENT_TIMEOUT_MS = int(os.environ.get("BULKWRITES_SQL_STATEMENT_TIMEOUT_MS", 60_000))


def connection_names() -> list[str]:
    """Connections an operator may pick: PostgreSQL database aliases and BULKWRITES_SQL_* variables."""
    names = [alias for alias, db in settings.DATABASES.items() if "postgresql" in db["ENGINE"]]
    names += sorted(
        key[len(ENV_PREFIX) :].lower()
        for key in os.environ
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :] and key != "BULKWRITES_SQL_STATEMENT_TIMEOUT_MS"
    )
    return names


def resolve_dsn(name: str, *, allow_url: bool = False) -> str:
    """The connection string for a name (or, from a terminal, a URL given as is)."""
    if name in settings.DATABASES and "postgresql" in settings.DATABASES[name]["ENGINE"]:
        db = settings.DATABASES[name]
        parts = {
            "host": db.get("HOST") or "",
            "port": str(db.get("PORT") or ""),
            "dbname": db.get("NAME") or "",
            "user": db.get("USER") or "",
            "password": db.get("PASSWORD") or "",
        }
        return " ".join(f"{k}='{v}'" for k, v in parts.items() if v)
    env = os.environ.get(ENV_PREFIX + name.upper())
    if env:
        return env
    if allow_url and (name.startswith(("postgres://", "postgresql://")) or "=" in name):
        return name
    raise JobError(
        f"Unknown connection {name!r}: use a database alias ({', '.join(connection_names())}) "
        f"or set {ENV_PREFIX}{name.upper()}=postgres://... for the web server and the workers."
    )


def spec_query(spec: dict[str, Any]) -> str | pg_sql.Composed:
    if spec.get("query"):
        return spec["query"]
    return postgres.table_query(spec["table"], spec.get("columns") or None, spec.get("schema") or None)


def spec_for(source: SqlSource) -> dict[str, Any]:
    if source.query.strip():
        try:
            return {"connection": source.connection, "query": postgres.check_select(source.query)}
        except postgres.QueryError as exc:
            raise JobError(str(exc)) from None
    schema, _, table = source.table.rpartition(".")
    return {"connection": source.connection, "schema": schema, "table": table, "columns": source.column_list}


def describe(spec: dict[str, Any]) -> str:
    if spec.get("query"):
        return spec["query"]
    columns = ", ".join(spec.get("columns") or ["*"])
    table = ".".join(p for p in (spec.get("schema"), spec["table"]) if p)
    return f"SELECT {columns} FROM {table}"


def rows_for(spec: dict[str, Any], *, dsn: str | None = None, max_rows: int | None = None) -> Iterator[SourceRow]:
    try:
        yield from postgres.read_query(
            dsn or resolve_dsn(spec["connection"]),
            spec_query(spec),
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            max_rows=max_rows,
        )
    except postgres.QueryError as exc:
        raise JobError(f"PostgreSQL source: {exc}") from None


def job_create_from_sql(
    *,
    spec: dict[str, Any],
    table_name: str,
    source_name: str,
    operation: str = Operation.PUT,
    created_by: Any = None,
    **job_settings: Any,
) -> Job:
    """A draft job reading a saved query; its rows are read by the preview and by the worker."""
    return Job.objects.create(
        **new_job_fields(table_name, operation, _key_schema(table_name), created_by, job_settings),
        source_kind=SourceKind.SQL,
        source_name=source_name[:255],
        source_detail=f"connection {spec['connection']}:\n{describe(spec)}",
        source_spec=spec,
    )


def job_create_from_dsn(
    *, dsn: str, spec: dict[str, Any], table_name: str, operation: str = Operation.PUT, **job_settings: Any
) -> Job:
    """From a terminal with a connection URL: staged here, so the URL never leaves this process."""
    public_spec = {**spec, "connection": postgres.redact_dsn(dsn)}
    with transaction.atomic():
        job = job_create_from_sql(
            spec=public_spec, table_name=table_name, source_name="command line", operation=operation, **job_settings
        )
        staging.stage_items(job, rows_for(spec, dsn=dsn), dynamodb_json=False)
        job.staged_at = timezone.now()
        job.save(update_fields=["staged_at"])
    job.refresh_from_db()
    return job
