"""The key census: how many rows reference each key version, from the version columns.

This is the evidence ``rotatekeys --retire`` needs ("zero rows reference version N") and what
``rotation_status`` prints. It reads every row through the model's base manager, so a custom
default manager that hides rows (soft delete) cannot hide a reference.
"""

from __future__ import annotations

import struct

from django.db.models import BinaryField, Count, Q
from django.db.models.functions import Substr

from . import registry

# A ciphertext's header: the format byte, then the key version as a big-endian uint32.
_VERSION_BYTES = struct.Struct(">I")


def counts(column: registry.Column, using: str | None = None) -> dict[int | None, int]:
    """``{version: rows}`` for one column (``None``: rows with no value yet)."""
    qs = column.model._base_manager.using(using).values(column.version_attname)
    rows = qs.annotate(n=Count("pk")).order_by(column.version_attname)
    return {row[column.version_attname]: row["n"] for row in rows}


def referencing(column: registry.Column, version: int) -> Q:
    """Rows of ``column`` under ``version``: by the version column, or, where that is NULL (a value
    a migration filled in as the field's default), by the version in the ciphertext's header."""
    q = Q(**{column.version_attname: version})
    if column.purpose == "encrypt":
        header = _VERSION_BYTES.pack(version)
        q |= Q(**{f"{column.version_attname}__isnull": True, "keyrotation_header": header})
    return q


def references(keyring: str, purpose: str, version: int, using: str | None = None) -> dict[str, int]:
    """``{label: rows}`` of every column of ``keyring``/``purpose`` holding ``version`` (zeros included)."""
    out = {}
    for col in registry.columns(keyring=keyring, purpose=purpose):
        rows = col.model._base_manager.using(using)
        if col.purpose == "encrypt":
            header = Substr(col.field_name, 2, _VERSION_BYTES.size, output_field=BinaryField())
            rows = rows.annotate(keyrotation_header=header)
        out[col.label] = rows.filter(referencing(col, version)).count()
    return out


def unversioned(column: registry.Column, using: str | None = None) -> int:
    """Rows of an encrypted ``column`` holding a value but no version (see :func:`referencing`)."""
    if column.purpose != "encrypt":
        return 0
    rows = column.model._base_manager.using(using)
    unknown = {f"{column.version_attname}__isnull": True, f"{column.field_name}__isnull": False}
    return rows.filter(**unknown).count()
