"""Opening a source connection: connect, vet the role, begin the READ ONLY transaction; messages."""

import re
from typing import Any

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from bulkwrites.sources.postgres.errors import QueryError, one_line
from bulkwrites.sources.postgres.policy import vet_role
from bulkwrites.sources.postgres.redaction import public_params, safe_message, secrets_in

APPLICATION_NAME = "bulkwrites"
CONNECT_TIMEOUT_S = 10
# The transaction of read_query stays open while the consumer works between two fetches (writing
# a batch to DynamoDB, possibly throttled); after this long idle, PostgreSQL ends the session.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 30 * 60 * 1000


def connect(dsn: str) -> tuple[psycopg.Connection[Any], set[str]]:
    """Open a connection (autocommit off) or raise QueryError; also return the secrets to scrub."""
    if not isinstance(dsn, str) or not dsn.strip():
        raise QueryError("no connection string was given")
    secret_values = secrets_in(dsn)
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        text = re.sub(r"^conninfo parsing failed:\s*", "", str(exc).strip())
        raise QueryError(f"the connection string is not valid: {safe_message(text, secret_values, ())}") from None
    try:
        conn = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, application_name=APPLICATION_NAME)
    except (psycopg.Error, OSError) as exc:
        text = re.sub(r"^connection (?:failed|is bad):\s*", "", str(exc).strip())
        text = re.sub(r"\b(?:FATAL|ERROR):\s+", "", text)
        message = safe_message(text, secret_values, public_params(dsn))
        raise QueryError(f"could not connect to the source database: {message}") from None
    return conn, secret_values


def begin_read_only(conn: psycopg.Connection[Any], statement_timeout_ms: int) -> None:
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
    vet_role(conn)  # the boundary: a role that can only read what it was granted (policy.py)


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g}"


def query_message(exc: psycopg.Error, statement_timeout_ms: int) -> str:
    diag = exc.diag
    primary = one_line(diag.message_primary or str(exc) or type(exc).__name__)
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
        message += f" (hint: {one_line(diag.message_hint)})"
    return message
