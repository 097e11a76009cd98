"""The one exception services raise for an operator: its message is shown as it is."""

from __future__ import annotations


class JobError(Exception):
    """A job cannot be created, read or changed; the message says why, in an operator's words."""


class QueueUnavailable(JobError):
    """The job queue (Redis) does not answer, so no worker can be asked: nothing was changed."""

    def __init__(self, action: str) -> None:
        super().__init__(
            f"The job queue (Redis) does not answer, so no worker can be asked to {action}; nothing was "
            "changed. Try again once Redis is back."
        )
