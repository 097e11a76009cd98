"""Streaming the rows of a query through a server-side cursor inside the READ ONLY transaction."""

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from bulkwrites.sources.postgres.catalog import check_positive
from bulkwrites.sources.postgres.errors import QueryError
from bulkwrites.sources.postgres.policy import refuse_forbidden_calls
from bulkwrites.sources.postgres.redaction import scrub
from bulkwrites.sources.postgres.session import begin_read_only, connect, query_message
from bulkwrites.sources.postgres.values import configure_loaders, to_value
from bulkwrites.sources.postgres.vetting import check_select
from bulkwrites.sources.rows import SourceRow

CURSOR_NAME = "bulkwrites_source"


def read_query(
    dsn: str,
    query: str | sql.Composable,
    *,
    statement_timeout_ms: int = 30000,
    fetch_size: int = 2000,
    max_rows: int | None = None,
) -> Iterator[SourceRow]:
    """Stream the rows of ``query`` as ``SourceRow(position, {column: value})``, position 1-based.

    A ``str`` query goes through :func:`check_select` now (QueryError raised by this call); a
    :class:`psycopg.sql.Composable` (from :func:`table_query`) is trusted as built. Connecting and
    running happen on the first ``next()``, and any failure then raises QueryError from the
    iteration. At most ``fetch_size`` rows are in memory at a time (server-side cursor); reading
    stops after ``max_rows`` rows when given. The connection is closed when the rows run out, on
    error, and when the iterator is closed (or garbage-collected) early.
    """
    check_positive("statement_timeout_ms", statement_timeout_ms)
    check_positive("fetch_size", fetch_size)
    if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 0):
        raise ValueError(f"max_rows must be a non-negative integer or None, not {max_rows!r}")
    if isinstance(query, str):
        statement: sql.Composable = sql.SQL(check_select(query))
    elif isinstance(query, sql.Composable):
        statement = query
    else:
        raise TypeError(f"query must be str or psycopg.sql.Composable, not {type(query).__name__}")
    return _stream(dsn, statement, statement_timeout_ms, fetch_size, max_rows)


def _stream(
    dsn: str, query: sql.Composable, statement_timeout_ms: int, fetch_size: int, max_rows: int | None
) -> Iterator[SourceRow]:
    if max_rows == 0:
        return
    conn, secret_values = connect(dsn)
    cursor: Any = None
    try:
        try:
            configure_loaders(conn)
            begin_read_only(conn, statement_timeout_ms)
            refuse_forbidden_calls(conn, query)  # second layer: no files, sessions, slots... (policy.py)
            cursor = conn.cursor(name=f"{CURSOR_NAME}_{secrets.token_hex(4)}", scrollable=False, withhold=False)
            cursor.itersize = fetch_size
            cursor.execute(query)  # DECLARE ... CURSOR FOR <query>: plans, does not run yet
            names = [column.name for column in cursor.description or ()]
        except psycopg.Error as exc:
            raise QueryError(scrub(query_message(exc, statement_timeout_ms), secret_values)) from None
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise QueryError(f"the query returns two columns named {name!r}; give them different names with AS")
            seen.add(name)
        position = 0
        while True:
            size = fetch_size if max_rows is None else min(fetch_size, max_rows - position)
            if size <= 0:
                return
            try:
                rows = cursor.fetchmany(size)
            except psycopg.Error as exc:
                raise QueryError(scrub(query_message(exc, statement_timeout_ms), secret_values)) from None
            if not rows:
                return
            for row in rows:
                position += 1
                yield SourceRow(position=position, values={n: to_value(v) for n, v in zip(names, row, strict=True)})
    finally:
        if cursor is not None:
            with contextlib.suppress(psycopg.Error):
                cursor.close()
        conn.close()  # also on GeneratorExit: the server ends the transaction and drops the cursor
