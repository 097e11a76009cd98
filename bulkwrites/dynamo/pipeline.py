"""Calls in flight: hand batches to a pool of threads as slots free up, results back in order of arrival.

The writer (BatchWriteItem) and the reader (BatchGetItem) share this loop, so both pull their
work lazily and stop the same way.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor


def run_pipelined[T, B, R](
    call: Callable[[B], R],
    batches: Iterable[tuple[T, B]],
    *,
    concurrency: int,
    finish: Callable[[T, R], None],
    halted: Callable[[], bool],
    thread_name_prefix: str = "bulkwrites-call",
) -> None:
    """Run ``call`` on each batch, ``concurrency`` at a time, calling ``finish(tag, result)``.

    ``batches`` is pulled lazily, in the calling thread, whenever a slot is free, so a caller
    can fetch more work while earlier calls are in flight. ``finish`` runs in the calling
    thread. Once ``halted()`` is true no more batches are pulled; calls already in flight are
    finished first.
    """
    source = iter(batches)
    if concurrency <= 1:
        for tag, batch in source:
            finish(tag, call(batch))
            if halted():
                break
        return
    # Finished calls announce themselves on a queue: ``concurrent.futures.wait`` would hang a
    # waiter on every call in flight for each one that finishes (16 lock round trips a call).
    finished: queue.SimpleQueue[Future[R]] = queue.SimpleQueue()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=thread_name_prefix) as pool:
        in_flight: dict[Future[R], T] = {}
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < concurrency and not halted():
                entry = next(source, None)
                if entry is None:
                    exhausted = True
                    break
                tag, batch = entry
                future = pool.submit(call, batch)
                in_flight[future] = tag
                future.add_done_callback(finished.put)
            if not in_flight:
                break
            future = finished.get()
            finish(in_flight.pop(future), future.result())
