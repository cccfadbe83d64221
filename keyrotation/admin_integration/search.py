"""Admin search on encrypted fields: Django's own search, with encrypted entries rewritten.

Django's ``get_search_results`` turns ``"email"`` into ``email__icontains``, which an encrypted
field refuses. Here every ``search_fields`` entry that reaches an encrypted field with a blind
index, and asks for an exact match or for Django's default (``"email"``, ``"=email"``,
``"email__exact"``, ``"email__iexact"``, ``"person__email"``), becomes
``<relations>__<index>__keyrotation_search``: Django passes an entry that ends in a lookup
through unchanged, so its term splitting, quoting, OR between entries, AND between terms and
duplicate detection all apply as usual. Any other entry on an encrypted field is dropped: it
matches nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib.admin import ModelAdmin
from django.core.exceptions import EmptyResultSet, ValidationError
from django.db import models
from django.db.models import Lookup
from django.db.models.constants import LOOKUP_SEP
from django.db.models.expressions import Col
from django.utils.text import smart_split

from ..fields import BlindIndexField
from .paths import Reach, reach

SEARCH_LOOKUP = "keyrotation_search"
_PREFIXES = ("^", "=", "@")
_EXACT_SUFFIXES = ([], ["exact"], ["iexact"])

# Django's search, captured before install() wraps it: the mixin calls it directly.
django_search = ModelAdmin.get_search_results


@BlindIndexField.register_lookup
class BlindIndexSearch(Lookup):
    """``<blind index>__keyrotation_search=<term>``: the admin's exact search of the index's source.

    The same SQL as ``filter(<source>=term)``, except that a term the source's base field rejects
    (``"abc"`` for an ``IntegerField``) matches nothing instead of raising: a search box takes any
    text, and the rejection only happens when the query is compiled.
    """

    lookup_name = SEARCH_LOOKUP
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        index = self.lhs.target
        source = index.model._meta.get_field(index.source)
        try:  # the exact lookup may reject the term when built or when compiled
            exact = source.get_lookup("exact")(Col(self.lhs.alias, source), self.rhs)
            return compiler.compile(exact)
        except ValidationError:
            raise EmptyResultSet from None  # the message names the field, never the term


def classify(model: type[models.Model], entry: str) -> tuple[Reach | None, str | None]:
    """(the encrypted field a ``search_fields`` entry reaches, why it cannot be searched).

    ``(None, None)`` for an entry on plaintext fields; ``(reach, None)`` for one searchable
    through a blind index.
    """
    prefix = entry[0] if entry.startswith(_PREFIXES) else ""
    hit = reach(model, entry[len(prefix) :])
    if hit is None:
        return None, None
    if prefix in ("^", "@") or hit.rest not in _EXACT_SUFFIXES or (prefix and hit.rest):
        return hit, "only exact search is possible"
    if not hit.field.blind_indexes:
        return hit, "no BlindIndexField"
    return hit, None


def search_plan(model: type[models.Model], search_fields: Iterable[Any]) -> list[str] | None:
    """``search_fields`` as Django's search should see them, or ``None`` when none is encrypted."""
    plan: list[str] = []
    touched = False
    for entry in map(str, search_fields):
        hit, reason = classify(model, entry)
        if hit is None:
            plan.append(entry)
            continue
        touched = True
        if reason is None:
            plan.append(LOOKUP_SEP.join([*hit.relations, hit.field.search_index.name, SEARCH_LOOKUP]))
    return plan if touched else None


class _WithSearchFields:
    """A read-only view of a ``ModelAdmin`` whose ``get_search_fields()`` returns other entries.

    Django's ``get_search_results`` reads the entries from ``self.get_search_fields(request)``;
    handing it this view instead of the admin (one instance serves every thread) keeps each
    request's rewrite to itself, and works whether or not the admin overrides
    ``get_search_fields``.
    """

    def __init__(self, model_admin: ModelAdmin, search_fields: list[str]) -> None:
        self._model_admin = model_admin
        self._search_fields = search_fields

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model_admin, name)

    def get_search_fields(self, request: Any) -> list[str]:
        return self._search_fields


def search_results(
    model_admin: ModelAdmin,
    request: Any,
    queryset: models.QuerySet,
    search_term: str,
    search: Callable[..., tuple[models.QuerySet, bool]] = django_search,
) -> tuple[models.QuerySet, bool]:
    """``ModelAdmin.get_search_results`` with encrypted entries served as described above.

    Args:
        search: the search to run with the rewritten entries (Django's).
    """
    plan = search_plan(queryset.model, model_admin.get_search_fields(request))
    if plan is None:
        return search(model_admin, request, queryset, search_term)
    if not plan:  # every entry matches nothing, so any term does
        if any(True for _ in smart_split(search_term)):
            return queryset.none(), False
        return queryset, False
    return search(_WithSearchFields(model_admin, plan), request, queryset, search_term)
