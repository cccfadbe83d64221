"""Change lists that never sort, filter or build a date hierarchy on an encrypted field."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from typing import Any

from django.contrib.admin import ModelAdmin
from django.contrib.admin.views.main import ChangeList
from django.db import models

from .paths import admin_order_field, filter_path, has_encrypted_fields, names_encrypted, reach

# ModelAdmin.get_changelist_instance() passes these arguments, whatever ChangeList subclass it builds.
_SIGNATURE = inspect.signature(ChangeList.__init__)


class EncryptedChangeListMixin:
    """``list_filter`` and ``date_hierarchy`` entries on encrypted fields are dropped before the
    change list uses them; ``sortable_by`` loses the columns that would sort by one (so their
    headers are not links); :meth:`get_ordering` drops such entries from the ordering Django
    computed (``ModelAdmin.get_ordering()``, the model's ``Meta.ordering`` and ``?o=``).

    The change list is built per request, so it may change its own copies of these settings.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            bound = _SIGNATURE.bind(self, *args, **kwargs)
        except TypeError:  # not the arguments ModelAdmin passes: nothing to drop before init
            super().__init__(*args, **kwargs)
        else:
            _drop_encrypted_filters(bound.arguments)
            super().__init__(*bound.args[1:], **bound.kwargs)
        names = self.list_display if self.sortable_by is None else self.sortable_by
        self.sortable_by = [n for n in names if not self._sorts_encrypted(n)]

    def _sorts_encrypted(self, name: Any) -> bool:
        try:
            target = self.get_ordering_field(name)
        except AttributeError:
            return False  # not a column Django can sort by either
        return names_encrypted(self.model, target)

    def get_ordering(self, request: Any, queryset: models.QuerySet) -> list[Any]:
        ordering = super().get_ordering(request, queryset)
        return [o for o in ordering if not names_encrypted(self.model, o)]


def _drop_encrypted_filters(arguments: dict[str, Any]) -> None:
    model = arguments["model"]
    arguments["list_filter"] = [
        f for f in arguments["list_filter"] or () if not names_encrypted(model, filter_path(f))
    ]
    if arguments["date_hierarchy"] and reach(model, arguments["date_hierarchy"]):
        arguments["date_hierarchy"] = None


@functools.cache
def safe_changelist(changelist: type[ChangeList]) -> type[ChangeList]:
    """``changelist`` with :class:`EncryptedChangeListMixin` (itself when it already has it)."""
    if issubclass(changelist, EncryptedChangeListMixin):
        return changelist
    attrs = {"__module__": changelist.__module__, "__qualname__": changelist.__qualname__}
    return type(changelist.__name__, (EncryptedChangeListMixin, changelist), attrs)


def safe_ordering(model: type[models.Model], ordering: Any) -> Any:
    """``ordering`` without its entries on encrypted fields (itself when it has none).

    ``ModelAdmin.get_queryset()`` orders by ``get_ordering()``: for the change list, and for the
    change, delete and history views as well.
    """
    kept = [o for o in ordering or () if not names_encrypted(model, o)]
    return ordering if len(kept) == len(ordering or ()) else kept


def _changelist_paths(model_admin: ModelAdmin, request: Any) -> Iterator[str]:
    for name in model_admin.get_list_display(request):
        target = admin_order_field(model_admin, name)
        if isinstance(target, str):
            yield target.lstrip("-")
    yield from filter(None, map(filter_path, model_admin.get_list_filter(request)))
    if model_admin.date_hierarchy:
        yield model_admin.date_hierarchy


def involves_encryption(model_admin: ModelAdmin, request: Any) -> bool:
    """Whether the admin's model has encrypted fields, or its change list names one elsewhere."""
    if has_encrypted_fields(model_admin.model):
        return True
    return any(reach(model_admin.model, path) for path in _changelist_paths(model_admin, request))
