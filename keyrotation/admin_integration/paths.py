"""Which admin settings reach an encrypted field: field paths, ordering entries, filter entries."""

from __future__ import annotations

from typing import Any, NamedTuple

from django.contrib.admin import ModelAdmin
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models.constants import LOOKUP_SEP
from django.db.models.expressions import F, OrderBy

from ..fields import EncryptedField


class Reach(NamedTuple):
    """Where a lookup path meets an encrypted field: ``person__email__iexact`` gives
    ``(Person.email, ["person"], ["iexact"])``."""

    field: EncryptedField
    relations: list[str]
    rest: list[str]


def reach(model: type[models.Model], path: str) -> Reach | None:
    """The encrypted field that ``path`` names or crosses, following relations; else ``None``."""
    opts = model._meta
    parts = path.split(LOOKUP_SEP)
    for i, part in enumerate(parts):
        try:
            field = opts.pk if part == "pk" else opts.get_field(part)
        except FieldDoesNotExist:
            return None
        if isinstance(field, EncryptedField):
            return Reach(field, parts[:i], parts[i + 1 :])
        if not hasattr(field, "path_infos"):
            return None  # a plain field: the rest are its lookups
        opts = field.path_infos[-1].to_opts
    return None


def names_encrypted(model: type[models.Model], target: Any) -> bool:
    """Whether a field path or an ordering entry (``"-email"``, ``F("email").asc()``) reaches an
    encrypted field of ``model`` or of a related model."""
    if isinstance(target, OrderBy):
        target = target.expression
    if isinstance(target, F):
        target = target.name
    return isinstance(target, str) and reach(model, target.lstrip("-")) is not None


def has_encrypted_fields(model: type[models.Model]) -> bool:
    return any(isinstance(f, EncryptedField) for f in model._meta.concrete_fields)


def filter_path(entry: Any) -> str | None:
    """The field path of a ``list_filter`` entry (``None`` for a ``SimpleListFilter`` class)."""
    if isinstance(entry, (tuple, list)) and entry:
        entry = entry[0]
    return entry if isinstance(entry, str) else None


def admin_order_field(model_admin: ModelAdmin, name: Any) -> Any:
    """What Django's change list sorts by for the ``list_display`` entry ``name`` (or ``None``)."""
    if not callable(name):
        try:
            return model_admin.model._meta.get_field(name).name
        except FieldDoesNotExist:
            name = getattr(model_admin, name, None) or getattr(model_admin.model, name, name)
    if isinstance(name, property):
        name = name.fget
    if isinstance(name, str):
        return name if LOOKUP_SEP in name else None
    return getattr(name, "admin_order_field", None)
