"""Telling a file's format from its name and first bytes."""

from __future__ import annotations

import codecs
import contextlib
import re
from typing import Any

import ijson

from bulkwrites.sources.formats.common import SourceError
from bulkwrites.sources.formats.dynamodb_json import looks_like_item
from bulkwrites.sources.formats.json_array import _Builder
from bulkwrites.sources.formats.jsonvalues import DECODER, JSON_SPACE

_EXTENSIONS = {
    "csv": "csv",
    "tsv": "tsv",
    "tab": "tsv",
    "json": "json",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "xlsx": "xlsx",
}
ZIP_MAGIC = b"PK\x03\x04"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # old .xls, and password-protected .xlsx
_DDB_HEAD = re.compile(rb'\{\s*"Item"\s*:\s*\{')
# The start of an array whose first item is wrapped, or whose first attribute is typed ({"S": ...}).
_DDB_ARRAY_HEAD = re.compile(
    rb'\[\s*\{\s*(?:"Item"\s*:\s*\{|"(?:[^"\\]|\\.)*"\s*:\s*\{\s*"(?:S|N|B|BOOL|NULL|SS|NS|BS|L|M)"\s*:)'
)
OLE_MESSAGE = (
    "This is an old-style Excel workbook (.xls) or a password-protected one. "
    "Save it as an Excel workbook (.xlsx) without a password, or as CSV UTF-8, and upload it again."
)


def detect_format(filename: str, head: bytes) -> str:
    """Guess the format code of a file from its name and its first bytes (decompressed, as UTF-8).

    The extension decides (``.csv``, ``.tsv``/``.tab``, ``.json``, ``.jsonl``/``.ndjson``,
    ``.xlsx``); the first bytes refine it: a ``.json`` file whose first line is an object is
    JSON Lines, and JSON whose items are DynamoDB JSON (export lines ``{"Item": {...}}``, a scan's
    ``{"Items": [...]}``, an array of items, one item; see
    :func:`~bulkwrites.sources.formats.dynamodb_json.looks_like_item` for the rule) is DynamoDB
    JSON. A zip (``PK\\x03\\x04``) is XLSX whatever its name (a renamed workbook is never text).
    With an unknown extension JSON is recognised as above, and a ``.txt`` whose first line has tabs
    (or commas) is TSV (or CSV). Pass at least the first few KB as ``head`` (compression is dealt
    with before: :func:`bulkwrites.sources.formats.sniff`). Raises :class:`SourceError` when the
    format cannot be told, and for old ``.xls`` workbooks, with a message saying what to do.
    """
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].lower()
    ext = name.rpartition(".")[2] if "." in name else ""
    if ext == "xls" or head.startswith(OLE_MAGIC):
        raise SourceError(OLE_MESSAGE)
    if head.startswith(ZIP_MAGIC):
        return "xlsx"
    body = head.removeprefix(codecs.BOM_UTF8).lstrip(JSON_SPACE.encode())
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
        _, members = _head_members(body)
        elements = [value for _, value in members]
        if not elements:  # the first element is longer than the head: its first attribute tells
            return "ddbjson" if _DDB_ARRAY_HEAD.match(body) else "json"
        return "ddbjson" if all(looks_like_item(e) for e in elements) else "json"
    if not body.startswith(b"{"):
        return None
    first_line, newline, _ = body.partition(b"\n")
    try:
        obj = DECODER.decode(first_line.decode("utf-8"))
    except (ValueError, RecursionError):  # invalid, or cut short by the end of head
        if _DDB_HEAD.match(first_line):
            return "ddbjson"
        _, members = _head_members(body)
        if members and members[0][0] == "Items" and isinstance(members[0][1], _ItemsArray):
            return "ddbjson"  # a scan's output
        if members and looks_like_item(dict(members)):
            return "ddbjson"  # an item, pretty-printed or on a line longer than the head
        # A single line longer than head is a JSON line; "{" alone on a line is pretty-printed JSON.
        return "json" if newline else "jsonl"
    if not isinstance(obj, dict):
        return "json"
    items = obj.get("Items")
    if isinstance(items, list) and all(looks_like_item(item) for item in items):
        return "ddbjson"
    if looks_like_item(obj):
        return "ddbjson"
    return "jsonl"


class _ItemsArray:
    """Stands for an ``Items`` array begun in the head (its elements are not needed to tell the format)."""


def _head_members(body: bytes) -> tuple[str, list[tuple[str | None, Any]]]:
    """The top-level container ("array"/"object") and its members complete within the head.

    Members are (key, value) for an object, (None, element) for an array; an ``Items`` array of an
    object counts as complete as soon as it begins (its value is an :class:`_ItemsArray`).
    """
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events, use_float=False)
    with contextlib.suppress(ijson.JSONError, ValueError):  # the head ends where it ends: events so far
        parser.send(body)
    if not events:
        return "", []
    top = "array" if events[0][0] == "start_array" else "object"
    builder = _Builder()
    builder.depth = 1  # the top-level container is open
    members: list[tuple[str | None, Any]] = []
    key: str | None = None
    for event, value in events[1:]:
        if top == "object" and builder.depth == 1:
            if event == "map_key":
                key = value
                continue
            if event == "start_array" and key == "Items":
                members.append((key, _ItemsArray()))
                break
        for done in builder.feed([(event, value)]):
            members.append((key, done))
    return top, members


def _head_text(body: bytes) -> str:
    """The head as text, ignoring a character cut short at its end; "" if it is not UTF-8."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(body, final=False)
    except UnicodeDecodeError:
        return ""
    return "" if "\x00" in text else text
