"""Reading a job's source again: the rows of its stored file, S3 object, SQL spec or DynamoDB table, streamed.

Used by the preview of a draft and by staging on a worker; records copied from the admin
are staged when the job is created, so they have no source to read again. An S3 object is read
only if it is still allowed and still the object the job was created from (its ETag).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db.models import F

from bulkwrites.conf import app_settings
from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo import s3_client
from bulkwrites.models import Job, SourceKind
from bulkwrites.services import sql
from bulkwrites.services.errors import JobError
from bulkwrites.sources import dynamodb_table, formats, s3


@contextmanager
def job_source_rows(
    job: Job, *, track_bytes: Callable[[Callable[[], int], int | None], None] | None = None
) -> Iterator[tuple[Iterator[formats.SourceRow], bool]]:
    """The job's source rows, streamed, and whether they are DynamoDB JSON already.

    ``track_bytes`` is handed how to ask how many bytes of the file were read so far, and the
    file's size, when the file is read from start to end (not XLSX, a zip read out of order).
    """
    if job.source_kind == SourceKind.SQL:
        yield sql.rows_for(sql.SqlSpec.from_json(job.source_spec)), False
        return
    if job.source_kind == SourceKind.S3:
        spec = job.source_spec
        location = s3.S3Location(str(spec["bucket"]), str(spec["key"]))
        s3.check_allowed(location, app_settings().s3_allowed)  # the list may have shrunk since
        obj = s3.S3Object(int(spec["size"]), str(spec["etag"]), str(spec.get("version_id") or ""))
        with s3_rows(s3_client.make_s3_client(), location, obj, job.source_format, job.source_encoding) as rows:
            yield rows, job.source_format in formats.ROWS_ARE_DYNAMODB_JSON
        return
    if job.source_kind == SourceKind.DYNAMODB_TABLE:
        scan = table_scan(dynamodb_table.TableSource.from_json(job.source_spec))
        try:
            yield scan.rows(), True
        finally:  # what reading cost, also when a preview stops early
            Job.objects.filter(pk=job.pk).update(source_read_units=F("source_read_units") + scan.consumed_read_units)
        return
    if job.source_kind != SourceKind.FILE:
        raise JobError(f"jobs from {job.get_source_kind_display()} are staged when they are created")
    if not job.source_file:
        raise JobError("The job's source file is missing.")
    with job.source_file.open("rb") as stream:
        if track_bytes is not None and job.source_format != "xlsx":
            track_bytes(stream.tell, job.source_size)
        limits = file_limits()
        rows = formats.read_rows(
            stream,
            job.source_format,
            max_bytes=app_settings().max_upload_bytes,
            limits=limits,
            encoding=job.source_encoding or formats.UTF8,
        )
        yield rows, job.source_format in formats.ROWS_ARE_DYNAMODB_JSON


def table_scan(source: dynamodb_table.TableSource) -> dynamodb_table.TableScan:
    """A parallel scan of a source table, in its region, on the environment's endpoint."""
    client = dynamo_client.make_client(max_connections=source.segments, region_name=source.region or None)
    mapping = dynamodb_table.AttributeMapping.parse(source.mapping)
    return dynamodb_table.TableScan(client, source.table, source.segments, mapping)


@contextmanager
def s3_rows(
    client: Any, location: s3.S3Location, obj: s3.S3Object, fmt: str, encoding: str
) -> Iterator[Iterator[formats.SourceRow]]:
    """The rows of an S3 object, streamed from its body (GetObject If-Match its ETag).

    Only XLSX is copied (to a temporary file, within the upload cap): a zip needs seeking.
    """
    reader = s3.ObjectReader(client, location, obj)
    try:
        max_bytes = app_settings().max_upload_bytes if fmt == "xlsx" else None
        yield formats.read_rows(reader, fmt, max_bytes=max_bytes, limits=file_limits(), encoding=encoding or "utf-8")
    finally:
        reader.close()


def file_limits() -> formats.Limits:
    """What a cell, a row, an unpacked XLSX part and a decompressed file may take (BULKWRITES["MAX_*"])."""
    return formats.Limits.from_settings(settings.BULKWRITES)
