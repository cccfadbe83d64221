"""The queryset class of every manager of a model with encrypted fields.

:func:`swap_manager` gives a manager a dynamically created subclass of its class whose queryset
class mixes in :class:`EncryptedQuerySetMixin`: writes go through :mod:`.writes`, impossible
queries are refused (:mod:`.refusals`), and ``values()`` / ``values_list()`` decrypt (a field with
``bind_to`` only beside its bound field, so that each value opens with its own row's). Related
managers are built from ``_default_manager.__class__``, so they inherit it. The dynamic classes keep
the original's name and module, so a manager with ``use_in_migrations = True`` still deconstructs to
the original (importable) class; querysets pickle as their original class and are rebuilt on load,
so the cache framework works.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator
from typing import Any

from django.db import models
from django.db.models.query import ValuesIterable

from . import adoption, binding, refusals, writes
from .sealed import NOT_ADOPTED, Sealed

_IN_BULK_UPDATE = contextvars.ContextVar("keyrotation_in_bulk_update", default=False)

# Pickled querysets carry this key in their state when their rows are decrypted on iteration.
_DECRYPTING_STATE = "_keyrotation_decrypting"


def _open(value: Any) -> Any:
    if value is NOT_ADOPTED:
        return None  # values() does not read legacy columns: see docs/adoption.md
    return value.field.open(value) if isinstance(value, Sealed) else value


_DECRYPTING: dict[type, type] = {}


def decrypting(iterable_class: type) -> type:
    """An iterable class that opens every sealed value of the rows ``iterable_class`` yields."""
    if getattr(iterable_class, "keyrotation_wraps", None) is not None:
        return iterable_class
    if iterable_class not in _DECRYPTING:

        class Decrypting(iterable_class):
            keyrotation_wraps = iterable_class

            def __iter__(self):
                bound = binding.pairs(self.queryset.model, _row_names(self.queryset))
                if bound:
                    yield from _open_bound_rows(super().__iter__(), bound)
                    return
                for row in super().__iter__():
                    if isinstance(row, dict):
                        yield {k: _open(v) for k, v in row.items()}
                    elif isinstance(row, tuple):
                        opened = [_open(v) for v in row]
                        yield type(row)._make(opened) if hasattr(row, "_fields") else tuple(opened)
                    else:
                        yield _open(row)

        Decrypting.__name__ = Decrypting.__qualname__ = f"Decrypting{iterable_class.__name__}"
        _DECRYPTING[iterable_class] = Decrypting
    return _DECRYPTING[iterable_class]


def _row_names(queryset: models.QuerySet) -> list[str]:
    """The names of a values() / values_list() row's columns, in Django's order."""
    query = queryset.query
    fields = queryset._fields
    if fields and not issubclass(queryset._iterable_class, ValuesIterable):
        # values_list(): the order asked for, then the other annotations
        return [*fields, *(f for f in query.annotation_select if f not in fields)]
    return [*query.extra_select, *query.values_select, *query.annotation_select]


def _open_bound_rows(rows: Iterable[Any], bound: list[tuple[int, int, Any]]) -> Iterator[Any]:
    """Rows (dicts or tuples) with every sealed value opened, bound ones with their row's bound value."""
    positions = {at for at, _, _ in bound}
    for row in rows:
        values = list(row.values()) if isinstance(row, dict) else list(row)
        opened = [v if i in positions else _open(v) for i, v in enumerate(values)]
        for at, bound_at, field in bound:
            value = values[at]
            if isinstance(value, Sealed):
                opened[at] = field.open_bound(value, values[bound_at])
            else:
                opened[at] = _open(value)
        if isinstance(row, dict):
            yield dict(zip(row, opened, strict=True))
        else:
            yield type(row)._make(opened) if hasattr(row, "_fields") else tuple(opened)


def _unpickle(original: type) -> models.QuerySet:
    """The empty queryset a pickled one is loaded into (its state is set next)."""
    cls = encrypted_queryset_class(original)
    return cls.__new__(cls)


class EncryptedQuerySetMixin:
    """Mixed into the queryset class of every manager of a model with encrypted fields."""

    keyrotation_original: type  # the queryset class this one was made from (set on each subclass)

    # -- pickling: as the original class, rebuilt on load ----------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        state = self.__getstate__()
        iterable = state.get("_iterable_class")
        wrapped = getattr(iterable, "keyrotation_wraps", None)
        if wrapped is not None:
            state["_iterable_class"] = wrapped
            state[_DECRYPTING_STATE] = True
        return (_unpickle, (self.keyrotation_original,), state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        decrypt = state.pop(_DECRYPTING_STATE, False)
        super().__setstate__(state)
        if decrypt:
            self._iterable_class = decrypting(self._iterable_class)

    @property
    def query(self) -> Any:
        return models.QuerySet.query.fget(self)

    @query.setter
    def query(self, value: Any) -> None:
        # ``qs.query = pickle.loads(...)`` of a values() query: Django resets the iterable class
        models.QuerySet.query.fset(self, value)
        if value.values_select:
            self._iterable_class = decrypting(self._iterable_class)

    # -- writes ----------------------------------------------------------------------------------

    def bulk_create(
        self,
        objs: Iterable[models.Model],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Iterable[str] | None = None,
        unique_fields: Iterable[str] | None = None,
    ) -> list[models.Model]:
        objs = list(objs)
        adopting = [f for f in writes.encrypted_fields(self.model) if f.adopt_from]
        for obj in objs:
            adoption.clear_legacy(obj, adopting)
        if update_conflicts:
            update_fields = writes.upsert_fields(self.model, update_fields, unique_fields)
        return super().bulk_create(
            objs,
            batch_size=batch_size,
            ignore_conflicts=ignore_conflicts,
            update_conflicts=update_conflicts,
            update_fields=update_fields,
            unique_fields=unique_fields,
        )

    bulk_create.alters_data = True

    def update(self, **kwargs: Any) -> int:
        if not _IN_BULK_UPDATE.get():
            kwargs = writes.prepare_update(self.model, kwargs)
        return super().update(**kwargs)

    update.alters_data = True

    def bulk_update(self, objs: Iterable[models.Model], fields: Iterable[str], batch_size=None) -> int:
        objs = tuple(objs)
        names, saved = writes.bulk_update_fields(self.model, objs, fields)
        # Django's bulk_update ends in update() with Case() expressions of the values sealed above:
        # that update() must not seal again.
        token = _IN_BULK_UPDATE.set(True)
        try:
            return super().bulk_update(objs, names, batch_size=batch_size)
        finally:
            _IN_BULK_UPDATE.reset(token)
            writes.restore(saved)

    bulk_update.alters_data = True

    # -- refusals ----------------------------------------------------------------------------------

    def order_by(self, *field_names: Any) -> Any:
        refusals.refuse_ordering(self.model, field_names)
        return super().order_by(*field_names)

    def aggregate(self, *args: Any, **kwargs: Any) -> Any:
        refusals.refuse_expressions(self.model, [*args, *kwargs.values()], "aggregate()")
        return super().aggregate(*args, **kwargs)

    def annotate(self, *args: Any, **kwargs: Any) -> Any:
        exprs = [*args, *kwargs.values()]
        refusals.refuse_expressions(self.model, exprs, "annotate()")
        if self._fields and any(getattr(e, "contains_aggregate", False) for e in exprs):
            # values(...).annotate(<aggregate>) groups by the values() fields
            refusals.refuse(
                self.model, self._fields, "a GROUP BY (values().annotate())", refusals.DISTINCT_ADVICE
            )
        return super().annotate(*args, **kwargs)

    def distinct(self, *field_names: Any) -> Any:
        refusals.refuse(self.model, field_names, "distinct()", refusals.DISTINCT_ADVICE)
        clone = super().distinct(*field_names)
        clone._refuse_distinct_values()
        return clone

    def _refuse_distinct_values(self) -> None:
        """DISTINCT over the columns of values() / values_list() (whole rows include the pk, and
        are fine)."""
        if self.query.distinct and not self.query.distinct_fields and self._fields:
            refusals.refuse(self.model, self._fields, "distinct()", refusals.DISTINCT_ADVICE)

    def alias(self, *args: Any, **kwargs: Any) -> Any:
        refusals.refuse_expressions(self.model, [*args, *kwargs.values()], "alias()")
        return super().alias(*args, **kwargs)

    # -- reads -------------------------------------------------------------------------------------

    def values(self, *fields: Any, **expressions: Any) -> Any:
        clone = super().values(*fields, **expressions)
        clone._refuse_distinct_values()
        clone._iterable_class = decrypting(clone._iterable_class)
        binding.pairs(self.model, _row_names(clone))  # a bound field without its bound field: refused now
        return clone

    def values_list(self, *fields: Any, flat: bool = False, named: bool = False) -> Any:
        clone = super().values_list(*fields, flat=flat, named=named)
        clone._refuse_distinct_values()
        clone._iterable_class = decrypting(clone._iterable_class)
        binding.pairs(self.model, _row_names(clone))
        return clone


_QUERYSETS: dict[type, type] = {}
_MANAGERS: dict[type, type] = {}


def encrypted_queryset_class(original: type) -> type:
    """The queryset class made from ``original`` (one per original class, made once)."""
    if original not in _QUERYSETS:
        _QUERYSETS[original] = type(
            original.__name__,
            (EncryptedQuerySetMixin, original),
            {"__module__": original.__module__, "keyrotation_original": original},
        )
    return _QUERYSETS[original]


def swap_manager(manager: models.Manager) -> None:
    """Give ``manager`` (in place) the class whose querysets are encrypted-aware."""
    cls = type(manager)
    if issubclass(getattr(cls, "_queryset_class", object), EncryptedQuerySetMixin):
        return
    if cls not in _MANAGERS:
        original = getattr(cls, "_queryset_class", models.QuerySet)
        attrs = {
            "_queryset_class": encrypted_queryset_class(original),
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        }
        _MANAGERS[cls] = type(cls.__name__, (cls,), attrs)
    manager.__class__ = _MANAGERS[cls]
