"""Lookups on encrypted fields: equality through a blind index, ``isnull`` on the column itself.

``filter(email="a@b.c")`` on an ``EncryptedField`` with a ``BlindIndexField(source="email")``
becomes ``email_bidx IN (<digest under v1>, <digest under v2>, ...)``: one digest per decryptable
index key version, so rows indexed before and after an index-key rotation are all found. ``__in``
takes the union of every value's digests. The normalisation of the blind index applies (by default
text is compared after NFKC + casefold + strip).

Every other lookup (``icontains``, ``gt``, ``startswith``, ...) raises ``FieldError``: it would run
on ciphertext and silently match nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import EmptyResultSet, FieldError
from django.db.models import Lookup
from django.db.models.expressions import Col
from django.db.models.lookups import IsNull

from .. import codecs

if TYPE_CHECKING:
    from .encrypted import EncryptedField


class _BlindIndexLookup(Lookup):
    """Base of ``exact`` / ``in`` through the source field's ``search_index``."""

    prepare_rhs = False
    can_use_none_as_rhs = False

    def get_prep_lookup(self) -> Any:
        if hasattr(self.rhs, "resolve_expression"):
            raise FieldError(
                f"{self.lhs.target.label}: cannot compare an encrypted field with an expression or "
                "a subquery; pass plaintext values."
            )
        return self.rhs

    def _to_python(self, value: Any) -> Any:
        """The base field's value, rejected when the filter is built (as Django's own fields do),
        with a ``ValidationError`` that does not quote it."""
        return None if value is None else codecs.to_python(self.lhs.target.base_field, value)

    def _values(self) -> list[Any]:
        raise NotImplementedError

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        field: EncryptedField = self.lhs.target
        index = field.search_index
        digests: list[bytes] = []
        for value in self._values():
            if value is not None:
                digests.extend(index.lookup_digests(value))
        if not digests:
            raise EmptyResultSet
        column_sql, column_params = compiler.compile(Col(self.lhs.alias, index))
        unique = list(dict.fromkeys(digests))
        placeholders = ", ".join(["%s"] * len(unique))
        params = [index.get_db_prep_value(d, connection) for d in unique]
        return f"{column_sql} IN ({placeholders})", [*column_params, *params]


class BlindIndexExact(_BlindIndexLookup):
    lookup_name = "exact"

    def get_prep_lookup(self) -> Any:
        return self._to_python(super().get_prep_lookup())

    def _values(self) -> list[Any]:
        return [self.rhs]


class BlindIndexIn(_BlindIndexLookup):
    lookup_name = "in"

    def get_prep_lookup(self) -> Any:
        rhs = super().get_prep_lookup()
        if isinstance(rhs, (str, bytes)) or not hasattr(rhs, "__iter__"):
            raise FieldError(f"{self.lhs.target.label}: __in needs an iterable of plaintext values")
        return [self._to_python(v) for v in rhs]

    def _values(self) -> list[Any]:
        return self.rhs


def lookup_for(field: EncryptedField, name: str) -> type[Lookup]:
    """The lookup class for ``name`` on ``field``, or raise ``FieldError`` saying what to do."""
    if name == "isnull":
        return IsNull
    where = f"{field.model._meta.label}.{field.name}" if hasattr(field, "model") else field.name
    if name in ("exact", "in"):
        if not field.blind_indexes:
            raise FieldError(
                f"Cannot filter {where} by value: it is encrypted and has no blind index. "
                f"Add a BlindIndexField(source='{field.name}') to the model."
            )
        return BlindIndexExact if name == "exact" else BlindIndexIn
    raise FieldError(
        f"Unsupported lookup '{name}' on encrypted field {where}: the database only sees ciphertext. "
        "Only exact, in (through a BlindIndexField) and isnull are supported; filter in Python "
        "after decrypting, or store a searchable derived value."
    )
