"""Where an adopted column comes from: plaintext, or one of four encryption libraries.

For each source, ``manage.py encryptcolumn`` needs three things, all derived from the field as the
model declares it today:

* the Django field the new ``EncryptedField`` wraps (:func:`base_field`);
* the legacy field: the old column declared with the type it really has in the database
  (:func:`legacy_field`): the original field for plaintext, ``BinaryField`` for
  django-cryptography and django-fernet-fields (``bytea``/``BLOB``), ``TextField`` for
  django-encrypted-model-fields and django-fernet-encrypted-fields (``text``);
* the decoder of :mod:`keyrotation.legacy` that reads it (:attr:`Source.decoder`).

The library fields known (the libraries are never imported; their classes are recognised by
module and name):

===============================  ===================================  ==================================
source                           library field                        wrapped Django field
===============================  ===================================  ==================================
django-cryptography              ``encrypt(<any supported field>)``   the field given to ``encrypt()``
django-fernet-fields             ``Encrypted<X>Field``                X in Char, Text, Email, Integer,
                                                                      Date, DateTime
django-encrypted-model-fields    ``Encrypted<X>Field``                X in Char, Text, Email, Integer,
                                                                      SmallInteger, BigInteger,
                                                                      PositiveInteger,
                                                                      PositiveSmallInteger, Date,
                                                                      DateTime, Boolean
django-fernet-encrypted-fields   ``Encrypted<X>Field``                X in Char, Text, Email, Integer,
                                                                      Float, Date, DateTime, Boolean
===============================  ===================================  ==================================

Any other class is refused with a message naming it (django-fernet-encrypted-fields'
``EncryptedJSONField`` encrypts each leaf of the document and loses their types: there is no
value to adopt).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from django.db import models

from . import codecs
from .fields import EncryptedField

# Options that describe the column, not the value: they go to neither the new field's base field
# (an EncryptedField refuses them or owns its column) nor, except null/db_column, the legacy field.
COLUMN_OPTIONS = frozenset(
    {
        "null",
        "blank",
        "default",
        "unique",
        "db_index",
        "primary_key",
        "db_column",
        "db_tablespace",
        "db_default",
    }
)
# Options of the value that must not act on the legacy column (a save would rewrite it).
WRITE_OPTIONS = frozenset({"auto_now", "auto_now_add"})


class ColumnType(enum.Enum):
    """The type the legacy column really has in the database."""

    ORIGINAL = "original"
    BINARY = "binary"
    TEXT = "text"


@dataclass(frozen=True)
class Source:
    """One source of adopted data."""

    name: str
    decoder: str  # the decoder expression printed into models.py
    column: ColumnType
    module: str | None  # where the library's field classes live (None: plaintext)
    wraps: frozenset[str]  # X of Encrypted<X>Field (empty: the library wraps any field)


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("plaintext", "legacy.Plaintext()", ColumnType.ORIGINAL, None, frozenset()),
        Source(
            "django-cryptography",
            "legacy.DjangoCryptography()",
            ColumnType.BINARY,
            "django_cryptography.fields",
            frozenset(),
        ),
        Source(
            "django-fernet-fields",
            "legacy.FernetFields()",
            ColumnType.BINARY,
            "fernet_fields.fields",
            frozenset({"Char", "Text", "Email", "Integer", "Date", "DateTime"}),
        ),
        Source(
            "django-encrypted-model-fields",
            "legacy.EncryptedModelFields()",
            ColumnType.TEXT,
            "encrypted_model_fields.fields",
            frozenset(
                {
                    "Char",
                    "Text",
                    "Email",
                    "Integer",
                    "SmallInteger",
                    "BigInteger",
                    "PositiveInteger",
                    "PositiveSmallInteger",
                    "Date",
                    "DateTime",
                    "Boolean",
                }
            ),
        ),
        Source(
            "django-fernet-encrypted-fields",
            "legacy.FernetEncryptedFields()",
            ColumnType.TEXT,
            "encrypted_fields.fields",
            frozenset({"Char", "Text", "Email", "Integer", "Float", "Date", "DateTime", "Boolean"}),
        ),
    )
}


class UnknownField(ValueError):
    """The field is not one the source's mapping knows (the message says which are)."""


def library_of(field: models.Field) -> Source | None:
    """The library whose field class ``field`` is (``None``: not a known library's field)."""
    module = type(field).__module__
    return next((s for s in SOURCES.values() if s.module and module == s.module), None)


def _value_field(field: models.Field, source: Source) -> models.Field:
    """The field describing the value ``field`` holds: itself for plaintext, the wrapped field of
    ``encrypt()``, ``models.<X>Field`` for a library's ``Encrypted<X>Field``."""
    where = f"{source.name} field {type(field).__module__}.{type(field).__qualname__}"
    if source.module is None:
        library = library_of(field)
        if library is not None or isinstance(field, EncryptedField):
            raise UnknownField(
                f"{where} is not plaintext" + (f": use --from {library.name}" if library else "")
            )
        return field
    if library_of(field) is not source:
        found = library_of(field)
        hint = f" (it is a {found.name} field)" if found else ""
        raise UnknownField(f"{type(field).__qualname__} is not a {source.name} field{hint}")
    if not source.wraps:  # django-cryptography: encrypt(base) deconstructs to its base field
        _, path, args, _ = field.deconstruct()
        if not path.endswith(".encrypt") or not args or not isinstance(args[0], models.Field):
            raise UnknownField(f"{where} is not encrypt(<field>)")
        return args[0]
    cls = type(field).__name__
    inner = (
        cls[len("Encrypted") : -len("Field")] if cls.startswith("Encrypted") and cls.endswith("Field") else ""
    )
    if inner not in source.wraps:
        known = ", ".join(f"Encrypted{x}Field" for x in sorted(source.wraps))
        raise UnknownField(f"{where} has no known Django field to wrap (known: {known})")
    django_cls = getattr(models, f"{inner}Field")
    kwargs = field.deconstruct()[3]
    if issubclass(django_cls, models.CharField) and "max_length" not in kwargs and field.max_length:
        kwargs["max_length"] = field.max_length  # django-encrypted-model-fields leaves it out
    return django_cls(**kwargs)


def base_field(field: models.Field, source: Source) -> models.Field:
    """The unbound Django field the new ``EncryptedField`` wraps, for ``field`` as declared today.

    Raises:
        UnknownField: the field's class is not in ``source``'s mapping, or keyrotation cannot
            encrypt its type.
    """
    value = _value_field(field, source)
    _, _, args, kwargs = value.deconstruct()
    kwargs = {k: v for k, v in kwargs.items() if k not in COLUMN_OPTIONS}
    base = type(value)(*args, **kwargs)
    if codecs.kind(base) is None:
        raise UnknownField(f"EncryptedField cannot wrap {type(base).__name__} (from {field.name})")
    if base.db_index:  # a class default (SlugField): an EncryptedField refuses an index
        base = type(value)(*args, **kwargs, db_index=False)
    return base


def legacy_field(field: models.Field, source: Source) -> models.Field:
    """The old column as declared during the adoption: nullable, no index, no unique constraint,
    ``db_column`` the old column, and the type the column has in the database."""
    if source.column is ColumnType.BINARY:
        return models.BinaryField(null=True, db_column=field.column)
    if source.column is ColumnType.TEXT:
        return models.TextField(null=True, editable=False, db_column=field.column)
    _, _, args, kwargs = field.deconstruct()
    kwargs: dict[str, Any] = {
        k: v for k, v in kwargs.items() if k not in COLUMN_OPTIONS | WRITE_OPTIONS | {"editable"}
    }
    kwargs.update(null=True, editable=False, db_column=field.column)
    legacy = type(field)(*args, **kwargs)
    if legacy.db_index:
        legacy = type(field)(*args, **kwargs, db_index=False)
    return legacy
