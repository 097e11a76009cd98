"""File readers: CSV, TSV, JSON, JSON Lines, XLSX and DynamoDB JSON lines to plain dict rows.

:func:`read_rows` turns an uploaded file (a binary stream) into :class:`SourceRow` objects,
one per data row, and streams: only JSON arrays are parsed as a whole. Plain Python; no
Django here.

Two kinds of failure:

* a row that cannot be read becomes ``SourceRow(values=None, error=..., raw=...)`` and
  reading goes on, so every bad row can be reported with its position;
* a file that cannot be read at all raises :class:`SourceError`, whose message is meant
  for the operator. It can be raised by :func:`read_rows` itself or at any point while
  iterating (a size limit crossed, or a bad UTF-8 byte, half-way through the file). Apart
  from errors of the stream itself (``OSError``), no other exception escapes, whatever the
  bytes are.

Positions (``SourceRow.position``, 1-based):

* CSV, TSV and XLSX: the data row number. The first data row after the header row is 1;
  blank rows (no cell with a value) are skipped and not counted, so positions run
  1, 2, 3... over the rows returned. A CSV record whose quoted cells hold line breaks
  spans several physical lines but is one row; error messages also give the physical
  line (CSV, TSV) or the sheet row (XLSX) where the row starts.
* JSON array: the element number (index + 1).
* JSON Lines and DynamoDB JSON lines: the physical line number in the file, counting
  blank lines (which are skipped), so it matches a text editor's line numbers. Lines end
  at ``\\n`` only (a ``\\r`` before it is dropped).

Values:

* CSV, TSV and XLSX: cells are strings (XLSX values are turned into text: 42, 1.5,
  true/false, ISO 8601 dates), empty cells are left out of ``values``, and headers are
  passed through as written (``price:N`` is just a header here;
  :mod:`bulkwrites.dynamo.items` interprets it). Nothing is stripped from cells, except
  that line breaks inside a quoted CSV cell become ``\\n``. The header is the first
  non-blank row; blank header cells after the last name are ignored, any other blank or
  duplicate (after stripping spaces) header is a SourceError. A row with fewer cells than
  the header just lacks the others; a row with a non-empty cell past the header is a
  row error (empty cells past it are ignored). TSV is CSV with tabs, quoting included
  (as Excel writes it).
* JSON and JSON Lines: each row is an object; values keep their JSON types, with numbers
  as ``int`` or :class:`~decimal.Decimal` (never ``float``); NaN and Infinity are refused.
* DynamoDB JSON lines: the item as written, ``{"pk": {"S": "a"}, ...}``, unwrapped from
  ``{"Item": ...}`` when wrapped (see :data:`ROWS_ARE_DYNAMODB_JSON`). Only its outline is
  checked here; :func:`bulkwrites.dynamo.items.parse_dynamodb_json` checks the values.

``raw`` is the row's text (CSV, TSV, JSON Lines: as in the file; XLSX: cells joined by
tabs), cut at RAW_LIMIT characters. It is set on every row, except on valid elements of
a JSON array, which have no text of their own.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import datetime as dt
import itertools
import json
import re
import tempfile
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from typing import IO, Any, BinaryIO

# openpyxl parses workbook XML with defusedxml when it can import it (openpyxl.xml.DEFUSEDXML);
# importing it here makes the dependency explicit and fails early if it is missing.
import defusedxml  # noqa: F401

from bulkwrites.sources.rows import RAW_LIMIT, SourceRow

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

CHUNK_SIZE = 64 * 1024
# The largest cell worth reading: a DynamoDB item holds at most 400 KB. Python's csv module
# refuses longer fields (default 131,072 characters), so the process-wide limit is raised to
# this once, at import; it is never lowered.
MAX_CELL_CHARS = 409_600
XLSX_EXPANSION_FACTOR = 10  # an XLSX may unpack to at most this many times max_bytes
XLSX_MAX_UNPACKED = 1 << 30  # ...or to 1 GiB when there is no max_bytes
EXCEL_MAX_ROWS = 1_048_576

if csv.field_size_limit() < MAX_CELL_CHARS:
    csv.field_size_limit(MAX_CELL_CHARS)

_LABELS = {"csv": "CSV", "tsv": "TSV", "json": "JSON", "jsonl": "JSON Lines", "ddbjson": "DynamoDB JSON"}
_EXTENSIONS = {
    "csv": "csv",
    "tsv": "tsv",
    "tab": "tsv",
    "json": "json",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "xlsx": "xlsx",
}
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # old .xls, and password-protected .xlsx
_GZIP_MAGIC = b"\x1f\x8b"
_DDB_HEAD = re.compile(rb'\{\s*"Item"\s*:\s*\{')
# A line with its break, or the unfinished last one (matching it keeps findall linear).
_UNIVERSAL_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_JSON_SPACE = " \t\r\n"
_DDB_TYPES = frozenset({"S", "N", "B", "BOOL", "NULL", "SS", "NS", "BS", "L", "M"})


class SourceError(Exception):
    """The whole file cannot be read; the message is shown to the operator."""


# --- format detection -----------------------------------------------------------------


def detect_format(filename: str, head: bytes) -> str:
    """Guess the format code of a file from its name and its first bytes.

    The extension decides (``.csv``, ``.tsv``/``.tab``, ``.json``, ``.jsonl``/``.ndjson``,
    ``.xlsx``); the first bytes refine it: a ``.json`` file whose first line is an object is
    JSON Lines, and JSON lines that start ``{"Item": {`` are DynamoDB JSON. A zip
    (``PK\\x03\\x04``) is XLSX whatever its name (a renamed workbook is never text). With an
    unknown extension JSON is recognised as above, and a ``.txt`` whose first line has tabs
    (or commas) is TSV (or CSV). Pass at least the first few KB as ``head``. Raises
    :class:`SourceError` when the format cannot be told, and for gzip files and old
    ``.xls`` workbooks, with a message saying what to do.
    """
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].lower()
    ext = name.rpartition(".")[2] if "." in name else ""
    if head.startswith(_GZIP_MAGIC) or ext in ("gz", "gzip"):
        raise SourceError("The file is gzip-compressed; decompress it and upload the file inside.")
    if ext == "xls" or head.startswith(_OLE_MAGIC):
        raise SourceError(_OLE_MESSAGE)
    if head.startswith(_ZIP_MAGIC):
        return "xlsx"
    body = head.removeprefix(codecs.BOM_UTF8).lstrip(_JSON_SPACE.encode())
    fmt = _EXTENSIONS.get(ext)
    if fmt in ("csv", "tsv", "xlsx"):
        return fmt
    if fmt == "json":
        return _sniff_json(body) or "json"
    if fmt == "jsonl":
        return "ddbjson" if _sniff_json(body) == "ddbjson" else "jsonl"
    sniffed = _sniff_json(body)
    if sniffed:
        return sniffed
    if ext == "txt":
        first_line = _head_text(body).split("\n", 1)[0]
        tabs, commas = first_line.count("\t"), first_line.count(",")
        if tabs or commas:
            return "tsv" if tabs >= commas else "csv"
    shown = filename if len(filename) <= 100 else filename[:97] + "..."
    raise SourceError(
        f'Unknown file format for "{shown}": expected CSV (.csv), TSV (.tsv, .tab), JSON (.json), '
        "JSON Lines (.jsonl, .ndjson), DynamoDB JSON lines or Excel (.xlsx)."
    )


def _sniff_json(body: bytes) -> str | None:
    """ "json", "jsonl" or "ddbjson" from the first bytes (BOM and blanks removed), or None."""
    if body.startswith(b"["):
        return "json"
    if not body.startswith(b"{"):
        return None
    first_line, newline, _ = body.partition(b"\n")
    try:
        obj = _DECODER.decode(first_line.decode("utf-8"))
    except (ValueError, RecursionError):  # invalid, or cut short by the end of head
        if _DDB_HEAD.match(first_line):
            return "ddbjson"
        # A single line longer than head is a JSON line; "{" alone on a line is pretty-printed JSON.
        return "json" if newline else "jsonl"
    if not isinstance(obj, dict):
        return "json"
    if _ddb_item_of(obj) is not None:
        return "ddbjson"
    return "jsonl"


def _ddb_item_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The item of an export line {"Item": {"a": {"S": "x"}, ...}}, if obj really is one."""
    item = obj.get("Item") if len(obj) == 1 else None
    if not isinstance(item, dict) or not item or _untyped_attribute(item) is not None:
        return None
    return item


def _untyped_attribute(item: dict[str, Any]) -> str | None:
    """The first attribute whose value is not shaped like {"S": "x"}; None if all are."""
    for name, value in item.items():
        if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _DDB_TYPES):
            return name
    return None


def _head_text(body: bytes) -> str:
    """The head as text, ignoring a character cut short at its end; "" if it is not UTF-8."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(body, final=False)
    except UnicodeDecodeError:
        return ""
    return "" if "\x00" in text else text


# --- reading --------------------------------------------------------------------------


def read_rows(stream: IO[bytes], fmt: str, *, max_bytes: int | None = None) -> Iterator[SourceRow]:
    """Read the rows of a file in format ``fmt`` (a key of :data:`FORMATS`), streaming.

    Reads from the stream's current position and does not close it. ``max_bytes`` caps the
    size of the file (bytes read); crossing it raises :class:`SourceError`. See the module
    docstring for positions and for which failures are row errors and which raise.
    """
    if fmt not in FORMATS:
        raise SourceError(f'Unknown file format "{fmt}".')
    if fmt == "xlsx":
        return _read_xlsx(stream, max_bytes)
    source = _CountingReader(stream, max_bytes)
    if fmt in ("csv", "tsv"):
        return _read_delimited(source, fmt)
    if fmt == "json":
        return _read_json_array(source)
    return _read_json_lines(source, ddb=fmt == "ddbjson")


class _CountingReader:
    """Reads a binary stream, counting bytes and enforcing max_bytes."""

    def __init__(self, stream: BinaryIO, max_bytes: int | None) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self.count = 0

    def read(self, size: int) -> bytes:
        data = self._stream.read(size) or b""
        self.count += len(data)
        if self._max_bytes is not None and self.count > self._max_bytes:
            raise SourceError(f"The file is larger than the limit of {_size_text(self._max_bytes)}.")
        return data

    def read_all(self) -> bytes:
        chunks = []
        while chunk := self.read(CHUNK_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)


def _size_text(size: int) -> str:
    mib, mb = 1024 * 1024, 1000 * 1000
    if size >= mib and size % mib == 0:
        return f"{size // mib:,} MB"
    if size >= mb and size % mb == 0:
        return f"{size // mb:,} MB"
    if size >= mb:
        return f"{size / mib:,.1f} MB"
    return f"{size:,} bytes"


def _utf8_error(exc: UnicodeDecodeError, offset: int, line: int) -> SourceError:
    bad = exc.object[exc.start : exc.start + 1]
    what = f"byte 0x{bad[0]:02x}" if bad else "an incomplete character"
    return SourceError(
        f"The file is not valid UTF-8 ({what} at offset {offset}, line {line}). "
        "Save it with UTF-8 encoding and upload it again."
    )


def _count_breaks(text: str, universal: bool) -> int:
    if universal:
        return text.count("\n") + text.count("\r") - text.count("\r\n")
    return text.count("\n")


def _line_batches(source: _CountingReader, *, universal: bool) -> Iterator[list[str]]:
    """Decode UTF-8 (dropping a leading BOM) and yield the complete lines of each chunk read.

    ``universal``: lines end at ``\\r\\n``, ``\\r`` or ``\\n`` and keep their line break (what
    csv expects of a file opened with ``newline=""``). Otherwise lines end at ``\\n`` only and
    come without it. Lines come in lists, one per chunk, so that the per-line work is done in C.
    Bad UTF-8 raises SourceError naming the byte offset and the line.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed = 0  # bytes given to the decoder before this chunk
    lines_done = 0
    tail: list[str] = []  # the start of a line not yet ended
    at_start = True
    while True:
        chunk = source.read(CHUNK_SIZE)
        final = not chunk
        buffered = decoder.getstate()[0]
        try:
            text = decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            before = "".join(tail) + exc.object[: exc.start].decode("utf-8", "replace")
            offset = consumed - len(buffered) + exc.start
            raise _utf8_error(exc, offset, lines_done + _count_breaks(before, universal) + 1) from None
        consumed += len(chunk)
        if at_start and text:
            at_start = False
            text = text.removeprefix("\ufeff")
        if not final and "\n" not in text and not (universal and "\r" in text):
            if text:
                tail.append(text)  # joined once the line ends: no quadratic copying of long lines
            continue
        if tail:
            text = "".join(tail) + text
            tail.clear()
        if universal:
            lines = _UNIVERSAL_LINE.findall(text)
            rest = ""
            if lines and not final and not lines[-1].endswith("\n"):
                rest = lines.pop()  # unfinished, or ending with "\r" that may be half of "\r\n"
        else:
            lines = text.split("\n")
            rest = lines.pop()
        if rest:
            if final:
                lines.append(rest)
            else:
                tail.append(rest)
        lines_done += len(lines)
        if lines:
            yield lines
        if final:
            return


# --- CSV and TSV ----------------------------------------------------------------------


class _RecordText:
    """Keeps the recent batches of lines fed to csv.reader, to give a record's text (raw)."""

    def __init__(self) -> None:
        self._batches: collections.deque[tuple[int, list[str]]] = collections.deque()
        self._next_line = 1
        self.done = 0  # the last line of the last record read: lines up to it may go

    def feed(self, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        for lines in batches:
            while self._batches and self._batches[0][0] + len(self._batches[0][1]) <= self.done + 1:
                self._batches.popleft()
            self._batches.append((self._next_line, lines))
            self._next_line += len(lines)
            yield lines

    def text(self, first: int, last: int) -> str:
        """Lines first..last (1-based, inclusive), at most RAW_LIMIT characters."""
        start, lines = self._batches[-1]
        if first == last and first >= start:  # the usual case: one line, in the latest batch
            line = lines[first - start]
            return line[:RAW_LIMIT] if len(line) > RAW_LIMIT else line.rstrip("\r\n")
        pieces: list[str] = []
        size = 0
        for start, lines in self._batches:
            if start + len(lines) <= first:
                continue
            for line in lines[max(first - start, 0) : last - start + 1]:
                pieces.append(line)
                size += len(line)
                if size > RAW_LIMIT:
                    return "".join(pieces)[:RAW_LIMIT]
        return "".join(pieces).rstrip("\r\n")


def _read_delimited(source: _CountingReader, fmt: str) -> Iterator[SourceRow]:
    label = _LABELS[fmt]
    record_text = _RecordText()
    lines = itertools.chain.from_iterable(record_text.feed(_line_batches(source, universal=True)))
    reader = csv.reader(lines, csv.excel_tab if fmt == "tsv" else csv.excel)
    headers: list[str] | None = None
    width = 0
    position = 0
    last = 0  # the last line of the previous record
    try:
        for cells in reader:
            first, last = last + 1, reader.line_num
            record_text.done = last
            if not any(cells):
                continue  # a blank line, or only separators
            if last != first:  # quoted cells with line breaks
                cells = [_one_newline_style(cell) for cell in cells]
            if headers is None:
                headers = _check_header(cells, label)
                width = len(headers)
                if width == 1:
                    _check_separator(headers[0], fmt)
                continue
            position += 1
            count = len(cells)
            if count > width:
                while count > width and not cells[count - 1]:
                    count -= 1  # empty cells past the header are harmless
                if count > width:
                    yield SourceRow(
                        position,
                        None,
                        error=f"row {position} (line {first}): {count} cells but the header has "
                        f"{width} column{'s' if width != 1 else ''}",
                        raw=record_text.text(first, last),
                    )
                    continue
            if "" in cells:
                values = {header: cell for header, cell in zip(headers, cells, strict=False) if cell}
            else:
                values = dict(zip(headers, cells, strict=False))
            yield SourceRow(position, values, raw=record_text.text(first, last))
    except csv.Error as exc:
        where = f"row {position + 1} (line {last + 1})" if headers is not None else "header row"
        raise SourceError(f"{label} file: {where}: {_csv_problem(exc)}") from None
    if headers is None:
        raise SourceError(f"{label} file: the file is empty; its first line must be the header row.")


def _check_separator(header: str, fmt: str) -> None:
    """A one-column header holding another separator means the wrong format was chosen."""
    expected = "tabs" if fmt == "tsv" else "commas"
    advice = {
        "tabs": "choose the TSV format for this file.",
        "commas": "choose the CSV format for this file.",
        "semicolons": "save it as CSV with commas (in Excel: CSV UTF-8 (Comma delimited)).",
    }
    for separator, name in (("\t", "tabs"), (",", "commas"), (";", "semicolons")):
        if name != expected and separator in header:
            raise SourceError(
                f"{_LABELS[fmt]} file: the header row is separated by {name}, not {expected}; {advice[name]}"
            )


def _one_newline_style(cell: str) -> str:
    """Line breaks inside a quoted cell become "\\n" (the "\\r" of CRLF files is dropped)."""
    if "\r" in cell:
        return cell.replace("\r\n", "\n").replace("\r", "\n")
    return cell


def _csv_problem(exc: csv.Error) -> str:
    message = str(exc)
    if "field limit" in message:
        return (
            f"a cell is longer than {MAX_CELL_CHARS:,} characters, more than a DynamoDB item can hold; "
            "is a quotation mark left open?"
        )
    return message


def _check_header(cells: list[str], label: str, *, letters: bool = False) -> list[str]:
    """The column names; blank cells after the last name are dropped."""
    names = list(cells)
    while names and not names[-1].strip():
        names.pop()
    seen: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        column = f"column {number}" + (f" ({_column_letter(number)})" if letters else "")
        key = name.strip()
        if not key:
            raise SourceError(f"{label} file: {column} of the header row is blank; every column needs a name.")
        if key in seen:
            raise SourceError(
                f'{label} file: the header row names "{_short(key)}" twice (columns {seen[key]} and {number}).'
            )
        seen[key] = number
    return names


def _column_letter(number: int) -> str:
    letters = ""
    while number:
        number, remainder = divmod(number - 1, 26)
        letters = chr(65 + remainder) + letters
    return letters


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- JSON, JSON Lines and DynamoDB JSON lines -------------------------------------------


class _NotJsonError(ValueError):
    """A JSON extension Python would accept (NaN, Infinity) that JSON does not allow."""


def _reject_constant(name: str) -> Any:
    raise _NotJsonError(f"{name} is not valid JSON (write null or a string instead)")


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def _parse_json(text: str) -> tuple[Any, str | None]:
    """(value, None), or (None, a message saying why text is not acceptable JSON)."""
    try:
        return _DECODER.decode(text), None
    except json.JSONDecodeError as exc:
        if exc.lineno > 1:
            return None, f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except _NotJsonError as exc:
        return None, str(exc)
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        return None, "a number has too many digits"
    except RecursionError:
        return None, "the JSON is nested too deeply"


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return "a number"


def _json_text(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)[:RAW_LIMIT]
    except (ValueError, RecursionError):
        return "(too deeply nested to show)"


def _read_json_array(source: _CountingReader) -> Iterator[SourceRow]:
    data = source.read_all()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _utf8_error(exc, exc.start, data.count(b"\n", 0, exc.start) + 1) from None
    text = text.removeprefix("\ufeff")
    del data
    if not text.strip(_JSON_SPACE):
        raise SourceError("JSON file: the file is empty.")
    document, problem = _parse_json(text)
    del text
    if problem is not None:
        raise SourceError(f"JSON file: {problem}.")
    if not isinstance(document, list):
        hint = " (for one object per line, choose JSON Lines)" if isinstance(document, dict) else ""
        raise SourceError(f"JSON file: expected an array of objects at the top level, got {_kind(document)}{hint}.")
    for index, element in enumerate(document):
        if isinstance(element, dict):
            yield SourceRow(index + 1, element)
        else:
            yield SourceRow(
                index + 1,
                None,
                error=f"element {index + 1}: expected a JSON object, got {_kind(element)}",
                raw=_json_text(element),
            )


def _read_json_lines(source: _CountingReader, *, ddb: bool) -> Iterator[SourceRow]:
    number = 0
    seen_data = False
    for lines in _line_batches(source, universal=False):
        for line in lines:
            number += 1
            text = line.removesuffix("\r")
            if not text.strip(_JSON_SPACE):
                continue
            seen_data = True
            obj, problem = _parse_json(text)
            if problem is None and not isinstance(obj, dict):
                problem = f"expected a JSON object, got {_kind(obj)}"
            if problem is None and ddb:
                obj, problem = _ddb_item(obj)
            if problem is None:
                yield SourceRow(number, obj, raw=text[:RAW_LIMIT])
            else:
                yield SourceRow(number, None, error=f"line {number}: {problem}", raw=text[:RAW_LIMIT])
    if not seen_data:
        raise SourceError(f"{_LABELS['ddbjson' if ddb else 'jsonl']} file: the file is empty.")


def _ddb_item(obj: dict[str, Any]) -> tuple[Any, str | None]:
    """The item of a DynamoDB JSON line: {"Item": {...}} or a bare {"pk": {"S": "a"}, ...}.

    Only the outline is checked (attribute name -> {"<type>": value}); the values are
    checked by bulkwrites.dynamo.items.parse_dynamodb_json. {"Item": {...}} is the export
    wrapper unless only the bare reading makes sense (a lone attribute named "Item").
    """
    if len(obj) == 1 and isinstance(obj.get("Item"), dict):
        item = obj["Item"]
        if _untyped_attribute(item) is not None and _untyped_attribute(obj) is None:
            item = obj
    elif "Metadata" in obj and ("NewImage" in obj or "Keys" in obj):
        return (
            None,
            'this is a change record of an incremental export; only full exports ({"Item": ...}) load',
        )
    else:
        item = obj
    if not item:
        return None, "the item has no attributes"
    name = _untyped_attribute(item)
    if name is not None:
        return None, f'attribute "{_short(name)}" is not in DynamoDB JSON form (like {{"S": "text"}})'
    return item, None


# --- XLSX -----------------------------------------------------------------------------

_OLE_MESSAGE = (
    "This is an old-style Excel workbook (.xls) or a password-protected one. "
    "Save it as an Excel workbook (.xlsx) without a password, or as CSV UTF-8, and upload it again."
)
_NOT_A_WORKBOOK = "XLSX file: not a valid Excel workbook."


def _read_xlsx(stream: BinaryIO, max_bytes: int | None) -> Iterator[SourceRow]:
    unpacked_limit = max_bytes * XLSX_EXPANSION_FACTOR if max_bytes is not None else XLSX_MAX_UNPACKED
    with _seekable(stream, max_bytes) as fileobj:
        _check_archive(fileobj, unpacked_limit)
        import openpyxl  # only XLSX needs it, and it is slow to import
        import openpyxl.xml

        if not openpyxl.xml.DEFUSEDXML:  # e.g. OPENPYXL_DEFUSEDXML=False in the environment
            raise SourceError("XLSX files cannot be read safely on this server (defusedxml is off).")
        try:
            workbook = openpyxl.load_workbook(fileobj, read_only=True, data_only=True, keep_links=False)
        except Exception:  # noqa: BLE001 - openpyxl raises anything from KeyError to XML errors
            raise SourceError(_NOT_A_WORKBOOK) from None
        try:
            yield from _xlsx_rows(workbook)
        finally:
            with contextlib.suppress(Exception):
                workbook.close()


@contextlib.contextmanager
def _seekable(stream: BinaryIO, max_bytes: int | None) -> Iterator[BinaryIO]:
    """The stream itself when it is seekable and at its start; otherwise a temporary copy."""
    try:
        direct = bool(stream.seekable()) and stream.tell() == 0
    except (AttributeError, OSError, ValueError):
        direct = False
    if direct:
        stream.seek(0, 2)
        size = stream.tell()
        stream.seek(0)
        if max_bytes is not None and size > max_bytes:
            raise SourceError(f"The file is larger than the limit of {_size_text(max_bytes)}.")
        yield stream
        return
    source = _CountingReader(stream, max_bytes)
    with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as copy:
        while chunk := source.read(CHUNK_SIZE):
            copy.write(chunk)
        copy.seek(0)
        yield copy  # type: ignore[misc]


def _check_archive(fileobj: BinaryIO, unpacked_limit: int) -> None:
    """Refuse what is not a zip, and zips that would unpack to more than unpacked_limit."""
    magic = fileobj.read(len(_OLE_MAGIC))
    fileobj.seek(0)
    if magic.startswith(_OLE_MAGIC):
        raise SourceError(_OLE_MESSAGE)
    if not magic.startswith(_ZIP_MAGIC):
        raise SourceError(_NOT_A_WORKBOOK)
    try:
        with zipfile.ZipFile(fileobj) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except Exception:  # noqa: BLE001 - BadZipFile, OSError, EOFError, ValueError... when corrupt
        raise SourceError(_NOT_A_WORKBOOK) from None
    fileobj.seek(0)
    if unpacked > unpacked_limit:
        raise SourceError(
            f"XLSX file: the workbook would unpack to {_size_text(unpacked)}, more than the limit of "
            f"{_size_text(unpacked_limit)}; it is refused (it may be a zip bomb)."
        )


def _xlsx_rows(workbook: Any) -> Iterator[SourceRow]:
    """The rows of the first sheet.

    openpyxl pads each row with empty cells up to its last cell, and yields an empty row
    for every missing row number, so the work here is kept proportional to the cells in
    the file: rows past Excel's last row are refused, cells are converted only up to the
    header's width, and the raw text of a too-wide row stops at RAW_LIMIT.
    """
    if not workbook.worksheets:
        raise SourceError("XLSX file: the workbook has no worksheet.")
    sheet = workbook.worksheets[0]
    sheet.reset_dimensions()  # a wrong <dimension> would otherwise cut rows or columns off
    rows = sheet.iter_rows()
    headers: list[str] | None = None
    width = 0
    position = 0
    sheet_row = 0
    while True:
        try:
            cells = next(rows, None)
        except Exception:  # noqa: BLE001 - a corrupt sheet makes openpyxl raise almost anything
            raise SourceError(f"XLSX file: the workbook is damaged (sheet row {sheet_row + 1}).") from None
        if cells is None:
            break
        sheet_row += 1
        if sheet_row > EXCEL_MAX_ROWS:
            raise SourceError(f"XLSX file: the sheet has more than {EXCEL_MAX_ROWS:,} rows, Excel's limit.")
        count = len(cells)
        while count and _is_blank(cells[count - 1]):
            count -= 1  # trailing cells with a format but no value
        if not count:
            continue  # a blank row
        if headers is None:
            headers = _check_header([text or "" for text in _cell_texts(cells, count)], "XLSX", letters=True)
            width = len(headers)
            continue
        position += 1
        if count > width:
            yield SourceRow(
                position,
                None,
                error=f"row {position} (sheet row {sheet_row}): {count} cells but the header has "
                f"{width} column{'s' if width != 1 else ''}",
                raw=_xlsx_raw(cells, count),
            )
            continue
        texts = _cell_texts(cells, count)
        values = {header: text for header, text in zip(headers, texts, strict=False) if text is not None}
        yield SourceRow(position, values, raw="\t".join(text or "" for text in texts)[:RAW_LIMIT])
    if headers is None:
        raise SourceError("XLSX file: the first sheet is empty; its first row must be the header row.")


def _is_blank(cell: Any) -> bool:
    value = cell.value
    return value is None or value == ""


def _cell_texts(cells: tuple[Any, ...], count: int) -> list[str | None]:
    return [_cell_text(cells[index]) for index in range(count)]


def _xlsx_raw(cells: tuple[Any, ...], count: int) -> str:
    """The first cells of a row, tab-separated, up to RAW_LIMIT characters."""
    pieces: list[str] = []
    size = 0
    for index in range(count):
        text = _cell_text(cells[index]) or ""
        pieces.append(text)
        size += len(text) + 1
        if size > RAW_LIMIT:
            break
    return "\t".join(pieces)[:RAW_LIMIT]


def _cell_text(cell: Any) -> str | None:
    """The text of a cell as our model sees it (untyped cells are strings); None when empty."""
    value = cell.value
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)  # shortest round-trip form: "1.5", "1e+20"
    if isinstance(value, dt.datetime):
        if _is_date_only(cell) and value.time() == dt.time(0):
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _iso_duration(value)
    return str(value)


def _is_date_only(cell: Any) -> bool:
    """Whether the cell's number format shows a date without a time (Excel stores both alike)."""
    from openpyxl.styles.numbers import is_datetime

    try:
        return is_datetime(cell.number_format) == "date"
    except Exception:  # noqa: BLE001 - an unreadable style: keep the full timestamp
        return False


def _iso_duration(value: dt.timedelta) -> str:
    """ISO 8601 duration, e.g. "PT26H30M" or "-PT1.5S"."""
    sign = "-" if value < dt.timedelta(0) else ""
    micros = abs(value) // dt.timedelta(microseconds=1)
    seconds, micros = divmod(micros, 1_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = "PT"
    if hours:
        text += f"{hours}H"
    if minutes:
        text += f"{minutes}M"
    if seconds or micros or text == "PT":
        text += f"{seconds}.{micros:06d}".rstrip("0").rstrip(".") + "S"
    return sign + text
