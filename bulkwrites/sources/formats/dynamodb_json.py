"""DynamoDB JSON lines (the export-to-S3 format): ``{"Item": {"pk": {"S": "a"}}}`` or a bare item per line.

Read like JSON Lines (see :mod:`bulkwrites.sources.formats.json_lines`); only each item's outline
is checked here, :func:`bulkwrites.dynamo.items.parse_dynamodb_json` checks the values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bulkwrites.sources.formats.common import CountingReader, short
from bulkwrites.sources.formats.json_lines import read_json_lines
from bulkwrites.sources.formats.limits import Limits
from bulkwrites.sources.rows import SourceRow

DDB_TYPES = frozenset({"S", "N", "B", "BOOL", "NULL", "SS", "NS", "BS", "L", "M"})


def read(source: CountingReader, limits: Limits) -> Iterator[SourceRow]:
    return read_json_lines(source, limits, label="DynamoDB JSON", item_of=ddb_item)


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
        return None, f'attribute "{short(name)}" is not in DynamoDB JSON form (like {{"S": "text"}})'
    return item, None


def untyped_attribute(item: dict[str, Any]) -> str | None:
    """The first attribute whose value is not shaped like {"S": "x"}; None if all are."""
    for name, value in item.items():
        if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DDB_TYPES):
            return name
    return None
