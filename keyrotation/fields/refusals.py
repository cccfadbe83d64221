"""Queries the database cannot answer on ciphertext, refused with ``FieldError`` before they run.

Ordering, aggregating, grouping or de-duplicating by an encrypted column would compare random
ciphertexts: a silent wrong answer. Lookups other than ``exact``, ``in`` and ``isnull`` are refused
by :mod:`.lookups`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import FieldDoesNotExist, FieldError
from django.db import models
from django.db.models.aggregates import Count
from django.db.models.expressions import F

from .encrypted import EncryptedField

ORDER_ADVICE = "Order or aggregate in Python after decrypting, or on a plaintext field."

# Equal values have different ciphertexts (a random nonce each): the database can neither
# deduplicate nor group them.
DISTINCT_ADVICE = (
    "Every value has its own ciphertext, so no two rows would compare equal: deduplicate in Python "
    "after decrypting, or use the field's BlindIndexField."
)


def resolve(model: type[models.Model] | None, path: str) -> models.Field | None:
    """The field at the end of a ``__``-separated path from ``model`` (None where it breaks off)."""
    field = None
    for part in path.split("__"):
        if model is None:
            return None
        try:
            field = model._meta.pk if part == "pk" else model._meta.get_field(part)
        except FieldDoesNotExist:  # unknown names are Django's to report
            return None
        model = getattr(field, "related_model", None)
    return field


def refuse(model: type[models.Model], names: Iterable[str], what: str, advice: str = ORDER_ADVICE) -> None:
    """Raise ``FieldError`` if any of ``names`` (``-``/``?`` prefixes allowed) is encrypted."""
    for name in names:
        field = resolve(model, name.lstrip("-?"))
        if isinstance(field, EncryptedField):
            raise FieldError(
                f"Cannot use encrypted field '{name.lstrip('-?')}' in {what}: the database only holds "
                f"ciphertext. {advice}"
            )


def referenced_names(expr: Any, inside_count: bool = False) -> Iterable[str]:
    """The ``F()`` names an expression reads, except under ``Count`` (counting rows is fine)."""
    if isinstance(expr, F):
        if not inside_count:
            yield expr.name
        return
    if isinstance(expr, Count):
        inside_count = True
    for source in getattr(expr, "get_source_expressions", lambda: [])():
        if source is not None:
            yield from referenced_names(source, inside_count)


def refuse_expressions(model: type[models.Model], exprs: Iterable[Any], what: str) -> None:
    refuse(model, [name for expr in exprs for name in referenced_names(expr)], what)


def refuse_ordering(model: type[models.Model], field_names: Iterable[Any]) -> None:
    names = []
    for item in field_names:
        names += [item] if isinstance(item, str) else list(referenced_names(item))
    refuse(model, names, "order_by()")
