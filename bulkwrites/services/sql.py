"""PostgreSQL sources: named connections and what a job reads from one (its SQL spec).

A connection is named, never stored with its password: a Django database alias or
``BULKWRITES_SQL_<NAME>=postgres://...`` in the environment of the web server and the
workers. Rows are streamed by ``bulkwrites.sources.postgres`` inside a read-only
transaction with a statement timeout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from psycopg import sql as pg_sql

from bulkwrites.models import SqlSource
from bulkwrites.services.errors import JobError
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


@dataclass(frozen=True)
class SqlSpec:
    """What a job reads: a connection by name and a checked SELECT, or a table and its columns.

    Stored in ``Job.source_spec`` (no secrets: a URL given on a command line is redacted).
    """

    connection: str
    query: str = ""
    schema: str = ""
    table: str = ""
    columns: tuple[str, ...] = field(default=())

    @classmethod
    def for_query(cls, connection: str, query: str) -> SqlSpec:
        """A spec for a SELECT, checked to be one read-only statement."""
        try:
            return cls(connection=connection, query=postgres.check_select(query))
        except postgres.QueryError as exc:
            raise JobError(f"refused: {exc}") from None

    @classmethod
    def for_table(cls, connection: str, qualified_table: str, columns: list[str] | tuple[str, ...] = ()) -> SqlSpec:
        schema, _, table = qualified_table.rpartition(".")
        return cls(connection=connection, schema=schema, table=table, columns=tuple(columns))

    @classmethod
    def for_source(cls, source: SqlSource) -> SqlSpec:
        if source.query.strip():
            return cls.for_query(source.connection, source.query)
        return cls.for_table(source.connection, source.table, source.column_list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SqlSpec:
        return cls(
            connection=data["connection"],
            query=data.get("query") or "",
            schema=data.get("schema") or "",
            table=data.get("table") or "",
            columns=tuple(data.get("columns") or ()),
        )

    def to_json(self) -> dict[str, Any]:
        if self.query:
            return {"connection": self.connection, "query": self.query}
        return {
            "connection": self.connection,
            "schema": self.schema,
            "table": self.table,
            "columns": list(self.columns),
        }

    def with_connection(self, connection: str) -> SqlSpec:
        return SqlSpec(connection, self.query, self.schema, self.table, self.columns)

    def statement(self) -> str | pg_sql.Composed:
        if self.query:
            return self.query
        return postgres.table_query(self.table, list(self.columns) or None, self.schema or None)

    def describe(self) -> str:
        """The statement as an operator reads it."""
        if self.query:
            return self.query
        columns = ", ".join(self.columns or ("*",))
        table = ".".join(p for p in (self.schema, self.table) if p)
        return f"SELECT {columns} FROM {table}"


def rows_for(spec: SqlSpec, *, dsn: str | None = None, max_rows: int | None = None) -> Iterator[SourceRow]:
    """The spec's rows, streamed; ``dsn`` instead of the spec's named connection (a URL from a terminal)."""
    try:
        yield from postgres.read_query(
            dsn or resolve_dsn(spec.connection),
            spec.statement(),
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            max_rows=max_rows,
        )
    except postgres.QueryError as exc:
        raise JobError(f"PostgreSQL source: {exc}") from None
