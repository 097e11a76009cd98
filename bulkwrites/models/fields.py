"""Checking given settings against a model's fields, shared by jobs and verifications."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models


def clean_field_values(model: type[models.Model], values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The given values (None: not given) converted by the model's fields, and one message per bad one.

    The fields' validators are the bounds: forms, the CLI and the services all check through them.
    """
    clean: dict[str, Any] = {}
    errors: list[str] = []
    for name, value in values.items():
        if value is None:
            continue
        field = model._meta.get_field(name)
        assert isinstance(field, models.Field)
        try:
            clean[name] = field.clean(value, None)
        except ValidationError as exc:
            errors.extend(f"{field.verbose_name}: {message}" for message in exc.messages)
    return clean, errors
