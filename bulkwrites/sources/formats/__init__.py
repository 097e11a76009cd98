"""File readers: CSV, TSV, JSON, JSON Lines, XLSX and DynamoDB JSON to :class:`SourceRow` objects.

One module per format behind a small registry (:data:`READERS`); :func:`read_rows` turns a file
(a binary stream: an upload, a local file, an S3 object's body) into rows, one per data row, and
every reader streams: memory stays bounded whatever the file, with the limits of :class:`Limits`
checked while reading. Before the reader, the same pipeline for every format: gzip or zstd
decompressed as it streams (:mod:`.compression`, told by the first bytes), then text transcoded
to UTF-8 from the job's encoding (:mod:`.encodings`). :func:`sniff` tells compression, encoding
and format from a name and the first bytes (:func:`detect_format` the format alone). Plain
Python; no Django.

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
give the item as written, unwrapped from ``{"Item": ...}``; a DynamoDB JSON document (a scan's
``{"Items": [...]}``, an array, one item) counts elements like a JSON array.

``raw`` is the row's text (CSV, TSV, JSON Lines as in the file; XLSX cells joined by tabs), cut
at ``RAW_LIMIT`` characters; valid elements of a JSON array have none.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from bulkwrites.sources.formats import csv_tsv, dynamodb_json, json_array, json_lines, xlsx
from bulkwrites.sources.formats.common import CHUNK_SIZE, ByteSource, CountingReader, SourceError
from bulkwrites.sources.formats.compression import (
    COMPRESSIONS,
    PeekReader,
    decompressed_head,
    open_decompressed,
    without_compression_suffix,
)
from bulkwrites.sources.formats.detection import detect_format
from bulkwrites.sources.formats.encodings import (
    ENCODINGS,
    UTF8,
    UTF16_SNIFF_BYTES,
    TranscodingReader,
    check_encoding,
    effective_encoding,
)
from bulkwrites.sources.formats.limits import DEFAULT_LIMITS, Limits
from bulkwrites.sources.rows import SourceRow

__all__ = [
    "CHUNK_SIZE",
    "COMPRESSIONS",
    "ENCODINGS",
    "FORMATS",
    "HEAD_BYTES",
    "ROWS_ARE_DYNAMODB_JSON",
    "UTF8",
    "Limits",
    "Sniffed",
    "SourceError",
    "SourceRow",
    "check_encoding",
    "detect_format",
    "read_rows",
    "sniff",
]

FORMATS: dict[str, str] = {
    "csv": "CSV",
    "tsv": "TSV",
    "json": "JSON (array of objects)",
    "jsonl": "JSON Lines",
    "xlsx": "Excel (XLSX)",
    "ddbjson": "DynamoDB JSON (export lines, scan output, items)",
}
# How much of a file's head (after decompression) format detection looks at.
HEAD_BYTES = 64 * 1024

# Formats whose rows already hold DynamoDB JSON ({"pk": {"S": "a"}}) rather than plain values.
ROWS_ARE_DYNAMODB_JSON: frozenset[str] = frozenset({"ddbjson"})

TextReader = Callable[[ByteSource, Limits], Iterator[SourceRow]]
READERS: dict[str, TextReader] = {
    "csv": lambda source, limits: csv_tsv.read_delimited(source, limits, fmt="csv"),
    "tsv": lambda source, limits: csv_tsv.read_delimited(source, limits, fmt="tsv"),
    "json": json_array.read,
    "jsonl": json_lines.read,
    "ddbjson": dynamodb_json.read,
}


def read_rows(
    stream: IO[bytes] | Any,
    fmt: str,
    *,
    max_bytes: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    encoding: str = UTF8,
) -> Iterator[SourceRow]:
    """Read the rows of a file in format ``fmt`` (a key of :data:`FORMATS`), streaming.

    Reads from the stream's current position and does not close it; any object with
    ``read(size)`` will do (an S3 body). A gzip or zstd file is decompressed as it is read (within
    ``limits.max_decompressed_bytes``), text in ``encoding`` (a key of :data:`ENCODINGS`) is read
    as UTF-8. ``max_bytes`` caps the size of the file as stored (bytes read) and, for XLSX, of the
    workbook; crossing it raises :class:`SourceError`, and so does crossing any of ``limits``.
    """
    if fmt not in FORMATS:
        raise SourceError(f'Unknown file format "{fmt}".')
    encoding = check_encoding(encoding)
    if fmt == "xlsx":
        content, _ = open_decompressed(stream, limits)  # a plain seekable file comes back as it is
        return xlsx.read(content, limits, max_bytes=max_bytes)
    content, _ = open_decompressed(CountingReader(stream, max_bytes), limits)
    return READERS[fmt](_as_utf8(content, encoding), limits)


def _as_utf8(content: Any, encoding: str) -> ByteSource:
    peek = PeekReader(content)
    encoding = effective_encoding(encoding, peek.peek(UTF16_SNIFF_BYTES))
    return peek if encoding == UTF8 else TranscodingReader(peek, encoding)


@dataclass(frozen=True)
class Sniffed:
    """What a file's head says: its format, compression ("" for none) and the encoding to read it with."""

    format: str
    compression: str
    encoding: str


def sniff(raw_head: bytes, file_name: str, *, source_format: str | None = None, encoding: str = UTF8) -> Sniffed:
    """Format, compression and encoding of a file from its name and its first bytes as stored.

    ``raw_head``: at least the first :data:`HEAD_BYTES` bytes (fewer for a shorter file); a
    compressed head is decompressed as far as it goes. The format given wins over detection; the
    encoding is the one given, or UTF-16 when the content starts with its byte-order mark.
    """
    content, compression = decompressed_head(raw_head, HEAD_BYTES)
    encoding = effective_encoding(check_encoding(encoding), content)
    if encoding != UTF8:
        content = codecs.getincrementaldecoder(encoding)("replace").decode(content, False).encode("utf-8")
    fmt = source_format or detect_format(without_compression_suffix(file_name), content)
    if fmt not in FORMATS:
        raise SourceError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    return Sniffed(fmt, compression or "", encoding)
