"""Staged items as the text of PostgreSQL's ``COPY ... FROM STDIN``, built where they are converted.

Staging used to hand each record to psycopg's ``Copy.write_row``, which finds a dumper for
each of an item's 13 columns and for its payload's 3: a fifth of the staging process's time in
py-spy (1M rows), on the one thread that also reads the source. A chunk of pending items is all
alike but for six values, so the conversion process that made the records writes their rows
as one text (:class:`PendingRows`), and the staging process passes it on as it is.

Conversion processes import this module without Django settings: it imports nothing of
Django. ``models.ItemQuerySet.copy_in`` names its columns from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from bulkwrites.dynamo.records import Record

# The columns of an item row, in COPY order (bulkwrites_item); its payload goes to bulkwrites_itempayload.
ITEM_COLUMNS = (
    "job_id", "position", "key", "raw", "size", "wire_bytes", "status", "attempts",
    "error_code", "error_message", "history", "updated_at", "key_hash",
)  # fmt: skip
PAYLOAD_COLUMNS = ("job_id", "position", "payload")


def copy_text(value: str) -> str:
    """``value`` as one field of COPY's text format: backslash, tab, newline and CR escaped.

    JSON text never holds a raw tab or line break (the encoder escapes control characters),
    so for the usual value this is three scans in C and at most one replace.
    """
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def unsendable_row(
    job_id: int, record: Record, raw: str, *, status: str, code: str, updated_at: Any
) -> tuple[Any, ...]:
    """The item row (``ITEM_COLUMNS``) of a record that cannot be sent: no payload, the source row's text."""
    return (job_id, record.position, record.key_json, raw, 0, 0, status, 0, code, record.error, "[]", updated_at,
            record.key_hash)  # fmt: skip


class CopyChunk(NamedTuple):
    """One chunk of records, ready for the two COPYs."""

    rows: int
    items: str  # the valid records' item rows, COPY text, one line each
    payloads: str  # their payload rows, likewise
    invalid: list[tuple[int, Record]]  # (index in the chunk, record): rows the caller writes (unsendable_row)


@dataclass(frozen=True)
class PendingRows:
    """Packs records (``RecordConverter.convert_chunks``): each valid one a pending item and its payload.

    Records that cannot be sent come back as they are: their item row carries the source row's
    text, which only the staging process holds. Picklable, a few values: it travels with each chunk.
    """

    job_id: int
    status: str  # ItemStatus.PENDING's value (a plain str: the enum lives in models)
    updated_at: str  # ISO 8601 with its offset, as PostgreSQL reads a timestamptz

    def __call__(self, records: list[Record]) -> CopyChunk:
        job = self.job_id
        # Columns after wire_bytes: status, attempts 0, no error code or message, no history.
        middle = f"\t{self.status}\t0\t\t\t[]\t{self.updated_at}\t"
        items: list[str] = []
        payloads: list[str] = []
        invalid: list[tuple[int, Record]] = []
        for index, record in enumerate(records):
            if record.error is not None:
                invalid.append((index, record))
                continue
            assert record.key_json is not None  # a valid record has its key and item
            assert record.item_json is not None
            position = record.position
            items.append(
                f"{job}\t{position}\t{copy_text(record.key_json)}\t\t{record.size}\t{record.wire_bytes}"
                f"{middle}{record.key_hash}\n"
            )
            payloads.append(f"{job}\t{position}\t{copy_text(record.item_json)}\n")
        return CopyChunk(len(records), "".join(items), "".join(payloads), invalid)
