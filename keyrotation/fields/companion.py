"""The ``<name>_key_version`` column that every encrypted or blind-index field adds beside itself."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.migrations.state import StateApps

from .. import conf

VERSION_SUFFIX = "_key_version"


class KeyVersionField(models.PositiveSmallIntegerField):
    """The ``<name>_key_version`` companion column, added by the field it describes.

    Skips ``contribute_to_class`` when the model already has the column: a model re-rendered from
    migration state, or copied from an abstract parent, must not get it twice.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(null=True, blank=True, editable=False, serialize=False)
        super().__init__(*args, **kwargs)

    def contribute_to_class(self, cls: type[models.Model], name: str, private_only: bool = False) -> None:
        if any(f.name == name for f in cls._meta.local_fields):
            return
        super().contribute_to_class(cls, name, private_only=private_only)

    def deconstruct(self) -> tuple[str, str, list, dict]:
        name, _, args, kwargs = super().deconstruct()
        for key in ("null", "blank", "editable", "serialize"):
            kwargs.pop(key, None)
        return name, public_path(self, KeyVersionField), args, kwargs


def public_path(field: models.Field, public_class: type) -> str:
    """The import path migrations write for ``field``: ``keyrotation.fields.<Class>`` for the class
    itself, the subclass's own path for a project's subclass."""
    cls = type(field)
    if cls is public_class:
        return f"keyrotation.fields.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def is_historical(model: type[models.Model]) -> bool:
    """Whether ``model`` was rendered from migration state, or copied from such a model by a schema
    editor (SQLite rebuilds a table from a copy whose module stays Django's ``"__fake__"``)."""
    return isinstance(model._meta.apps, StateApps) or model.__module__ == "__fake__"


def add_version_field(field: models.Field, cls: type[models.Model]) -> None:
    """Set ``field.version_attname`` and add the companion column to ``cls`` (unless historical)."""
    field.version_attname = f"{field.name}{VERSION_SUFFIX}"
    if is_historical(cls):
        return  # the migration state declares the column itself
    companion = KeyVersionField(db_index=conf.index_version_columns())
    cls.add_to_class(field.version_attname, companion)
