"""PostgreSQL source reader: rows of a table or of a SELECT, streamed as :class:`SourceRow` objects.

Plain Python and psycopg 3; no Django here. The public functions:

* :func:`check_select` - the friendly first check of an operator's query (one read-only statement);
* :func:`table_query` - ``SELECT "a", "b" FROM "schema"."table"`` built from identifiers only;
* :func:`list_tables` / :func:`list_columns` - what the connection's role can read, for pick lists;
* :func:`read_query` - stream the rows of a query through a server-side cursor;
* :func:`redact_dsn` - a connection string fit for display (password replaced by ``***``).

Safety does not rest on :func:`check_select`. :func:`read_query` runs the query

* inside a ``READ ONLY`` transaction: PostgreSQL refuses INSERT/UPDATE/DELETE, DDL, ``nextval()``,
  ``SELECT ... INTO`` and friends, also from inside functions;
* as ``DECLARE ... CURSOR FOR <query>`` sent over the extended protocol: exactly one statement,
  and only SELECT, VALUES, TABLE or WITH ... SELECT (no data-modifying WITH);
* with ``statement_timeout`` (each FETCH is one statement) and a generous
  ``idle_in_transaction_session_timeout`` (a consumer that stalls does not pin the snapshot forever).

A role that may only read is still the real boundary against anything a read-only transaction
allows (dblink to another database, for instance).

Every failure the operator can cause or fix - bad connection string, unreachable server, wrong
password, syntax error, missing table, missing privilege, timeout - raises :class:`QueryError`
whose message is short, has no stack trace and never contains the password (nor ``sslpassword``,
nor ``$PGPASSWORD``). Those errors are raised ``from None`` so that a logged traceback does not
carry psycopg's original message either.

Values are converted for :mod:`bulkwrites.dynamo.items` (see :func:`to_value`): numbers exact
(``float`` becomes ``Decimal(repr(f))``, JSON numbers are parsed as ``Decimal``), dates and times as
ISO 8601 strings (``timestamptz`` in UTC), intervals as ISO 8601 durations (``P1DT2H``), values
Python cannot hold (``'infinity'`` timestamps, year 10000+, ``24:00``) as PostgreSQL prints them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import quote, unquote
from uuid import UUID

import psycopg
import sqlparse
from psycopg import errors, sql
from psycopg.adapt import Buffer, Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg.types import datetime as pg_datetime
from psycopg.types.json import set_json_loads
from sqlparse import tokens as T
from sqlparse.engine import FilterStack
from sqlparse.exceptions import SQLParseError

from bulkwrites.sources.files import SourceRow

__all__ = [
    "QueryError",
    "SourceRow",
    "check_select",
    "list_columns",
    "list_tables",
    "read_query",
    "redact_dsn",
    "table_query",
    "to_value",
]

APPLICATION_NAME = "bulkwrites"
CONNECT_TIMEOUT_S = 10
# The transaction of read_query stays open while the consumer works between two fetches (writing
# a batch to DynamoDB, possibly throttled); after this long idle, PostgreSQL ends the session.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 30 * 60 * 1000
CURSOR_NAME = "bulkwrites_source"
SECRET_KEYWORDS = ("password", "sslpassword")  # connection options whose value is a secret
REDACTED = "***"

READ_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})
WRITE_KEYWORDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})
# Relation kinds one can SELECT from: table, partitioned table, view, materialized view, foreign table.
READABLE_RELKINDS = ("r", "p", "v", "m", "f")


class QueryError(Exception):
    """A source that cannot be read; the message is for the operator (no trace, no password)."""


# --- connection strings ----------------------------------------------------------------

_URL_USERINFO = re.compile(r"^(\s*postgres(?:ql)?://)([^@/]*)@", re.IGNORECASE)
_URL_SECRET_PARAM = re.compile(r"([?&](?:password|sslpassword)=)([^&#]*)", re.IGNORECASE)
_KV_SECRET = re.compile(r"((?:^|\s)(?:password|sslpassword)\s*=?\s*)('(?:[^'\\]|\\.)*'?|\S*)")


def _is_url(dsn: str) -> bool:
    return bool(re.match(r"\s*postgres(?:ql)?://", dsn, re.IGNORECASE))


def _secrets_in(dsn: str) -> set[str]:
    """Every spelling of the secrets of ``dsn`` (and of $PGPASSWORD) that a message could echo."""
    found: set[str] = set()
    with_raw: list[str] = []
    if _is_url(dsn):
        m = _URL_USERINFO.match(dsn)
        if m and ":" in m.group(2):
            with_raw.append(m.group(2).split(":", 1)[1])
        with_raw.extend(m.group(2) for m in _URL_SECRET_PARAM.finditer(dsn))
    else:
        for m in _KV_SECRET.finditer(dsn):
            value = m.group(2)
            with_raw.append(value)
            if value.startswith("'"):
                with_raw.append(re.sub(r"\\(.)", r"\1", value.strip("'")))
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        params = {}
    with_raw.extend(str(params[k]) for k in SECRET_KEYWORDS if params.get(k))
    if os.environ.get("PGPASSWORD"):
        with_raw.append(os.environ["PGPASSWORD"])
    for value in with_raw:
        for spelling in (value, unquote(value), quote(value, safe=""), quote(value)):
            if spelling:
                found.add(spelling)
    return found


def _scrub(text: str, secret_values: Iterable[str]) -> str:
    for value in sorted(secret_values, key=len, reverse=True):  # longest first: no partial leftovers
        text = text.replace(value, REDACTED)
    return text


def redact_dsn(dsn: str) -> str:
    """``dsn`` with every password (URL userinfo, ``password=``, ``sslpassword=``) replaced by ``***``."""
    if _is_url(dsn):
        redacted = _URL_USERINFO.sub(
            lambda m: (
                m.group(1) + (m.group(2).split(":", 1)[0] + ":" + REDACTED if ":" in m.group(2) else m.group(2)) + "@"
            ),
            dsn,
        )
        redacted = _URL_SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, redacted)
    else:
        redacted = _KV_SECRET.sub(lambda m: m.group(1) + REDACTED, dsn)
    # Whatever spelling survived the patterns (odd quoting): replace it literally.
    leftovers = {s for s in _secrets_in(dsn) if s != REDACTED and s in redacted}
    return _scrub(redacted, leftovers)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _conninfo_keywords() -> frozenset[str]:
    return frozenset(opt.keyword.decode() for opt in psycopg.pq.Conninfo.get_defaults())


# A quoted fragment of a libpq/psycopg message kept as is when it is one of these shapes.
_SAFE_FRAGMENT = re.compile(r"=|[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*|/[^\s]*/\.s\.PGSQL\.[0-9]+")
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^'\s]*)'")


def _safe_message(text: str, secret_values: set[str], allowed: Iterable[str]) -> str:
    """One line of ``text`` with the secrets scrubbed and unknown quoted fragments replaced by ``...``.

    libpq quotes pieces of the connection string in its messages (``invalid percent-encoded token:
    "S3cret%zz"``, ``invalid integer value "..." for connection option "port"``): a secret typed in
    the wrong place, where no pattern finds it, could be one of them. Only option names, the
    non-secret parameters (host, user, database...), addresses and socket paths stay readable.
    """
    keep = set(allowed) | _conninfo_keywords()

    def fragment(m: re.Match[str]) -> str:
        inner = m.group(1) if m.group(1) is not None else m.group(2)
        if inner in keep or _SAFE_FRAGMENT.fullmatch(inner):
            return m.group(0)
        return m.group(0)[0] + "..." + m.group(0)[0]

    text = _scrub(_one_line(text), secret_values)
    return _QUOTED.sub(fragment, text)


def _public_params(dsn: str) -> set[str]:
    """The parameters of ``dsn`` a message may show: host, address, database and user names (ports are numbers)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        params = {}
    values = {str(params[k]) for k in ("host", "hostaddr", "dbname", "user") if params.get(k)}
    values |= {os.environ[k] for k in ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGUSER") if os.environ.get(k)}
    with contextlib.suppress(Exception):
        values.add(getpass.getuser())  # libpq's default user name
    return {piece for value in values for piece in value.split(",") if piece} - {""}


def _connect(dsn: str) -> tuple[psycopg.Connection[Any], set[str]]:
    """Open a connection (autocommit off) or raise QueryError; also return the secrets to scrub."""
    if not isinstance(dsn, str) or not dsn.strip():
        raise QueryError("no connection string was given")
    secret_values = _secrets_in(dsn)
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        text = re.sub(r"^conninfo parsing failed:\s*", "", str(exc).strip())
        raise QueryError(f"the connection string is not valid: {_safe_message(text, secret_values, ())}") from None
    try:
        conn = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, application_name=APPLICATION_NAME)
    except (psycopg.Error, OSError) as exc:
        text = re.sub(r"^connection (?:failed|is bad):\s*", "", str(exc).strip())
        text = re.sub(r"\b(?:FATAL|ERROR):\s+", "", text)
        message = _safe_message(text, secret_values, _public_params(dsn))
        raise QueryError(f"could not connect to the source database: {message}") from None
    return conn, secret_values


def _begin_read_only(conn: psycopg.Connection[Any], statement_timeout_ms: int) -> None:
    """Open the READ ONLY transaction with local timeouts and ISO 8601 intervals; verify it is read-only.

    The session's TimeZone is left alone: ``ts::date`` in the operator's query means what it means
    in their psql; :func:`to_value` turns the loaded ``timestamptz`` values into UTC instead.
    """
    conn.read_only = True  # psycopg starts the transaction with BEGIN READ ONLY
    row = conn.execute(
        "SELECT set_config('statement_timeout', %s, true),"
        " set_config('idle_in_transaction_session_timeout', %s, true),"
        " set_config('IntervalStyle', 'iso_8601', true),"
        " current_setting('transaction_read_only')",
        (f"{statement_timeout_ms}ms", f"{max(IDLE_IN_TRANSACTION_TIMEOUT_MS, statement_timeout_ms)}ms"),
    ).fetchone()
    if row is None or row[-1] != "on":  # pragma: no cover - psycopg guarantees it; refuse to go on without
        raise QueryError("could not start a read-only transaction on the source database")


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g}"


def _query_message(exc: psycopg.Error, statement_timeout_ms: int) -> str:
    diag = exc.diag
    primary = _one_line(diag.message_primary or str(exc) or type(exc).__name__)
    if isinstance(exc, errors.QueryCanceled):
        if "statement timeout" in primary:
            return f"the query ran longer than {_seconds(statement_timeout_ms)} s (statement timeout)"
        return f"the query was cancelled: {primary}"
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        return f"the query tried to change data, but sources are read in a read-only transaction: {primary}"
    if isinstance(exc, errors.IdleInTransactionSessionTimeout):
        return (
            "the source database closed the connection: rows were not fetched for more than "
            f"{IDLE_IN_TRANSACTION_TIMEOUT_MS // 60000} min (idle-in-transaction timeout)"
        )
    if isinstance(exc, errors.InsufficientPrivilege):
        return f"the source database refused access: {primary}"
    if "multiple commands" in primary:
        return "only one statement is allowed"
    if isinstance(exc, psycopg.OperationalError) and not diag.sqlstate:
        return f"the connection to the source database was lost: {primary}"
    message = f"the query failed: {primary}"
    if diag.message_hint:
        message += f" (hint: {_one_line(diag.message_hint)})"
    return message


# --- loaders ----------------------------------------------------------------------------


def _lenient(base: type[Loader]) -> type[Loader]:
    """``base`` returning PostgreSQL's own text for values Python cannot hold (``infinity``, year 10K+)."""

    def load(self: Loader, data: Buffer) -> Any:
        try:
            return base.load(self, data)
        except (psycopg.DataError, NotImplementedError):
            return bytes(data).decode("utf-8", "replace")

    return type(f"Lenient{base.__name__}", (base,), {"load": load})


class _PgTextLoader(Loader):
    """The value as PostgreSQL prints it (used for intervals, printed as ISO 8601 durations)."""

    def load(self, data: Buffer) -> str:
        return bytes(data).decode("utf-8", "replace")


_LENIENT_LOADERS = {
    "date": _lenient(pg_datetime.DateLoader),
    "time": _lenient(pg_datetime.TimeLoader),
    "timetz": _lenient(pg_datetime.TimetzLoader),
    "timestamp": _lenient(pg_datetime.TimestampLoader),
    "timestamptz": _lenient(pg_datetime.TimestamptzLoader),
    "interval": _PgTextLoader,
}


def _configure_loaders(conn: psycopg.Connection[Any]) -> None:
    for type_name, loader in _LENIENT_LOADERS.items():
        conn.adapters.register_loader(type_name, loader)
    set_json_loads(partial(json.loads, parse_float=Decimal), context=conn)


# --- values -----------------------------------------------------------------------------


def to_value(value: Any) -> Any:
    """A value as loaded by psycopg, converted to what :mod:`bulkwrites.dynamo.items` maps naturally.

    ``str``/``int``/``bool``/``None``/``Decimal`` as is; ``float`` -> ``Decimal(repr(f))``; datetime,
    date, time -> ISO 8601 string (an aware datetime in UTC); UUID -> str; bytes-like -> bytes; dicts
    and lists converted element by element (JSON floats included); anything else -> ``str(value)``.
    """
    if value is None or isinstance(value, str | bool | int | Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).isoformat()  # timestamptz
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict):
        return {str(k): to_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_value(v) for v in value]
    return str(value)


# --- the operator's query ---------------------------------------------------------------


def _meaningful(token: sqlparse.sql.Token) -> bool:
    return not (
        token.is_whitespace or token.ttype in T.Comment or (token.ttype is T.Punctuation and token.value == ";")
    )


def check_select(query: str) -> str:
    """The single read-only statement of ``query``, without trailing ``;``/comments/whitespace.

    Accepts SELECT, WITH ... SELECT, VALUES and TABLE (possibly in parentheses); refuses several
    statements, data-modifying statements (also inside WITH), SELECT ... INTO and FOR
    UPDATE/SHARE. A friendly first check only: :func:`read_query` enforces read-only itself.
    """
    if not isinstance(query, str):
        raise QueryError("the query must be text")
    try:
        statements = [
            list(stmt.flatten()) for stmt in FilterStack().run(query) if any(_meaningful(t) for t in stmt.flatten())
        ]
    except SQLParseError as exc:
        raise QueryError(f"the query could not be parsed: {exc}") from None
    if not statements:
        raise QueryError("the query is empty")
    if len(statements) > 1:
        raise QueryError(f"only one statement is allowed; found {len(statements)}")
    tokens = statements[0]
    while tokens and not _meaningful(tokens[-1]):  # trailing ";", comments, whitespace
        tokens.pop()
    while tokens and tokens[0].is_whitespace:
        tokens.pop(0)
    words = [t for t in tokens if _meaningful(t)]
    first = next((t for t in words if not (t.ttype is T.Punctuation and t.value == "(")), words[0])
    first_word = first.normalized.upper() if first.is_keyword else first.value
    if not first.is_keyword or first_word not in READ_KEYWORDS:
        raise QueryError(
            f"only a read-only query (SELECT, WITH ... SELECT, VALUES or TABLE) is allowed, not {_short(first_word)}"
        )
    for i, token in enumerate(words):
        if not token.is_keyword:
            continue
        word = token.normalized.upper()
        if word == "FOR":
            lock = _lock_clause(words[i + 1 : i + 4])
            if lock:
                raise QueryError(f"SELECT ... {lock} would lock rows; remove it (sources are only read)")
        elif word == "INTO":
            raise QueryError("SELECT ... INTO would create a table; remove INTO (sources are only read)")
        elif word in WRITE_KEYWORDS:
            inside_with = i > 0 and words[i - 1].value == "(" and first_word == "WITH"
            raise QueryError(
                f"the query must only read data, but it contains {word}" + (" inside WITH" if inside_with else "")
            )
    return "".join(t.value for t in tokens)


def _lock_clause(following: list[Any]) -> str | None:
    """``FOR UPDATE``, ``FOR NO KEY UPDATE``, ``FOR SHARE`` or ``FOR KEY SHARE`` when the words after FOR say so."""
    words = [t.normalized.upper() if t.is_keyword else "" for t in following]
    for clause in (["UPDATE"], ["SHARE"], ["NO", "KEY", "UPDATE"], ["KEY", "SHARE"]):
        if words[: len(clause)] == clause:
            return " ".join(["FOR", *clause])
    return None


def _short(text: str, limit: int = 30) -> str:
    text = _one_line(text)
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def table_query(table: str, columns: list[str] | None, schema: str | None = None) -> sql.Composed:
    """``SELECT "c1", "c2" FROM "schema"."table"`` (``*`` when ``columns`` is None); identifiers only."""
    names = [table] if schema is None else [schema, table]
    for name in names:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise QueryError(f"not a valid table or schema name: {name!r}")
    if columns is None:
        selected: sql.Composable = sql.SQL("*")
    else:
        if not columns:
            raise QueryError("choose at least one column")
        seen: set[str] = set()
        for column in columns:
            if not isinstance(column, str) or not column or "\x00" in column:
                raise QueryError(f"not a valid column name: {column!r}")
            if column in seen:
                raise QueryError(f"the column {column!r} is chosen twice")
            seen.add(column)
        selected = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    return sql.SQL("SELECT {} FROM {}").format(selected, sql.Identifier(*names))


# --- catalog ----------------------------------------------------------------------------


def _catalog(dsn: str, timeout_ms: int, query: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    conn, secret_values = _connect(dsn)
    try:
        _begin_read_only(conn, timeout_ms)
        return conn.execute(query, params).fetchall()
    except psycopg.Error as exc:
        raise QueryError(_scrub(_query_message(exc, timeout_ms), secret_values)) from None
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
    _check_positive("timeout_ms", timeout_ms)
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
    _check_positive("timeout_ms", timeout_ms)
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


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


# --- reading ----------------------------------------------------------------------------


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
    _check_positive("statement_timeout_ms", statement_timeout_ms)
    _check_positive("fetch_size", fetch_size)
    if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 0):
        raise ValueError(f"max_rows must be a non-negative integer or None, not {max_rows!r}")
    if isinstance(query, str):
        statement: sql.Composable = sql.SQL(check_select(query))  # type: ignore[arg-type]
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
    conn, secret_values = _connect(dsn)
    cursor: Any = None
    try:
        try:
            _configure_loaders(conn)
            _begin_read_only(conn, statement_timeout_ms)
            cursor = conn.cursor(name=f"{CURSOR_NAME}_{secrets.token_hex(4)}", scrollable=False, withhold=False)
            cursor.itersize = fetch_size
            cursor.execute(query)  # DECLARE ... CURSOR FOR <query>: plans, does not run yet
            names = [column.name for column in cursor.description or ()]
        except psycopg.Error as exc:
            raise QueryError(_scrub(_query_message(exc, statement_timeout_ms), secret_values)) from None
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
                raise QueryError(_scrub(_query_message(exc, statement_timeout_ms), secret_values)) from None
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
