"""Telling a file's format from its name and first bytes."""

from __future__ import annotations

import codecs
import re
from typing import Any

from bulkwrites.sources.formats.common import SourceError
from bulkwrites.sources.formats.dynamodb_json import untyped_attribute
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
_GZIP_MAGIC = b"\x1f\x8b"
_DDB_HEAD = re.compile(rb'\{\s*"Item"\s*:\s*\{')
OLE_MESSAGE = (
    "This is an old-style Excel workbook (.xls) or a password-protected one. "
    "Save it as an Excel workbook (.xlsx) without a password, or as CSV UTF-8, and upload it again."
)


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
        return "json"
    if not body.startswith(b"{"):
        return None
    first_line, newline, _ = body.partition(b"\n")
    try:
        obj = DECODER.decode(first_line.decode("utf-8"))
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
    if not isinstance(item, dict) or not item or untyped_attribute(item) is not None:
        return None
    return item


def _head_text(body: bytes) -> str:
    """The head as text, ignoring a character cut short at its end; "" if it is not UTF-8."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(body, final=False)
    except UnicodeDecodeError:
        return ""
    return "" if "\x00" in text else text
