"""Adoption: an ``EncryptedField(..., adopt_from="<legacy field>")`` reading and retiring a legacy column.

While a field adopts, a row whose new column is NULL reads its value from the legacy column (decoded
by the field's ``legacy`` decoder); every write of the field sets the legacy column to NULL in the
same statement; ``reencrypt`` adopts the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.core import checks
from django.core.exceptions import FieldDoesNotExist
from django.db import models

from .. import legacy
from ..exceptions import DecryptionError
from ..legacy import LegacyDecodeError, Plaintext, decode_value
from ..tracebacks import forgets_locals
from .sealed import NOT_ADOPTED

if TYPE_CHECKING:
    from .encrypted import EncryptedField


def default_decoder() -> Plaintext:
    """The decoder of a field that adopts without naming one: the column holds plaintext."""
    return Plaintext()


def legacy_field(field: EncryptedField) -> models.Field | None:
    """The legacy field ``field`` adopts from (``None`` when it does not adopt, or it is missing)."""
    try:
        return legacy.legacy_field(field)
    except FieldDoesNotExist:
        return None


def check(field: EncryptedField, encrypted_class: type) -> list[checks.CheckMessage]:
    """``keyrotation.E103`` when ``adopt_from`` names no concrete, nullable, plain field."""
    if not field.adopt_from:
        return []
    source = legacy_field(field)
    if (
        source is None
        or source is field
        or not getattr(source, "concrete", False)
        or isinstance(source, encrypted_class)
        or source.is_relation
        or not source.null
    ):
        return [
            checks.Error(
                f"EncryptedField '{field.name}': adopt_from '{field.adopt_from}' must name a concrete, "
                f"nullable, non-encrypted field of {field.model._meta.label}.",
                hint="Declare the legacy column as a plain field with null=True (see docs/adoption.md).",
                obj=field,
                id="keyrotation.E103",
            )
        ]
    return []


@forgets_locals  # ``raw`` may be the plain value
def read_legacy(field: EncryptedField, instance: models.Model) -> Any:
    """The decoded value of the legacy column of ``instance`` (None when it is NULL).

    Raises:
        DecryptionError: naming the label and pk; never a byte of the stored value.
    """
    if not field.adopt_from:
        return None
    raw = getattr(instance, field.legacy_attname)
    if raw is None:
        return None
    try:
        return decode_value(field, raw)
    except LegacyDecodeError as exc:
        raise DecryptionError(
            f"Legacy value does not decode ({field.legacy.name}: {exc})", label=field.label, pk=instance.pk
        ) from None


def clear_legacy(obj: models.Model, fields: Iterable[EncryptedField]) -> list[str]:
    """Set to None, on ``obj``, the legacy column of every adopting field whose value was written
    (assigned or read: anything but NOT_ADOPTED). Returns the legacy field names involved."""
    names = []
    for field in fields:
        if not field.adopt_from:
            continue
        names.append(field.adopt_from)
        if obj.__dict__.get(field.attname, NOT_ADOPTED) is not NOT_ADOPTED:
            obj.__dict__[field.legacy_attname] = None
    return names
