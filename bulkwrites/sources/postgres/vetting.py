"""The operator's query: one read-only statement (a friendly first check), and table queries built from identifiers."""

import itertools
from typing import Any

import sqlparse
from psycopg import sql
from sqlparse import tokens as T
from sqlparse.engine import FilterStack
from sqlparse.exceptions import SQLParseError

from bulkwrites.dynamo.text import shorten
from bulkwrites.sources.postgres.errors import QueryError, one_line
from bulkwrites.sources.postgres.policy import forbidden_message, is_forbidden_name

READ_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})
WRITE_KEYWORDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})


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
        parsed = FilterStack().run(query)  # type: ignore[no-untyped-call]
        statements = [list(stmt.flatten()) for stmt in parsed if any(_meaningful(t) for t in stmt.flatten())]
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
            "only a read-only query (SELECT, WITH ... SELECT, VALUES or TABLE) is allowed, "
            f"not {shorten(one_line(first_word), 30)!r}"
        )
    called = sorted(
        {_unquoted(t.value) for t, after in itertools.pairwise(words) if after.value == "(" and t.ttype in _NAMES}
    )
    forbidden = [name for name in called if is_forbidden_name(name)]
    if forbidden:  # early and friendly; the plan is checked again before the query runs (policy.py)
        raise QueryError(forbidden_message(forbidden))
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


_NAMES = (T.Name, T.Keyword, T.Name.Builtin, T.Literal.String.Symbol)


def _unquoted(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()


def _lock_clause(following: list[Any]) -> str | None:
    """``FOR UPDATE``, ``FOR NO KEY UPDATE``, ``FOR SHARE`` or ``FOR KEY SHARE`` when the words after FOR say so."""
    words = [t.normalized.upper() if t.is_keyword else "" for t in following]
    for clause in (["UPDATE"], ["SHARE"], ["NO", "KEY", "UPDATE"], ["KEY", "SHARE"]):
        if words[: len(clause)] == clause:
            return " ".join(["FOR", *clause])
    return None


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
