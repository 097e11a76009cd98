"""Reading a job's source again: the rows of its stored file or of its SQL spec, streamed.

Used by the preview of a draft and by staging on a worker; records copied from the admin
are staged when the job is created, so they have no source to read again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings

from bulkwrites.conf import app_settings
from bulkwrites.models import Job, SourceKind
from bulkwrites.services import sql
from bulkwrites.services.errors import JobError
from bulkwrites.sources import formats


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
    if job.source_kind != SourceKind.FILE:
        raise JobError(f"jobs from {job.get_source_kind_display()} are staged when they are created")
    if not job.source_file:
        raise JobError("The job's source file is missing.")
    with job.source_file.open("rb") as stream:
        if track_bytes is not None and job.source_format != "xlsx":
            track_bytes(stream.tell, job.source_size)
        limits = file_limits()
        rows = formats.read_rows(stream, job.source_format, max_bytes=app_settings().max_upload_bytes, limits=limits)
        yield rows, job.source_format in formats.ROWS_ARE_DYNAMODB_JSON


def file_limits() -> formats.Limits:
    """What a cell, a row and an unpacked XLSX part of an uploaded file may take (BULKWRITES["MAX_*"])."""
    return formats.Limits.from_settings(settings.BULKWRITES)
