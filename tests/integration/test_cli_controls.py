"""The job page's controls from a terminal: cancel, pause, resume, retry-failed, rate; tokens; a fresh database."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from bulkwrites.models import ApiToken, Job, JobStatus
from bulkwrites.services import audit
from tests.api_helpers import api_client, ledger_job, staff_user
from tests.conftest import ROOT, TEST_QUEUE, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


def cli(*args: str) -> tuple[int, str, str]:
    """`manage.py bulkwrite ...` in this process: (exit code, stdout, stderr or the refusal)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("bulkwrite", *args, stdout=out, stderr=err)
        code = 0
    except CommandError as exc:  # what manage.py prints as one line and exits 1 with
        return 1, out.getvalue(), str(exc)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def log_of(job: Job) -> list[tuple[str, str]]:
    entries = LogEntry.objects.filter(object_id=str(job.pk)).select_related("user").order_by("pk")
    return [(e.user.username, e.change_message) for e in entries]


def test_each_control_and_its_exit_code(rq_queue: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "os_user", lambda: "nobody-here")
    job = ledger_job(JobStatus.RUNNING)
    assert cli("pause", str(job.pk)) == (0, f"job {job.pk}: paused (status now paused)\n", "")
    assert cli("pause", str(job.pk)) == (1, "", f"Job {job.pk} is paused; only a queued or running job can be paused.")
    assert cli("resume", str(job.pk))[:2] == (0, f"job {job.pk}: resumed (status now queued)\n")
    assert cli("cancel", str(job.pk))[:2] == (0, f"job {job.pk}: cancelled (status now cancelled)\n")
    assert cli("cancel", str(job.pk))[0] == 1
    Job.objects.filter(pk=job.pk).update(status=JobStatus.COMPLETED_WITH_FAILURES)
    assert cli("retry-failed", str(job.pk))[:2] == (
        0,
        f"job {job.pk}: 1 failed item(s) queued again (status now queued)\n",
    )
    assert cli("retry-failed", str(job.pk))[0] == 1
    assert cli("rate", str(job.pk), "100") == (0, f"job {job.pk}: rate cap set to 100 WCU/s\n", "")
    assert Job.objects.get(pk=job.pk).rate_limit_wcu == 100
    for removal in ("none", "0"):
        assert cli("rate", str(job.pk), removal)[:2] == (0, f"job {job.pk}: rate cap removed\n")
    assert Job.objects.get(pk=job.pk).rate_limit_wcu is None
    code, _, why = cli("rate", str(job.pk), "0.01")
    assert code == 1
    assert "rate cap (WCU/s): Ensure this value is greater than or equal to 0.1." in why
    assert cli("rate", str(job.pk), "lots")[0] == 1
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    assert (
        cli("rate", str(job.pk), "5")[2] == f"Job {job.pk} is succeeded; the rate cap of a finished job cannot change."
    )
    assert cli("pause", "999999") == (1, "", "no job 999999")

    # Recorded in the admin log like the buttons, under the audit user (no Django user is called
    # like the OS user here), with the OS user named.
    suffix = " from the command line (OS user nobody-here)"
    assert log_of(job) == [
        (audit.CLI_AUDIT_USERNAME, f"pause (status now paused){suffix}"),
        (audit.CLI_AUDIT_USERNAME, f"resume (status now queued){suffix}"),
        (audit.CLI_AUDIT_USERNAME, f"cancel (status now cancelled){suffix}"),
        (audit.CLI_AUDIT_USERNAME, f"retry failed (status now queued){suffix}"),
        (audit.CLI_AUDIT_USERNAME, f"rate cap set to 100 WCU/s{suffix}"),
        (audit.CLI_AUDIT_USERNAME, f"rate cap removed{suffix}"),
        (audit.CLI_AUDIT_USERNAME, f"rate cap removed{suffix}"),
    ]
    auditor = type(job.created_by or staff_user("x")).objects.get(username=audit.CLI_AUDIT_USERNAME)
    assert (auditor.is_active, auditor.is_staff, auditor.has_usable_password()) == (False, False, False)


def test_who_the_log_records(rq_queue: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    job = ledger_job(JobStatus.RUNNING)
    staff_user("alice")
    staff_user("deploy")
    monkeypatch.setattr(audit, "os_user", lambda: "deploy")
    assert cli("pause", str(job.pk))[0] == 0  # the Django user named like the OS user
    assert cli("resume", str(job.pk), "--as", "alice")[0] == 0
    assert cli("cancel", str(job.pk), "--as", "mallory") == (1, "", "No Django user 'mallory' (given with --as).")
    assert [user for user, _ in log_of(job)] == ["deploy", "alice"]


def write_csv(path: Path, rows: int) -> Path:
    path.write_text("pk,n:N\n" + "".join(f"k{i},{i}\n" for i in range(rows)))
    return path


def test_load_takes_rate_concurrency_and_webhook(tmp_path: Path, make_table: Any, rq_queue: Any) -> None:
    table = make_table()
    source = write_csv(tmp_path / "in.csv", 3)
    alice = staff_user("alice")
    code, out, _ = cli("load", str(source), "--table", table, "--rate", "250", "--concurrency", "3",
                       "--webhook", "https://93.184.216.34/hook", "--as", "alice")  # fmt: skip
    assert code == 0
    job = Job.objects.get()
    assert out == f"job {job.pk}\n"
    assert (job.rate_limit_wcu, job.concurrency, job.webhook_url) == (250, 3, "https://93.184.216.34/hook")
    assert job.created_by_id == alice.pk
    assert log_of(job)[0][1].startswith("start (status now queued) from the command line")
    code, _, why = cli("load", str(source), "--table", table, "--webhook", "http://169.254.169.254/x")
    assert code == 1
    assert "link-local" in why
    assert cli("load", str(source), "--table", table, "--rate", "-1")[0] == 1
    assert Job.objects.count() == 1


@pytest.mark.usefixtures("sql_reader")
def test_copy_takes_rate_and_webhook(make_table: Any, rq_queue: Any) -> None:
    table = make_table()
    code, _out, why = cli("copy", "--database", "reader", "--query", "SELECT 'a' AS pk", "--table", table,
                         "--rate", "40", "--concurrency", "2", "--webhook", "https://93.184.216.34/h")  # fmt: skip
    assert code == 0, why
    job = Job.objects.get()
    assert (job.rate_limit_wcu, job.concurrency, job.webhook_url) == (40, 2, "https://93.184.216.34/h")


def test_tokens_from_the_cli() -> None:
    ops = staff_user("ops", "view_job")
    code, out, err = cli("token", "create", "ops", "--expires", "30", "--name", "ci")
    assert code == 0
    secret = out.strip()
    assert secret.startswith("bwt_")
    assert "\n" not in secret
    token = ApiToken.objects.get()
    assert (token.user_id, token.name, token.prefix) == (ops.pk, "ci", secret.split("_")[1])
    assert secret not in err
    assert f"token {token.prefix} for ops (expires: " in err
    assert api_client(secret).get("/api/jobs").status_code == 200
    code, listing, _ = cli("token", "list")
    assert token.prefix in listing
    assert secret.split("_", 2)[2] not in listing
    assert cli("token", "revoke", token.prefix) == (0, f"token {token.prefix} of ops revoked\n", "")
    assert api_client(secret).get("/api/jobs").status_code == 401
    assert "revoked" in cli("token", "list", "ops")[1]
    assert cli("token", "create", "nobody")[0] == 1
    assert cli("token", "revoke", "ffffffff") == (1, "", "No API token with prefix 'ffffffff'.")
    assert cli("token", "create", "ops", "--expires", "0")[0] == 1


def test_a_refusal_is_one_line_and_exit_1_from_a_shell() -> None:
    job = ledger_job(JobStatus.SUCCEEDED)
    process = subprocess.run(
        [sys.executable, "manage.py", "bulkwrite", "pause", str(job.pk)],
        cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert process.returncode == 1
    assert (
        process.stderr.strip()
        == f"CommandError: Job {job.pk} is succeeded; only a queued or running job can be paused."
    )


def test_controls_on_a_job_a_real_worker_runs(tmp_path: Path, make_table: Any, scan: Any, worker_process: Any) -> None:
    """Paused from the CLI mid-run, the worker stops; resumed, it goes on; the cap lifted, it finishes."""
    table = make_table()
    source = write_csv(tmp_path / "in.csv", 400)
    worker_process()
    code, _out, _ = cli("load", str(source), "--table", table, "--rate", "20", "--concurrency", "2")
    assert code == 0
    job = Job.objects.get()
    wait_for(lambda: Job.objects.get(pk=job.pk).succeeded_items > 0, timeout=60, what="the first items written")
    assert cli("pause", str(job.pk))[0] == 0
    wait_for(lambda: not job.slices.under_live_lease().exists(), timeout=30, what="the worker to let go")
    paused = Job.objects.get(pk=job.pk)
    assert paused.status == JobStatus.PAUSED
    assert 0 < paused.succeeded_items < 400
    written = len(scan(table))
    assert cli("resume", str(job.pk))[0] == 0
    assert cli("rate", str(job.pk), "none")[0] == 0
    wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, timeout=120, what="the job to finish")
    done = Job.objects.get(pk=job.pk)
    assert (done.status, done.succeeded_items) == (JobStatus.SUCCEEDED, 400)
    assert written < 400
    assert len(scan(table)) == 400


@contextlib.contextmanager
def empty_database() -> Iterator[str]:
    """A new, empty PostgreSQL database on the test server: a fresh clone before `migrate`."""
    name = f"bulkwrites_fresh_{uuid.uuid4().hex[:8]}"
    db = connection.settings_dict
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_fresh_database_says_migrate_in_one_line() -> None:
    with empty_database() as url:
        env = worker_env(DATABASE_URL=url)
        for command in (["bulkwrite", "status", "1"], ["bulkwrite", "load", "x.csv", "--table", "t"]):
            process = subprocess.run(
                [sys.executable, "manage.py", *command],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert process.returncode == 1
            lines = process.stderr.strip().splitlines()
            assert len(lines) == 1
            assert "Traceback" not in process.stderr
            assert lines[0].startswith("CommandError: the database lacks ")
            assert lines[0].endswith("; run `python manage.py migrate`")
        worker = subprocess.run(
            [sys.executable, "manage.py", "rqworker", "--burst", TEST_QUEUE],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert worker.returncode == 1
        assert worker.stderr.strip().splitlines()[-1].startswith("bulkwrites worker: the database lacks ")
        assert "Traceback" not in worker.stderr
