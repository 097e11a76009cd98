"""DynamoDB JSON, as it really arrives: export lines, a scan's output, arrays of items, one item.

* **lines** (the export-to-S3 format): ``{"Item": {"pk": {"S": "a"}}}`` or a bare item per line, read
  like JSON Lines (:mod:`bulkwrites.sources.formats.json_lines`; positions are physical lines);
* **one document**, pretty-printed or not: ``{"Items": [...], "Count": ...}`` (``aws dynamodb
  scan``), ``[{...}, ...]`` (items, with or without the ``{"Item": ...}`` wrapper) or a single item
  across many lines; streamed element by element like a JSON array
  (:func:`bulkwrites.sources.formats.json_array.read_document`; positions are element numbers).

Which of the two is decided from the first line: a complete JSON object on it means lines (unless it
is a whole ``{"Items": [...]}`` document on one line); ``[``, or a first line that is the beginning
of a longer document (``{`` alone, ``{"Items": [``, ``"pk": {"S": "a"},`` ...), means a document. A
first line that is broken JSON stays a line (one invalid row, the others read).

Only each item's outline is checked here; :func:`bulkwrites.dynamo.items.parse_dynamodb_json` checks
the values.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import Any

from bulkwrites.dynamo.text import shorten
from bulkwrites.sources.formats import json_array
from bulkwrites.sources.formats.common import CHUNK_SIZE, ByteSource
from bulkwrites.sources.formats.json_lines import read_json_lines
from bulkwrites.sources.formats.jsonvalues import DECODER, JSON_SPACE, json_text
from bulkwrites.sources.formats.limits import Limits
from bulkwrites.sources.rows import RAW_LIMIT, SourceRow

DDB_TYPES = frozenset({"S", "N", "B", "BOOL", "NULL", "SS", "NS", "BS", "L", "M"})
LABEL = "DynamoDB JSON"


def read(source: ByteSource, limits: Limits) -> Iterator[SourceRow]:
    head, replay = _first_line(source, limits)
    if _is_document(head, limits):
        return _document_items(json_array.read_document(replay, limits, label=LABEL))
    return read_json_lines(replay, limits, label=LABEL, item_of=ddb_item)


class _Replay:
    """The bytes already read, then the rest of the source."""

    def __init__(self, head: bytes, source: ByteSource) -> None:
        self._head = head
        self._source = source

    def read(self, size: int, /) -> bytes:
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._source.read(size)


def _first_line(source: ByteSource, limits: Limits) -> tuple[bytes, _Replay]:
    """The bytes up to the end of the first line with content (or max_row_bytes, or the end)."""
    chunks: list[bytes] = []
    size = 0
    started = False
    while size <= limits.max_row_bytes:
        chunk = source.read(CHUNK_SIZE)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if not started:  # everything before this chunk was blank: joining it is cheap
            body = b"".join(chunks).removeprefix(codecs.BOM_UTF8).lstrip(JSON_SPACE.encode())
            started = bool(body)
            if b"\n" in body:
                break
        elif b"\n" in chunk:
            break
    head = b"".join(chunks)
    return head, _Replay(head, source)


def _is_document(head: bytes, limits: Limits) -> bool:
    body = head.removeprefix(codecs.BOM_UTF8).lstrip(JSON_SPACE.encode())
    if body.startswith(b"["):
        return True
    if not body.startswith(b"{"):
        return False
    line, newline, _ = body.partition(b"\n")
    if not newline and len(body) > limits.max_row_bytes:
        return True  # one line longer than a row: only a document can be read
    try:
        text = line.decode("utf-8").rstrip(JSON_SPACE)
    except UnicodeDecodeError:
        return False  # the lines reader reports where
    try:
        obj = DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return exc.pos >= len(text)  # the start of a longer document, not a broken line
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("Items"), list) and "Item" not in obj


def _document_items(rows: Iterator[SourceRow]) -> Iterator[SourceRow]:
    for row in rows:
        if row.values is None:
            yield row
            continue
        item, problem = ddb_item(row.values)
        if problem is None:
            yield SourceRow(row.position, item)
        else:
            raw = json_text(row.values)[:RAW_LIMIT]
            yield SourceRow(row.position, None, error=f"element {row.position}: {problem}", raw=raw)


def ddb_item(obj: dict[str, Any]) -> tuple[Any, str | None]:
    """The item of a DynamoDB JSON line: {"Item": {...}} or a bare {"pk": {"S": "a"}, ...}.

    Only the outline is checked (attribute name -> {"<type>": value}); the values are
    checked by bulkwrites.dynamo.items.parse_dynamodb_json. {"Item": {...}} is the export
    wrapper unless only the bare reading makes sense (a lone attribute named "Item").
    """
    if len(obj) == 1 and isinstance(obj.get("Item"), dict):
        item = obj["Item"]
        if untyped_attribute(item) is not None and untyped_attribute(obj) is None:
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
    name = untyped_attribute(item)
    if name is not None:
        return None, f'attribute "{shorten(name, 60)}" is not in DynamoDB JSON form (like {{"S": "text"}})'
    return item, None


def untyped_attribute(item: dict[str, Any]) -> str | None:
    """The first attribute whose value is not shaped like {"S": "x"}; None if all are."""
    for name, value in item.items():
        if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DDB_TYPES):
            return name
    return None


# What each type's value is in DynamoDB JSON: numbers and binary are strings, sets lists of strings.
_VALUE_TYPES: dict[str, Any] = {
    "S": str,
    "N": str,
    "B": str,
    "BOOL": bool,
    "NULL": bool,
    "SS": list,
    "NS": list,
    "BS": list,
    "L": list,
    "M": dict,
}


def is_typed_value(value: Any) -> bool:
    """``{"S": "x"}``, ``{"N": "1"}``...: one type descriptor holding a value of that type."""
    if not (isinstance(value, dict) and len(value) == 1):
        return False
    ((type_name, inner),) = value.items()
    expected = _VALUE_TYPES.get(type_name)
    if expected is None or not isinstance(inner, expected):
        return False
    if type_name in ("SS", "NS", "BS"):
        return all(isinstance(member, str) for member in inner)
    return type_name != "NULL" or inner is True


def looks_like_item(obj: Any) -> bool:
    """The rule that tells DynamoDB JSON from plain JSON (README, "Files an operator can upload").

    An object is a DynamoDB JSON item when it has attributes and every one of them is one type
    descriptor holding a value of that type (``{"S": "x"}``, ``{"N": "1.5"}`` - a number as a
    string -, ``{"BOOL": true}``, ``{"L": [...]}``...); an ``{"Item": {...}}`` wrapper is looked
    through. Plain JSON whose every value happens to be shaped so is taken for DynamoDB JSON: the
    operator then chooses the JSON or JSON Lines format explicitly.
    """
    if not isinstance(obj, dict) or not obj:
        return False
    if len(obj) == 1 and isinstance(obj.get("Item"), dict) and obj["Item"]:
        obj = obj["Item"]
    return all(is_typed_value(value) for value in obj.values())
