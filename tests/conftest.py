"""Shared fixtures: the real services `make test` starts (PostgreSQL, Redis, DynamoDB Local).

Integration tests fail loudly when a service is missing: a silently skipped test is a defect.
Tests use Redis database 15 and a queue name of their own process, so neither a `make run`
worker nor another test run ever takes their jobs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
TEST_REDIS_DB = 15


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the tests with `make test` (it starts the services)", pytrace=False)
    return value


def test_redis_url() -> str:
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:63799/0")
    return base.rsplit("/", 1)[0] + f"/{TEST_REDIS_DB}"


test_redis_url.__test__ = False  # type: ignore[attr-defined]


TEST_QUEUE = f"bulkwrites-test-{os.getpid()}"


@pytest.fixture(scope="session", autouse=True)
def _isolated_queue() -> Iterator[None]:
    from django.conf import settings
    from django.test import override_settings

    with override_settings(
        RQ_QUEUES={TEST_QUEUE: {"URL": test_redis_url(), "DEFAULT_TIMEOUT": 900}},
        BULKWRITES={**settings.BULKWRITES, "QUEUE": TEST_QUEUE},
    ):
        yield


def _empty(queue: Any) -> None:
    queue.empty()
    for registry in (queue.failed_job_registry, queue.finished_job_registry):
        for job_id in registry.get_job_ids():
            registry.remove(job_id, delete_job=True)
    # RQ 2's started registry keeps executions and has no remove(): a SIGKILLed work horse leaves
    # its job there until RQ's own cleanup, long after the test.
    started = queue.started_job_registry
    for job_id in started.get_job_ids(cleanup=False):
        queue.connection.delete(queue.job_class.key_for(job_id))
    queue.connection.delete(started.key)


@pytest.fixture
def rq_queue() -> Iterator[Any]:
    import django_rq
    from rq import Worker

    queue = django_rq.get_queue(TEST_QUEUE)
    _empty(queue)
    # A worker an earlier test SIGKILLed stays registered until its heartbeat expires, and a
    # page test counting the queue's live workers saw it (order-dependent: `-k "stag or kill"`).
    # No test's worker runs yet here: any registered on this session's queue is left over.
    for worker in Worker.all(queue=queue):
        worker.register_death()  # type: ignore[no-untyped-call]  # RQ leaves it unannotated
    yield queue
    _empty(queue)


@pytest.fixture
def run_worker(rq_queue: Any) -> Callable[[], None]:
    """Run a burst worker in this process until the queue is empty (no fork: fast, same DB)."""
    from rq import SimpleWorker

    def run() -> None:
        worker = SimpleWorker([rq_queue], connection=rq_queue.connection)
        worker.work(burst=True, with_scheduler=False)
        # Hand-overs (a job re-enqueued for its next time slice) land in the same queue.
        assert rq_queue.count == 0

    return run


@pytest.fixture(scope="session")
def dynamodb() -> Any:
    _require_env("AWS_ENDPOINT_URL_DYNAMODB")
    return boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 3}))


@pytest.fixture
def make_table(dynamodb: Any) -> Iterator[Callable[..., str]]:
    """Create a uniquely named table; deleted after the test."""
    created: list[str] = []

    def make(pk: str = "pk", pk_type: str = "S", sk: str | None = None, sk_type: str = "N") -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        attributes = [{"AttributeName": pk, "AttributeType": pk_type}]
        schema = [{"AttributeName": pk, "KeyType": "HASH"}]
        if sk:
            attributes.append({"AttributeName": sk, "AttributeType": sk_type})
            schema.append({"AttributeName": sk, "KeyType": "RANGE"})
        dynamodb.create_table(
            TableName=name, AttributeDefinitions=attributes, KeySchema=schema, BillingMode="PAY_PER_REQUEST"
        )
        created.append(name)
        return name

    yield make
    for name in created:
        with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
            dynamodb.delete_table(TableName=name)


@pytest.fixture
def s3() -> Any:
    """A client of the S3-compatible server `make test` starts (moto)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3")
    if not endpoint:
        pytest.fail("AWS_ENDPOINT_URL_S3 is not set: run the tests with `make test` (it starts moto's S3)")
    return boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    """A fresh bucket, emptied and deleted after the test."""
    name = f"bw-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def scan(dynamodb: Any) -> Callable[[str], list[dict[str, Any]]]:
    """Every item really in a table, in DynamoDB JSON (what was written, not what we believe)."""
    from bulkwrites.dynamo.items import from_wire

    def run(table: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            page = dynamodb.scan(**kwargs)
            items.extend(from_wire(i) for i in page["Items"])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    return run


@pytest.fixture
def admin_user(transactional_db: Any, django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests")


@pytest.fixture
def admin_client_tx(client: Any, admin_user: Any) -> Any:
    client.force_login(admin_user)
    return client


def pg_admin_dsn() -> str:
    """A superuser connection for test SET-UP only (login roles, grants): never the app's role.

    ``BULKWRITES_TEST_PG_ADMIN_URL``, or the local cluster's ``postgres`` user on DATABASE_URL's
    server (scripts/services.sh creates the cluster with it).
    """
    from psycopg.conninfo import make_conninfo

    explicit = os.environ.get("BULKWRITES_TEST_PG_ADMIN_URL")
    return explicit or make_conninfo(_require_env("DATABASE_URL"), user="postgres", dbname="postgres")


def test_db_dsn(**overrides: str) -> str:
    """The test database as a libpq connection string (other user: ``user=...``)."""
    from django.db import connection
    from psycopg.conninfo import make_conninfo

    db = connection.settings_dict
    params = {"host": db["HOST"], "port": str(db["PORT"]), "dbname": db["NAME"], "user": db["USER"]}
    return make_conninfo(**{**{k: v for k, v in params.items() if v}, **overrides})


test_db_dsn.__test__ = False  # type: ignore[attr-defined]

READER_CONNECTION = "reader"  # BULKWRITES_SQL_READER, set for the whole session by the fixture below


@pytest.fixture(scope="session")
def sql_reader(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """A login role that may SELECT the demo shop's tables of the test database, and nothing else.

    Made like an operator would (README, "Security model"), through the admin connection, and
    exposed as the SQL-source connection ``reader`` (BULKWRITES_SQL_READER). Returns its DSN.
    """
    import psycopg
    from psycopg import sql

    role = f"bw_test_reader_{os.getpid()}"
    with django_db_blocker.unblock():
        dsn = test_db_dsn(user=role)
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(pg_admin_dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    with psycopg.connect(make_admin_dsn(dbname=str(dbname)), autocommit=True) as admin:
        r = sql.Identifier(role)
        admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(str(dbname)), r))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(r))
        admin.execute(sql.SQL("GRANT SELECT ON public.demo_customer, public.demo_order TO {}").format(r))
    previous = os.environ.get("BULKWRITES_SQL_READER")
    os.environ["BULKWRITES_SQL_READER"] = dsn
    yield dsn
    if previous is None:
        os.environ.pop("BULKWRITES_SQL_READER", None)
    else:
        os.environ["BULKWRITES_SQL_READER"] = previous
    with psycopg.connect(make_admin_dsn(dbname=str(dbname)), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(pg_admin_dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def make_admin_dsn(**overrides: str) -> str:
    """The admin connection, on another database of the same server."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(pg_admin_dsn(), **overrides)


def worker_env(**extra: str) -> dict[str, str]:
    """Environment for a worker subprocess: the test database and the test Redis database."""
    from django.db import connection

    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        REDIS_URL=test_redis_url(),
        BULKWRITES_QUEUE=TEST_QUEUE,
        PYTHONUNBUFFERED="1",
    )
    # A worker refuses to start with DEBUG off and no key (project/security.py).
    env.setdefault("DJANGO_SECRET_KEY", f"test-only-{uuid.uuid4().hex}{uuid.uuid4().hex}")
    env.update(extra)
    return env


class WorkerProcess:
    """A real `manage.py rqworker` process (forks a work horse per job, like production)."""

    def __init__(self, env: dict[str, str], log: Path, burst: bool = False) -> None:
        args = [sys.executable, "manage.py", "rqworker", TEST_QUEUE]
        if burst:
            args.append("--burst")
        self.log_path = log
        self.log = log.open("w")
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def worker_process(transactional_db: Any, rq_queue: Any, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        worker = WorkerProcess(worker_env(**env), tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def sigkill_worker(process: subprocess.Popen[Any]) -> list[int]:
    """SIGKILL an ``rqworker`` process and its work horse; the pids killed.

    RQ forks the horse into a process group of its own (``os.setpgrp``), so killing the worker's
    group leaves the horse running the job to its end: the horse is found and killed first.
    """
    killed = []
    for child in child_pids(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
            killed.append(child)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.kill()  # a worker not started in a session (group) of its own: killpg found no group
    process.wait(timeout=10)
    return [process.pid, *killed]


def run_cli(*args: str) -> tuple[int, str, str]:
    """`manage.py bulkwrite ...` in this process: (exit code, stdout, stderr)."""
    import io

    from django.core.management import call_command

    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("bulkwrite", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
