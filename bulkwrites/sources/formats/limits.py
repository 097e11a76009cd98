"""What one row of a file may take: checked while the file is read, so no file takes unbounded memory.

Each limit is a setting (``BULKWRITES_MAX_*`` in the environment, see ``project/settings.py`` and
the README's "Limits on files"); :meth:`Limits.from_settings` reads them. A file that crosses one
is refused as a whole with a message naming the limit and how big the thing was (as far as it was
read: reading stops there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A DynamoDB item holds at most 400 KB (409,600 bytes), so no cell worth reading is longer.
DEFAULT_MAX_CELL_CHARS = 409_600
# A row's text: 2 MiB leaves room for quoting, escapes and whitespace around a 400 KB item.
DEFAULT_MAX_ROW_BYTES = 2 * 1024 * 1024
# Excel's own column limit; far more attributes than an item can hold.
DEFAULT_MAX_ROW_CELLS = 16_384
# One part of an XLSX (a sheet, the shared strings) unpacked; zipfile never unpacks past the
# size a part declares, so this is checked before anything is unpacked.
DEFAULT_MAX_XLSX_PART_BYTES = 256 * 1024 * 1024
# What a gzip or zstd file may decompress to, counted while reading: 10x the default upload cap.
# Memory never holds more than a chunk of it; this bounds the time a compression bomb can take.
DEFAULT_MAX_DECOMPRESSED_BYTES = 10 * 1024 * 1024 * 1024

SETTING_NAMES = {
    "max_cell_chars": "MAX_CELL_CHARS",
    "max_row_bytes": "MAX_ROW_BYTES",
    "max_row_cells": "MAX_ROW_CELLS",
    "max_xlsx_part_bytes": "MAX_XLSX_PART_BYTES",
    "max_decompressed_bytes": "MAX_DECOMPRESSED_BYTES",
}


@dataclass(frozen=True, slots=True)
class Limits:
    max_cell_chars: int = DEFAULT_MAX_CELL_CHARS
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES  # characters for text formats, bytes of a JSON array element
    max_row_cells: int = DEFAULT_MAX_ROW_CELLS
    max_xlsx_part_bytes: int = DEFAULT_MAX_XLSX_PART_BYTES
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> Limits:
        """From ``settings.BULKWRITES`` (``MAX_CELL_CHARS``, ...); missing keys keep their defaults."""
        given = {field: int(values[key]) for field, key in SETTING_NAMES.items() if values.get(key) is not None}
        return cls(**given)

    @staticmethod
    def setting(field: str) -> str:
        """The environment variable an operator sets to change a limit."""
        return f"BULKWRITES_{SETTING_NAMES[field]}"


DEFAULT_LIMITS = Limits()
