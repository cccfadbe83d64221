"""The key census: how many rows reference each key version, from the version columns.

This is the evidence ``rotatekeys --retire`` needs ("zero rows reference version N") and what
``rotation_status`` prints. It reads every row through the model's base manager, so a custom
default manager that hides rows (soft delete) cannot hide a reference.
"""

from __future__ import annotations

from django.db.models import Count

from . import registry


def counts(column: registry.Column, using: str | None = None) -> dict[int | None, int]:
    """``{version: rows}`` for one column (``None``: rows with no value yet)."""
    qs = column.model._base_manager.using(using).values(column.version_attname)
    rows = qs.annotate(n=Count("pk")).order_by(column.version_attname)
    return {row[column.version_attname]: row["n"] for row in rows}


def references(keyring: str, purpose: str, version: int, using: str | None = None) -> dict[str, int]:
    """``{label: rows}`` of every column of ``keyring``/``purpose`` holding ``version`` (zeros included)."""
    return {
        col.label: col.model._base_manager.using(using).filter(**{col.version_attname: version}).count()
        for col in registry.columns(keyring=keyring, purpose=purpose)
    }
