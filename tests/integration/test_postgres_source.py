"""The PostgreSQL source reader against the real local PostgreSQL (no mocks).

Each run creates its own schema (and, for the privilege tests, its own login role) on
DATABASE_URL and drops them afterwards. The local server trusts every local connection, so it
never asks for a password; the wrong-password case is played by a tiny server that speaks the
PostgreSQL wire protocol (asks for the password, refuses it like PostgreSQL does), so the real
libpq/psycopg path produces the real error.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import traceback
import tracemalloc
import uuid
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bulkwrites.sources.postgres import (
    QueryError,
    SourceRow,
    check_select,
    list_columns,
    list_tables,
    read_query,
    redact_dsn,
    table_query,
)
from tests.conftest import make_admin_dsn

PASSWORD = "S3cretPw!"
BIG_ROWS = 50_000
WEIRD_TABLE = 'weird "name"; drop'
WEIRD_COLUMN = 'we"ird; col'


@pytest.fixture(scope="module")
def admin_dsn() -> str:
    """The superuser connection, for set-up only (roles, schemas), on DATABASE_URL's database."""
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        pytest.fail("DATABASE_URL is not set: run the tests with `make test` (it starts the services)", pytrace=False)
    return make_admin_dsn(dbname=str(conninfo_to_dict(database_url)["dbname"]))


@pytest.fixture(scope="module")
def dsn(admin_dsn: str) -> Iterator[str]:
    """A plain login role (not superuser, not the app's role) that owns this module's schema."""
    role = f"bw_pgsrc_owner_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    yield make_conninfo(os.environ["DATABASE_URL"], user=role)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def schema(dsn: str, admin_dsn: str) -> Iterator[str]:
    name = f"bw_pgsrc_{uuid.uuid4().hex[:10]}"
    s = sql.Identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        owner = sql.Identifier(str(conninfo_to_dict(dsn)["user"]))
        conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(s, owner))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.big AS SELECT g AS id, repeat('x', 100) || g AS label FROM generate_series(1, %s) g"
            ).format(s),
            (BIG_ROWS,),
        )
        conn.execute(
            sql.SQL("""
            CREATE TABLE {s}.types (
                id int PRIMARY KEY, amount numeric(12, 4), ratio float8, at timestamptz, day date,
                uid uuid, doc jsonb, nums int[], blob bytea, flag bool, note text, span interval, never timestamptz
            );
            INSERT INTO {s}.types VALUES
              (1, 12345678.1234, 0.1, '2024-02-29 13:14:15.123456+02', '2024-02-29',
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
               '{{"price": 9.99, "n": 3, "tags": ["a", 1.5e-7], "deep": {{"x": 0.5}}}}',
               '{{1,2,3}}', '\\x00ff10', true, 'é', '1 day 02:03:04', 'infinity'),
              (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
            CREATE TABLE {s}.counter (n int);
            CREATE SEQUENCE {s}.s;
            CREATE FUNCTION {s}.bump() RETURNS int LANGUAGE sql AS 'INSERT INTO {s}.counter VALUES (1) RETURNING n';
            CREATE TABLE {s}.{weird} (id int, {weird_col} text);
            INSERT INTO {s}.{weird} VALUES (1, 'one'), (2, 'two');
            CREATE VIEW {s}.big_view AS SELECT id FROM {s}.big;
            """).format(s=s, weird=sql.Identifier(WEIRD_TABLE), weird_col=sql.Identifier(WEIRD_COLUMN))
        )
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s))


@pytest.fixture(scope="module")
def reader_dsn(dsn: str, admin_dsn: str, schema: str) -> Iterator[str]:
    """A login role that is not superuser and may read only `types` (all columns) and `big.id`."""
    role = f"bw_pgsrc_reader_{uuid.uuid4().hex[:8]}"
    r, s = sql.Identifier(role), sql.Identifier(schema)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(r))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r))
        conn.execute(sql.SQL("GRANT SELECT ON {}.types TO {}").format(s, r))
        conn.execute(sql.SQL("GRANT SELECT (id) ON {}.big TO {}").format(s, r))
    yield make_conninfo(dsn, user=role)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(r))
        conn.execute(sql.SQL("DROP ROLE {}").format(r))


def scalar(dsn: str, query: sql.Composable | str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]


def reader_backends(dsn: str) -> set[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'bulkwrites' AND pid <> pg_backend_pid()"
        ).fetchall()
    return {pid for (pid,) in rows}


def wait_until_gone(dsn: str, pids: set[int], seconds: float = 3.0) -> set[int]:
    deadline = time.monotonic() + seconds
    while (left := pids & reader_backends(dsn)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


# --- check_select ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("select 1", "select 1"),
        ("  SELECT a, b FROM t WHERE x = 'a;b' ;  \n", "SELECT a, b FROM t WHERE x = 'a;b'"),
        ("with a as (select 1 as x) select x from a;", "with a as (select 1 as x) select x from a"),
        ("WITH RECURSIVE r(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT n FROM r", None),
        ("values (1, 'a'), (2, 'b');", "values (1, 'a'), (2, 'b')"),
        ("TABLE my_table;", "TABLE my_table"),
        ("(select 1) union (select 2)", None),
        ("-- the export\nselect 1 -- trailing ; delete\n", "-- the export\nselect 1"),
        ("/* ; drop table x; */ select 1; -- done", "/* ; drop table x; */ select 1"),
        ("select 'insert into t; delete from t' as \"update\", $q$; drop table x $q$ as d", None),
        ("select substring('abc' for 2), 1;;", "select substring('abc' for 2), 1"),
    ],
)
def test_check_select_accepts_read_queries(query: str, expected: str | None) -> None:
    assert check_select(query) == (expected if expected is not None else query.strip().rstrip(";").rstrip())


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("select 1; drop table x", "only one statement is allowed; found 2"),
        ("select 1; select 2;", "only one statement is allowed; found 2"),
        ("insert into t values (1)", "not 'INSERT'"),
        ("update t set a = 1", "not 'UPDATE'"),
        ("DELETE FROM t", "not 'DELETE'"),
        ("merge into t using s on true when matched then delete", "not 'MERGE'"),
        ("with d as (delete from t returning *) select * from d", "contains DELETE inside WITH"),
        ("with d as materialized (insert into t values (1) returning *) select 1", "contains INSERT inside WITH"),
        ("with a as (select 1) update t set x = 1", "contains UPDATE"),
        ("select * into newtable from t", "SELECT ... INTO would create a table"),
        ("select * from t for update", "SELECT ... FOR UPDATE would lock rows"),
        ("select * from t for no key update nowait", "SELECT ... FOR NO KEY UPDATE would lock rows"),
        ("select * from t FOR SHARE", "SELECT ... FOR SHARE would lock rows"),
        ("copy t to stdout", "not 'COPY'"),
        ("do $$ begin perform 1; end $$", "not 'DO'"),
        ("call p()", "not 'CALL'"),
        ("set statement_timeout = 0", "not 'SET'"),
        ("begin", "not 'BEGIN'"),
        ("explain select 1", "not 'EXPLAIN'"),
        ("drop table t", "not 'DROP'"),
        ("", "the query is empty"),
        ("  ;  ", "the query is empty"),
        ("-- just a comment", "the query is empty"),
        ("/* select 1 */", "the query is empty"),
    ],
)
def test_check_select_refuses(query: str, message: str) -> None:
    with pytest.raises(QueryError) as info:
        check_select(query)
    assert message in str(info.value)
    if message.startswith("not "):
        assert str(info.value).startswith(
            "only a read-only query (SELECT, WITH ... SELECT, VALUES or TABLE) is allowed"
        )


# --- read_query --------------------------------------------------------------------------


def test_streams_with_a_server_side_cursor(dsn: str, schema: str) -> None:
    before = reader_backends(dsn)
    rows = read_query(dsn, table_query("big", ["id", "label"], schema=schema), fetch_size=500)
    ids: set[int] = set()
    activity = None
    tracemalloc.start()
    try:
        for expected_position, row in enumerate(rows, start=1):
            assert row.position == expected_position
            assert row.error is None
            assert row.values is not None
            ids.add(row.values["id"])
            if expected_position == BIG_ROWS // 2:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    activity = conn.execute(
                        "SELECT state, query FROM pg_stat_activity WHERE application_name = 'bulkwrites'"
                        " AND NOT (pid = ANY(%s)) AND pid <> pg_backend_pid()",
                        (list(before),),
                    ).fetchall()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids == set(range(1, BIG_ROWS + 1))
    # Half-way, the reader's session sits in its (read-only) transaction, fetching 500 rows at a time.
    assert activity is not None
    assert len(activity) == 1
    state, last_statement = activity[0]
    assert state == "idle in transaction"
    assert last_statement.startswith('FETCH FORWARD 500 FROM "bulkwrites_source_')
    # All 50,000 rows (about 150 bytes of label each, plus a dict per row) would take well over
    # 20 MB; streaming keeps about one batch.
    assert peak < 4_000_000, peak


def test_values_are_converted_for_dynamodb(dsn: str, schema: str) -> None:
    query = f'SELECT * FROM "{schema}".types ORDER BY id'
    rows = list(read_query(dsn, query))
    assert [r.position for r in rows] == [1, 2]
    assert rows[0].values == {
        "id": 1,
        "amount": Decimal("12345678.1234"),
        "ratio": Decimal("0.1"),  # exact repr of the float8, not 0.1000000000000000055511151231257827...
        "at": "2024-02-29T11:14:15.123456+00:00",  # timestamptz in UTC
        "day": "2024-02-29",
        "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "doc": {"price": Decimal("9.99"), "n": 3, "tags": ["a", Decimal("1.5e-7")], "deep": {"x": Decimal("0.5")}},
        "nums": [1, 2, 3],
        "blob": b"\x00\xff\x10",
        "flag": True,
        "note": "é",
        "span": "P1DT2H3M4S",
        "never": "infinity",
    }
    assert type(rows[0].values["ratio"]) is Decimal
    assert type(rows[0].values["blob"]) is bytes
    assert rows[1].values == {"id": 2} | dict.fromkeys(
        ["amount", "ratio", "at", "day", "uid", "doc", "nums", "blob", "flag", "note", "span", "never"]
    )


def test_more_values(dsn: str) -> None:
    [row] = read_query(
        dsn,
        "select 1e-7::float8 as tiny, 'NaN'::float8 as nan, '{1.5,2.25}'::float8[] as floats,"
        " '12:30'::time as t, '[1,5)'::int4range as r, '10.0.0.1'::inet as ip, 'a'::char(3) as c,"
        " '5e-324'::float8 as denormal, 123456789012345678901234567890 as big, '[]'::json as empty",
    )
    assert row.values is not None
    assert row.values.pop("nan").is_nan()  # NaN != NaN; items.py refuses it per item
    assert row.values == {
        "tiny": Decimal("1e-07"),
        "floats": [Decimal("1.5"), Decimal("2.25")],
        "t": "12:30:00",
        "r": "[1, 5)",
        "ip": "10.0.0.1",
        "c": "a  ",
        "denormal": Decimal("5e-324"),
        "big": Decimal("123456789012345678901234567890"),
        "empty": [],
    }


def test_timestamptz_in_utc_without_changing_the_session_time_zone(dsn: str) -> None:
    kolkata = make_conninfo(dsn, options="-c TimeZone=Asia/Kolkata")
    [row] = read_query(
        kolkata,
        "select ts, ts::text as as_text, ts::date as day, now()::time - now()::time as zero"
        " from (values ('2024-02-29 22:14:15+02'::timestamptz)) v(ts)",
    )
    assert row.values == {
        "ts": "2024-02-29T20:14:15+00:00",
        "as_text": "2024-03-01 01:44:15+05:30",  # the query itself runs in the role's time zone
        "day": "2024-03-01",
        "zero": "PT0S",
    }


def test_reads_a_checked_query_with_comments(dsn: str) -> None:
    rows = list(read_query(dsn, "-- my export\nvalues (1, 'a'), (2, 'b'); -- done"))
    assert [(r.position, r.values) for r in rows] == [
        (1, {"column1": 1, "column2": "a"}),
        (2, {"column1": 2, "column2": "b"}),
    ]


def test_max_rows_and_fetch_sizes(dsn: str, schema: str) -> None:
    query = table_query("big", ["id"], schema=schema)
    assert [r.position for r in read_query(dsn, query, max_rows=7, fetch_size=3)] == list(range(1, 8))
    assert list(read_query(dsn, query, max_rows=0)) == []
    assert len(list(read_query(dsn, f'select * from "{schema}".big where id <= 10', fetch_size=1))) == 10
    assert list(read_query(dsn, "select 1 where false")) == []
    with pytest.raises(ValueError, match="fetch_size"):
        read_query(dsn, query, fetch_size=0)


def test_duplicate_column_names(dsn: str) -> None:
    with pytest.raises(QueryError) as info:
        list(read_query(dsn, "select 1 as id, 2 as id"))
    assert str(info.value) == "the query returns two columns named 'id'; give them different names with AS"
    with pytest.raises(QueryError, match=r"two columns named '\?column\?'"):
        list(read_query(dsn, "select 1, 2"))


def test_a_refused_query_fails_when_read_query_is_called(dsn: str) -> None:
    with pytest.raises(QueryError, match="only one statement is allowed; found 2"):
        read_query(dsn, "select 1; drop table x")  # no iteration needed


def test_read_only_transaction_stops_writes_that_bypass_the_check(dsn: str, schema: str) -> None:
    s = sql.Identifier(schema)
    counter = sql.SQL("SELECT count(*) FROM {}.counter").format(s)
    sequence = sql.SQL("SELECT last_value, is_called FROM {}.s").format(s)
    with psycopg.connect(dsn) as conn:
        sequence_before = conn.execute(sequence).fetchone()

    with pytest.raises(QueryError) as info:
        list(read_query(dsn, sql.SQL("select nextval({})").format(sql.Literal(f"{schema}.s"))))
    assert "read-only transaction" in str(info.value)
    assert "nextval()" in str(info.value)

    # A function that inserts passes check_select (it is a SELECT); PostgreSQL refuses the write.
    query = f'select "{schema}".bump()'
    assert check_select(query) == query
    with pytest.raises(QueryError) as info:
        list(read_query(dsn, query))
    assert "read-only transaction" in str(info.value)
    assert "INSERT" in str(info.value)

    # Smuggling statements through a Composable: DECLARE takes exactly one statement.
    with pytest.raises(QueryError, match="only one statement is allowed"):
        list(read_query(dsn, sql.SQL("select 1; commit; insert into {}.counter values (2)").format(s)))
    with pytest.raises(QueryError, match="data-modifying"):
        list(
            read_query(
                dsn, sql.SQL("with d as (insert into {}.counter values (3) returning n) select * from d").format(s)
            )
        )
    with pytest.raises(QueryError, match="INTO"):
        list(read_query(dsn, sql.SQL("select 1 as n into {}.created").format(s)))

    assert scalar(dsn, counter) == 0
    with psycopg.connect(dsn) as conn:
        assert conn.execute(sequence).fetchone() == sequence_before
        assert conn.execute("select to_regclass(%s)", (f"{schema}.created",)).fetchone() == (None,)


def test_statement_timeout(dsn: str) -> None:
    before = reader_backends(dsn)
    started = time.monotonic()
    with pytest.raises(QueryError) as info:
        list(read_query(dsn, "select pg_sleep(5)", statement_timeout_ms=200))
    elapsed = time.monotonic() - started
    assert str(info.value) == "the query ran longer than 0.2 s (statement timeout)"
    assert elapsed < 5, f"pg_sleep(5) ran to its end ({elapsed:.1f} s): the timeout did not cut it short"
    assert not wait_until_gone(dsn, reader_backends(dsn) - before)


def test_query_errors_are_short_messages(dsn: str, schema: str) -> None:
    with pytest.raises(QueryError) as info:
        list(read_query(dsn, f'select nope from "{schema}".big'))
    assert str(info.value) == 'the query failed: column "nope" does not exist'
    with pytest.raises(QueryError) as info:
        list(read_query(dsn, table_query("missing", None, schema=schema)))
    assert str(info.value) == f'the query failed: relation "{schema}.missing" does not exist'
    with pytest.raises(QueryError) as info:
        list(read_query(dsn, "select 1 +"))
    assert str(info.value).startswith("the query failed: syntax error")
    with pytest.raises(QueryError) as info:
        list(read_query(dsn, "select 1/0"))
    assert str(info.value) == "the query failed: division by zero"


# --- connections and passwords -----------------------------------------------------------


class PasswordRefusingServer:
    """Speaks just enough of the PostgreSQL protocol to ask for a password and refuse it (28P01)."""

    def __init__(self, message: str = 'password authentication failed for user "bulkwrites"') -> None:
        self.message = message
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            with client, contextlib.suppress(OSError, ConnectionError):
                client.settimeout(5)
                self._refuse(client)

    @staticmethod
    def _read(client: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = client.recv(size - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def _refuse(self, client: socket.socket) -> None:
        while True:  # SSLRequest / GSSENCRequest are declined; then comes the StartupMessage
            length = int.from_bytes(self._read(client, 4), "big")
            body = self._read(client, length - 4)
            if int.from_bytes(body[:4], "big") in (80877103, 80877104):
                client.sendall(b"N")
                continue
            break
        client.sendall(b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big"))  # AuthenticationCleartextPassword
        assert self._read(client, 1) == b"p"
        length = int.from_bytes(self._read(client, 4), "big")
        self.received.append(self._read(client, length - 4).rstrip(b"\0").decode())
        fields = b"".join(
            code + value.encode() + b"\0"
            for code, value in [
                (b"S", "FATAL"),
                (b"V", "FATAL"),
                (b"C", "28P01"),
                (b"M", self.message),
            ]
        )
        client.sendall(b"E" + (len(fields) + 5).to_bytes(4, "big") + fields + b"\0")


def assert_no_password(exc: BaseException) -> None:
    message = str(exc)
    rendered = "".join(traceback.format_exception(exc))
    for text in (message, rendered):
        assert PASSWORD not in text
        assert "S3cretPw%21" not in text
        assert "S3cret" not in text


def with_password(dsn: str, **params: str | int | None) -> str:
    return make_conninfo(dsn, password=PASSWORD, **params)


def url_with_password(dsn: str, host: str | None = None, port: int | None = None, dbname: str | None = None) -> str:
    p = conninfo_to_dict(dsn)
    return (
        f"postgresql://{p.get('user', 'bulkwrites')}:S3cretPw%21@{host or p['host']}:{port or p['port']}"
        f"/{dbname or p['dbname']}"
    )


def test_wrong_password_message_has_no_password(dsn: str) -> None:
    server = PasswordRefusingServer()
    try:
        for bad in (
            with_password(dsn, host="127.0.0.1", port=server.port),
            url_with_password(dsn, host="127.0.0.1", port=server.port),
        ):
            with pytest.raises(QueryError) as info:
                list(read_query(bad, "select 1"))
            assert str(info.value) == (
                "could not connect to the source database: connection to server at "
                f'"127.0.0.1", port {server.port} failed: password authentication failed for user "bulkwrites"'
            )
            assert_no_password(info.value)
            with pytest.raises(QueryError) as info:
                list_tables(bad)
            assert "password authentication failed" in str(info.value)
            assert_no_password(info.value)
    finally:
        server.close()
    assert server.received  # the password really was sent, and refused
    assert set(server.received) == {PASSWORD}


def test_a_server_message_echoing_the_password_is_scrubbed(dsn: str) -> None:
    server = PasswordRefusingServer(message=f"password {PASSWORD} is wrong; did you mean 'S3cretPw'?")
    try:
        with pytest.raises(QueryError) as info:
            list(read_query(with_password(dsn, host="127.0.0.1", port=server.port), "select 1"))
    finally:
        server.close()
    assert str(info.value).endswith("failed: password *** is wrong; did you mean '...'?")
    assert_no_password(info.value)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown database", 'database "no_such_db_bw" does not exist'),
        ("unknown role", 'role "no_such_role_bw" does not exist'),
        ("unknown host", "failed to resolve host 'no-such-host.invalid'"),
        ("closed port", "Connection refused"),
        ("bad percent-encoding", 'the connection string is not valid: invalid percent-encoded token: "..."'),
        ("missing =", 'the connection string is not valid: missing "=" after "password"'),
        ("bad port", 'invalid integer value "..." for connection option "port"'),
    ],
)
def test_connection_errors_never_show_the_password(dsn: str, case: str, expected: str) -> None:
    bad = {
        "unknown database": with_password(dsn, dbname="no_such_db_bw"),
        "unknown role": url_with_password(dsn).replace(
            f"postgresql://{conninfo_to_dict(dsn)['user']}:", "postgresql://no_such_role_bw:"
        ),
        "unknown host": url_with_password(dsn, host="no-such-host.invalid"),
        "closed port": with_password(dsn, host="127.0.0.1", port=1),
        "bad percent-encoding": url_with_password(dsn).replace("S3cretPw%21", "S3cretPw%zz!"),
        "missing =": f"host=127.0.0.1 password {PASSWORD}",
        "bad port": url_with_password(dsn)
        .replace(f":{conninfo_to_dict(dsn)['port']}/", ":S3cretPw!/")
        .replace("S3cretPw%21", "x"),
    }[case]
    started = time.monotonic()
    for call in (lambda: list(read_query(bad, "select 1")), lambda: list_tables(bad)):
        with pytest.raises(QueryError) as info:
            call()
        assert expected in str(info.value)
        assert_no_password(info.value)
    # A generous bound: what is checked is that a bad target fails instead of hanging.
    assert time.monotonic() - started < 60


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://app:S3cretPw%21@db.example:5432/prod?sslmode=require") == (
        "postgresql://app:***@db.example:5432/prod?sslmode=require"
    )
    assert redact_dsn("postgres://app@db/prod") == "postgres://app@db/prod"
    assert redact_dsn("postgresql://app@db/prod?password=S3cretPw!&sslmode=verify-full") == (
        "postgresql://app@db/prod?password=***&sslmode=verify-full"
    )
    assert redact_dsn("host=db user=app password=S3cretPw! dbname=prod") == "host=db user=app password=*** dbname=prod"
    assert redact_dsn("host=db password = 'S3cret Pw!' sslpassword=k3y dbname=prod") == (
        "host=db password = *** sslpassword=*** dbname=prod"
    )
    assert redact_dsn(r"host=db password='S3cret\'Pw!'") == "host=db password=***"
    assert redact_dsn(f"host=127.0.0.1 password {PASSWORD}") == "host=127.0.0.1 password ***"
    assert redact_dsn("host=db dbname=prod") == "host=db dbname=prod"


# --- tables, columns, identifiers --------------------------------------------------------


def test_table_query_quotes_identifiers(dsn: str, schema: str) -> None:
    query = table_query(WEIRD_TABLE, ["id", WEIRD_COLUMN], schema=schema)
    assert query.as_string() == f'SELECT "id", "we""ird; col" FROM "{schema}"."weird ""name""; drop"'
    assert table_query("t", None).as_string() == 'SELECT * FROM "t"'
    rows = list(read_query(dsn, query))
    assert sorted(r.values[WEIRD_COLUMN] for r in rows if r.values) == ["one", "two"]
    assert scalar(dsn, sql.SQL("select count(*) from {}").format(sql.Identifier(schema, WEIRD_TABLE))) == 2
    with pytest.raises(QueryError, match="at least one column"):
        table_query("t", [])
    with pytest.raises(QueryError, match="chosen twice"):
        table_query("t", ["a", "a"])


def test_list_tables_and_columns(dsn: str, schema: str) -> None:
    ours = [(s, t) for s, t in list_tables(dsn) if s == schema]
    assert ours == [
        (schema, "big"),
        (schema, "big_view"),
        (schema, "counter"),
        (schema, "types"),
        (schema, WEIRD_TABLE),
    ]
    tables = list_tables(dsn)
    assert tables == sorted(tables)
    assert not [s for s, _ in tables if s in ("pg_catalog", "information_schema") or s.startswith("pg_")]
    assert list_columns(dsn, schema, "types") == [
        ("id", "integer"),
        ("amount", "numeric(12,4)"),
        ("ratio", "double precision"),
        ("at", "timestamp with time zone"),
        ("day", "date"),
        ("uid", "uuid"),
        ("doc", "jsonb"),
        ("nums", "integer[]"),
        ("blob", "bytea"),
        ("flag", "boolean"),
        ("note", "text"),
        ("span", "interval"),
        ("never", "timestamp with time zone"),
    ]
    assert list_columns(dsn, schema, WEIRD_TABLE) == [("id", "integer"), (WEIRD_COLUMN, "text")]
    with pytest.raises(QueryError, match="there is no table"):
        list_columns(dsn, schema, "missing")
    with pytest.raises(QueryError, match="there is no table"):
        list_columns(dsn, schema, "s")  # a sequence is not a table


def test_privileges_of_a_plain_role(dsn: str, schema: str, reader_dsn: str) -> None:
    assert [(s, t) for s, t in list_tables(reader_dsn) if s == schema] == [(schema, "big"), (schema, "types")]
    assert list_columns(reader_dsn, schema, "big") == [("id", "integer")]  # label is not granted
    with pytest.raises(QueryError, match="may not read any column"):
        list_columns(reader_dsn, schema, "counter")
    assert len(list(read_query(reader_dsn, table_query("big", ["id"], schema=schema), max_rows=5))) == 5
    with pytest.raises(QueryError) as info:
        list(read_query(reader_dsn, table_query("big", None, schema=schema)))
    assert str(info.value) == "the source database refused access: permission denied for table big"


def test_closing_early_releases_the_connection(dsn: str, schema: str) -> None:
    before = reader_backends(dsn)
    rows = read_query(dsn, table_query("big", ["id"], schema=schema), fetch_size=100)
    assert reader_backends(dsn) == before  # nothing happens before the first row is asked for
    first = next(rows)
    assert first == SourceRow(position=1, values={"id": first.values["id"]})  # type: ignore[index]
    ours = reader_backends(dsn) - before
    assert len(ours) == 1
    rows.close()  # type: ignore[attr-defined]
    assert not wait_until_gone(dsn, ours)

    # Also after reading everything, and after an error half-way.
    list(read_query(dsn, "select 1"))
    failing = read_query(dsn, "select 1 / (3 - g) from generate_series(1, 5) g", fetch_size=1)
    assert [next(failing).position, next(failing).position] == [1, 2]
    with pytest.raises(QueryError, match="division by zero"):
        next(failing)
    assert not wait_until_gone(dsn, reader_backends(dsn) - before)
