"""What the connection's role can read: tables and columns for pick lists."""

from typing import Any

import psycopg

from bulkwrites.sources.postgres.errors import QueryError
from bulkwrites.sources.postgres.redaction import scrub
from bulkwrites.sources.postgres.session import begin_read_only, connect, query_message

# Relation kinds one can SELECT from: table, partitioned table, view, materialized view, foreign table.
READABLE_RELKINDS = ("r", "p", "v", "m", "f")


def _catalog(dsn: str, timeout_ms: int, query: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    conn, secret_values = connect(dsn)
    try:
        begin_read_only(conn, timeout_ms)
        return conn.execute(query, params).fetchall()
    except psycopg.Error as exc:
        raise QueryError(scrub(query_message(exc, timeout_ms), secret_values)) from None
    finally:
        conn.close()


_RELATION_FILTER = f"""
    c.relkind IN ({", ".join(f"'{k}'" for k in READABLE_RELKINDS)})
    AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
    AND has_schema_privilege(n.oid, 'USAGE')
"""


def list_tables(dsn: str, *, timeout_ms: int = 5000) -> list[tuple[str, str]]:
    """``(schema, table)`` of the tables, views and foreign tables the role can read, sorted.

    System schemas are left out, and so are partitions (read their parent).
    """
    check_positive("timeout_ms", timeout_ms)
    rows = _catalog(
        dsn,
        timeout_ms,
        f"""SELECT n.nspname, c.relname
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE {_RELATION_FILTER} AND NOT c.relispartition
              AND has_any_column_privilege(c.oid, 'SELECT')""",
    )
    return sorted((schema, table) for schema, table in rows)


def list_columns(dsn: str, schema: str, table: str, *, timeout_ms: int = 5000) -> list[tuple[str, str]]:
    """``(name, data_type)`` of the columns of ``schema.table`` the role can read, in table order.

    ``data_type`` as PostgreSQL writes it (``integer``, ``numeric(10,2)``, ``timestamp with time zone``,
    ``text[]``). QueryError when there is no such table (or it is not visible to the role).
    """
    check_positive("timeout_ms", timeout_ms)
    rows = _catalog(
        dsn,
        timeout_ms,
        f"""SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
                   has_column_privilege(c.oid, a.attnum, 'SELECT')
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE {_RELATION_FILTER} AND n.nspname = %s AND c.relname = %s
            ORDER BY a.attnum""",
        (schema, table),
    )
    if not rows:
        raise QueryError(f"there is no table {_qualified(schema, table)} (or the role may not see it)")
    readable = [(name, data_type) for name, data_type, allowed in rows if name is not None and allowed]
    if not readable:
        raise QueryError(f"the role may not read any column of {_qualified(schema, table)}")
    return readable


def _qualified(schema: str, table: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, table))


def check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
