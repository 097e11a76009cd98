"""JSON: one array of objects, streamed with ijson (its yajl C backend): never the whole document.

Positions are element numbers (index + 1). This module feeds ijson's event parser 64 KB chunks
and builds each element from the events (:class:`_Builder`); an element still unfinished after
``max_row_bytes`` bytes is refused then, so no element (nor the file) is ever held whole. UTF-8
is checked by an incremental decoder beside the parser, for exact error offsets. Numbers come as
``int`` or ``Decimal`` (never ``float``); NaN and Infinity are refused, as JSON does.

Why events and not ``ijson.items``: ``items`` keeps a prefix string per nesting level, so memory
grows with the square of the depth - 30,000 ``[`` (30 KB) took 2 GB. Built here, an element
deeper than :data:`MAX_DEPTH` is skipped as it streams by and becomes a row error; measured, this
builder is as fast as ``items`` on a 48 MB array of small objects.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import Any

import ijson

from bulkwrites.sources.formats.common import CHUNK_SIZE, ByteSource, SourceError, utf8_error
from bulkwrites.sources.formats.jsonvalues import JSON_SPACE, json_text, kind
from bulkwrites.sources.formats.limits import Limits
from bulkwrites.sources.rows import SourceRow

# Deeper elements are row errors: DynamoDB nests at most 32 levels, and deeper values would make
# the converters recurse further than Python allows.
MAX_DEPTH = 100
_TOP_LEVEL = {
    b"{": "an object",
    b'"': "a string",
    b"t": "true",
    b"f": "false",
    b"n": "null",
    **{bytes([c]): "a number" for c in b"-0123456789"},
}


def read(source: ByteSource, limits: Limits) -> Iterator[SourceRow]:
    """A JSON array of objects (anything else at the top level is refused)."""
    return _read(source, limits, _Builder(), label="JSON", top_level=_check_top_level)


def read_document(source: ByteSource, limits: Limits, *, label: str) -> Iterator[SourceRow]:
    """Elements of one JSON document: an array, the array ``Items`` of an object, or else the object itself.

    How DynamoDB JSON arrives pretty-printed: ``aws dynamodb scan`` prints ``{"Items": [...], "Count":
    ...}``, the documentation shows arrays of items and single items. Other members of an ``Items``
    object (``Count``, ``ScannedCount``...) are read and ignored; an object without an ``Items``
    array is one element. Streamed like an array: no element is held past ``max_row_bytes``.
    """
    return _read(source, limits, _DocumentBuilder(), label=label, top_level=_check_document_top_level(label))


def _read(
    source: ByteSource, limits: Limits, builder: _Builder | _DocumentBuilder, *, label: str, top_level: Any
) -> Iterator[SourceRow]:
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events, use_float=False)
    utf8 = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file before the chunk being read
    newlines = 0
    position = 0
    since_element = 0  # bytes fed since an element was last completed
    started = False
    while True:
        chunk = source.read(CHUNK_SIZE)
        final = not chunk
        if not started:
            if offset == 0 and chunk.startswith(codecs.BOM_UTF8):
                chunk, offset = chunk[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            body = chunk.lstrip(JSON_SPACE.encode())
            if not body and not final:
                offset += len(chunk)
                continue
            if not body:
                raise SourceError(f"{label} file: the file is empty.")
            top_level(body[:1])
            started = True
        try:
            utf8.decode(chunk, final)
        except UnicodeDecodeError as exc:
            line = newlines + chunk.count(b"\n", 0, exc.start) + 1
            raise utf8_error(exc, offset + exc.start, line) from None
        try:
            if final:
                parser.close()
            else:
                parser.send(chunk)
        except ijson.JSONError as exc:
            raise _invalid_json(exc, chunk, offset, newlines, label) from None
        elements = builder.feed(events)
        del events[:]
        if elements:
            since_element = 0
        else:
            since_element += len(chunk)
            if since_element > limits.max_row_bytes:
                raise SourceError(
                    f"{label} file: element {position + 1:,} is larger than {limits.max_row_bytes:,} bytes "
                    f"({since_element:,} read so far; the limit is {Limits.setting('max_row_bytes')})."
                )
        for element in elements:
            position += 1
            yield _row(position, element)
        if final:
            return
        offset += len(chunk)
        newlines += chunk.count(b"\n")


class _TooDeep:
    """Stands for an element nested deeper than MAX_DEPTH (skipped, never built)."""


TOO_DEEP = _TooDeep()


class _Builder:
    """Elements of the top-level array, built from ijson's basic events (depth 1 is the array).

    With ``base=0`` the whole document is the one element (built like any element). With
    ``stop_when_closed``, :meth:`feed` stops at the event that closes the array and sets
    ``closed_after`` to the number of events it used (for an array inside a document).
    """

    def __init__(self, base: int = 1, *, stop_when_closed: bool = False) -> None:
        self.base = base
        self.stop_when_closed = stop_when_closed
        self.closed_after: int | None = None
        self.depth = 0
        self.stack: list[Any] = []  # containers being built
        self.keys: list[Any] = []  # the pending key of each container on the stack (maps)
        self.skip_from = 0  # depth where skipping a too-deep element started (0: not skipping)

    def feed(self, events: list[tuple[str, Any]]) -> list[Any]:
        done: list[Any] = []
        stack, keys = self.stack, self.keys
        depth, base = self.depth, self.base
        for index, (event, value) in enumerate(events):
            if self.skip_from:
                if event in ("start_map", "start_array"):
                    depth += 1
                elif event in ("end_map", "end_array"):
                    depth -= 1
                    if depth < self.skip_from:
                        self.skip_from = 0
                        stack.clear()  # the partial element is dropped
                        keys.clear()
                        done.append(TOO_DEEP)
                continue
            if event == "map_key":
                keys[-1] = value
                continue
            if event == "start_map" or event == "start_array":
                depth += 1
                if depth <= base:
                    continue  # the top-level array itself
                if depth > MAX_DEPTH + base:
                    self.skip_from = base + 1  # skip until the element closes
                    continue
                stack.append({} if event == "start_map" else [])
                keys.append(None)
                continue
            if event == "end_map" or event == "end_array":
                depth -= 1
                if depth < base:
                    if self.stop_when_closed:
                        self.closed_after = index + 1
                        break
                    continue
                value = stack.pop()
                keys.pop()
            if depth == base:
                done.append(value)
            else:
                parent = stack[-1]
                if type(parent) is dict:
                    parent[keys[-1]] = value
                else:
                    parent.append(value)
        self.depth = depth
        return done


class _DocumentBuilder:
    """Elements of a document: a top-level array's, an ``Items`` array's, or the top-level object itself."""

    def __init__(self) -> None:
        self.mode = ""  # "array" or "object", from the first event
        self.items = _Builder()  # elements of the array (top level, or the value of "Items")
        self.whole = _Builder(base=0)  # the top-level object, with "Items" left out
        self.depth = 0  # of the top-level object, outside "Items"
        self.in_items = False  # events go to the "Items" array's builder
        self.items_key = False  # the last key at depth 1 was "Items"
        self.streamed_items = False

    def feed(self, events: list[tuple[str, Any]]) -> list[Any]:
        if not events:
            return []
        if not self.mode:
            self.mode = "array" if events[0][0] == "start_array" else "object"
        if self.mode == "array":
            return self.items.feed(events)
        done: list[Any] = []
        outer: list[tuple[str, Any]] = []
        at = 0
        while at < len(events):
            if self.in_items:  # the bulk of a scan's output: handed to the array builder whole
                rest = events[at:] if at else events
                done.extend(self.items.feed(rest))
                if self.items.closed_after is None:
                    break
                at += self.items.closed_after
                self.in_items = False
                outer.append(("null", None))  # the object keeps the key, without its elements
                continue
            event, value = events[at]
            at += 1
            if event == "start_array" and self.items_key and self.depth == 1:
                self.items_key = False
                self.in_items = True
                self.streamed_items = True
                self.items = _Builder(stop_when_closed=True)
                self.items.feed([(event, value)])
                continue
            self.items_key = event == "map_key" and value == "Items" and self.depth == 1
            if event in ("start_map", "start_array"):
                self.depth += 1
            elif event in ("end_map", "end_array"):
                self.depth -= 1
            outer.append((event, value))
        if outer:
            whole = self.whole.feed(outer)
            if whole and not self.streamed_items:
                done.extend(whole)  # an object without "Items": the one element
        return done


def _check_top_level(first: bytes) -> None:
    if first == b"[":
        return
    what = _TOP_LEVEL.get(first)
    if what is None:
        raise SourceError(f"JSON file: invalid JSON: the file starts with {first!r}, not [.")
    hint = (
        " (for one object per line choose JSON Lines; for DynamoDB JSON - a scan's output, an item - "
        "choose DynamoDB JSON)"
        if first == b"{"
        else ""
    )
    raise SourceError(f"JSON file: expected an array of objects at the top level, got {what}{hint}.")


def _check_document_top_level(label: str) -> Any:
    def check(first: bytes) -> None:
        if first in (b"[", b"{"):
            return
        what = _TOP_LEVEL.get(first)
        if what is None:
            raise SourceError(f"{label} file: invalid JSON: the file starts with {first!r}, not [ or {{.")
        raise SourceError(f"{label} file: expected an array of items or an object at the top level, got {what}.")

    return check


def _row(position: int, element: Any) -> SourceRow:
    if element is TOO_DEEP:
        return SourceRow(
            position,
            None,
            error=f"element {position}: nested more than {MAX_DEPTH} levels deep (DynamoDB allows 32)",
            raw="(too deeply nested to show)",
        )
    if not isinstance(element, dict):
        return SourceRow(
            position,
            None,
            error=f"element {position}: expected a JSON object, got {kind(element)}",
            raw=json_text(element),
        )
    return SourceRow(position, element)


def _invalid_json(exc: Exception, chunk: bytes, offset: int, newlines: int, label: str) -> SourceError:
    """Where yajl stopped, from the excerpt it quotes (newlines shown as spaces, a caret under the spot)."""
    problem = _first_line(exc)
    if "premature EOF" in problem:
        return SourceError(f"{label} file: the file ends in the middle of the JSON (is the array closed?).")
    at = _error_offset(str(exc), chunk)
    if at is None:
        return SourceError(f"{label} file: invalid JSON after byte {offset:,}: {problem}.")
    line_start = chunk.rfind(b"\n", 0, at) + 1
    line = newlines + chunk.count(b"\n", 0, at) + 1
    return SourceError(f"{label} file: invalid JSON (line {line}, column {at - line_start + 1}): {problem}.")


def _error_offset(message: str, chunk: bytes) -> int | None:
    lines = message.split("\n")
    if len(lines) < 3 or "^" not in lines[2]:
        return None
    before = lines[1][: lines[2].index("^")].lstrip(" ").encode("utf-8", "replace")
    if not before.strip():
        return None
    flat = chunk.replace(b"\n", b" ").replace(b"\r", b" ").replace(b"\t", b" ")
    found = flat.find(before)
    return None if found < 0 else found + len(before) - 1


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__
