"""How a value appears inside a message an operator reads: quoted, on one line, never too long.

The one place for it: the item rules, record outcomes, file readers and SQL checks all quote
what they refuse the same way.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def shorten(text: str, limit: int) -> str:
    """``text``, cut to at most ``limit`` characters, ending in "..." when it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(value: Any, limit: int = 40) -> str:
    """``value`` as a message shows it: its repr (a number as written), shortened."""
    return shorten(str(value) if isinstance(value, Decimal) else repr(value), limit)
