"""The key census: how many rows reference each key version, on every database that holds them.

This is the evidence ``rotatekeys --retire`` and ``--destroy`` need ("zero rows reference version
N") and what ``rotation_status`` prints. It reads every row through the model's base manager, so
a custom default manager that hides rows (soft delete) cannot hide a reference, and it reads every
database that may hold the model (:func:`keyrotation.databases.holding`), so a second alias, a
shard or a replica cannot either.

A row references version N of an encryption key when its version column says N **or** the header
of its ciphertext does. Decryption uses the header; the version column can be wrong (a restore
that mixed columns, a hand-written ``UPDATE``), and a version retired while a row's header still
names it leaves that row unreadable. Reading the header means a scan of the column, which a count
by the version column is anyway unless that column is indexed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from django.db import router
from django.db.models import BinaryField, Count, Q
from django.db.models.functions import Substr

from . import databases, registry

# A ciphertext's header: the format byte, then the key version as a big-endian uint32.
_VERSION_BYTES = struct.Struct(">I")


@dataclass(frozen=True)
class Reference:
    """Rows of one column, on one database, that reference one key version."""

    label: str
    database: str
    rows: int  # by the version column or by the ciphertext header
    by_header: int = 0  # of which only the header names the version (the column says otherwise)

    def describe(self) -> str:
        where = f"{self.rows} row(s) of {self.label} on database {self.database!r}"
        if self.by_header:
            where += f" ({self.by_header} of them only by the ciphertext header)"
        return where


def _rows(column: registry.Column, using: str | None):
    """The column's model rows on ``using``: by default its write database, never a replica."""
    return column.model._base_manager.using(using or router.db_for_write(column.model))


def counts(column: registry.Column, using: str | None = None) -> dict[int | None, int]:
    """``{version: rows}`` of one column on one database (default: the model's write database),
    by the version column (``None``: rows with no value yet)."""
    qs = _rows(column, using).values(column.version_attname)
    rows = qs.annotate(n=Count("pk")).order_by(column.version_attname)
    return {row[column.version_attname]: row["n"] for row in rows}


def count(column: registry.Column, version: int, using: str) -> Reference:
    """The rows of ``column`` on ``using`` that reference ``version``."""
    rows = column.model._base_manager.using(using)
    by_column = Q(**{column.version_attname: version})
    if column.purpose != "encrypt":  # a digest has no header: the version column is all there is
        return Reference(column.label, using, rows.filter(by_column).count())
    header = Substr(column.field_name, 2, _VERSION_BYTES.size, output_field=BinaryField())
    by_header = Q(keyrotation_header=_VERSION_BYTES.pack(version)) & ~by_column
    totals = rows.annotate(keyrotation_header=header).aggregate(
        column=Count("pk", filter=by_column), header=Count("pk", filter=by_header)
    )
    return Reference(column.label, using, totals["column"] + totals["header"], totals["header"])


def evidence(keyring: str, purpose: str, version: int, database: str | None = None) -> list[Reference]:
    """Every column of ``keyring``/``purpose`` on every database that holds it (or on
    ``database`` only), with the rows that reference ``version`` (zeros included)."""
    cols = list(registry.columns(keyring=keyring, purpose=purpose))
    where = databases.holding_all({col.model for col in cols}, only=database)
    return [count(col, version, alias) for col in cols for alias in where[col.model]]


def references(keyring: str, purpose: str, version: int, database: str | None = None) -> dict[str, int]:
    """``{label: rows}`` of every column of ``keyring``/``purpose`` holding ``version``, summed
    over the databases (zeros included)."""
    out: dict[str, int] = {}
    for ref in evidence(keyring, purpose, version, database):
        out[ref.label] = out.get(ref.label, 0) + ref.rows
    return out


def unversioned(column: registry.Column, using: str | None = None) -> int:
    """Rows of an encrypted ``column`` holding a value but no version (a default a migration
    filled in): the engine takes their version from the header."""
    if column.purpose != "encrypt":
        return 0
    rows = _rows(column, using)
    unknown = {f"{column.version_attname}__isnull": True, f"{column.field_name}__isnull": False}
    return rows.filter(**unknown).count()
