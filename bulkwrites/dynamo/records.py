"""Source rows to ledger records: the conversion staging does, in this process or in others.

A record is what the ledger stores for one row: its key and item as DynamoDB JSON text,
the item's size and its bytes in a call, or why the row cannot be sent. Converting is
pure CPU (typing cells, validating, sizing, encoding JSON) and, for a large file, most of
the time staging takes, so :class:`RecordConverter` spreads it over worker processes while
the caller reads the source and COPYs the records into PostgreSQL.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from queue import Empty, Queue
from typing import Any, NamedTuple, TypeVar

import orjson

from .items import KeySchema, key_hash, prepare_item

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P")

# (position, cells or None when the row could not be read, why it could not be read)
RowInput = tuple[int, Mapping[str, Any] | None, str | None]


class Record(NamedTuple):
    position: int
    key_json: str | None
    item_json: str | None
    size: int
    wire_bytes: int
    error: str | None  # None: valid
    key_hash: int | None = None  # items.key_hash of the key: the ledger's index to find an item by key

    @property
    def is_valid(self) -> bool:
        return self.error is None


def _encode_sorted(key: Mapping[str, Any]) -> str:
    """A key's JSON text, names sorted: one text per key."""
    return orjson.dumps(key, option=orjson.OPT_SORT_KEYS).decode()


def convert_rows(rows: Iterable[RowInput], key_schema: KeySchema, *, delete: bool, dynamodb_json: bool) -> list[Record]:
    """Convert and validate rows exactly as DynamoDB would judge them; one record per row, in order."""
    records = []
    for position, values, read_error in rows:
        if values is None:
            records.append(Record(position, None, None, 0, 0, read_error or "the row could not be read"))
            continue
        prepared = prepare_item(position, values, key_schema, delete=delete, dynamodb_json=dynamodb_json)
        if not prepared.is_valid:
            # A row with a sound key keeps it (found by key in the ledger), though it is never sent.
            key = prepared.key
            records.append(
                Record(
                    position,
                    None if key is None else _encode_sorted(key),
                    None,
                    0,
                    0,
                    prepared.error,
                    None if key is None else key_hash(key),
                )
            )
            continue
        # orjson: compact UTF-8, the text json.dumps(ensure_ascii=False, separators=(",", ":"))
        # writes for DynamoDB JSON (strings, booleans, lists and maps), ~10x faster; encoding was a
        # quarter of a conversion process's time.
        item_bytes = orjson.dumps(prepared.item)
        key = prepared.key
        assert key is not None  # a valid row has its key
        records.append(
            Record(
                position,
                _encode_sorted(key),
                item_bytes.decode(),
                prepared.size,
                len(item_bytes),
                None,
                key_hash(key),
            )
        )
    return records


def records_as_they_are(records: list[Record]) -> list[Record]:
    """The pack of :meth:`RecordConverter.convert`: the records themselves."""
    return records


def convert_and_pack[P](
    rows: list[RowInput], key_schema: KeySchema, *, delete: bool, dynamodb_json: bool, pack: Callable[[list[Record]], P]
) -> P:
    """What a conversion process does with one chunk."""
    return pack(convert_rows(rows, key_schema, delete=delete, dynamodb_json=dynamodb_json))


class RecordConverter:
    """Converts a stream of rows in chunks, in ``processes`` worker processes, results in order.

    Each row comes with a companion of the caller's (its source row, say) that stays in this
    process and is handed back with the row's record. At most ``2 x processes`` chunks are in
    flight, so memory stays bounded whatever the size of the source. The source is only read
    while the caller pulls records, never in the background: a source that reads from the
    caller's database connection is safe as long as the caller does not pull during a COPY.
    With ``processes=0``, or a source smaller than one chunk, rows are converted in this
    process (a pool costs ~0.1 s to start). Worker processes are started by ``forkserver``:
    forking a process that runs threads (database connections, an RQ work horse) is unsafe.
    """

    def __init__(
        self, key_schema: KeySchema, *, delete: bool, dynamodb_json: bool, processes: int, chunk_rows: int = 2000
    ) -> None:
        self.key_schema = key_schema
        self.delete = delete
        self.dynamodb_json = dynamodb_json
        self.processes = processes
        self.chunk_rows = chunk_rows

    def convert(self, rows: Iterable[tuple[RowInput, T]]) -> Iterator[tuple[Record, T]]:
        """Each row's record with its companion, in order."""
        for records, companions in self.convert_chunks(rows, records_as_they_are):
            yield from zip(records, companions, strict=True)

    def convert_chunks(
        self, rows: Iterable[tuple[RowInput, T]], pack: Callable[[list[Record]], P]
    ) -> Iterator[tuple[P, list[T]]]:
        """Each chunk's records as ``pack`` made them, with the chunk's companions, in order.

        ``pack`` runs where the chunk was converted, usually a conversion process, so that what
        the caller does with each record (formatting it for a COPY, say) is done there too and
        only its result crosses back. It must pickle (a module-level function, or an instance of
        a module-level class) and import nothing that needs Django settings.
        """
        chunks = _chunks(rows, self.chunk_rows)
        first = next(chunks, None)
        if first is None:
            return
        if self.processes <= 0 or len(first) < self.chunk_rows:
            for chunk in itertools.chain([first], chunks):
                yield pack(self._convert([r for r, _ in chunk])), [c for _, c in chunk]
            return
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(
            max_workers=self.processes, mp_context=context, initializer=exit_with, initargs=(os.getpid(),)
        ) as pool:
            in_flight: deque[tuple[Future[P] | None, list[RowInput], list[T]]] = deque()
            waiting: Iterator[list[tuple[RowInput, T]]] = itertools.chain([first], chunks)
            broken = False
            while True:
                while len(in_flight) < 2 * self.processes and (chunk := next(waiting, [])) != []:
                    inputs = [r for r, _ in chunk]
                    future = None
                    if not broken:
                        try:
                            future = pool.submit(
                                convert_and_pack,
                                inputs,
                                self.key_schema,
                                delete=self.delete,
                                dynamodb_json=self.dynamodb_json,
                                pack=pack,
                            )
                        except BrokenProcessPool:
                            broken = True
                    in_flight.append((future, inputs, [c for _, c in chunk]))
                if not in_flight:
                    return
                future, inputs, companions = in_flight.popleft()
                try:
                    packed = pack(self._convert(inputs)) if future is None else future.result()
                except BrokenProcessPool:
                    # A worker died (killed, out of memory, or it could not start here): the
                    # rest is converted in this process, more slowly, but nothing is lost.
                    logger.warning("staging: conversion processes failed; converting in the staging process")
                    broken = True
                    packed = pack(self._convert(inputs))
                    in_flight = deque((None, i, c) for _, i, c in in_flight)
                yield packed, companions

    def _convert(self, chunk: list[RowInput]) -> list[Record]:
        return convert_rows(chunk, self.key_schema, delete=self.delete, dynamodb_json=self.dynamodb_json)


def exit_with(pid: int) -> None:
    """Run in each conversion process: exit as soon as process ``pid`` (the staging one) has.

    A conversion process waits on its pool's queue, whose write end it holds itself (the queue
    came to it whole), so it never reads an end of file when the staging process dies; nor does
    the forkserver it was forked from, which lives as long as any of its children. A SIGKILLed
    work horse (RQ's timeout, the OOM killer, an operator) left all three sleeping for good. A
    daemon thread waits for the staging process to exit (a pidfd: no pid reuse to fool it),
    then ends this one; the forkserver follows once its last child is gone.
    """
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or already gone: look once a second
        handle = None

    def watch() -> None:
        if handle is not None:
            select.select([handle], [], [])
        else:
            while _alive(pid):
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name=f"exit-with-{pid}", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


@contextmanager
def pulled_ahead[R](items: Iterable[R], depth: int) -> Iterator[Iterator[R]]:
    """``items``, pulled by a thread of their own up to ``depth`` ahead of the caller.

    Staging alternated: the staging process read and parsed the source (Python, holding the GIL)
    while PostgreSQL waited, then PostgreSQL took the COPY while the process waited for it.
    With the source pulled here, the reading goes on while the caller's thread waits on the
    database (psycopg waits without the GIL). Only for a source that does not read through the
    caller's database connection (Django's connections belong to one thread each).

    An exception in the source reaches the caller at the point it was raised in the stream.
    When the caller stops early (an error, a timeout), the thread stops at its next item and
    closes the source, so a conversion pool in it shuts down with it.
    """
    queue: Queue[tuple[bool, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def pull() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                queue.put((True, item))
                if stop.is_set():
                    return
            queue.put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            queue.put((False, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def pulled() -> Iterator[R]:
        while True:
            more, value = queue.get()
            if not more:
                if value is not None:
                    raise value
                return
            yield value

    thread = threading.Thread(target=pull, name="read-ahead", daemon=True)
    thread.start()
    try:
        yield pulled()
    finally:
        stop.set()
        while thread.is_alive():  # free a put() waiting on a full queue
            with suppress(Empty):
                queue.get_nowait()
            thread.join(0.01)


def _chunks[R](rows: Iterable[R], size: int) -> Iterator[list[R]]:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
