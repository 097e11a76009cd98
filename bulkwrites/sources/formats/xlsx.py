"""XLSX: the first sheet of a workbook, read in bounded memory whatever the zip holds.

An XLSX is a zip of XML parts; a few hundred KB can unpack to gigabytes. What keeps it bounded:

* every part's unpacked size is checked against ``max_xlsx_part_bytes`` before anything is
  unpacked (zipfile never unpacks past the size a part declares, so the declared size is a bound);
* the shared strings (openpyxl would load them all into a list) are parsed here with expat as a
  stream and kept in a temporary file, memory holding one offset per string; a string longer than
  ``max_cell_chars`` is refused while it is being read;
* the sheet is read by openpyxl's read-only parser through :class:`_XmlGuard`, which looks at each
  chunk before the parser does: a text or a tag longer than a cell may be, a row with more than
  ``max_row_cells`` cells or more XML than a row may have is refused before the parser builds it;
* the shared strings a row refers to are counted as openpyxl resolves them: a row past
  ``max_row_bytes`` characters is refused before it is complete;
* openpyxl parses the workbook's other parts with defusedxml (no entity expansion); the shared
  strings parser here refuses any DTD.

Positions are data row numbers (blank rows skipped); error messages also give the sheet row.
Cells become text: 42, 1.5, true/false, ISO 8601 dates and durations.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import re
import tempfile
import zipfile
from array import array
from collections.abc import Iterator
from typing import IO, Any
from xml.parsers import expat

# openpyxl parses workbook XML with defusedxml when it can import it (openpyxl.xml.DEFUSEDXML);
# importing it here makes the dependency explicit and fails early if it is missing.
import defusedxml  # noqa: F401

from bulkwrites.sources.formats.common import CHUNK_SIZE, CountingReader, SourceError, check_header, size_text
from bulkwrites.sources.formats.detection import OLE_MAGIC, OLE_MESSAGE, ZIP_MAGIC
from bulkwrites.sources.formats.limits import Limits
from bulkwrites.sources.rows import RAW_LIMIT, SourceRow

XLSX_EXPANSION_FACTOR = 10  # a whole XLSX may unpack to at most this many times max_bytes
XLSX_MAX_UNPACKED = 1 << 30  # ...or to 1 GiB when there is no max_bytes
EXCEL_MAX_ROWS = 1_048_576
# In the XML, a character of a cell takes at most 6 bytes ("&quot;"), and a cell's markup is short.
XML_BYTES_PER_CHAR = 6
ROW_XML_FACTOR = 16  # a row's XML may be this many times max_row_bytes (markup of many small cells)
NOT_A_WORKBOOK = "XLSX file: not a valid Excel workbook."


def read(stream: IO[bytes], limits: Limits, *, max_bytes: int | None) -> Iterator[SourceRow]:
    unpacked_limit = max_bytes * XLSX_EXPANSION_FACTOR if max_bytes is not None else XLSX_MAX_UNPACKED
    with _seekable(stream, max_bytes) as fileobj:
        _check_archive(fileobj, unpacked_limit, limits)
        import openpyxl.xml  # only XLSX needs openpyxl, and it is slow to import

        if not openpyxl.xml.DEFUSEDXML:  # e.g. OPENPYXL_DEFUSEDXML=False in the environment
            raise SourceError("XLSX files cannot be read safely on this server (defusedxml is off).")
        reader = _open_workbook(fileobj, limits)
        try:
            yield from _xlsx_rows(reader.wb, reader.shared_strings, limits)
        finally:
            with contextlib.suppress(Exception):
                reader.wb.close()
            with contextlib.suppress(Exception):
                reader.shared_strings.close()


def _open_workbook(fileobj: IO[bytes], limits: Limits) -> Any:
    from openpyxl.reader.excel import ExcelReader
    from openpyxl.worksheet._read_only import ReadOnlyWorksheet
    from openpyxl.xml.constants import SHARED_STRINGS

    class GuardedSheet(ReadOnlyWorksheet):
        """openpyxl's read-only sheet, reading its XML through the guard and skipping <dimension>."""

        def _get_size(self) -> None:
            pass  # would parse the whole sheet when <dimension> is missing; rows are counted as read

        def _get_source(self) -> _XmlGuard:
            archive = self.parent._archive  # type: ignore[attr-defined]
            return _XmlGuard(archive.open(self._worksheet_path), limits)  # type: ignore[attr-defined]

    class Reader(ExcelReader):
        def read_strings(self) -> None:
            part = self.package.find(SHARED_STRINGS)  # type: ignore[no-untyped-call]
            strings = SharedStrings(self.archive, part.PartName[1:] if part else None, limits)
            self.shared_strings = strings  # type: ignore[assignment]

        def read_worksheets(self) -> None:
            for sheet, rel in self.parser.find_sheets():
                if rel.target in self.valid_files and "chartsheet" not in rel.Type:
                    worksheet = GuardedSheet(self.wb, sheet.name, rel.target, self.shared_strings)
                    self.wb._sheets.append(worksheet)  # type: ignore[attr-defined]
                    return  # only the first sheet is read

    try:
        reader = Reader(fileobj, read_only=True, data_only=True, keep_links=False)
        reader.read()
    except SourceError:
        raise
    except Exception:  # noqa: BLE001 - openpyxl raises anything from KeyError to XML errors
        raise SourceError(NOT_A_WORKBOOK) from None
    return reader


# --- the archive -------------------------------------------------------------------------------


@contextlib.contextmanager
def _seekable(stream: IO[bytes], max_bytes: int | None) -> Iterator[IO[bytes]]:
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
            raise SourceError(f"The file is larger than the limit of {size_text(max_bytes)}.")
        yield stream
        return
    source = CountingReader(stream, max_bytes)
    with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as copy:
        while chunk := source.read(CHUNK_SIZE):
            copy.write(chunk)
        copy.seek(0)
        yield copy


def _check_archive(fileobj: IO[bytes], unpacked_limit: int, limits: Limits) -> None:
    """Refuse what is not a zip, a part that unpacks past its limit, and zips that unpack past unpacked_limit."""
    magic = fileobj.read(len(OLE_MAGIC))
    fileobj.seek(0)
    if magic.startswith(OLE_MAGIC):
        raise SourceError(OLE_MESSAGE)
    if not magic.startswith(ZIP_MAGIC):
        raise SourceError(NOT_A_WORKBOOK)
    try:
        with zipfile.ZipFile(fileobj) as archive:
            parts = [(info.filename, info.file_size) for info in archive.infolist()]
    except Exception:  # noqa: BLE001 - BadZipFile, OSError, EOFError, ValueError... when corrupt
        raise SourceError(NOT_A_WORKBOOK) from None
    fileobj.seek(0)
    for name, size in parts:
        if size > limits.max_xlsx_part_bytes:
            raise SourceError(
                f"XLSX file: the part {name[:100]!r} would unpack to {size_text(size)}, more than the limit of "
                f"{size_text(limits.max_xlsx_part_bytes)} per part ({Limits.setting('max_xlsx_part_bytes')}); "
                "it is refused (it may be a zip bomb)."
            )
    unpacked = sum(size for _, size in parts)
    if unpacked > unpacked_limit:
        raise SourceError(
            f"XLSX file: the workbook would unpack to {size_text(unpacked)}, more than the limit of "
            f"{size_text(unpacked_limit)}; it is refused (it may be a zip bomb)."
        )


# --- shared strings ------------------------------------------------------------------------------


def _cell_too_long(limits: Limits, seen: int, where: str) -> SourceError:
    return SourceError(
        f"XLSX file: a cell {where} is longer than {limits.max_cell_chars:,} characters ({seen:,} read so far; "
        f"the limit is {Limits.setting('max_cell_chars')}), more than a DynamoDB item can hold."
    )


class SharedStrings:
    """The workbook's shared strings, parsed as a stream and kept in a temporary file.

    openpyxl indexes it like a list (``strings[int(v)]``); each lookup is charged to the row being
    built (``row_chars``, reset by the reader after each row), so a row that refers to more text
    than a row may hold is refused before openpyxl finishes building it.
    """

    def __init__(self, archive: zipfile.ZipFile | None, path: str | None, limits: Limits) -> None:
        self._limits = limits
        self._file = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 - closed by close()
        self._offsets = array("Q", [0])
        self.row_chars = 0
        self._lookup = functools.lru_cache(maxsize=4096)(self._read)
        if archive is not None and path is not None and path in archive.namelist():
            with archive.open(path) as source:
                self._parse(source)

    def _parse(self, source: IO[bytes]) -> None:
        limits = self._limits
        parser = expat.ParserCreate()
        parser.buffer_text = True
        parser.buffer_size = CHUNK_SIZE
        pieces: list[str] = []
        state = {"in_t": False, "phonetic": 0, "chars": 0}

        def start(name: str, attrs: Any) -> None:
            tag = name.rpartition(":")[2]
            if tag == "si":
                pieces.clear()
                state["chars"] = 0
            elif tag == "rPh":
                state["phonetic"] += 1
            elif tag == "t" and not state["phonetic"]:
                state["in_t"] = True

        def end(name: str) -> None:
            tag = name.rpartition(":")[2]
            if tag == "t":
                state["in_t"] = False
            elif tag == "rPh":
                state["phonetic"] -= 1
            elif tag == "si":
                self._file.write("".join(pieces).replace("x005F_", "").encode("utf-8", "surrogatepass"))
                self._offsets.append(self._file.tell())
                pieces.clear()

        def text(data: str) -> None:
            if state["in_t"]:
                pieces.append(data)
                state["chars"] += len(data)
                if state["chars"] > limits.max_cell_chars:
                    raise _cell_too_long(limits, state["chars"], f"of the shared strings (string {len(self):,})")

        def no_dtd(*args: Any) -> None:
            raise SourceError("XLSX file: the shared strings declare a DTD; it is refused.")

        parser.StartElementHandler = start
        parser.EndElementHandler = end
        parser.CharacterDataHandler = text
        parser.StartDoctypeDeclHandler = no_dtd
        try:
            while chunk := source.read(CHUNK_SIZE):
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
        except expat.ExpatError as exc:
            raise SourceError(f"XLSX file: the shared strings are not valid XML ({exc}).") from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            raise SourceError(NOT_A_WORKBOOK) from None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        text = self._lookup(index)
        self.row_chars += len(text)
        if self.row_chars > self._limits.max_row_bytes:
            raise SourceError(
                f"XLSX file: a row's cells hold more than {self._limits.max_row_bytes:,} characters "
                f"({self.row_chars:,} so far; the limit is {Limits.setting('max_row_bytes')})."
            )
        return text

    def _read(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = self._offsets[index], self._offsets[index + 1]
        self._file.seek(start)
        return self._file.read(end - start).decode("utf-8", "surrogatepass")

    def close(self) -> None:
        self._file.close()


# --- the sheet's XML -----------------------------------------------------------------------------

_ROW_START = re.compile(rb"<(?:[\w.-]{1,32}:)?row[\s/>]")
_CELL_START = re.compile(rb"<(?:[\w.-]{1,32}:)?c[\s/>]")


class _XmlGuard:
    """A sheet part as a stream, each chunk looked at before the XML parser gets it.

    Chunks are scanned up to their last ``>``, so no tag is ever split between two scans; what
    follows waits for the next chunk (and may not grow past a cell's size). Refused: a run of
    bytes without ``<`` (a text, or a tag with its attributes) longer than a cell may be in XML,
    a row with more than ``max_row_cells`` cells, a row whose XML is larger than
    ``ROW_XML_FACTOR`` times ``max_row_bytes``.
    """

    def __init__(self, raw: IO[bytes], limits: Limits) -> None:
        self._raw = raw
        self._limits = limits
        self._max_run = limits.max_cell_chars * XML_BYTES_PER_CHAR
        self._max_row_xml = limits.max_row_bytes * ROW_XML_FACTOR
        self._pending = b""
        self._rows = 0
        self._cells = 0  # cells of the row being read
        self._row_xml = 0  # bytes of the row being read

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size if size and size > 0 else CHUNK_SIZE)
        self._scan(data)
        return data

    def _scan(self, data: bytes) -> None:
        buffer = self._pending + data
        cut = buffer.rfind(b">") + 1 if data else len(buffer)
        scanned, self._pending = buffer[:cut], buffer[cut:]
        starts = [m.start() for m in _ROW_START.finditer(scanned)]
        bounds = [0, *starts, len(scanned)]
        for number, (begin, end) in enumerate(itertools.pairwise(bounds)):
            if number > 0:  # a new row starts at `begin`
                self._rows += 1
                self._cells = 0
                self._row_xml = 0
            self._cells += len(_CELL_START.findall(scanned, begin, end))
            self._row_xml += end - begin
            if self._cells > self._limits.max_row_cells:
                raise SourceError(
                    f"XLSX file: sheet row {self._rows:,} has more than {self._limits.max_row_cells:,} cells "
                    f"(the limit is {Limits.setting('max_row_cells')})."
                )
            if self._row_xml > self._max_row_xml:
                raise SourceError(
                    f"XLSX file: sheet row {self._rows:,} is larger than {size_text(self._max_row_xml)} of XML "
                    f"({ROW_XML_FACTOR} times {Limits.setting('max_row_bytes')})."
                )
        longest = max(len(self._pending), max(map(len, scanned.split(b"<")), default=0))
        if longest > self._max_run:
            raise SourceError(
                f"XLSX file: a cell in sheet row {max(self._rows, 1):,} is longer than {self._limits.max_cell_chars:,} "
                f"characters (its XML is over {longest:,} bytes; the limit is {Limits.setting('max_cell_chars')}), "
                "more than a DynamoDB item can hold."
            )

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _XmlGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- rows ------------------------------------------------------------------------------------------


def _xlsx_rows(workbook: Any, strings: SharedStrings, limits: Limits) -> Iterator[SourceRow]:
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
        strings.row_chars = 0  # the shared strings of this row are charged as openpyxl builds it
        try:
            cells = next(rows, None)
        except SourceError:
            raise
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
            headers = check_header([text or "" for text in _cell_texts(cells, count)], "XLSX", letters=True)
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
        row_chars = sum(len(text) for text in texts if text)
        if row_chars > limits.max_row_bytes:  # inline strings (shared ones are charged as resolved)
            raise SourceError(
                f"XLSX file: a row's cells hold more than {limits.max_row_bytes:,} characters ({row_chars:,} in "
                f"sheet row {sheet_row:,}; the limit is {Limits.setting('max_row_bytes')})."
            )
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
        return bool(is_datetime(cell.number_format) == "date")
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
