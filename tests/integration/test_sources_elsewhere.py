"""Files as they really arrive, end to end: compressed, pretty-printed DynamoDB JSON, legacy encodings,
objects in S3 (moto's S3 server, started by `make services`) and copies of another DynamoDB table.

Real views, the real CLI, a real burst worker, DynamoDB Local; the tables are checked with a Scan.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from django.conf import settings
from django.test import override_settings
from django.urls import reverse

from bulkwrites.models import Item, Job, JobStatus, SourceKind
from bulkwrites.services.work import CODE_SOURCE_UNREADABLE
from tests.conftest import run_cli

pytestmark = pytest.mark.django_db(transaction=True)

BLOB = base64.b64encode(b"\x00\xff").decode()
ITEMS = [
    {"pk": {"S": "a"}, "n": {"N": "1.5"}, "tags": {"SS": ["x", "y"]}, "blob": {"B": BLOB}},
    {"pk": {"S": "b"}, "doc": {"M": {"ok": {"BOOL": True}, "none": {"NULL": True}}}, "l": {"L": [{"N": "2"}]}},
    {"pk": {"S": "c"}, "big": {"N": "12345678901234567890123456789012345678"}, "nums": {"NS": ["1", "2.5"]}},
]  # fmt: skip


def normalised(item: dict[str, Any]) -> dict[str, Any]:
    """Sets come back from DynamoDB in any order."""
    return {
        name: ({kind: sorted(inner)} if kind in ("SS", "NS", "BS") else {kind: inner})
        for name, value in item.items()
        for kind, inner in value.items()
    }


def by_pk(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["pk"]["S"]: normalised(item) for item in items}


def upload(client: Any, table: str, content: bytes, name: str, **fields: Any) -> Any:
    stream = io.BytesIO(content)
    stream.name = name
    data = {
        "file": stream,
        "s3_url": "",
        "source_format": "",
        "encoding": "utf-8",
        "table_name": table,
        "operation": "put",
        "duplicate_policy": "last",
        "concurrency": 4,
        "workers": 1,
        "max_attempts": 10,
        "batch_size": 25,
        **fields,
    }
    if data["file"] is None:
        del data["file"]
    return client.post(reverse("admin:bulkwrites_job_new_from_file"), data)


def start(client: Any, job: Job) -> None:
    response = client.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "start"]))
    assert response.status_code == 302


# --- compressed files and DynamoDB JSON documents through the admin ---------------------------------


def test_a_gzipped_dynamodb_export_uploads_previews_and_runs(
    admin_client_tx: Any, make_table: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table()
    export = b"".join(json.dumps({"Item": item}).encode() + b"\n" for item in ITEMS)
    response = upload(admin_client_tx, table, gzip.compress(export), "0123-abcd.json.gz")
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    assert (job.source_format, job.source_compression) == ("ddbjson", "gzip")
    preview = admin_client_tx.get(response["Location"])
    assert (preview.context["preview"].rows, preview.context["preview"].valid) == (3, 3)
    assert "gzip-compressed" in preview.content.decode()
    start(admin_client_tx, job)
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == (JobStatus.SUCCEEDED, 3)
    assert by_pk(scan(table)) == by_pk(ITEMS)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("scan.json", json.dumps({"Items": ITEMS, "Count": 3, "ScannedCount": 3}, indent=4).encode()),
        ("items.json", json.dumps(ITEMS, indent=2).encode()),
        ("items.json.zst", zstandard.ZstdCompressor().compress(json.dumps(ITEMS, indent=2).encode())),
    ],
)
def test_pretty_printed_dynamodb_json_is_accepted_by_the_admin(
    admin_client_tx: Any, make_table: Any, scan: Any, run_worker: Any, name: str, content: bytes
) -> None:
    table = make_table()
    response = upload(admin_client_tx, table, content, name)
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    assert job.source_format == "ddbjson"
    preview = admin_client_tx.get(response["Location"])
    assert preview.context["error"] is None
    assert (preview.context["preview"].rows, preview.context["preview"].invalid) == (3, 0)
    start(admin_client_tx, job)
    run_worker()
    assert by_pk(scan(table)) == by_pk(ITEMS)


def test_a_single_pretty_printed_item_through_the_cli(tmp_path: Path, make_table: Any) -> None:
    table = make_table()
    path = tmp_path / "item.json"
    path.write_text(json.dumps(ITEMS[1], indent=2))
    code, out, _ = run_cli("load", str(path), "--table", table, "--dry-run")
    assert (code, out.strip()) == (0, "dry run: 1 valid, 0 invalid")  # not one failure per line


def test_the_cli_reads_a_scan_output_as_its_items(tmp_path: Path, make_table: Any, scan: Any, run_worker: Any) -> None:
    table = make_table()
    path = tmp_path / "scan-output.json"
    path.write_text(json.dumps({"Items": ITEMS, "Count": 3, "ScannedCount": 3, "ConsumedCapacity": None}, indent=4))
    code, out, _ = run_cli("load", str(path), "--table", table, "--dry-run")
    assert (code, out.strip()) == (0, "dry run: 3 valid, 0 invalid")
    code, _, _ = run_cli("load", str(path), "--table", table)
    assert code == 0
    run_worker()
    assert by_pk(scan(table)) == by_pk(ITEMS)


def test_a_gzip_bomb_is_stopped_at_the_decompressed_limit(admin_client_tx: Any, make_table: Any) -> None:
    table = make_table()
    bomb = gzip.compress(b"pk,pad\n" + b"k,%s\n" % (b"x" * 1000) * 20_000)  # 20 MB in ~60 KB
    with override_settings(BULKWRITES={**settings.BULKWRITES, "MAX_DECOMPRESSED_BYTES": 1_000_000}):
        response = upload(admin_client_tx, table, bomb, "rows.csv.gz")
        assert response.status_code == 302
        preview = admin_client_tx.get(response["Location"])
    assert "decompresses to more than" in preview.context["error"]
    assert "BULKWRITES_MAX_DECOMPRESSED_BYTES" in preview.context["error"]


# --- legacy encodings ---------------------------------------------------------------------------


def test_encoding_is_recorded_and_used_by_preview_and_staging(
    tmp_path: Path, make_table: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table()
    path = tmp_path / "people.csv"
    path.write_bytes("pk,name\nk1,Zoë\nk2,Ångström\n".encode("windows-1252"))
    code, _, err = _cli_error("load", str(path), "--table", table, "--dry-run")
    assert code == 1
    assert "not valid UTF-8 (byte 0xeb at offset 13, line 2)" in err
    assert "--encoding" in err
    code, out, _ = run_cli("load", str(path), "--table", table, "--encoding", "windows-1252", "--dry-run")
    assert (code, out.strip()) == (0, "dry run: 2 valid, 0 invalid")
    code, _, _ = run_cli("load", str(path), "--table", table, "--encoding", "windows-1252")
    assert code == 0
    job = Job.objects.get()
    assert job.source_encoding == "windows-1252"
    run_worker()
    assert {i["pk"]["S"]: i["name"]["S"] for i in scan(table)} == {"k1": "Zoë", "k2": "Ångström"}


def test_the_form_offers_encodings(admin_client_tx: Any, make_table: Any) -> None:
    table = make_table()
    response = upload(admin_client_tx, table, "pk\nZoë\n".encode("latin-1"), "x.csv", encoding="iso-8859-1")
    assert response.status_code == 302
    job = Job.objects.get()
    assert job.source_encoding == "iso-8859-1"
    preview = admin_client_tx.get(response["Location"])
    assert preview.context["preview"].samples == [{"pk": {"S": "Zoë"}}]


# --- S3 -----------------------------------------------------------------------------------------


def allow(*entries: str) -> Any:
    return override_settings(BULKWRITES={**settings.BULKWRITES, "S3_ALLOWED": list(entries)})


def test_an_s3_object_through_the_admin_form(
    admin_client_tx: Any, make_table: Any, scan: Any, run_worker: Any, s3: Any, bucket: str
) -> None:
    table = make_table()
    body = gzip.compress(b"".join(json.dumps({"Item": item}).encode() + b"\n" for item in ITEMS))
    s3.put_object(Bucket=bucket, Key="exports/AWSDynamoDB/data/part-0.json.gz", Body=body)
    url = f"s3://{bucket}/exports/AWSDynamoDB/data/part-0.json.gz"
    with allow(f"{bucket}/exports"):
        response = upload(admin_client_tx, table, b"", "", file=None, s3_url=url)
        assert response.status_code == 302, response.content.decode()[:3000]
        job = Job.objects.get()
        assert (job.source_kind, job.source_name, job.source_format, job.source_compression) == (
            SourceKind.S3, url, "ddbjson", "gzip"
        )  # fmt: skip
        assert job.source_size == len(body)
        assert job.source_etag == s3.head_object(Bucket=bucket, Key="exports/AWSDynamoDB/data/part-0.json.gz")["ETag"]
        preview = admin_client_tx.get(response["Location"])
        assert (preview.context["preview"].rows, preview.context["preview"].valid) == (3, 3)
        start(admin_client_tx, job)
        run_worker()
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == (JobStatus.SUCCEEDED, 3)
    assert by_pk(scan(table)) == by_pk(ITEMS)


def test_an_object_replaced_after_the_preview_is_refused_when_staged(
    make_table: Any, scan: Any, run_worker: Any, s3: Any, bucket: str
) -> None:
    table = make_table()
    s3.put_object(Bucket=bucket, Key="in/rows.csv", Body=b"pk,n:N\na,1\nb,2\n")
    with allow(bucket):
        code, out, _ = run_cli("load", f"s3://{bucket}/in/rows.csv", "--table", table, "--dry-run")
        assert (code, out.strip()) == (0, "dry run: 2 valid, 0 invalid")
        code, _, _ = run_cli("load", f"s3://{bucket}/in/rows.csv", "--table", table)
        assert code == 0
        s3.put_object(Bucket=bucket, Key="in/rows.csv", Body=b"pk,n:N\nevil,666\n")  # replaced before staging
        run_worker()
    job = Job.objects.get()
    assert job.status == JobStatus.FAILED
    assert job.error_code == CODE_SOURCE_UNREADABLE
    assert f"s3://{bucket}/in/rows.csv was replaced after the job was created" in job.error_message
    assert Item.objects.count() == 0
    assert scan(table) == []


def test_s3_sources_are_off_without_an_allow_list_and_refused_outside_it(
    admin_client_tx: Any, make_table: Any, s3: Any, bucket: str
) -> None:
    table = make_table()
    s3.put_object(Bucket=bucket, Key="private/secrets.csv", Body=b"pk\na\n")
    s3.put_object(Bucket=bucket, Key="exports-private/x.csv", Body=b"pk\na\n")
    url = f"s3://{bucket}/private/secrets.csv"
    with allow():
        response = upload(admin_client_tx, table, b"", "", file=None, s3_url=url)
        assert "S3 sources are off: set BULKWRITES_S3_ALLOWED" in response.content.decode()
    with allow(f"{bucket}/exports", "other-bucket"):
        for refused in (url, f"s3://{bucket}/exports-private/x.csv", f"s3://{bucket}/exports/../private/secrets.csv"):
            code, _, err = _cli_error("load", refused, "--table", table, "--dry-run")
            assert code == 1
            assert "outside the buckets and prefixes" in err or '".." path segments' in err
    assert not Job.objects.exists()


def test_the_allow_list_is_checked_again_when_the_job_is_staged(
    make_table: Any, run_worker: Any, s3: Any, bucket: str
) -> None:
    table = make_table()
    s3.put_object(Bucket=bucket, Key="a.csv", Body=b"pk\na\n")
    with allow(bucket):
        assert run_cli("load", f"s3://{bucket}/a.csv", "--table", table)[0] == 0
    with allow("another-bucket"):
        run_worker()
    job = Job.objects.get()
    assert job.status == JobStatus.FAILED
    assert "outside the buckets and prefixes" in job.error_message


def test_missing_objects_and_bad_urls_say_what_is_wrong(make_table: Any, bucket: str) -> None:
    table = make_table()
    with allow(bucket):
        assert f"There is no object s3://{bucket}/nope.csv" in _cli_error("load", f"s3://{bucket}/nope.csv",
                                                                           "--table", table)[2]  # fmt: skip
        assert "names no object" in _cli_error("load", f"s3://{bucket}/dir/", "--table", table)[2]


def _cli_error(*args: str) -> tuple[int, str, str]:
    from django.core.management.base import CommandError

    try:
        return run_cli(*args)
    except CommandError as exc:
        return 1, "", str(exc)


# --- a copy of another DynamoDB table --------------------------------------------------------------


@pytest.fixture
def source_table(dynamodb: Any, make_table: Any) -> Callable[[int], str]:
    def make(count: int) -> str:
        name: str = make_table(pk="id", pk_type="N")
        requests = [
            {"PutRequest": {"Item": {
                "id": {"N": str(i)},
                "name": {"S": f"item {i}"},
                "price": {"N": "19.90"},
                "tags": {"SS": ["a", f"t{i % 3}"]},
                "raw": {"B": bytes([i % 256, 0, 255])},
            }}}
            for i in range(1, count + 1)
        ]  # fmt: skip
        for first in range(0, len(requests), 25):
            dynamodb.batch_write_item(RequestItems={name: requests[first : first + 25]})
        return name

    return make


def test_copy_table_with_segments_and_a_mapping(source_table: Any, make_table: Any, scan: Any, run_worker: Any) -> None:
    source = source_table(300)
    target = make_table(pk="pk", pk_type="N")
    code, out, _ = run_cli(
        "copy-table", "--source-table", source, "--table", target, "--segments", "3",
        "--map", "id -> pk", "--map", "name -> title", "--map", "*",
    )  # fmt: skip
    assert code == 0, out
    job = Job.objects.get()
    assert job.source_kind == SourceKind.DYNAMODB_TABLE
    assert job.source_spec["segments"] == 3
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.total_items, job.succeeded_items) == (JobStatus.SUCCEEDED, 300, 300)
    assert job.source_read_units > 0
    copied = {int(item["pk"]["N"]): item for item in scan(target)}
    assert set(copied) == set(range(1, 301))
    seven = copied[7]
    assert set(seven) == {"pk", "title", "price", "tags", "raw"}
    assert seven["title"] == {"S": "item 7"}
    assert seven["price"] == {"N": "19.9"}  # DynamoDB's own text of the number
    assert sorted(seven["tags"]["SS"]) == ["a", "t1"]
    assert base64.b64decode(seven["raw"]["B"]) == bytes([7, 0, 255])


def test_copy_table_refuses_a_mapping_without_the_target_key(source_table: Any, make_table: Any) -> None:
    source = source_table(1)
    target = make_table(pk="pk", pk_type="N")
    code, _, err = _cli_error("copy-table", "--source-table", source, "--table", target, "--map", "name -> title")
    assert code == 1
    assert "No attribute is mapped to the key attribute 'pk'" in err
    code, _, err = _cli_error("copy-table", "--source-table", "no-such-table", "--table", target)
    assert code == 1
    assert "Source table" in err
    assert "does not exist" in err


def test_copy_table_from_the_admin_previews_the_first_items(
    admin_client_tx: Any, source_table: Any, make_table: Any, scan: Any, run_worker: Any
) -> None:
    source = source_table(1200)
    target = make_table(pk="id", pk_type="N")
    page = admin_client_tx.get(reverse("admin:bulkwrites_job_new_from_table"))
    assert page.status_code == 200
    response = admin_client_tx.post(
        reverse("admin:bulkwrites_job_new_from_table"),
        {"source_table": source, "source_region": "", "segments": 4, "mapping": "", "table_name": target,
         "operation": "put", "duplicate_policy": "last", "concurrency": 8, "workers": 1, "max_attempts": 10,
         "batch_size": 25},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:3000]
    job = Job.objects.get()
    preview = admin_client_tx.get(response["Location"])
    assert preview.context["preview"].rows == 1000
    assert "Only the first 1,000 items" in preview.content.decode()
    assert scan(target) == []
    start(admin_client_tx, job)
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == (JobStatus.SUCCEEDED, 1200)
    assert len(scan(target)) == 1200
