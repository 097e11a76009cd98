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

from bulkwrites.sources.postgres.catalog import list_columns, list_tables
from bulkwrites.sources.postgres.errors import QueryError
from bulkwrites.sources.postgres.reading import read_query
from bulkwrites.sources.postgres.redaction import redact_dsn
from bulkwrites.sources.postgres.values import to_value
from bulkwrites.sources.postgres.vetting import check_select, table_query
from bulkwrites.sources.rows import SourceRow

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
