"""The operator CLI: `manage.py bulkwrite load|status|export|wait`, its output and exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bulkwrites.models import Job, JobStatus
from tests.conftest import ROOT, TEST_QUEUE, run_cli, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


def write_csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header or ["pk", "n:N"])
        writer.writerows(rows)
    return path


def test_dry_run_lists_invalid_rows_and_writes_nothing(tmp_path: Path, make_table: Any, scan: Any) -> None:
    table = make_table()
    source = write_csv(tmp_path / "in.csv", [["a", "1"], ["b", "x"], ["", "3"], ["d", "4"]])
    code, out, _ = run_cli("load", str(source), "--table", table, "--dry-run")
    assert code == 3
    lines = out.strip().splitlines()
    assert lines[-1] == "dry run: 2 valid, 2 invalid"
    assert lines[0].startswith("row 2: column 'n'")
    assert lines[1].startswith("row 3: missing key attribute 'pk'")
    assert not Job.objects.exists()
    assert scan(table) == []


def test_dry_run_of_a_clean_file_exits_0(tmp_path: Path, make_table: Any) -> None:
    table = make_table()
    source = write_csv(tmp_path / "in.csv", [["a", "1"]])
    code, out, _ = run_cli("load", str(source), "--table", table, "--dry-run")
    assert (code, out.strip()) == (0, "dry run: 1 valid, 0 invalid")


def test_load_into_a_missing_table_exits_1_with_the_reason(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", [["a", "1"]])
    process = subprocess.run(
        [sys.executable, "manage.py", "bulkwrite", "load", str(source), "--table", "nope-missing", "--wait"],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 1
    assert "does not exist" in process.stderr
    assert "Traceback" not in process.stderr


def test_load_wait_runs_the_job_on_a_worker(tmp_path: Path, make_table: Any, scan: Any, worker_process: Any) -> None:
    table = make_table()
    rows = [[f"k{n}", str(n)] for n in range(120)] + [["bad", "NaN"]]
    source = write_csv(tmp_path / "in.csv", rows)
    worker_process()
    process = subprocess.run(
        [sys.executable, "manage.py", "bulkwrite", "load", str(source), "--table", table, "--wait"],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = process.stdout.strip().splitlines()
    job = Job.objects.get()
    assert lines[0] == f"job {job.pk}"
    assert lines[-1] == f"job {job.pk}: completed_with_failures, 120 succeeded, 1 failed"
    assert process.returncode == 3
    assert len(scan(table)) == 120

    code, out, _ = run_cli("status", str(job.pk))
    assert code == 0
    assert out.splitlines()[0] == lines[-1]

    exported = tmp_path / "failed.json"
    code, _, _ = run_cli("export", str(job.pk), "--status", "failed", "--format", "json", "-o", str(exported))
    assert code == 0
    (row,) = json.loads(exported.read_text())
    assert int(row["position"]) == 121
    assert "NaN" in row["error_message"]


def test_wait_says_so_when_no_worker_is_alive(tmp_path: Path, make_table: Any, rq_queue: Any) -> None:
    table = make_table()
    source = write_csv(tmp_path / "in.csv", [["a", "1"]])
    process = subprocess.run(
        [sys.executable, "manage.py", "bulkwrite", "load", str(source), "--table", table, "--wait"],
        cwd=ROOT,
        env=worker_env(BULKWRITES_QUEUE=f"{TEST_QUEUE}-nobody"),  # a queue no worker of any test serves
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 1
    assert "no worker is listening" in process.stderr
    job = Job.objects.get()
    assert job.status == JobStatus.QUEUED  # it runs as soon as a worker starts


def test_load_exit_0_when_everything_succeeded(tmp_path: Path, make_table: Any, run_worker: Any, scan: Any) -> None:
    table = make_table()
    source = write_csv(tmp_path / "in.csv", [["a", "1"], ["b", "2"]])
    code, out, _ = run_cli("load", str(source), "--table", table)
    assert code == 0
    job = Job.objects.get()
    assert out.strip() == f"job {job.pk}"
    run_worker()
    code, _, _ = run_cli("wait", str(job.pk))
    assert code == 0
    assert wait_for(lambda: len(scan(table)) == 2, timeout=5, what="items in the table")
