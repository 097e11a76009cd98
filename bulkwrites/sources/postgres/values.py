"""Loading PostgreSQL values the way bulkwrites.dynamo.items maps them (exact numbers, ISO 8601)."""

import datetime as dt
import json
from decimal import Decimal
from functools import partial
from typing import Any
from uuid import UUID

import psycopg
from psycopg.adapt import Buffer, Loader
from psycopg.types import datetime as pg_datetime
from psycopg.types.json import set_json_loads


def _lenient(base: type[Loader]) -> type[Loader]:
    """``base`` returning PostgreSQL's own text for values Python cannot hold (``infinity``, year 10K+)."""

    def load(self: Loader, data: Buffer) -> Any:
        try:
            return base.load(self, data)
        except (psycopg.DataError, NotImplementedError):
            return bytes(data).decode("utf-8", "replace")

    return type(f"Lenient{base.__name__}", (base,), {"load": load})


class _PgTextLoader(Loader):
    """The value as PostgreSQL prints it (used for intervals, printed as ISO 8601 durations)."""

    def load(self, data: Buffer) -> str:
        return bytes(data).decode("utf-8", "replace")


_LENIENT_LOADERS: dict[str, type[Loader]] = {
    "date": _lenient(pg_datetime.DateLoader),
    "time": _lenient(pg_datetime.TimeLoader),
    "timetz": _lenient(pg_datetime.TimetzLoader),
    "timestamp": _lenient(pg_datetime.TimestampLoader),
    "timestamptz": _lenient(pg_datetime.TimestamptzLoader),
    "interval": _PgTextLoader,
}


def configure_loaders(conn: psycopg.Connection[Any]) -> None:
    for type_name, loader in _LENIENT_LOADERS.items():
        conn.adapters.register_loader(type_name, loader)
    set_json_loads(partial(json.loads, parse_float=Decimal), context=conn)


# --- values -----------------------------------------------------------------------------


def to_value(value: Any) -> Any:
    """A value as loaded by psycopg, converted to what :mod:`bulkwrites.dynamo.items` maps naturally.

    ``str``/``int``/``bool``/``None``/``Decimal`` as is; ``float`` -> ``Decimal(repr(f))``; datetime,
    date, time -> ISO 8601 string (an aware datetime in UTC); UUID -> str; bytes-like -> bytes; dicts
    and lists converted element by element (JSON floats included); anything else -> ``str(value)``.
    """
    if value is None or isinstance(value, str | bool | int | Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).isoformat()  # timestamptz
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict):
        return {str(k): to_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_value(v) for v in value]
    return str(value)
