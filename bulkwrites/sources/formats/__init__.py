"""File readers: CSV, TSV, JSON, JSON Lines, XLSX and DynamoDB JSON lines to :class:`SourceRow` objects.

One module per format behind a small registry (:data:`READERS`); :func:`read_rows` turns an
uploaded file (a binary stream) into rows, one per data row, and every reader streams: memory
stays bounded whatever the file, with the limits of :class:`Limits` checked while reading.
:func:`detect_format` tells the format from a name and the first bytes. Plain Python; no Django.

Two kinds of failure:

* a row that cannot be read becomes ``SourceRow(values=None, error=..., raw=...)`` and reading
  goes on, so every bad row can be reported with its position;
* a file that cannot be read at all raises :class:`SourceError`, whose message is meant for the
  operator. It can be raised by :func:`read_rows` itself or at any point while iterating (a
  limit crossed, or a bad UTF-8 byte, half-way through the file). Apart from errors of the
  stream itself (``OSError``), no other exception escapes, whatever the bytes are.

Positions (``SourceRow.position``, 1-based): CSV, TSV and XLSX count data rows (blank rows are
skipped and not counted); a JSON array counts elements; JSON Lines and DynamoDB JSON lines count
physical lines (blank ones included, so they match an editor's line numbers).

Values: CSV, TSV and XLSX cells are strings, empty cells left out, headers passed through as
written (``price:N`` is interpreted by :mod:`bulkwrites.dynamo.items`). JSON values keep their
types, numbers as ``int`` or :class:`~decimal.Decimal` (never ``float``). DynamoDB JSON lines
give the item as written, unwrapped from ``{"Item": ...}``.

``raw`` is the row's text (CSV, TSV, JSON Lines as in the file; XLSX cells joined by tabs), cut
at ``RAW_LIMIT`` characters; valid elements of a JSON array have none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO

from bulkwrites.sources.formats import csv_tsv, dynamodb_json, json_array, json_lines, xlsx
from bulkwrites.sources.formats.common import CHUNK_SIZE, CountingReader, SourceError
from bulkwrites.sources.formats.detection import detect_format
from bulkwrites.sources.formats.limits import DEFAULT_LIMITS, Limits
from bulkwrites.sources.rows import SourceRow

__all__ = [
    "CHUNK_SIZE",
    "FORMATS",
    "ROWS_ARE_DYNAMODB_JSON",
    "Limits",
    "SourceError",
    "SourceRow",
    "detect_format",
    "read_rows",
]

FORMATS: dict[str, str] = {
    "csv": "CSV",
    "tsv": "TSV",
    "json": "JSON (array of objects)",
    "jsonl": "JSON Lines",
    "xlsx": "Excel (XLSX)",
    "ddbjson": "DynamoDB JSON lines (export to S3)",
}

# Formats whose rows already hold DynamoDB JSON ({"pk": {"S": "a"}}) rather than plain values.
ROWS_ARE_DYNAMODB_JSON: frozenset[str] = frozenset({"ddbjson"})

TextReader = Callable[[CountingReader, Limits], Iterator[SourceRow]]
READERS: dict[str, TextReader] = {
    "csv": lambda source, limits: csv_tsv.read_delimited(source, limits, fmt="csv"),
    "tsv": lambda source, limits: csv_tsv.read_delimited(source, limits, fmt="tsv"),
    "json": json_array.read,
    "jsonl": json_lines.read,
    "ddbjson": dynamodb_json.read,
}


def read_rows(
    stream: IO[bytes], fmt: str, *, max_bytes: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> Iterator[SourceRow]:
    """Read the rows of a file in format ``fmt`` (a key of :data:`FORMATS`), streaming.

    Reads from the stream's current position and does not close it. ``max_bytes`` caps the size
    of the file (bytes read); crossing it raises :class:`SourceError`, and so does crossing any
    of ``limits``.
    """
    if fmt not in FORMATS:
        raise SourceError(f'Unknown file format "{fmt}".')
    if fmt == "xlsx":
        return xlsx.read(stream, limits, max_bytes=max_bytes)
    return READERS[fmt](CountingReader(stream, max_bytes), limits)
