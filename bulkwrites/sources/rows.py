"""The row every source yields (files, PostgreSQL queries, admin records), and how much of it is kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Characters of a source row's text kept for the operator (SourceRow.raw, an invalid item's raw).
RAW_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One data row of a source. ``values`` is None when the row could not be read."""

    position: int  # 1-based; what it counts depends on the source (see each reader)
    values: dict[str, Any] | None  # column/attribute name -> value
    error: str | None = None  # why the row could not be read, starting with where it is
    raw: str | None = None  # the row as read (at most RAW_LIMIT characters); always set with error
