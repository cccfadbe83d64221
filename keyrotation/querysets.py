"""Keeping version and blind-index columns right on write paths that skip ``pre_save``.

``save()``, ``create()`` and ``bulk_create()`` call ``pre_save`` on every field, which seals the
value and sets its companion columns. Three paths do not, and are handled here when a model with an
encrypted field is prepared (``class_prepared``):

* ``QuerySet.update()`` and ``bulk_update()``: every manager of the model (its own and inherited
  ones) gets its class swapped for a dynamically created subclass whose queryset class mixes in
  :class:`EncryptedQuerySetMixin`. Related managers are built from ``_default_manager.__class__``,
  so they inherit it. The dynamic classes keep the original's name and module, so a manager with
  ``use_in_migrations = True`` still deconstructs to the original (importable) class.
* ``save(update_fields=[...])`` and ``loaddata`` (``raw=True`` saves skip ``pre_save``): the model's
  ``_save_table`` is wrapped to add the companion columns to ``update_fields`` and to seal values
  of raw saves.

Anything else that would write plaintext (e.g. ``Model._base_manager.update(...)``, which is a
plain ``Manager``) reaches :meth:`EncryptedField.get_db_prep_value` and raises ``FieldError``:
a stale version column is never written silently.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Iterable
from typing import Any

from django.apps import apps as global_apps
from django.core.exceptions import FieldError
from django.db import models
from django.db.models.aggregates import Count
from django.db.models.expressions import F, Value
from django.db.models.signals import class_prepared

from . import registry
from .fields import NOT_ADOPTED, BlindIndexField, EncryptedField, Sealed

_IN_BULK_UPDATE = contextvars.ContextVar("keyrotation_in_bulk_update", default=False)


def encrypted_fields(model: type[models.Model]) -> list[EncryptedField]:
    return [f for f in model._meta.concrete_fields if isinstance(f, EncryptedField)]


def _resolve(model: type[models.Model], path: str) -> models.Field | None:
    field = None
    for part in path.split("__"):
        if model is None:
            return None
        try:
            field = model._meta.pk if part == "pk" else model._meta.get_field(part)
        except Exception:  # noqa: BLE001 - unknown names are Django's to report
            return None
        model = getattr(field, "related_model", None)
    return field


def _refuse(
    model: type[models.Model],
    names: Iterable[str],
    what: str,
    advice: str = "Order or aggregate in Python after decrypting, or on a plaintext field.",
) -> None:
    for name in names:
        field = _resolve(model, name.lstrip("-?"))
        if isinstance(field, EncryptedField):
            raise FieldError(
                f"Cannot use encrypted field '{name.lstrip('-?')}' in {what}: the database only holds "
                f"ciphertext. {advice}"
            )


# Equal values have different ciphertexts (a random nonce each): the database can neither
# deduplicate nor group them.
_DISTINCT_ADVICE = (
    "Every value has its own ciphertext, so no two rows would compare equal: deduplicate in Python "
    "after decrypting, or use the field's BlindIndexField."
)


def _f_names(expr: Any, inside_count: bool = False) -> Iterable[str]:
    if isinstance(expr, F):
        if not inside_count:
            yield expr.name
        return
    if isinstance(expr, Count):
        inside_count = True
    for source in getattr(expr, "get_source_expressions", lambda: [])():
        if source is not None:
            yield from _f_names(source, inside_count)


def _decrypting(iterable_class: type) -> type:
    """An iterable class that opens every sealed value of the rows it yields."""

    def _open(value: Any) -> Any:
        if value is NOT_ADOPTED:
            return None  # values() does not read legacy columns: see docs/adoption.md
        return value.field.open(value) if isinstance(value, Sealed) else value

    class Decrypting(iterable_class):
        def __iter__(self):
            for row in super().__iter__():
                if isinstance(row, dict):
                    yield {k: _open(v) for k, v in row.items()}
                elif isinstance(row, tuple):
                    opened = [_open(v) for v in row]
                    yield type(row)._make(opened) if hasattr(row, "_fields") else tuple(opened)
                else:
                    yield _open(row)

    Decrypting.__name__ = Decrypting.__qualname__ = f"Decrypting{iterable_class.__name__}"
    return Decrypting


def prepare_update(model: type[models.Model], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Seal plaintext values of ``update(**kwargs)`` and add their version and index columns."""
    out = dict(kwargs)
    for name, value in kwargs.items():
        field = _resolve(model, name)
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


class EncryptedQuerySetMixin:
    """Mixed into the queryset class of every manager of a model with encrypted fields."""

    def bulk_create(self, objs: Iterable[models.Model], *args: Any, **kwargs: Any) -> list[models.Model]:
        objs = list(objs)
        adopting = [f for f in encrypted_fields(self.model) if f.adopt_from]
        for obj in objs:
            clear_legacy(obj, adopting)
        return super().bulk_create(objs, *args, **kwargs)

    bulk_create.alters_data = True

    def update(self, **kwargs: Any) -> int:
        if not _IN_BULK_UPDATE.get():
            kwargs = prepare_update(self.model, kwargs)
        return super().update(**kwargs)

    update.alters_data = True

    def bulk_update(self, objs: Iterable[models.Model], fields: Iterable[str], batch_size=None) -> int:
        objs = tuple(objs)
        opts = self.model._meta
        names = list(fields)
        restore: list[tuple[models.Model, str, Any]] = []
        for field in [opts.get_field(n) for n in names]:
            if not isinstance(field, EncryptedField):
                continue
            names.append(field.version_attname)
            for index in field.blind_indexes:
                names += [index.name, index.version_attname]
            if field.adopt_from:
                names.append(field.adopt_from)
            for obj in objs:
                clear_legacy(obj, [field])
                for index in field.blind_indexes:
                    index.refresh(obj)
                restore.append((obj, field.attname, obj.__dict__.get(field.attname)))
                # A Value, not the Sealed token itself: the descriptor would decrypt a Sealed.
                obj.__dict__[field.attname] = Value(field.seal(obj), output_field=field)
        token = _IN_BULK_UPDATE.set(True)
        try:
            return super().bulk_update(objs, list(dict.fromkeys(names)), batch_size=batch_size)
        finally:
            _IN_BULK_UPDATE.reset(token)
            for obj, attname, value in restore:
                obj.__dict__[attname] = value

    bulk_update.alters_data = True

    def order_by(self, *field_names: Any) -> Any:
        names = [n for n in field_names if isinstance(n, str)]
        for expr in field_names:
            names += list(_f_names(expr)) if not isinstance(expr, str) else []
        _refuse(self.model, names, "order_by()")
        return super().order_by(*field_names)

    def _refuse_expressions(self, args: Iterable[Any], kwargs: dict[str, Any], what: str) -> None:
        names = [name for expr in [*args, *kwargs.values()] for name in _f_names(expr)]
        _refuse(self.model, names, what)

    def aggregate(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse_expressions(args, kwargs, "aggregate()")
        return super().aggregate(*args, **kwargs)

    def annotate(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse_expressions(args, kwargs, "annotate()")
        if self._fields and any(getattr(e, "contains_aggregate", False) for e in [*args, *kwargs.values()]):
            # values(...).annotate(<aggregate>) groups by the values() fields
            _refuse(self.model, self._fields, "a GROUP BY (values().annotate())", _DISTINCT_ADVICE)
        return super().annotate(*args, **kwargs)

    def distinct(self, *field_names: Any) -> Any:
        _refuse(self.model, field_names, "distinct()", _DISTINCT_ADVICE)
        clone = super().distinct(*field_names)
        clone._refuse_distinct_values()
        return clone

    def _refuse_distinct_values(self) -> None:
        """DISTINCT over the columns of values() / values_list() (whole rows include the pk, and
        are fine)."""
        if self.query.distinct and not self.query.distinct_fields and self._fields:
            _refuse(self.model, self._fields, "distinct()", _DISTINCT_ADVICE)

    def alias(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse_expressions(args, kwargs, "alias()")
        return super().alias(*args, **kwargs)

    def values(self, *fields: Any, **expressions: Any) -> Any:
        clone = super().values(*fields, **expressions)
        clone._refuse_distinct_values()
        clone._iterable_class = _decrypting(clone._iterable_class)
        return clone

    def values_list(self, *fields: Any, flat: bool = False, named: bool = False) -> Any:
        clone = super().values_list(*fields, flat=flat, named=named)
        clone._refuse_distinct_values()
        clone._iterable_class = _decrypting(clone._iterable_class)
        return clone


_SWAPPED: dict[type, type] = {}


def _swap_manager(manager: models.Manager) -> None:
    cls = type(manager)
    if issubclass(getattr(cls, "_queryset_class", object), EncryptedQuerySetMixin):
        return
    if cls not in _SWAPPED:
        qs_class = cls._queryset_class if hasattr(cls, "_queryset_class") else models.QuerySet
        new_qs = type(
            qs_class.__name__, (EncryptedQuerySetMixin, qs_class), {"__module__": qs_class.__module__}
        )
        attrs = {"_queryset_class": new_qs, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
        _SWAPPED[cls] = type(cls.__name__, (cls,), attrs)
    manager.__class__ = _SWAPPED[cls]


def _wrap_save_table(model: type[models.Model]) -> None:
    original = model._save_table
    if getattr(original, "_keyrotation", False):
        return

    @functools.wraps(original)
    def _save_table(
        self, raw=False, cls=None, force_insert=False, force_update=False, using=None, update_fields=None
    ):
        table = (cls or self.__class__)._meta.concrete_model
        fields = [f for f in table._meta.local_concrete_fields if isinstance(f, EncryptedField)]
        restore = []
        if raw:  # loaddata: pre_save is skipped, so seal here (as a Value: the descriptor opens Sealed)
            for field in fields:
                restore.append((field.attname, self.__dict__.get(field.attname)))
                for index in field.blind_indexes:
                    index.refresh(self)
                self.__dict__[field.attname] = Value(field.seal(self), output_field=field)
        for field in fields:
            if update_fields is None or field.name in update_fields or field.attname in update_fields:
                clear_legacy(self, [field])
        if update_fields is not None:
            extra = set()
            for field in fields:
                if field.name in update_fields or field.attname in update_fields:
                    if field.adopt_from:
                        extra.add(field.adopt_from)
                    extra.add(field.version_attname)
                    for index in field.blind_indexes:
                        extra.update((index.name, index.version_attname))
            update_fields = frozenset(update_fields) | extra
        try:
            return original(self, raw, cls, force_insert, force_update, using, update_fields)
        finally:
            for attname, value in restore:
                self.__dict__[attname] = value

    _save_table._keyrotation = True
    model._save_table = _save_table


def _prepare(sender: type[models.Model], **kwargs: Any) -> None:
    opts = sender._meta
    local = [f for f in opts.local_fields if isinstance(f, (EncryptedField, BlindIndexField))]
    for field in local:
        if isinstance(field, BlindIndexField):
            source = next((f for f in opts.local_fields if f.name == field.source), None)
            if isinstance(source, EncryptedField) and field not in source.blind_indexes:
                source.blind_indexes.append(field)
    if not encrypted_fields(sender):
        return
    for base in sender.__mro__:
        if isinstance(base, type) and issubclass(base, models.Model) and hasattr(base, "_meta"):
            for manager in base._meta.local_managers:
                _swap_manager(manager)
    for manager in opts.managers:
        _swap_manager(manager)
    _wrap_save_table(sender)
    if opts.abstract or opts.apps is not global_apps:
        return
    for field in local:
        if isinstance(field, BlindIndexField):
            if not any(field in f.blind_indexes for f in encrypted_fields(sender)):
                continue  # misdeclared source: reported by the field's system check
        registry.register(
            registry.Column(
                label=field.label,
                model=sender,
                field_name=field.name,
                version_attname=field.version_attname,
                keyring=field.keyring_name,
                purpose="encrypt" if isinstance(field, EncryptedField) else "index",
            )
        )


class_prepared.connect(_prepare, dispatch_uid="keyrotation.querysets.prepare")
