"""CSV and TSV (TSV is CSV with tabs, quoting included, as Excel writes it).

Positions are data row numbers (blank rows skipped, not counted); a record whose quoted cells hold
line breaks spans several physical lines but is one row. Memory stays bounded whatever the file:
a line, a record (its lines together) and a cell each have a limit, checked as lines are handed to
``csv.reader`` - a 50 MB line of small cells is refused before any cell of it is built.
"""

from __future__ import annotations

import collections
import csv
from collections.abc import Iterator

from bulkwrites.sources.formats.common import LABELS, ByteSource, SourceError, check_header, line_batches
from bulkwrites.sources.formats.limits import Limits
from bulkwrites.sources.rows import RAW_LIMIT, SourceRow


class _RecordTooLong(Exception):
    def __init__(self, chars: int) -> None:
        self.chars = chars


class _RecordText:
    """Keeps the recent batches of lines fed to csv.reader, to give a record's text (raw)."""

    def __init__(self) -> None:
        self._batches: collections.deque[tuple[int, list[str]]] = collections.deque()
        self._next_line = 1
        self.done = 0  # the last line of the last record read: lines up to it may go
        self.record_chars = 0  # characters of the record being read so far

    def feed(self, batches: Iterator[list[str]], max_record_chars: int) -> Iterator[str]:
        """The lines, one by one, counting the characters of the record being read.

        ``csv.reader`` asks for lines only until its record is complete (no read-ahead), and the
        caller sets ``record_chars = 0`` after each record: a record past ``max_record_chars``
        raises :class:`_RecordTooLong` before ``csv`` holds it.
        """
        for lines in batches:
            while self._batches and self._batches[0][0] + len(self._batches[0][1]) <= self.done + 1:
                self._batches.popleft()
            self._batches.append((self._next_line, lines))
            self._next_line += len(lines)
            for line in lines:
                self.record_chars += len(line)
                if self.record_chars > max_record_chars:
                    raise _RecordTooLong(self.record_chars)
                yield line

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


def read_delimited(source: ByteSource, limits: Limits, *, fmt: str) -> Iterator[SourceRow]:
    label = LABELS[fmt]
    # Process-wide in the csv module; every read sets the configured limit (the same in production).
    csv.field_size_limit(limits.max_cell_chars)
    record_text = _RecordText()
    batches = line_batches(source, universal=True, max_line_chars=limits.max_row_bytes, label=label)
    reader = csv.reader(record_text.feed(batches, limits.max_row_bytes), csv.excel_tab if fmt == "tsv" else csv.excel)
    headers: list[str] | None = None
    width = 0
    position = 0
    last = 0  # the last line of the previous record
    try:
        for cells in reader:
            first, last = last + 1, reader.line_num
            record_text.done = last
            record_text.record_chars = 0
            if not any(cells):
                continue  # a blank line, or only separators
            if last != first:  # quoted cells with line breaks
                cells = [_one_newline_style(cell) for cell in cells]
            if headers is None:
                if len(cells) > limits.max_row_cells:
                    raise SourceError(
                        f"{label} file: the header row has {len(cells):,} cells, more than the limit of "
                        f"{limits.max_row_cells:,} ({Limits.setting('max_row_cells')})."
                    )
                headers = check_header(cells, label)
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
        raise SourceError(f"{label} file: {where}: {_csv_problem(exc, limits)}") from None
    except _RecordTooLong as exc:
        where = f"row {position + 1} (line {last + 1})" if headers is not None else "the header row"
        raise SourceError(
            f"{label} file: {where} is longer than {limits.max_row_bytes:,} characters ({exc.chars:,} read so far; "
            f"the limit is {Limits.setting('max_row_bytes')}); is a quotation mark left open?"
        ) from None
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
                f"{LABELS[fmt]} file: the header row is separated by {name}, not {expected}; {advice[name]}"
            )


def _one_newline_style(cell: str) -> str:
    """Line breaks inside a quoted cell become "\\n" (the "\\r" of CRLF files is dropped)."""
    if "\r" in cell:
        return cell.replace("\r\n", "\n").replace("\r", "\n")
    return cell


def _csv_problem(exc: csv.Error, limits: Limits) -> str:
    message = str(exc)
    if "field limit" in message:
        return (
            f"a cell is longer than {limits.max_cell_chars:,} characters ({Limits.setting('max_cell_chars')}), "
            "more than a DynamoDB item can hold; is a quotation mark left open?"
        )
    return message
