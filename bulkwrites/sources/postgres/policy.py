"""Who may serve as a source, and which server-side functions a source query may not call.

Two layers, both checked on the source's own connection, from PostgreSQL itself:

1. **The role** (:func:`vet_role`, on every connection a source opens, before anything else).
   A read-only transaction is no boundary for a superuser: it can read server files
   (``pg_read_file('/proc/<pid>/environ')``), end other sessions and create replication slots.
   So the catalog is asked what the connected role *is*, whatever its name: refused are
   superusers, roles with ``REPLICATION``, members of the predefined roles that reach files,
   programs or other sessions (``pg_read_server_files``, ``pg_write_server_files``,
   ``pg_execute_server_program``, ``pg_signal_backend``), and - in the application's own
   database - any role that is (or may become, ``pg_has_role(..., 'MEMBER')``) the owner of the
   ledger or the auth tables, may write them, or may read ``django_session`` / ``auth_user``.
   That last rule is what refuses the app's own role (Django's ``default`` connection), which
   could read live admin session keys and password hashes.

2. **The functions** (:func:`forbidden_calls`, on every query before it runs). Even a role that
   is allowed to run them (``GRANT EXECUTE ON FUNCTION pg_read_file(text)``) may not, from a
   source, call functions that touch server files, other sessions, replication, large objects,
   the session's own settings (``set_config`` could lift the statement timeout) or that run SQL
   given as text (``query_to_xml``, ``ts_stat``, ``dblink``: what they run cannot be vetted).

   The names are taken from the server's own plan, ``EXPLAIN (VERBOSE, FORMAT JSON)``, not from
   the query text: views are expanded (a view that hides ``pg_read_file`` is seen through),
   names are resolved by the server (quoting, casing, comments and search_path cannot disguise
   them), and nothing is executed (EXPLAIN without ANALYZE plans only; the functions refused
   here are all VOLATILE, so the planner never evaluates them early). What is refused: the
   functions of ``pg_catalog`` that PostgreSQL does not grant to PUBLIC (the catalog says which:
   privileged by design), plus the families named in :data:`FORBIDDEN_FUNCTIONS` and
   :data:`FORBIDDEN_PREFIXES`, which PostgreSQL grants to PUBLIC but checks inside.

   What this layer cannot see: the body of a PL/pgSQL function the query calls. Layer 1 is the
   boundary; this one is a second wall for what a misconfigured role could still do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from bulkwrites.sources.postgres.errors import QueryError

# The application's own tables (by name, as Django creates them). In a database that holds the
# ledger, a source role must neither own nor write these, nor read the secret ones.
APP_TABLES = ("bulkwrites_job", "bulkwrites_item", "bulkwrites_itempayload", "django_session", "auth_user")
SECRET_TABLES = ("django_session", "auth_user")
# Predefined roles whose members reach server files, programs or other sessions.
POWERFUL_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program", "pg_signal_backend")

FORBIDDEN_FUNCTIONS = frozenset(
    {
        # other sessions, the server itself
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_log_backend_memory_contexts",
        "pg_notify",
        # files
        "pg_stat_file",
        "pg_logdir_ls",
        # large objects (the rest start with lo_)
        "loread",
        "lowrite",
        # this session's settings: set_config('statement_timeout', '0', true) would lift the timeout
        "set_config",
        # SQL given as text, run where it cannot be vetted
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "ts_stat",
    }
)
FORBIDDEN_PREFIXES = (
    "pg_read_",  # pg_read_file, pg_read_binary_file
    "pg_ls_",  # pg_ls_dir, pg_ls_logdir, pg_ls_waldir, ...
    "pg_file_",  # adminpack: pg_file_write, pg_file_unlink, ...
    "lo_",  # lo_import, lo_export, lo_open, lo_unlink, lo_get, lo_put, ...
    "dblink",  # dblink, dblink_exec, dblink_connect, ...
    "pg_create_",  # pg_create_physical_replication_slot, pg_create_logical_replication_slot, ...
    "pg_drop_replication_slot",
    "pg_copy_",  # pg_copy_physical_replication_slot, ...
    "pg_replication_",  # slot advance, replication origins
    "pg_logical_",  # pg_logical_slot_get_changes, pg_logical_emit_message
    "pg_backup_",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_advisory",  # locks other sessions wait on
    "pg_try_advisory",
    "pg_stat_reset",
    "pg_signal_",
)

_PRIVILEGED_CATALOG_FUNCTIONS = """
    SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proacl IS NOT NULL
      AND NOT EXISTS (SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
"""

_ROLE_FACTS = """
    SELECT current_user, r.rolsuper, r.rolreplication,
        ARRAY(SELECT p FROM unnest(%(powerful)s::text[]) AS p
              WHERE to_regrole(p) IS NOT NULL AND pg_has_role(current_user, to_regrole(p), 'MEMBER')),
        ARRAY(SELECT t FROM unnest(%(app)s::text[]) AS t
              WHERE to_regclass(t) IS NOT NULL AND (
                  pg_has_role(current_user, (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = to_regclass(t)),
                              'MEMBER')
                  OR has_table_privilege(to_regclass(t), 'INSERT, UPDATE, DELETE, TRUNCATE'))),
        ARRAY(SELECT t FROM unnest(%(secret)s::text[]) AS t
              WHERE to_regclass(t) IS NOT NULL AND has_table_privilege(to_regclass(t), 'SELECT')),
        to_regclass(%(ledger)s) IS NOT NULL
    FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
"""

ADVICE = 'use a role that may only SELECT what the source needs (README, "Security model")'


def vet_role(conn: psycopg.Connection[Any]) -> None:
    """Raise QueryError (one line) unless the connected role can only read what it was granted."""
    row = conn.execute(
        _ROLE_FACTS,
        {"powerful": list(POWERFUL_ROLES), "app": list(APP_TABLES), "secret": list(SECRET_TABLES),
         "ledger": APP_TABLES[0]},
    ).fetchone()  # fmt: skip
    if row is None:  # pragma: no cover - current_user always has a pg_roles row
        raise QueryError("could not look up the source role in pg_roles")
    role, superuser, replication, powerful, app_tables, secret_tables, is_app_database = row
    refused = f"the role {role!r} is refused as a source"
    if superuser:
        raise QueryError(
            f"{refused}: it is a PostgreSQL superuser (it could read server files and end other sessions); {ADVICE}"
        )
    if replication:
        raise QueryError(f"{refused}: it has the REPLICATION attribute; {ADVICE}")
    if powerful:
        raise QueryError(f"{refused}: it is a member of {', '.join(powerful)}; {ADVICE}")
    if is_app_database and app_tables:  # another database's auth_user is not ours to guard
        raise QueryError(
            f"{refused}: it owns or may write this application's own tables ({', '.join(app_tables)}), "
            f"so it could read admin sessions and password hashes; {ADVICE}"
        )
    if is_app_database and secret_tables:
        raise QueryError(
            f"{refused}: it may read this application's {', '.join(secret_tables)} "
            f"(admin sessions, password hashes); {ADVICE}"
        )


# --- functions ------------------------------------------------------------------------------

_LITERAL = re.compile(r"'(?:[^']|'')*'")
# A function call in PostgreSQL's deparsed expressions: name( or schema.name( , names maybe quoted.
_CALL = re.compile(r'(?:(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)\.)?("(?:[^"]|"")+"|[A-Za-z_][\w$]*)\s*\(')


def is_forbidden_name(name: str) -> bool:
    name = name.lower()
    return name in FORBIDDEN_FUNCTIONS or name.startswith(FORBIDDEN_PREFIXES)


def _strings(node: Any) -> Iterator[tuple[str, str]]:
    """(key, text) of every string in an EXPLAIN JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield key, value
            else:
                for _, text in _strings(value):
                    yield key, text
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, str):
                yield "", value
            else:
                yield from _strings(value)


def called_functions(plan: Any) -> set[str]:
    """Names of the functions an EXPLAIN (VERBOSE, FORMAT JSON) plan calls (unquoted, as the server wrote them)."""
    names: set[str] = set()
    for key, text in _strings(plan):
        if key == "Function Name":  # Function Scan nodes (SELECT * FROM pg_ls_dir('.'))
            names.add(text)
            continue
        for match in _CALL.finditer(_LITERAL.sub("''", text)):
            name = match.group(1)
            names.add(name[1:-1].replace('""', '"') if name.startswith('"') else name)
    return names


def forbidden_calls(conn: psycopg.Connection[Any], query: sql.Composable) -> list[str]:
    """The forbidden functions ``query`` would call, found in the server's plan (nothing is run)."""
    # prepare=True: the extended protocol, which takes exactly one statement. Without it psycopg
    # sends a parameterless query as a simple query, and "...; COMMIT; INSERT ..." would run.
    explained = conn.execute(sql.SQL("EXPLAIN (VERBOSE, FORMAT JSON) {}").format(query), prepare=True).fetchone()
    plan = explained[0] if explained else []
    if isinstance(plan, str):
        plan = json.loads(plan)
    privileged = {name for (name,) in conn.execute(_PRIVILEGED_CATALOG_FUNCTIONS).fetchall()}
    return sorted(n for n in called_functions(plan) if is_forbidden_name(n) or n in privileged)


def refuse_forbidden_calls(conn: psycopg.Connection[Any], query: sql.Composable) -> None:
    names = forbidden_calls(conn, query)
    if names:
        raise QueryError(forbidden_message(names))


def forbidden_message(names: list[str]) -> str:
    calls = ", ".join(f"{name}()" for name in names)
    return (
        f"the query calls {calls}: sources may not call functions that touch server files, other sessions, "
        "replication, large objects or settings, nor run SQL given as text"
    )
