"""PostgreSQL sources: named connections and what a job reads from one (its SQL spec).

A connection is named, never stored with its password: a Django database alias or
``BULKWRITES_SQL_<NAME>=postgres://...`` in the environment of the web server and the workers.
The app's own connection (``default``, and any alias with its role) is never a source: its role
could read admin sessions and password hashes. Every connection's role is also vetted from the
catalog by ``bulkwrites.sources.postgres.policy`` when it connects. Rows are streamed inside a
read-only transaction with a statement timeout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from psycopg import sql as pg_sql
from psycopg.conninfo import make_conninfo

from bulkwrites.models import SqlSource
from bulkwrites.services.errors import JobError
from bulkwrites.sources import postgres
from bulkwrites.sources.rows import SourceRow

ENV_PREFIX = "BULKWRITES_SQL_"
STATEMENT_TIMEOUT_MS = int(os.environ.get("BULKWRITES_SQL_STATEMENT_TIMEOUT_MS", 60_000))


APP_CONNECTION_REFUSED = (
    "Connection {name!r} is refused as a SQL source: it is this application's own database role, which can read "
    "admin sessions and password hashes. Create a role that may only SELECT what sources need "
    '(README, "Security model") and configure it as BULKWRITES_SQL_<NAME>=postgres://reader@host/db '
    "or as a DATABASES alias, then pick that connection."
)


def _is_app_alias(alias: str) -> bool:
    """``default``, or another alias that logs in as the same role on the same server."""
    if alias == "default":
        return True
    db, app = settings.DATABASES[alias], settings.DATABASES["default"]
    return all((db.get(k) or "") == (app.get(k) or "") for k in ("HOST", "PORT", "USER"))


def _postgres_aliases() -> list[str]:
    return [alias for alias, db in settings.DATABASES.items() if "postgresql" in db["ENGINE"]]


def connection_names() -> list[str]:
    """Connections an operator may pick: database aliases that are not the app's own, and BULKWRITES_SQL_*."""
    names = [alias for alias in _postgres_aliases() if not _is_app_alias(alias)]
    names += sorted(
        key[len(ENV_PREFIX) :].lower()
        for key in os.environ
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :] and key != "BULKWRITES_SQL_STATEMENT_TIMEOUT_MS"
    )
    return names


def resolve_dsn(name: str, *, allow_url: bool = False) -> str:
    """The connection string for a name (or, from a terminal, a URL given as is)."""
    if name in _postgres_aliases():
        if _is_app_alias(name):
            raise JobError(APP_CONNECTION_REFUSED.format(name=name))
        db = settings.DATABASES[name]
        parts = {
            "host": db.get("HOST") or "",
            "port": str(db.get("PORT") or ""),
            "dbname": db.get("NAME") or "",
            "user": db.get("USER") or "",
            "password": db.get("PASSWORD") or "",
        }
        return make_conninfo(**{k: v for k, v in parts.items() if v})  # quotes ' and \ in a password right
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
