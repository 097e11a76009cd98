"""SQL sources cannot be turned against the application: the attacks of issue 9, each refused.

1. The app's own connection (``default``) read admin session keys and password hashes.
2. A superuser source read server files (``/proc/<postmaster>/environ``), ended other sessions,
   created a replication slot and imported a large object, all in a read-only transaction.

The roles here are made through the admin (superuser) connection used only for test set-up,
like an operator would make them; the app's role cannot create roles.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.core.management.base import CommandError
from django.urls import reverse
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from bulkwrites.models import Job, SqlSource
from bulkwrites.services import sql as sql_services
from bulkwrites.services.errors import JobError
from bulkwrites.sources.postgres import QueryError, check_select, read_query
from demo.models import Customer
from tests.conftest import make_admin_dsn, pg_admin_dsn, run_cli, test_db_dsn

pytestmark = pytest.mark.django_db(transaction=True)

SESSION_QUERY = "SELECT session_key AS pk, session_data FROM django_session"
PASSWORD_QUERY = "SELECT username AS pk, password FROM auth_user"


def admin_execute(query: sql.Composable | str, dbname: str | None = None) -> list[tuple[Any, ...]]:
    dsn = make_admin_dsn(dbname=dbname) if dbname else pg_admin_dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(query)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@contextlib.contextmanager
def login_role(options: str = "", grants: tuple[str, ...] = ()) -> Iterator[str]:
    """A login role on the test database with ``options`` (CREATE ROLE) and ``grants`` (run as admin)."""
    dbname = str(conninfo_to_dict(test_db_dsn())["dbname"])
    role = f"bw_test_src_{uuid.uuid4().hex[:8]}"
    admin_execute(sql.SQL("CREATE ROLE {} LOGIN " + options).format(sql.Identifier(role)))
    try:
        for grant in grants:
            app = sql.Identifier(settings.DATABASES["default"]["USER"])
            admin_execute(sql.SQL(grant).format(role=sql.Identifier(role), app=app), dbname)
        yield test_db_dsn(user=role)
    finally:
        admin_execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)), dbname)
        admin_execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def operator(client: Any, django_user_model: Any) -> Any:
    """A staff user who may manage and use SQL sources and run jobs - not a superuser."""
    user = django_user_model.objects.create_user("op", "op@example.com", "pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["run_job", "use_sql_sources", "manage_sources", "view_job"])
    )
    client.force_login(django_user_model.objects.get(pk=user.pk))
    return client


# --- finding 1: the app's own connection -------------------------------------------------------


def test_default_is_not_offered_and_refused_by_the_form(operator: Any) -> None:
    page = operator.get(reverse("admin:bulkwrites_sqlsource_add"))
    assert '<option value="default"' not in page.content.decode()
    response = operator.post(
        reverse("admin:bulkwrites_sqlsource_add"),
        {"name": "sessions", "connection": "default", "query": SESSION_QUERY, "table": ""},
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["connection"]
    assert not SqlSource.objects.exists()


@pytest.mark.parametrize("query", [SESSION_QUERY, PASSWORD_QUERY])
def test_a_source_on_default_cannot_show_sessions_or_password_hashes(
    operator: Any, make_table: Any, django_user_model: Any, query: str
) -> None:
    """A source saved before this change (or by hand) still names `default`: its preview refuses."""
    table = make_table()
    source = SqlSource.objects.create(name="sessions", connection="default", query=query)
    secret_session = operator.session.session_key
    secret_hash = django_user_model.objects.get(username="op").password
    response = operator.post(
        reverse("admin:bulkwrites_sqlsource_new_job", args=[source.pk]),
        {"table_name": table, "operation": "put", "duplicate_policy": "last", "concurrency": 2, "workers": 1,
         "max_attempts": 10, "batch_size": 25},
    )  # fmt: skip
    assert response.status_code == 302
    preview = operator.get(response["Location"])
    page = preview.content.decode()
    assert "is refused as a SQL source" in page
    assert "own database role" in page
    assert secret_session not in page
    assert secret_hash.split("$")[-1] not in page
    assert preview.context["preview"] is None


def test_cli_refuses_default(make_table: Any) -> None:
    table = make_table()
    with pytest.raises(CommandError) as info:
        run_cli("copy", "--database", "default", "--query", SESSION_QUERY, "--table", table)
    message = str(info.value)
    assert "Connection 'default' is refused as a SQL source" in message
    assert "BULKWRITES_SQL_<NAME>" in message  # what to configure instead
    assert "\n" not in message
    assert not Job.objects.exists()


def test_cli_refuses_the_app_role_by_url(make_table: Any) -> None:
    """Not by name: the catalog says this role owns the ledger, whatever the URL calls it."""
    table = make_table()
    with pytest.raises(CommandError) as info:
        run_cli("copy", "--database", test_db_dsn(), "--query", SESSION_QUERY, "--table", table)
    assert "owns or may write this application's own tables" in str(info.value)
    assert not Job.objects.exists()


def test_an_alias_with_the_app_role_is_refused_too() -> None:
    settings.DATABASES["same_role"] = {**settings.DATABASES["default"], "NAME": "other"}
    try:
        assert "same_role" not in sql_services.connection_names()
        with pytest.raises(JobError, match="refused as a SQL source"):
            sql_services.resolve_dsn("same_role")
    finally:
        del settings.DATABASES["same_role"]


# --- finding 2: what a superuser (or a well-granted role) could do ---------------------------


def postmaster_pid() -> int:
    (row,) = admin_execute("SELECT pg_read_file('postmaster.pid')")
    return int(row[0].splitlines()[0])


def test_cli_refuses_a_superuser_source(make_table: Any) -> None:
    table = make_table()
    superuser = test_db_dsn(user="postgres")
    with pytest.raises(CommandError) as info:
        run_cli("copy", "--database", superuser, "--query", "SELECT 1 AS pk", "--table", table)
    assert "is a PostgreSQL superuser" in str(info.value)
    environ = f"SELECT pg_read_file('/proc/{postmaster_pid()}/environ') AS pk"
    with pytest.raises(CommandError) as info:
        run_cli("copy", "--database", superuser, "--query", environ, "--table", table)
    assert "pg_read_file()" in str(info.value)
    assert "AWS_SECRET_ACCESS_KEY" not in str(info.value)
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("options", "grants", "reason"),
    [
        ("SUPERUSER", (), "is a PostgreSQL superuser"),
        ("REPLICATION", (), "REPLICATION"),
        ("", ("GRANT pg_read_server_files TO {role}",), "member of pg_read_server_files"),
        ("", ("GRANT pg_signal_backend TO {role}",), "member of pg_signal_backend"),
        ("", ("GRANT SELECT ON django_session TO {role}",), "may read this application's django_session"),
        ("", ("GRANT INSERT ON bulkwrites_job TO {role}",), "owns or may write this application's own tables"),
        ("", ("GRANT {app} TO {role}",), "owns or may write this application's own tables"),  # may become it
    ],
)
def test_roles_that_can_do_more_than_read_are_refused(options: str, grants: tuple[str, ...], reason: str) -> None:
    with login_role(options, grants) as dsn, pytest.raises(QueryError) as info:
        list(read_query(dsn, "SELECT 1 AS pk"))
    assert reason in str(info.value)
    assert "README" in str(info.value)


@pytest.fixture
def granted_role() -> Iterator[str]:
    """Not a superuser, but granted what an unwary operator might grant: file and large-object functions."""
    grants = (
        "GRANT USAGE ON SCHEMA public TO {role}",
        "GRANT SELECT ON demo_customer TO {role}",
        "GRANT EXECUTE ON FUNCTION pg_read_file(text) TO {role}",
        "GRANT EXECUTE ON FUNCTION pg_ls_dir(text) TO {role}",
        "GRANT EXECUTE ON FUNCTION lo_import(text) TO {role}",
    )
    dbname = str(conninfo_to_dict(test_db_dsn())["dbname"])
    view = sql.Identifier(f"bw_sneaky_{uuid.uuid4().hex[:8]}")
    with login_role("", grants) as dsn:
        role = sql.Identifier(str(conninfo_to_dict(dsn)["user"]))
        admin_execute(sql.SQL("CREATE VIEW {} AS SELECT pg_read_file('postmaster.pid') AS pk").format(view), dbname)
        admin_execute(sql.SQL("GRANT SELECT ON {} TO {}").format(view, role), dbname)
        try:
            yield dsn
        finally:
            admin_execute(sql.SQL("DROP VIEW {}").format(view), dbname)


def sneaky_view(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        (name,) = conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relname LIKE 'bw_sneaky_%%' AND c.relkind = 'v'"
        ).fetchone()  # type: ignore[misc]
    return str(name)


def test_the_granted_role_really_could_read_files(granted_role: str) -> None:
    """The control: outside bulkwrites, this role reads a server file. Inside, it may not (below)."""
    with psycopg.connect(granted_role) as conn:
        (text,) = conn.execute("SELECT pg_read_file('postmaster.pid')").fetchone()  # type: ignore[misc]
    assert str(postmaster_pid()) in text


ATTACKS = {
    "file": "SELECT pg_read_file('postmaster.pid') AS pk",
    "directory": "SELECT pk FROM pg_ls_dir('.') AS pk",
    "large object": "SELECT lo_import('/etc/hostname') AS pk",
    "other sessions": "SELECT pg_terminate_backend(pid) AS pk FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
    "cancel": "SELECT pg_cancel_backend(pid) AS pk FROM pg_stat_activity",
    "replication slot": "SELECT pg_create_physical_replication_slot('bw_attack', true) AS pk",
    "statement timeout": "SELECT set_config('statement_timeout', '0', false) AS pk",
    "SQL as text": "SELECT query_to_xml('SELECT pg_read_file(''postmaster.pid'')', true, false, '') AS pk",
    "dblink": "SELECT dblink('dbname=postgres', 'SELECT 1') AS pk",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_dangerous_functions_are_refused_by_the_early_check(attack: str) -> None:
    with pytest.raises(QueryError, match=r"the query calls .*\(\): sources may not call functions"):
        check_select(ATTACKS[attack])


@pytest.mark.parametrize("attack", sorted(set(ATTACKS) - {"dblink"}))  # no dblink extension here to plan
def test_dangerous_functions_are_refused_from_the_plan_even_for_a_role_allowed_to_run_them(
    granted_role: str, attack: str
) -> None:
    """Past the text check (a Composable is trusted as built): the server's plan is checked again."""
    objects_before = admin_execute("SELECT count(*) FROM pg_largeobject_metadata", _test_db())
    with psycopg.connect(granted_role) as victim:
        with pytest.raises(QueryError) as info:
            list(read_query(granted_role, sql.SQL(ATTACKS[attack])))
        assert "sources may not call functions" in str(info.value)
        assert victim.execute("SELECT 1").fetchone() == (1,)  # not terminated
    assert admin_execute("SELECT count(*) FROM pg_largeobject_metadata", _test_db()) == objects_before
    assert admin_execute("SELECT slot_name FROM pg_replication_slots WHERE slot_name = 'bw_attack'") == []


def test_a_view_hiding_a_file_read_is_seen_through(granted_role: str) -> None:
    query = f"SELECT pk FROM {sneaky_view(granted_role)}"
    assert check_select(query) == query  # nothing to see in the text
    with pytest.raises(QueryError, match=r"pg_read_file\(\)"):
        list(read_query(granted_role, query))


def test_a_source_on_a_granted_role_is_refused_in_the_admin(
    granted_role: str, operator: Any, make_table: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("BULKWRITES_SQL_GRANTED", granted_role)
    table = make_table()
    source = SqlSource.objects.create(
        name="sneaky", connection="granted", query=f"SELECT pk FROM {sneaky_view(granted_role)}"
    )
    response = operator.post(
        reverse("admin:bulkwrites_sqlsource_new_job", args=[source.pk]),
        {"table_name": table, "operation": "put", "duplicate_policy": "last", "concurrency": 2, "workers": 1,
         "max_attempts": 10, "batch_size": 25},
    )  # fmt: skip
    page = operator.get(response["Location"]).content.decode()
    assert "pg_read_file()" in page
    assert "sources may not call functions" in page


def test_a_reader_role_works(sql_reader: str) -> None:
    """What the README tells an operator to create is enough for a source."""
    Customer.objects.create(name="Ada", email="ada@example.com", country="GB")
    rows = list(read_query(sql_reader, "SELECT name, country FROM demo_customer"))
    assert [r.values for r in rows] == [{"name": "Ada", "country": "GB"}]


def test_an_alias_password_with_quotes_and_backslashes_survives() -> None:
    """services/sql.py built "password='...'" by hand: a ' or \\ in the password broke it."""
    password = "it's a \\ secret"
    settings.DATABASES["quoted"] = {
        **settings.DATABASES["default"], "USER": "someone_else", "PASSWORD": password
    }  # fmt: skip
    try:
        assert conninfo_to_dict(sql_services.resolve_dsn("quoted"))["password"] == password
    finally:
        del settings.DATABASES["quoted"]


def _test_db() -> str:
    return str(conninfo_to_dict(test_db_dsn())["dbname"])
