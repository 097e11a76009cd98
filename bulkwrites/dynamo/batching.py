"""Cut write requests into BatchWriteItem calls DynamoDB accepts.

A call holds at most 25 requests and at most 16 MB, and never two requests for the same
key (DynamoDB rejects the whole call otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from .items import Key

MAX_REQUESTS_PER_CALL = 25
MAX_BYTES_PER_CALL = 16 * 1024 * 1024
# Room for the JSON envelope around the requests (table name, "PutRequest", braces...).
CALL_OVERHEAD_BYTES = 64 * 1024


class Sized(Protocol):
    @property
    def identity(self) -> Key: ...

    @property
    def wire_bytes(self) -> int: ...


def chunk_requests[R: Sized](
    requests: Iterable[R],
    *,
    max_requests: int = MAX_REQUESTS_PER_CALL,
    max_bytes: int = MAX_BYTES_PER_CALL,
) -> Iterator[list[R]]:
    """Yield lists of requests in source order, each fit for one BatchWriteItem call.

    A request whose key is already in the current chunk starts a new chunk, so the two
    are never in one call. (Whether the later one should be sent at all is the job's
    duplicate policy, applied before this point.)
    """
    if not 1 <= max_requests <= MAX_REQUESTS_PER_CALL:
        raise ValueError(f"max_requests must be between 1 and {MAX_REQUESTS_PER_CALL}")
    budget = max_bytes - CALL_OVERHEAD_BYTES
    chunk: list[R] = []
    keys: set[Key] = set()
    size = 0
    for request in requests:
        identity = request.identity
        if chunk and (len(chunk) >= max_requests or size + request.wire_bytes > budget or identity in keys):
            yield chunk
            chunk, keys, size = [], set(), 0
        chunk.append(request)
        keys.add(identity)
        size += request.wire_bytes
    if chunk:
        yield chunk
