"""What every file reader shares: the file error, byte counting, UTF-8 lines, headers, sizes in words."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from typing import IO, Any, Protocol

from bulkwrites.dynamo.text import shorten
from bulkwrites.sources.formats.limits import Limits

CHUNK_SIZE = 64 * 1024
# A line with its break, or the unfinished last one (matching it keeps findall linear).
_UNIVERSAL_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
LABELS = {"csv": "CSV", "tsv": "TSV", "json": "JSON", "jsonl": "JSON Lines", "ddbjson": "DynamoDB JSON", "xlsx": "XLSX"}


class SourceError(Exception):
    """The whole file cannot be read; the message is shown to the operator."""


class ByteSource(Protocol):
    """What the text readers read from: ``read(size)`` returns at most ``size`` bytes, ``b""`` only at the end."""

    def read(self, size: int, /) -> bytes: ...


def line_too_long(label: str, line: int, limit: int, seen: int) -> SourceError:
    return SourceError(
        f"{label} file: line {line:,} is longer than {limit:,} characters ({seen:,} read so far; the limit is "
        f"{Limits.setting('max_row_bytes')}); a DynamoDB item holds at most 400 KB."
    )


class CountingReader:
    """Reads a binary stream, counting bytes and enforcing max_bytes."""

    def __init__(self, stream: IO[bytes] | Any, max_bytes: int | None) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self.count = 0

    def read(self, size: int) -> bytes:
        data = self._stream.read(size) or b""
        self.count += len(data)
        if self._max_bytes is not None and self.count > self._max_bytes:
            raise SourceError(f"The file is larger than the limit of {size_text(self._max_bytes)}.")
        return data

    def read_all(self) -> bytes:
        chunks = []
        while chunk := self.read(CHUNK_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)


def size_text(size: int) -> str:
    mib, mb = 1024 * 1024, 1000 * 1000
    if size >= mib and size % mib == 0:
        return f"{size // mib:,} MB"
    if size >= mb and size % mb == 0:
        return f"{size // mb:,} MB"
    if size >= mb:
        return f"{size / mib:,.1f} MB"
    return f"{size:,} bytes"


def utf8_error(exc: UnicodeDecodeError, offset: int, line: int) -> SourceError:
    bad = exc.object[exc.start : exc.start + 1]
    what = f"byte 0x{bad[0]:02x}" if bad else "an incomplete character"
    return SourceError(
        f"The file is not valid UTF-8 ({what} at offset {offset}, line {line}). "
        "If it was saved in another encoding, choose it in the Encoding field (`--encoding` in the CLI; Excel on "
        "Windows often saves Windows-1252); or save it as UTF-8 and upload it again."
    )


def count_breaks(text: str, universal: bool) -> int:
    if universal:
        return text.count("\n") + text.count("\r") - text.count("\r\n")
    return text.count("\n")


def line_batches(
    source: ByteSource, *, universal: bool, max_line_chars: int | None = None, label: str = ""
) -> Iterator[list[str]]:
    """Decode UTF-8 (dropping a leading BOM) and yield the complete lines of each chunk read.

    ``universal``: lines end at ``\\r\\n``, ``\\r`` or ``\\n`` and keep their line break (what
    csv expects of a file opened with ``newline=""``). Otherwise lines end at ``\\n`` only and
    come without it. Lines come in lists, one per chunk, so that the per-line work is done in C.
    Bad UTF-8 raises SourceError naming the byte offset and the line. A line still unfinished
    after ``max_line_chars`` characters raises SourceError at once: it is never held whole.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed = 0  # bytes given to the decoder before this chunk
    lines_done = 0
    tail: list[str] = []  # the start of a line not yet ended
    tail_chars = 0
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
            raise utf8_error(exc, offset, lines_done + count_breaks(before, universal) + 1) from None
        consumed += len(chunk)
        if at_start and text:
            at_start = False
            text = text.removeprefix("\ufeff")
        if not final and "\n" not in text and not (universal and "\r" in text):
            if text:
                tail.append(text)  # joined once the line ends: no quadratic copying of long lines
                tail_chars += len(text)
                if max_line_chars is not None and tail_chars > max_line_chars:
                    raise line_too_long(label, lines_done + 1, max_line_chars, tail_chars)
            continue
        if tail:
            text = "".join(tail) + text
            tail.clear()
            tail_chars = 0
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
                tail_chars = len(rest)
        lines_done += len(lines)
        if lines:
            yield lines
        if final:
            return


def check_header(cells: list[str], label: str, *, letters: bool = False) -> list[str]:
    """The column names; blank cells after the last name are dropped."""
    names = list(cells)
    while names and not names[-1].strip():
        names.pop()
    seen: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        column = f"column {number}" + (f" ({column_letter(number)})" if letters else "")
        key = name.strip()
        if not key:
            raise SourceError(f"{label} file: {column} of the header row is blank; every column needs a name.")
        if key in seen:
            raise SourceError(
                f'{label} file: the header row names "{shorten(key, 60)}" twice (columns {seen[key]} and {number}).'
            )
        seen[key] = number
    return names


def column_letter(number: int) -> str:
    letters = ""
    while number:
        number, remainder = divmod(number - 1, 26)
        letters = chr(65 + remainder) + letters
    return letters
