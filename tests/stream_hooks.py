"""Callables for stream rules in tests (allowed with BULKWRITES_STREAM_CALLABLE_PREFIXES=tests.stream_hooks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def fan_out(record: Mapping[str, Any], requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each removed customer also removes its two derived rows (``<pk>#profile``, ``<pk>#prefs``)."""
    pk = record["dynamodb"]["Keys"]["pk"]["S"]
    return [*requests, *({"DeleteRequest": {"Key": {"pk": {"S": f"{pk}#{part}"}}}} for part in ("profile", "prefs"))]


NOT_CALLABLE = 42
