"""The operator's path through the real admin views: upload, preview, confirm, run, audit.

Real PostgreSQL, real Redis (an in-process burst worker), real DynamoDB Local; the test
checks what is in the table, not only what the ledger believes.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from typing import Any

import pytest
from django.urls import reverse

from bulkwrites.models import Item, ItemStatus, Job, JobStatus

pytestmark = pytest.mark.django_db(transaction=True)

HEADER = ["pk", "sk", "name", "price:N", "active:BOOL", "tags:SS", "doc:M", "blob:B", "note"]


def csv_bytes(rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


GOOD_ROWS = [
    [
        "a",
        "1",
        "Alpha",
        "9.99",
        "true",
        '["x","y"]',
        '{"n": 1, "deep": {"ok": true}}',
        base64.b64encode(b"\x00\x01").decode(),
        "",
    ],
    ["b", "2", "Beta", "100", "false", '["z"]', '{"n": 2}', "", "=cmd|' /C calc'!A0"],
    ["c", "3", "Gamma", "0.000001", "TRUE", "", "", "", "plain"],
]
BAD_ROWS = [
    ["d", "4", "Delta", "not-a-number", "true", "", "", "", ""],  # row 4: bad number
    ["", "5", "Echo", "1", "true", "", "", "", ""],  # row 5: empty partition key → missing
    ["f", "x", "Foxtrot", "1", "true", "", "", "", ""],  # row 6: sort key is N
]


def upload(client: Any, table: str, content: bytes, name: str = "items.csv", **fields: Any) -> Any:
    data = {
        "file": _named(content, name),
        "source_format": "",
        "table_name": table,
        "operation": "put",
        "duplicate_policy": "last",
        "concurrency": 4,
        "workers": 1,
        "max_attempts": 10,
        "batch_size": 25,
        **fields,
    }
    return client.post(reverse("admin:bulkwrites_job_new_from_file"), data)


def _named(content: bytes, name: str) -> io.BytesIO:
    stream = io.BytesIO(content)
    stream.name = name
    return stream


def test_upload_preview_confirm_run_and_audit(
    admin_client_tx: Any, make_table: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table(pk="pk", pk_type="S", sk="sk", sk_type="N")

    form_page = admin_client_tx.get(reverse("admin:bulkwrites_job_new_from_file"))
    assert form_page.status_code == 200
    assert table in form_page.content.decode()  # the table list comes from DynamoDB

    response = upload(admin_client_tx, table, csv_bytes(GOOD_ROWS + BAD_ROWS))
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    assert job.status == JobStatus.DRAFT
    assert job.key_schema == [{"name": "pk", "type": "S", "role": "HASH"}, {"name": "sk", "type": "N", "role": "RANGE"}]
    assert Item.objects.count() == 0  # nothing staged, nothing written yet
    assert scan(table) == []

    preview = admin_client_tx.get(response["Location"])
    page = preview.content.decode()
    assert preview.status_code == 200
    assert preview.context["preview"].rows == 6
    assert preview.context["preview"].valid == 3
    assert preview.context["preview"].invalid == 3
    problems = {p.position: p.message for p in preview.context["preview"].problems}
    assert set(problems) == {4, 5, 6}
    assert "price" in problems[4]
    assert "not a number" in problems[4]
    assert "missing key attribute 'pk'" in problems[5]
    assert "sk" in problems[6]
    assert "not-a-number" in page
    assert scan(table) == []  # the preview wrote nothing

    confirm = admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "start"]))
    assert confirm.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED_WITH_FAILURES
    assert (job.total_items, job.succeeded_items, job.failed_items, job.skipped_items) == (6, 3, 3, 0)
    assert job.pending_items == 0

    items = {i["pk"]["S"]: i for i in scan(table)}
    assert set(items) == {"a", "b", "c"}
    a = items["a"]
    assert a["sk"] == {"N": "1"}
    assert a["price"] == {"N": "9.99"}
    assert a["active"] == {"BOOL": True}
    assert sorted(a["tags"]["SS"]) == ["x", "y"]
    assert a["doc"] == {"M": {"n": {"N": "1"}, "deep": {"M": {"ok": {"BOOL": True}}}}}
    assert base64.b64decode(a["blob"]["B"]) == b"\x00\x01"
    assert "note" not in a  # empty cells are left out
    assert items["c"]["price"] == {"N": "0.000001"}
    assert items["b"]["note"] == {"S": "=cmd|' /C calc'!A0"}  # stored as is; only exports are neutralised

    failed = Item.objects.filter(job=job, status=ItemStatus.FAILED).order_by("position")
    assert [i.position for i in failed] == [4, 5, 6]
    assert all(i.error_code == "InvalidRow" and i.error_message for i in failed)
    assert "not-a-number" in failed[0].raw

    page = admin_client_tx.get(reverse("admin:bulkwrites_job_change", args=[job.pk]))
    assert page.status_code == 200
    assert "100.0%" in page.content.decode()
    progress = admin_client_tx.get(reverse("admin:bulkwrites_job_progress", args=[job.pk])).json()
    assert progress["percent"] == 100.0
    assert progress["succeeded"] == 3
    assert progress["failed"] == 3
    assert progress["finished"] is True

    export = admin_client_tx.get(reverse("admin:bulkwrites_job_export", args=[job.pk, "failed", "csv"]))
    assert export.status_code == 200
    rows = list(csv.DictReader(io.StringIO(export.content.decode("utf-8"))))
    assert [int(r["position"]) for r in rows] == [4, 5, 6]
    assert all(r["status"] == "failed" for r in rows)


def test_preview_reports_an_unreadable_file(admin_client_tx: Any, make_table: Any) -> None:
    table = make_table()
    response = upload(admin_client_tx, table, b"\xff\xfe\x00garbage\x00" * 10, name="broken.csv")
    assert response.status_code == 302
    preview = admin_client_tx.get(response["Location"])
    assert preview.status_code == 200
    assert preview.context["error"]
    assert "Traceback" not in preview.content.decode()


def test_missing_table_is_a_form_error(admin_client_tx: Any, make_table: Any) -> None:
    make_table()  # the form lists tables; posting a name that is not there is refused
    response = upload(admin_client_tx, "no-such-table", csv_bytes(GOOD_ROWS))
    assert response.status_code == 200
    assert "no-such-table" in response.content.decode()
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("items.json", json.dumps([{"pk": "j1", "n": 1.5, "flag": True, "nested": {"a": [1, "x"]}, "gone": None}])),
        ("items.jsonl", '{"pk": "j1", "n": 1.5, "flag": true, "nested": {"a": [1, "x"]}, "gone": null}\n'),
        ("items.tsv", 'pk\tn:N\tflag:BOOL\tnested:M\tgone:NULL\nj1\t1.5\ttrue\t{"a": [1, "x"]}\ttrue\n'),
        (
            "export.json",
            '{"Item": {"pk": {"S": "j1"}, "n": {"N": "1.5"}, "flag": {"BOOL": true},'
            ' "nested": {"M": {"a": {"L": [{"N": "1"}, {"S": "x"}]}}}, "gone": {"NULL": true}}}\n',
        ),
    ],
)
def test_every_text_format_lands_with_the_same_types(
    admin_client_tx: Any, make_table: Any, scan: Any, run_worker: Any, name: str, content: str
) -> None:
    table = make_table()
    response = upload(admin_client_tx, table, content.encode("utf-8"), name=name)
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "start"]))
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, (job.error_message, list(job.items.values("error_message")))
    (item,) = scan(table)
    assert item == {
        "pk": {"S": "j1"},
        "n": {"N": "1.5"},
        "flag": {"BOOL": True},
        "nested": {"M": {"a": {"L": [{"N": "1"}, {"S": "x"}]}}},
        "gone": {"NULL": True},
    }


def test_xlsx_upload_with_typed_headers(admin_client_tx: Any, make_table: Any, scan: Any, run_worker: Any) -> None:
    from openpyxl import Workbook
    from openpyxl.worksheet.worksheet import Worksheet

    workbook = Workbook()
    sheet = workbook.active
    assert isinstance(sheet, Worksheet)  # a new workbook has one worksheet, the active one
    sheet.append(["pk", "qty:N", "tags:SS", "label"])
    sheet.append(["x1", 3, '["a","b"]', 42])
    sheet.append(["x2", 2.5, None, "text"])
    stream = io.BytesIO()
    workbook.save(stream)
    table = make_table()
    response = upload(admin_client_tx, table, stream.getvalue(), name="items.xlsx")
    assert response.status_code == 302
    job = Job.objects.get()
    admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "start"]))
    run_worker()
    items = {i["pk"]["S"]: i for i in scan(table)}
    assert items["x1"]["qty"] == {"N": "3"}
    assert sorted(items["x1"]["tags"]["SS"]) == ["a", "b"]
    assert items["x1"]["label"] == {"S": "42"}  # untyped cells are strings, in XLSX too
    assert items["x2"]["qty"] == {"N": "2.5"}
    assert "tags" not in items["x2"]
