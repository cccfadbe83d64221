"""System checks of ``ModelAdmin`` settings that name encrypted fields (``keyrotation.E111``–``E115``).

Registered in :mod:`keyrotation.checks` under the ``admin`` tag. Each error names one attribute
and lists its offending entries (field names only: never a value).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib.admin import ModelAdmin
from django.core import checks

from .hooks import serves
from .paths import admin_order_field, filter_path, names_encrypted
from .search import classify

_WHY = {
    "search_fields": "The database holds only ciphertext: these entries match nothing.",
    "list_filter": "The database cannot group ciphertext: these filters are left out.",
    "ordering": "Ciphertext order is random: these entries are left out of the ordering.",
    "date_hierarchy": "The database cannot read dates from ciphertext: no date hierarchy is shown.",
    "sortable_by": "Ciphertext order is random: these columns are not sortable.",
}
_HINTS = {
    "search_fields": (
        "Search an encrypted field by exact value through its BlindIndexField: write 'email' or "
        "'=email' (add a BlindIndexField(source=...) to a field that has none)."
    ),
    "list_filter": "Filter on a plaintext field, or remove these entries.",
    "ordering": "Order by a plaintext field, or remove these entries.",
    "date_hierarchy": "Use a plaintext date field, or remove date_hierarchy.",
    "sortable_by": "Remove these entries.",
}


def _search_problems(model_admin: ModelAdmin) -> list[str]:
    served = serves(model_admin)
    problems = []
    for entry in map(str, model_admin.search_fields or ()):
        hit, reason = classify(model_admin.model, entry)
        if hit is not None and (reason or not served):
            problems.append(f"{entry!r} ({reason or 'ADMIN_INTEGRATION is off'})")
    return problems


def _encrypted(
    model_admin: ModelAdmin, entries: Iterable[Any], target: Callable[[Any], Any] = filter_path
) -> list[str]:
    return [repr(e) for e in entries if names_encrypted(model_admin.model, target(e))]


def model_admin_errors(model_admin: ModelAdmin) -> list[checks.Error]:
    """System check errors for one ``ModelAdmin``: one per attribute naming encrypted fields.

    * ``keyrotation.E111``: ``search_fields`` entries that match nothing: prefix, full-text or
      other non-exact searches of an encrypted field, encrypted fields without a blind index
      (and every encrypted entry when ``ADMIN_INTEGRATION`` is off and the admin has no
      ``AdminIntegrationMixin``).
    * ``keyrotation.E112``: ``list_filter`` entries on encrypted fields (left out of the page).
    * ``keyrotation.E113``: ``ordering`` entries on encrypted fields (left out of the ordering).
    * ``keyrotation.E114``: a ``date_hierarchy`` on an encrypted field (not shown).
    * ``keyrotation.E115``: ``sortable_by`` entries that sort by an encrypted field (not sortable).

    ``obj`` is the ``ModelAdmin`` class, as in Django's own admin checks.
    """
    admin = model_admin
    order_field = functools.partial(admin_order_field, admin)
    found = [
        ("E111", "search_fields", _search_problems(admin)),
        ("E112", "list_filter", _encrypted(admin, admin.list_filter or ())),
        ("E113", "ordering", _encrypted(admin, admin.ordering or (), target=lambda e: e)),
        ("E114", "date_hierarchy", _encrypted(admin, filter(None, [admin.date_hierarchy]))),
        ("E115", "sortable_by", _encrypted(admin, admin.sortable_by or (), target=order_field)),
    ]
    return [
        checks.Error(
            f"The value of '{attribute}' names encrypted fields: {', '.join(entries)}. {_WHY[attribute]}",
            hint=_HINTS[attribute],
            obj=type(model_admin),
            id=f"keyrotation.{code}",
        )
        for code, attribute, entries in found
        if entries
    ]
