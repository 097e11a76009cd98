"""Riding out PostgreSQL and Redis going away and coming back (a restart, a failover, a blip).

A worker and the threads of a running job retry an operation that failed because a dependency
was unreachable, with capped exponential backoff, for up to ``OUTAGE_SECONDS``; they never exit
for it. Measured before this existed: a Redis restart made the worker quit within a second, and a
PostgreSQL restart failed the RQ job (the recorder thread's error), so the job waited for its
leases to expire and the sweeper (45-65 s).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from django.db import InterfaceError, OperationalError, connection
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

DATABASE_DOWN = (OperationalError, InterfaceError)
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)
OUTAGE_SECONDS = 600.0  # how long an operation is retried before its error goes up
FIRST_DELAY, MAX_DELAY = 0.1, 2.0  # seconds between attempts: within 2 s of the dependency's return


def _retry[T](
    action: Callable[[], T],
    errors: tuple[type[BaseException], ...],
    *,
    what: str,
    dependency: str,
    on_error: Callable[[], None],
    outage_seconds: float,
    sleep: Callable[[float], None],
) -> T:
    delay = FIRST_DELAY
    down_since: float | None = None
    while True:
        try:
            result = action()
        except errors as exc:
            now = time.monotonic()
            if down_since is None:
                down_since = now
                logger.warning("%s unreachable while %s (%s); retrying", dependency, what, str(exc).strip()[:200])
            elif now - down_since > outage_seconds:
                raise
            on_error()
            sleep(delay)
            delay = min(MAX_DELAY, delay * 2)
            continue
        if down_since is not None:
            logger.warning("%s is back: %s again after %.1f s", dependency, what, time.monotonic() - down_since)
        return result


def _drop_database_connection() -> None:
    # The next query opens a new connection (Django reconnects lazily); a broken one would fail again.
    with contextlib.suppress(*DATABASE_DOWN):  # closing a dead connection may complain; it is closed anyway
        connection.close()


def retry_database[T](
    action: Callable[[], T],
    *,
    what: str,
    outage_seconds: float = OUTAGE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``action()``, again after PostgreSQL comes back if it was unreachable; never inside a transaction.

    ``action`` must be safe to run again: a statement whose connection broke was rolled back,
    unless the break came after its commit (then it runs twice: callers make their writes
    idempotent, as the ledger's ``status = 'pending'`` guard does).
    """
    if connection.in_atomic_block:
        raise RuntimeError("retry_database() inside a transaction: retry the whole transaction instead")
    return _retry(
        action,
        DATABASE_DOWN,
        what=what,
        dependency="PostgreSQL",
        on_error=_drop_database_connection,
        outage_seconds=outage_seconds,
        sleep=sleep,
    )


def retry_redis[T](
    action: Callable[[], T],
    *,
    what: str,
    outage_seconds: float = OUTAGE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``action()``, again after Redis comes back if it was unreachable."""
    return _retry(
        action,
        REDIS_DOWN,
        what=what,
        dependency="Redis",
        on_error=lambda: None,
        outage_seconds=outage_seconds,
        sleep=sleep,
    )
