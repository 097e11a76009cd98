"""A worker registered in Redis with a fresh heartbeat, without running one: what the pages see of a live worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rq import Worker


@contextmanager
def registered_worker(queue: Any, name: str) -> Iterator[Worker]:
    """A real RQ registration (birth, heartbeat), removed on exit; it takes no jobs."""
    worker = Worker([queue], connection=queue.connection, name=name)
    worker.register_birth()  # type: ignore[no-untyped-call]
    worker.heartbeat()
    try:
        yield worker
    finally:
        worker.register_death()  # type: ignore[no-untyped-call]
