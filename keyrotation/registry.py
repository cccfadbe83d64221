"""Registry of encrypted and blind-indexed columns, keyed by label ``app_label.ModelName.field``.

Fields register themselves from ``contribute_to_class``; the engine, the census and the admin read
the registry. Abstract models and swapped models are never registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from django.db import models


@dataclass(frozen=True)
class Column:
    """One registered column and its companion version column."""

    label: str
    model: type[models.Model]
    field_name: str
    version_attname: str
    keyring: str
    purpose: str  # "encrypt" or "index"

    @property
    def model_label(self) -> str:
        return self.model._meta.label

    def __str__(self) -> str:
        return self.label


_COLUMNS: dict[str, Column] = {}


def label_for(model: type[models.Model], name: str) -> str:
    """The label bound into every ciphertext of a column (part of the AAD: never change it)."""
    return f"{model._meta.app_label}.{model._meta.object_name}.{name}"


def register(column: Column) -> None:
    """Record a column (idempotent per label; a later class of the same label replaces it)."""
    _COLUMNS[column.label] = column


def get(label: str) -> Column:
    """The column registered as ``label``.

    Raises:
        LookupError: with the labels that do exist.
    """
    try:
        return _COLUMNS[label]
    except KeyError:
        known = ", ".join(sorted(_COLUMNS)) or "none"
        raise LookupError(
            f"no encrypted or indexed column {label!r}; expected 'app_label.ModelName.field' "
            f"(registered: {known})"
        ) from None


def columns(keyring: str | None = None, purpose: str | None = None) -> Iterator[Column]:
    """Registered columns, optionally for one keyring and/or purpose, in label order."""
    for label in sorted(_COLUMNS):
        col = _COLUMNS[label]
        if col.model._meta.abstract or col.model._meta.swapped:
            continue
        if keyring is not None and col.keyring != keyring:
            continue
        if purpose is not None and col.purpose != purpose:
            continue
        yield col
