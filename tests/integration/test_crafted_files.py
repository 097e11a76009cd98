"""Crafted files through the three processes that read them: the admin preview, the CLI dry run, staging.

Limits are configured small here (they are settings); ``bench/crafted.py`` measures the full-size
files of issue 9 against the defaults, with peak RSS and time per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.test import override_settings
from django.urls import reverse
from django.utils.html import escape

from bench.crafted import csv_long_line, json_array, xlsx_shared_strings
from bulkwrites.models import Job, JobStatus
from tests.conftest import run_cli
from tests.integration.test_admin_upload import upload

pytestmark = pytest.mark.django_db(transaction=True)

SMALL_LIMITS = {"MAX_ROW_BYTES": 10_000, "MAX_XLSX_PART_BYTES": 1_000_000}


def small_limits() -> Any:
    return override_settings(BULKWRITES={**settings.BULKWRITES, **SMALL_LIMITS})


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("line.csv", lambda p: csv_long_line(p, 500_000), "CSV file: line 2 is longer than 10,000 characters"),
        (
            "bomb.xlsx",
            lambda p: xlsx_shared_strings(p, unpacked_bytes=3_000_000),
            "the part 'xl/sharedStrings.xml' would unpack to 2.9 MB, more than the limit of 1 MB per part",
        ),
    ],
)
def test_a_crafted_file_is_refused_with_the_limit_everywhere(
    admin_client_tx: Any, make_table: Any, run_worker: Any, tmp_path: Path, name: str, make: Any, message: str
) -> None:
    table = make_table()
    path = make(tmp_path / name)
    with small_limits():
        # the web process: upload, then the preview page
        response = upload(admin_client_tx, table, path.read_bytes(), name=name)
        assert response.status_code == 302, response.content.decode()[:2000]
        preview = admin_client_tx.get(response["Location"])
        assert escape(message) in preview.content.decode()
        assert preview.context["preview"] is None

        # the CLI's dry run
        with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run_cli("load", str(path), "--table", table, "--dry-run")

        # the worker: staging fails the job with the same reason, nothing is written
        job = Job.objects.get()
        admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "start"]))
        run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_code == "SourceUnreadable"
    assert message in job.error_message
    assert job.items.count() == 0


def test_a_json_array_loads_in_every_process(
    admin_client_tx: Any, make_table: Any, run_worker: Any, scan: Any, tmp_path: Path
) -> None:
    """The legitimate JSON array of finding 5, smaller: previewed, dry-run and written whole."""
    table = make_table()
    path = json_array(tmp_path / "array.json", objects=3000)
    code, out, _ = run_cli("load", str(path), "--table", table, "--dry-run")
    assert (code, out.strip().splitlines()[-1]) == (0, "dry run: 3000 valid, 0 invalid")
    response = upload(admin_client_tx, table, path.read_bytes(), name="array.json")
    preview = admin_client_tx.get(response["Location"]).context["preview"]
    assert (preview.rows, preview.valid, preview.invalid) == (3000, 3000, 0)
    job = Job.objects.get()
    admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "start"]))
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    items = {item["pk"]["S"]: item for item in scan(table)}
    assert len(items) == 3000
    assert items["k0001234"] == {"pk": {"S": "k0001234"}, "n": {"N": "34"}, "v": {"S": "ab"}}


LONE_SURROGATES = b'{"pk": "a", "v": "ok"}\n{"pk": "b", "v": "x\\ud800y"}\n{"pk": "c\\udfff"}\n{"pk": "d"}\n'


def test_a_lone_surrogate_fails_its_row_with_the_attribute_named_everywhere(
    admin_client_tx: Any, make_table: Any, run_worker: Any, scan: Any, tmp_path: Path
) -> None:
    # "\ud800" with no partner is valid JSON but no Unicode: DynamoDB and PostgreSQL both refuse
    # it. Staging crashed on it (UnicodeEncodeError while sizing the item), the job left in draft.
    table = make_table()
    path = tmp_path / "surrogates.jsonl"
    path.write_bytes(LONE_SURROGATES)
    message = "attribute 'v' holds a lone surrogate (U+D800)"

    response = upload(admin_client_tx, table, path.read_bytes(), name=path.name)
    preview = admin_client_tx.get(response["Location"])
    assert preview.context["preview"].invalid == 2
    assert escape(message) in preview.content.decode()
    code, out, _ = run_cli("load", str(path), "--table", table, "--dry-run")
    assert (code, out.strip().splitlines()[-1]) == (3, "dry run: 2 valid, 2 invalid")  # 3: invalid rows

    job = Job.objects.get()
    admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "start"]))
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.succeeded_items, job.failed_items) == (JobStatus.COMPLETED_WITH_FAILURES, 2, 2)
    failed = dict(job.items.filter(status="failed").values_list("position", "error_message"))
    assert failed[2].startswith(message)
    assert failed[3].startswith("attribute 'pk' holds a lone surrogate (U+DFFF)")
    assert sorted(item["pk"]["S"] for item in scan(table)) == ["a", "d"]
