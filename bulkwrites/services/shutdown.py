"""A worker asked to stop: the run in its work horse hands over now, not at the end of its slice.

RQ's warm shutdown (SIGTERM to the worker) lets the work horse finish its RQ job, which for a
bulk job, a verification or a stream rule is a time slice of up to
``BULKWRITES_RUN_SLICE_SECONDS`` (60 s); and a supervisor that signals every process of the
service (systemd's default ``KillMode=control-group``) killed the horse outright, so the job sat
until its slice lease expired and the sweeper found it stalled (about a minute, items in flight
sent twice). The worker (:mod:`bulkwrites.worker`) turns SIGTERM in the horse into this flag and
passes its own SIGTERM on to the horse; a run then stops as it does for an operator's pause (the
calls in flight come back and are recorded, the rest stays pending) and enqueues its successor,
which another worker, or this one restarted, takes at once.

Runs that do not look at the flag (staging a file, a job's reclaim, a notification) go on to
their end, or until the supervisor's kill: each of those is safe to cut short.
"""

from __future__ import annotations

import threading

REASON = "shutdown"  # what a run stopped by it reports (`stopped_by`) and its slices record

_requested = threading.Event()


def request() -> None:
    """Called from the work horse's SIGTERM handler (or by a test)."""
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def clear() -> None:
    """For tests: a process's flag is otherwise set once and stays set until it exits."""
    _requested.clear()
