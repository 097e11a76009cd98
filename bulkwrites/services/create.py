"""Creating jobs: from an uploaded file, from admin records, from a PostgreSQL query; and their previews.

Every new job records the same things whatever its source (target, key schema, who, checked
settings: :func:`new_job_fields`). File and SQL jobs are staged later, on a worker; records
picked in the admin are read and staged at once, in the request that picked them.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Mapping
from typing import IO, Any

from django.core.exceptions import ValidationError
from django.core.files.base import File
from django.db import transaction
from django.db.models import Model, QuerySet

from bulkwrites.conf import app_settings
from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo import s3_client
from bulkwrites.dynamo.items import KeySchema, parse_header
from bulkwrites.models import Job, Operation, SourceKind, TableSetting
from bulkwrites.services import notify, sql, staging
from bulkwrites.services.errors import JobError
from bulkwrites.services.source_rows import file_limits, job_source_rows, s3_rows
from bulkwrites.services.tables import TableError, describe_key_schema, key_schema_for_job
from bulkwrites.sources import dynamodb_table, formats, querysets, s3
from bulkwrites.sources.postgres import redact_dsn

# --- what every job records ------------------------------------------------------------


def checked_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Job settings as given (None: not given), checked by the Job fields' validators."""
    try:
        return Job.check_settings(values)
    except ValidationError as exc:
        raise JobError(" ".join(exc.messages)) from None


def default_settings(table_name: str) -> dict[str, Any]:
    """Per-table defaults an operator set (TableSetting), used where a job gives none."""
    setting = TableSetting.objects.filter(table_name=table_name).first()
    return {"rate_limit_wcu": setting.rate_limit_wcu} if setting and setting.rate_limit_wcu else {}


def new_job_fields(
    table_name: str, operation: str, key_schema: KeySchema, created_by: Any, job_settings: Mapping[str, Any]
) -> dict[str, Any]:
    """What every new job records whatever its source: target, key, who, and checked settings."""
    given = {name: value for name, value in job_settings.items() if value is not None}
    if given.get("webhook_url"):
        notify.check_webhook_url(given["webhook_url"])  # again before each send: DNS answers change
    return {
        "table_name": table_name,
        "region": dynamo_client.region(),
        "endpoint": dynamo_client.endpoint_url() or "",
        "operation": operation,
        "key_schema": key_schema.to_json(),
        "created_by": created_by,
        **checked_settings({**default_settings(table_name), **given}),
    }


# --- from a file -------------------------------------------------------------------------


def upload_too_large(size: int) -> str:
    """The one message for a file over the upload cap (form, 413 page, service)."""
    limit = app_settings().max_upload_bytes
    return f"The file is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB."


def job_create_from_file(
    *,
    upload: IO[bytes],
    file_name: str,
    table_name: str,
    operation: str = Operation.PUT,
    source_format: str | None = None,
    encoding: str = formats.UTF8,
    created_by: Any = None,
    **job_settings: Any,
) -> Job:
    """Store the uploaded file where every worker can read it, and make a draft job of it.

    Reads the table's key schema (DescribeTable) so a preview can validate keys; the file
    itself is parsed later, by the preview and by staging, each streaming it. A gzip or zstd
    file is stored as it came and decompressed as it is read; ``encoding`` is recorded and
    used by both.
    """
    size = _stream_size(upload)
    if size > app_settings().max_upload_bytes:
        raise JobError(upload_too_large(size))
    if size == 0:
        raise JobError("The file is empty.")
    sniffed = _file_format(upload, file_name, source_format, encoding)
    key_schema = key_schema_for_job(table_name)
    digest = hashlib.sha256()
    for chunk in iter(lambda: upload.read(1 << 20), b""):
        digest.update(chunk)
    upload.seek(0)
    job = Job(
        **new_job_fields(table_name, operation, key_schema, created_by, job_settings),
        source_kind=SourceKind.FILE,
        source_name=file_name[:255],
        source_format=sniffed.format,
        source_encoding=sniffed.encoding,
        source_compression=sniffed.compression,
        source_size=size,
        source_sha256=digest.hexdigest(),
    )
    job.source_file.save(file_name, File(upload, name=file_name), save=False)
    job.save()
    return job


def _stream_size(stream: IO[bytes]) -> int:
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    return size


def _file_format(stream: IO[bytes], file_name: str, source_format: str | None, encoding: str) -> formats.Sniffed:
    """The format given (or detected from the name and the first bytes), compression and encoding.

    The stream is rewound.
    """
    head = stream.read(formats.HEAD_BYTES)
    stream.seek(0)
    return sniff_head(head, file_name, source_format, encoding)


def sniff_head(head: bytes, file_name: str, source_format: str | None, encoding: str) -> formats.Sniffed:
    """What a file's first bytes say (format, compression, encoding), or JobError with the reason."""
    try:
        return formats.sniff(head, file_name, source_format=source_format or None, encoding=encoding)
    except formats.SourceError as exc:
        raise JobError(str(exc)) from None


# --- from an S3 object -------------------------------------------------------------------


def s3_object(url: str) -> tuple[s3.S3Location, s3.S3Object, formats.Sniffed | None, Any]:
    """Where, what (HeadObject) and a client, for an allowed S3 URL; JobError with the reason otherwise."""
    try:
        location = s3.S3Location.from_url(url)
        s3.check_allowed(location, app_settings().s3_allowed)
        client = s3_client.make_s3_client()
        return location, s3.head_object(client, location), None, client
    except formats.SourceError as exc:
        raise JobError(str(exc)) from None


def _sniff_s3(
    client: Any, location: s3.S3Location, obj: s3.S3Object, source_format: str | None, encoding: str
) -> formats.Sniffed:
    if obj.size == 0:
        raise JobError(f"{location.url} is empty.")
    try:
        head = s3.read_head(client, location, obj, formats.HEAD_BYTES)
    except formats.SourceError as exc:
        raise JobError(str(exc)) from None
    sniffed = sniff_head(head, location.file_name, source_format, encoding)
    limit = app_settings().max_upload_bytes
    if sniffed.format == "xlsx" and not sniffed.compression and obj.size > limit:
        raise JobError(
            f"{location.url} is an XLSX workbook of {obj.size / 1e6:.1f} MB; a workbook is copied to a temporary "
            f"file to be read, within the upload limit of {limit / 1e6:.0f} MB (BULKWRITES_MAX_UPLOAD_BYTES). "
            "Save it as CSV (streamed, no limit), or raise the limit."
        )
    return sniffed


def job_create_from_s3(
    *,
    url: str,
    table_name: str,
    operation: str = Operation.PUT,
    source_format: str | None = None,
    encoding: str = formats.UTF8,
    created_by: Any = None,
    **job_settings: Any,
) -> Job:
    """A draft job reading an S3 object: its size and ETag are recorded, and checked when it is read again.

    Nothing is copied: the preview and the worker each stream the object from S3.
    """
    location, obj, _, client = s3_object(url)
    sniffed = _sniff_s3(client, location, obj, source_format, encoding)
    key_schema = key_schema_for_job(table_name)
    return Job.objects.create(
        **new_job_fields(table_name, operation, key_schema, created_by, job_settings),
        source_kind=SourceKind.S3,
        source_name=location.url[:255],
        source_detail=location.url,
        source_format=sniffed.format,
        source_encoding=sniffed.encoding,
        source_compression=sniffed.compression,
        source_size=obj.size,
        source_etag=obj.etag[:128],
        source_spec={
            "bucket": location.bucket,
            "key": location.key,
            "etag": obj.etag,
            "size": obj.size,
            "version_id": obj.version_id,
        },
    )


def preview_s3(
    *,
    url: str,
    table_name: str,
    operation: str,
    source_format: str | None = None,
    encoding: str = formats.UTF8,
) -> staging.Preview:
    """A dry run of an S3 object without a job (``bulkwrite load s3://... --dry-run``)."""
    location, obj, _, client = s3_object(url)
    sniffed = _sniff_s3(client, location, obj, source_format, encoding)
    key_schema = key_schema_for_job(table_name)
    try:
        with s3_rows(client, location, obj, sniffed.format, sniffed.encoding) as rows:
            return staging.preview_rows(
                rows,
                key_schema,
                operation=operation,
                dynamodb_json=sniffed.format in formats.ROWS_ARE_DYNAMODB_JSON,
                max_problems=sys.maxsize,
            )
    except formats.SourceError as exc:
        raise JobError(str(exc)) from None


# --- from another DynamoDB table --------------------------------------------------------------

# A draft's preview scans at most this many items of a source table (a web request); staging reads all.
TABLE_PREVIEW_ITEMS = 1000


def job_create_from_table(
    *,
    source_table: str,
    table_name: str,
    segments: int = dynamodb_table.DEFAULT_SEGMENTS,
    mapping_text: str = "",
    source_region: str = "",
    operation: str = Operation.PUT,
    created_by: Any = None,
    **job_settings: Any,
) -> Job:
    """A draft job copying table ``source_table`` (parallel Scans, ``segments`` of them) into ``table_name``.

    The source is read by the preview (its first items) and by the worker when it stages the job.
    """
    if not 1 <= segments <= dynamodb_table.MAX_SEGMENTS:
        raise JobError(f"Segments must be between 1 and {dynamodb_table.MAX_SEGMENTS}.")
    region = source_region.strip() or dynamo_client.region()
    if source_table == table_name and region == dynamo_client.region():
        raise JobError("The source and the target are the same table.")
    try:
        mapping = dynamodb_table.AttributeMapping.parse(mapping_text)
    except dynamodb_table.MappingError as exc:
        raise JobError(str(exc)) from None
    key_schema = key_schema_for_job(table_name)
    targets = mapping.targets()
    missing = [key.name for key in key_schema.attributes if targets is not None and key.name not in targets]
    if missing:
        raise JobError(
            f"No attribute is mapped to the key attribute {missing[0]!r} of {table_name!r}; add a line such as "
            f"`id -> {missing[0]}`, or `*` to keep the other attributes as they are."
        )
    source_key = _source_table_key(source_table, region)
    source = dynamodb_table.TableSource(source_table, region, segments, mapping.describe())
    where = f"{source_table} ({region})" if region != dynamo_client.region() else source_table
    detail = f"table {where}, key {source_key}, {segments} scan segments"
    return Job.objects.create(
        **new_job_fields(table_name, operation, key_schema, created_by, job_settings),
        source_kind=SourceKind.DYNAMODB_TABLE,
        source_name=f"DynamoDB table {where}"[:255],
        source_format="ddbjson",
        source_detail=detail + (f"\nmapping:\n{source.mapping}" if source.mapping else ""),
        source_spec=source.to_json(),
    )


def _source_table_key(table: str, region: str) -> str:
    if region != dynamo_client.region():
        return "(in another region)"  # DescribeTable there is the worker's first Scan's job
    try:
        return describe_key_schema(table).describe()
    except TableError as exc:
        raise JobError(f"Source table: {exc.message}") from None


# --- from admin records ------------------------------------------------------------------


def job_create_from_queryset(
    *,
    queryset: QuerySet[Model],
    table_name: str,
    mapping_text: str = "",
    operation: str = Operation.PUT,
    description: str = "",
    created_by: Any = None,
    **job_settings: Any,
) -> Job:
    """A draft job from admin records, staged at once (records are read in this request).

    The mapping says which field feeds which attribute; empty means every field under its
    own name, with the primary key feeding a key attribute the model has no field for.
    """
    model = queryset.model
    key_schema = key_schema_for_job(table_name)
    try:
        mapping = (
            querysets.parse_mapping(mapping_text, model)
            if mapping_text.strip()
            else querysets.default_mapping(model, key_schema)
        )
    except querysets.MappingError as exc:
        raise JobError(str(exc)) from None
    mapped = {parse_header(header)[0] for _, header in mapping}
    for key in key_schema.attributes:
        if key.name not in mapped:
            raise JobError(
                f"No field is mapped to the key attribute {key.name!r} ({key.type}) of {table_name!r}; "
                f"add a line such as `id -> {key.name}`."
            )
    with transaction.atomic():
        job = Job.objects.create(
            **new_job_fields(table_name, operation, key_schema, created_by, job_settings),
            source_kind=SourceKind.QUERYSET,
            source_name=model._meta.label,
            source_detail=f"{description}\nmapping:\n{querysets.format_mapping(mapping)}".strip(),
        )
        rows = querysets.rows_from_queryset(queryset.order_by("pk").iterator(chunk_size=2000), mapping)
        staging.stage_job(job, rows, dynamodb_json=False)
    job.refresh_from_db()
    return job


# --- from PostgreSQL -----------------------------------------------------------------------


def job_create_from_sql(
    *,
    spec: sql.SqlSpec,
    table_name: str,
    source_name: str,
    operation: str = Operation.PUT,
    created_by: Any = None,
    **job_settings: Any,
) -> Job:
    """A draft job reading a query of a named connection; its rows are read by the preview and the worker."""
    return Job.objects.create(
        **new_job_fields(table_name, operation, key_schema_for_job(table_name), created_by, job_settings),
        source_kind=SourceKind.SQL,
        source_name=source_name[:255],
        source_detail=f"connection {spec.connection}:\n{spec.describe()}",
        source_spec=spec.to_json(),
    )


def job_create_from_dsn(
    *, dsn: str, spec: sql.SqlSpec, table_name: str, operation: str = Operation.PUT, **job_settings: Any
) -> Job:
    """From a terminal with a connection URL: staged here, so the URL never leaves this process."""
    public_spec = spec.with_connection(redact_dsn(dsn))
    with transaction.atomic():
        job = Job.objects.create(
            **new_job_fields(table_name, operation, key_schema_for_job(table_name), None, job_settings),
            source_kind=SourceKind.SQL,
            source_name="command line",
            source_detail=f"connection {public_spec.connection}:\n{spec.describe()}",
            source_spec=public_spec.to_json(),
        )
        staging.stage_job(job, sql.rows_for(spec, dsn=dsn), dynamodb_json=False)
    job.refresh_from_db()
    return job


# --- previews: nothing is written to DynamoDB ----------------------------------------------


def job_preview(job: Job, **kwargs: Any) -> staging.Preview:
    """Validate every row of a draft job's source."""
    if job.staged_at is not None:
        return staging.preview_from_ledger(job)
    try:
        with job_source_rows(job) as (rows, dynamodb_json):
            if job.source_kind == SourceKind.DYNAMODB_TABLE:  # a whole table is for the worker, not a request
                rows = itertools.islice(rows, TABLE_PREVIEW_ITEMS)
            preview = staging.preview_rows(
                rows,
                KeySchema.from_json(job.key_schema),
                operation=job.operation,
                dynamodb_json=dynamodb_json,
                **kwargs,
            )
    except formats.SourceError as exc:
        raise JobError(str(exc)) from None
    if job.source_kind == SourceKind.DYNAMODB_TABLE and preview.rows >= TABLE_PREVIEW_ITEMS:
        preview.note = f"Only the first {TABLE_PREVIEW_ITEMS:,} items of the source table were read for this preview."
    return preview


def preview_file(
    stream: IO[bytes],
    *,
    file_name: str,
    table_name: str,
    operation: str,
    source_format: str | None = None,
    encoding: str = formats.UTF8,
) -> staging.Preview:
    """A dry run of a file without a job (the CLI's ``--dry-run``): every invalid row listed."""
    sniffed = _file_format(stream, file_name, source_format, encoding)
    key_schema = key_schema_for_job(table_name)
    try:
        rows = formats.read_rows(
            stream,
            sniffed.format,
            max_bytes=app_settings().max_upload_bytes,
            limits=file_limits(),
            encoding=sniffed.encoding,
        )
        return staging.preview_rows(
            rows,
            key_schema,
            operation=operation,
            dynamodb_json=sniffed.format in formats.ROWS_ARE_DYNAMODB_JSON,
            max_problems=sys.maxsize,
        )
    except formats.SourceError as exc:
        raise JobError(str(exc)) from None
