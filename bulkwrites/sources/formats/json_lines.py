"""JSON Lines: one object per line. Positions are physical line numbers (blank lines count, and are skipped)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from bulkwrites.sources.formats.common import ByteSource, SourceError, line_batches, line_too_long
from bulkwrites.sources.formats.jsonvalues import JSON_SPACE, kind, parse_json
from bulkwrites.sources.formats.limits import Limits
from bulkwrites.sources.rows import RAW_LIMIT, SourceRow

ItemOf = Callable[[dict[str, Any]], tuple[Any, str | None]]


def read(source: ByteSource, limits: Limits) -> Iterator[SourceRow]:
    return read_json_lines(source, limits, label="JSON Lines")


def _plain(obj: dict[str, Any]) -> tuple[Any, str | None]:
    return obj, None


def read_json_lines(source: ByteSource, limits: Limits, *, label: str, item_of: ItemOf = _plain) -> Iterator[SourceRow]:
    number = 0
    seen_data = False
    batches = line_batches(source, universal=False, max_line_chars=limits.max_row_bytes, label=label)
    for lines in batches:
        for line in lines:
            number += 1
            if len(line) > limits.max_row_bytes:
                raise line_too_long(label, number, limits.max_row_bytes, len(line))
            text = line.removesuffix("\r")
            if not text.strip(JSON_SPACE):
                continue
            seen_data = True
            obj, problem = parse_json(text)
            if problem is None and not isinstance(obj, dict):
                problem = f"expected a JSON object, got {kind(obj)}"
            if problem is None:
                obj, problem = item_of(obj)
            if problem is None:
                yield SourceRow(number, obj, raw=text[:RAW_LIMIT])
            else:
                yield SourceRow(number, None, error=f"line {number}: {problem}", raw=text[:RAW_LIMIT])
    if not seen_data:
        raise SourceError(f"{label} file: the file is empty.")
