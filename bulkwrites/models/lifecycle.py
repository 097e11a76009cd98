"""The guarded ``UPDATE`` through which the job and verification lifecycles change a status."""

from __future__ import annotations

from typing import Any, Protocol

from django.db import models
from django.db.models import Q


class _Transition(Protocol):
    @property
    def sources(self) -> frozenset[str]: ...

    @property
    def target(self) -> str: ...


def _guarded_update(instance: models.Model, rule: _Transition, condition: Q | None, fields: dict[str, Any]) -> bool:
    """``UPDATE ... SET status = target, <fields> WHERE pk = ... AND status IN (sources)``.

    Saves only ``status`` and ``fields`` and refreshes them on ``instance``; False (and nothing
    changed) when the row has meanwhile moved to a status the transition does not leave from.
    """
    rows = type(instance)._default_manager.filter(pk=instance.pk, status__in=rule.sources)
    if condition is not None:
        rows = rows.filter(condition)
    if not rows.update(status=rule.target, **fields):
        return False
    instance.refresh_from_db(fields=["status", *fields])
    return True
