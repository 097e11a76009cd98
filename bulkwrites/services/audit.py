"""Operators' control actions in Django's admin log, whoever made them: the admin, the CLI or the API.

The job page lists these entries (``LogEntry`` of the job), so an action taken from a script
shows there next to the ones taken with a button.
"""

from __future__ import annotations

import getpass
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model

from bulkwrites.models import Job
from bulkwrites.services.errors import JobError

# The user command-line actions are recorded under when no Django user has the OS user's name
# (and none is named with --as): inactive, without a usable password, never staff.
CLI_AUDIT_USERNAME = "bulkwrites-cli"


def record_job_change(*, job: Job, user_id: int, message: str) -> None:
    """One admin-log entry on the job, as the admin's own buttons write it."""
    LogEntry.objects.log_actions(
        user_id=user_id, queryset=[job], action_flag=CHANGE, change_message=message, single_object=True
    )


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container running as a bare uid)
        return "unknown"


def cli_user(username: str | None) -> tuple[Any, bool]:
    """Who a command-line action is recorded under: (user, whether it is a real person's account).

    ``--as USER`` names a Django user, which must exist. Otherwise the Django user whose username
    is the OS user's, else the audit user :data:`CLI_AUDIT_USERNAME` (made on first use).
    """
    users = get_user_model()
    if username:
        named = users.objects.filter(username=username).first()
        if named is None:
            raise JobError(f"No Django user {username!r} (given with --as).")
        return named, True
    same_name = users.objects.filter(username=os_user()).first()
    if same_name is not None:
        return same_name, True
    audit, created = users.objects.get_or_create(
        username=CLI_AUDIT_USERNAME, defaults={"is_active": False, "is_staff": False}
    )
    if created:
        audit.set_unusable_password()
        audit.save(update_fields=["password"])
    return audit, False
