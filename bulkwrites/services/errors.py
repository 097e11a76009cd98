"""The one exception services raise for an operator: its message is shown as it is."""

from __future__ import annotations


class JobError(Exception):
    """A job cannot be created, read or changed; the message says why, in an operator's words."""
