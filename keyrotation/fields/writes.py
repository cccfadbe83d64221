"""Keeping version, blind-index and legacy columns right on every write path.

``save()``, ``create()`` and ``bulk_create()`` call ``pre_save`` on every field, which seals the
value and sets its companion columns. The other paths are handled here:

* ``QuerySet.update()`` and ``bulk_update()``: :func:`prepare_update` and :func:`bulk_update_fields`,
  called by the queryset class every manager of the model gets (see :mod:`.queryset`);
* ``bulk_create(update_conflicts=True, update_fields=[...])``: :func:`upsert_fields` adds the
  companion columns to what a conflict updates;
* ``save(update_fields=[...])`` and ``loaddata`` (``raw=True`` saves skip ``pre_save``):
  :func:`wrap_save_table` adds the companion columns to ``update_fields`` and seals raw saves.

A field with ``bind_to`` (:mod:`.binding`) is sealed per row on every one of these paths;
``update()`` of such a field (other than to NULL) is refused, since one ``UPDATE`` writes one value
for every row, and so is any write that would change a field that values are bound to
(``update()``, ``bulk_update()``, an upsert that leaves a bound value on another row).
``save(update_fields=...)`` naming a field that values are bound to rewrites those values too.

Anything else that would write plaintext (e.g. ``Model._base_manager.update(...)``, a plain
``Manager``) reaches :meth:`EncryptedField.get_db_prep_value` and raises ``FieldError``: a stale
version column is never written silently.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from django.core.exceptions import FieldError
from django.db import models
from django.db.models.expressions import Value

from . import adoption, binding
from .encrypted import EncryptedField
from .refusals import resolve


def encrypted_fields(model: type[models.Model]) -> list[EncryptedField]:
    return [f for f in model._meta.concrete_fields if isinstance(f, EncryptedField)]


def companion_names(field: EncryptedField) -> list[str]:
    """The columns written with ``field``: its version, its blind indexes and their versions, and
    the legacy column it adopts from."""
    names = [field.version_attname]
    for index in field.blind_indexes:
        names += [index.name, index.version_attname]
    if field.adopt_from:
        names.append(field.adopt_from)
    return names


def prepare_update(model: type[models.Model], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Seal plaintext values of ``update(**kwargs)`` and add their version and index columns."""
    out = dict(kwargs)
    for name, value in kwargs.items():
        field = resolve(model, name)
        binding.refuse_update(model, field, name, value)
        if not isinstance(field, EncryptedField):
            continue
        if hasattr(value, "resolve_expression"):
            raise FieldError(
                f"Cannot update encrypted field '{name}' from an expression; pass a plaintext value."
            )
        sealed = field.seal_value(value)
        if field.adopt_from:
            out[field.adopt_from] = None  # a write of the field retires the legacy copy
        out[field.name] = sealed
        out[field.version_attname] = sealed.version if sealed is not None else None
        for index in field.blind_indexes:
            digest, version = index.index_value(value)
            out[index.name], out[index.version_attname] = digest, version
    return out


def seal_in_place(obj: models.Model, field: EncryptedField) -> Any:
    """Refresh ``field``'s blind indexes on ``obj`` and replace its value by a sealed ``Value``.

    Returns the value it replaced, for :func:`restore`. A ``Value`` rather than the ``Sealed``
    token itself: the descriptor would decrypt a ``Sealed`` when the query reads the attribute.
    """
    before = obj.__dict__.get(field.attname)
    for index in field.blind_indexes:
        index.refresh(obj)
    obj.__dict__[field.attname] = Value(field.seal(obj), output_field=field)
    return before


def restore(saved: Iterable[tuple[models.Model, str, Any]]) -> None:
    for obj, attname, value in saved:
        obj.__dict__[attname] = value


def bulk_update_fields(
    model: type[models.Model], objs: Sequence[models.Model], fields: Iterable[str]
) -> tuple[list[str], list[tuple[models.Model, str, Any]]]:
    """Seal the encrypted ``fields`` of ``objs`` for ``bulk_update``.

    Returns the field names to update (companions added) and what :func:`restore` puts back
    afterwards.
    """
    names = list(fields)
    saved: list[tuple[models.Model, str, Any]] = []
    for field in [model._meta.get_field(n) for n in names]:
        binding.refuse_changing(model, field, field.name, "bulk_update()")
        if not isinstance(field, EncryptedField):
            continue
        names += companion_names(field)
        for obj in objs:
            adoption.clear_legacy(obj, [field])
            saved.append((obj, field.attname, seal_in_place(obj, field)))
    return list(dict.fromkeys(names)), saved


def upsert_fields(
    model: type[models.Model], update_fields: Iterable[str] | None, unique_fields: Iterable[str] | None
) -> list[str] | None:
    """``update_fields`` of an upserting ``bulk_create`` with the companions of encrypted fields.

    Raises:
        FieldError: ``unique_fields`` names an encrypted field (its ciphertexts never conflict).
    """
    for name in unique_fields or ():
        field = resolve(model, name)
        if isinstance(field, EncryptedField):
            index = next((i for i in field.blind_indexes if i.unique), None)
            hint = f"use its unique blind index '{index.name}'" if index else "add a unique BlindIndexField"
            raise FieldError(
                f"Cannot use encrypted field '{name}' in unique_fields: its ciphertexts never "
                f"conflict; {hint}."
            )
    if update_fields is None:
        return None
    names = list(update_fields)
    binding.refuse_upsert(model, names, list(unique_fields or ()))
    for name in list(names):
        field = resolve(model, name)
        if isinstance(field, EncryptedField):
            names += companion_names(field)
    return list(dict.fromkeys(names))


def wrap_save_table(model: type[models.Model]) -> None:
    """Wrap ``model._save_table`` (idempotent) for ``save(update_fields=...)`` and raw saves."""
    original = model._save_table
    if getattr(original, "_keyrotation", False):
        return

    @functools.wraps(original)
    def _save_table(
        self, raw=False, cls=None, force_insert=False, force_update=False, using=None, update_fields=None
    ):
        table = (cls or self.__class__)._meta.concrete_model
        fields = [f for f in table._meta.local_concrete_fields if isinstance(f, EncryptedField)]
        saved = []
        if raw:  # loaddata: pre_save is skipped, so seal here
            saved = [(self, field.attname, seal_in_place(self, field)) for field in fields]
        if update_fields is None:
            written = fields
        else:
            written = [f for f in fields if f.name in update_fields or f.attname in update_fields]
            # Writing a field that values are bound to seals those values again with it (and fails
            # loudly for a value loaded under another bound value and never read).
            again = [
                f
                for f in fields
                if f.bind_to
                and f not in written
                and {f.bound_field.name, f.bound_field.attname} & update_fields
            ]
            written += again
            update_fields = frozenset(update_fields) | {f.name for f in again}
        adoption.clear_legacy(self, written)
        if update_fields is not None:
            extra = {name for field in written for name in companion_names(field)}
            update_fields = frozenset(update_fields) | extra
        try:
            return original(self, raw, cls, force_insert, force_update, using, update_fields)
        finally:
            restore(saved)

    _save_table._keyrotation = True
    model._save_table = _save_table
