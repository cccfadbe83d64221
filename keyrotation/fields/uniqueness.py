"""Unique blind indexes in ``Model.validate_unique()``: "already exists" as an error of the source field.

Django's own unique check would compare the index attribute, which a new or edited instance does
not have yet, and name a column no form shows. Here the source's plaintext is indexed under every
decryptable index version (as a lookup does, normalised the same way), and a match on another row
is reported under the *source* field with Django's own "… with this … already exists." message, so
``full_clean()``, ModelForms and the admin report a duplicate instead of an ``IntegrityError``.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from .blind_index import BlindIndexField
from .sealed import NOT_ADOPTED

_CHECKING = contextvars.ContextVar("keyrotation_validate_unique", default=False)


def unique_indexes(model: type[models.Model]) -> list[BlindIndexField]:
    return [f for f in model._meta.concrete_fields if isinstance(f, BlindIndexField) and f.unique]


def duplicate_errors(
    instance: models.Model, exclude: Iterable[str], indexes: Iterable[BlindIndexField] | None = None
) -> dict[str, list[ValidationError]]:
    """``{source field name: [error]}`` for each unique blind index (of ``indexes``, by default
    every one of the model) whose value another row has."""
    exclude = set(exclude)
    errors: dict[str, list[ValidationError]] = {}
    for index in unique_indexes(type(instance)) if indexes is None else indexes:
        source = index.source_field
        if source.name in exclude or instance.__dict__.get(source.attname) is NOT_ADOPTED:
            continue
        value = getattr(instance, source.attname)
        if value is None:
            continue
        try:
            digests = index.lookup_digests(value)
        except ValidationError:
            continue  # not a valid value: clean_fields() reports it
        declaring = index.model
        matches = declaring._default_manager.filter(**{f"{index.name}__in": digests})
        pk = instance._get_pk_val(declaring._meta)
        if not instance._state.adding and pk is not None:
            matches = matches.exclude(pk=pk)
        if matches.exists():
            error = instance.unique_error_message(declaring, (source.name,))
            errors.setdefault(source.name, []).append(error)
    return errors


def wrap_validate_unique(model: type[models.Model]) -> None:
    """Make ``model.validate_unique`` (idempotent) check its unique blind indexes by their source."""
    original = model.validate_unique
    if getattr(original, "_keyrotation", False):
        return

    @functools.wraps(original)
    def validate_unique(self: models.Model, exclude: Any = None) -> None:
        if _CHECKING.get():  # an override of validate_unique calling super(): checked once, outside
            return original(self, exclude=exclude)
        exclude = set(exclude or ())
        indexes = unique_indexes(type(self))
        errors: dict[str, Any] = {}
        token = _CHECKING.set(True)
        try:
            original(self, exclude=exclude | {f.name for f in indexes})
        except ValidationError as exc:
            errors = exc.update_error_dict(errors)
        finally:
            _CHECKING.reset(token)
        for name, found in duplicate_errors(self, exclude, indexes).items():
            errors.setdefault(name, []).extend(found)
        if errors:
            raise ValidationError(errors)

    validate_unique._keyrotation = True
    model.validate_unique = validate_unique
