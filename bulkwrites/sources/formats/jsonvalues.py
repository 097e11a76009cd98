"""JSON values as bulkwrites reads them: exact numbers (int or Decimal, never float), no NaN/Infinity."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from bulkwrites.sources.rows import RAW_LIMIT

JSON_SPACE = " \t\r\n"


class _NotJsonError(ValueError):
    """A JSON extension Python would accept (NaN, Infinity) that JSON does not allow."""


def _reject_constant(name: str) -> Any:
    raise _NotJsonError(f"{name} is not valid JSON (write null or a string instead)")


DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def parse_json(text: str) -> tuple[Any, str | None]:
    """(value, None), or (None, a message saying why text is not acceptable JSON)."""
    try:
        return DECODER.decode(text), None
    except json.JSONDecodeError as exc:
        if exc.lineno > 1:
            return None, f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except _NotJsonError as exc:
        return None, str(exc)
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        return None, "a number has too many digits"
    except RecursionError:
        return None, "the JSON is nested too deeply"


def kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return "a number"


def json_text(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)[:RAW_LIMIT]
    except (ValueError, RecursionError):
        return "(too deeply nested to show)"
