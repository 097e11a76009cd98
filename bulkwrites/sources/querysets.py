"""Rows from Django records: the "Copy to DynamoDB" admin action's source.

A mapping says which field becomes which attribute (``field -> attribute[:TYPE]``); by
default every concrete field keeps its name, related objects become their id, and the
model's primary key feeds a key attribute the model has no field for.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

from bulkwrites.dynamo.items import KeySchema, parse_header
from bulkwrites.sources.rows import SourceRow

Mapping = list[tuple[str, str]]  # (model attribute name, attribute header)


class MappingError(ValueError):
    """The field mapping cannot be used; the message is for an operator."""


def model_fields(model: Any) -> list[tuple[str, str]]:
    """(attname, label) of the concrete fields: ``customer_id`` for a foreign key ``customer``."""
    return [(f.attname, f.name) for f in model._meta.concrete_fields]


def default_mapping(model: Any, key_schema: KeySchema) -> Mapping:
    fields = model_fields(model)
    mapping: Mapping = [(attname, name) for attname, name in fields]
    names = {name for _, name in mapping}
    pk = model._meta.pk.attname
    for key in key_schema.attributes:
        if key.name not in names:
            # The table's key is not a field name: feed it from the primary key.
            mapping = [(a, key.name if a == pk else n) for a, n in mapping]
            break
    return mapping


def parse_mapping(text: str, model: Any) -> Mapping:
    """Parse ``field -> attribute`` lines (``field`` alone keeps the name); unknown fields are errors."""
    known = {attname for attname, _ in model_fields(model)} | {name for _, name in model_fields(model)}
    by_name = {name: attname for attname, name in model_fields(model)}
    mapping: Mapping = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        field, _, attribute = (part.strip() for part in line.partition("->"))
        if field not in known:
            raise MappingError(f"line {number}: {model.__name__} has no field {field!r}")
        attname = by_name.get(field, field)
        header = attribute or field
        if not parse_header(header)[0]:
            raise MappingError(f"line {number}: no attribute name for {field!r}")
        mapping.append((attname, header))
    if not mapping:
        raise MappingError("the mapping is empty: list at least the fields that make the key")
    headers = [parse_header(h)[0] for _, h in mapping]
    duplicates = sorted({h for h in headers if headers.count(h) > 1})
    if duplicates:
        raise MappingError(f"attribute {duplicates[0]!r} is mapped twice")
    return mapping


def format_mapping(mapping: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"{field} -> {header}" for field, header in mapping)


def rows_from_queryset(records: Iterable[Any], mapping: Mapping) -> Iterator[SourceRow]:
    """One row per record, in the queryset's order; empty (None) fields are left out."""
    for position, record in enumerate(records, start=1):
        values: dict[str, Any] = {}
        for attname, header in mapping:
            value = getattr(record, attname)
            if value is None:
                continue
            values[header] = plain_value(value)
        yield SourceRow(position=position, values=values)


def plain_value(value: Any) -> Any:
    """Model values as our converter maps them naturally (never a binary float)."""
    if isinstance(value, bool | int | str | Decimal | dict | list):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return str(value)
