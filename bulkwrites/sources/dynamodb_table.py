"""Another DynamoDB table as a source: parallel ``Scan`` segments, with an optional attribute mapping.

The most common migration there is: table A into table B. Items come out of ``Scan`` already in
DynamoDB's own types and stay so exactly (numbers as their text, sets, binary: ``from_wire`` only
turns botocore's bytes back into base64), so they are staged as DynamoDB JSON.

Memory stays bounded whatever the table: each segment runs on its own thread and hands its pages
(≤ 1 MB each, DynamoDB's page limit) to the reader through a queue of at most two pages per
segment; a segment waits while the queue is full, so a slow consumer (staging's ``COPY``) slows
the scan instead of filling memory. Read capacity is counted from ``ConsumedCapacity``.

The mapping has the Copy-to-DynamoDB style (``source -> target`` per line; a name alone keeps it);
a line ``*`` keeps every attribute not named, under its own name. Without a mapping every attribute
is copied as it is. Types are never changed (``:N`` suffixes are refused).

The client is handed in (made by :mod:`bulkwrites.dynamo.client`): sources make no AWS clients.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bulkwrites.dynamo.errors import classify
from bulkwrites.dynamo.items import from_wire
from bulkwrites.sources.formats.common import SourceError
from bulkwrites.sources.rows import SourceRow

MAX_SEGMENTS = 64
DEFAULT_SEGMENTS = 4
PAGES_PER_SEGMENT = 2  # queued pages per segment: ~2 MB per segment at most in flight


class MappingError(ValueError):
    """The attribute mapping cannot be used; the message is for an operator."""


@dataclass(frozen=True)
class AttributeMapping:
    """Which source attribute becomes which target attribute; ``keep_rest``: the others as they are."""

    pairs: tuple[tuple[str, str], ...] = ()
    keep_rest: bool = True

    @classmethod
    def parse(cls, text: str) -> AttributeMapping:
        """``a -> b`` renames, ``a`` keeps, ``*`` keeps every other attribute; empty text: everything as is."""
        pairs: list[tuple[str, str]] = []
        keep_rest = False
        lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
        lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
        if not lines:
            return cls()
        for number, line in lines:
            if line == "*":
                keep_rest = True
                continue
            source, arrow, target = (part.strip() for part in line.partition("->"))
            target = target if arrow else source
            if not source or not target:
                raise MappingError(f"line {number}: write `source -> target` (or a name alone, or *)")
            if ":" in target and target.rsplit(":", 1)[1].isupper():
                raise MappingError(
                    f"line {number}: types are kept as they are in the source table; drop `:{target.rsplit(':', 1)[1]}`"
                )
            pairs.append((source, target))
        targets = [target for _, target in pairs]
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise MappingError(f"attribute {twice[0]!r} is mapped twice")
        return cls(tuple(pairs), keep_rest)

    def describe(self) -> str:
        lines = [f"{source} -> {target}" if source != target else source for source, target in self.pairs]
        if self.keep_rest and self.pairs:
            lines.append("*")
        return "\n".join(lines)

    def targets(self) -> set[str] | None:
        """The attributes every mapped item can have; None when the others are kept too (unknown)."""
        return None if self.keep_rest else {target for _, target in self.pairs}

    def apply(self, item: dict[str, Any]) -> dict[str, Any]:
        if not self.pairs:
            return item
        mapped = {target: item[source] for source, target in self.pairs if source in item}
        if self.keep_rest:
            sources = {source for source, _ in self.pairs}
            for name, value in item.items():
                if name not in sources and name not in mapped:
                    mapped[name] = value
        return mapped


@dataclass(frozen=True)
class TableSource:
    """What a job records to scan its source table again (``Job.source_spec``)."""

    table: str
    region: str
    segments: int = DEFAULT_SEGMENTS
    mapping: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "region": self.region, "segments": self.segments, "mapping": self.mapping}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableSource:
        return cls(str(data["table"]), str(data.get("region") or ""), int(data["segments"]), str(data["mapping"]))


@dataclass
class TableScan:
    """Rows of a table from ``segments`` parallel Scans; ``consumed_read_units`` grows as pages come."""

    client: Any
    table: str
    segments: int = DEFAULT_SEGMENTS
    mapping: AttributeMapping = field(default_factory=AttributeMapping)
    consumed_read_units: float = 0.0
    scanned: int = 0

    def rows(self) -> Generator[SourceRow]:
        """One row per item, positions in the order read (segments interleave). Closing it stops the scans."""
        pages: queue.Queue[tuple[str, Any, float]] = queue.Queue(maxsize=PAGES_PER_SEGMENT * self.segments)
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=self._scan_segment, args=(segment, pages, stop), daemon=True, name=f"scan-{segment}"
            )
            for segment in range(self.segments)
        ]
        for thread in threads:
            thread.start()
        running = len(threads)
        position = 0
        try:
            while running:
                kind, payload, consumed = pages.get()
                if kind == "done":
                    running -= 1
                    continue
                if kind == "error":
                    raise payload
                self.consumed_read_units += consumed
                for item in payload:
                    position += 1
                    self.scanned += 1
                    yield SourceRow(position, self.mapping.apply(from_wire(item)))
        finally:
            stop.set()
            while any(thread.is_alive() for thread in threads):  # let blocked segments see the stop
                with contextlib.suppress(queue.Empty):
                    pages.get(timeout=0.05)
            for thread in threads:
                thread.join()

    def _scan_segment(self, segment: int, pages: queue.Queue[tuple[str, Any, float]], stop: threading.Event) -> None:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Segment": segment,
            "TotalSegments": self.segments,
            "ReturnConsumedCapacity": "TOTAL",
        }
        try:
            while not stop.is_set():
                page = self.client.scan(**kwargs)
                consumed = float((page.get("ConsumedCapacity") or {}).get("CapacityUnits") or 0.0)
                self._put(pages, ("page", page.get("Items", []), consumed), stop)
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except (ClientError, BotoCoreError, ConnectionError) as exc:
            error = classify(exc, table=self.table)
            message = error.message.replace("may not write to this table", "may not scan this table (dynamodb:Scan)")
            self._put(pages, ("error", SourceError(f"Scanning table {self.table!r}: {message}"), 0.0), stop)
            return
        self._put(pages, ("done", None, 0.0), stop)

    @staticmethod
    def _put(pages: queue.Queue[tuple[str, Any, float]], entry: tuple[str, Any, float], stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                pages.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue
