"""How the integration reaches every ``ModelAdmin``: wrappers installed once on the class, or a mixin.

One ``ModelAdmin`` instance serves every thread, so neither path changes an instance: the wrappers
compute what they need per call, and the change list they hand out is built per request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.admin import ModelAdmin
from django.contrib.admin.views.main import ChangeList
from django.db import models

from .. import conf
from .changelist import involves_encryption, safe_changelist, safe_ordering
from .search import search_results


class AdminIntegrationMixin:
    """What :func:`install` does, for one ``ModelAdmin`` (whatever ``ADMIN_INTEGRATION`` says).

    Its search calls Django's own ``get_search_results`` with the encrypted entries rewritten, so
    a class after it in the bases that overrides ``get_search_results`` is not called.

    Example::

        @admin.register(Person)
        class PersonAdmin(AdminIntegrationMixin, admin.ModelAdmin):
            search_fields = ["name", "email"]
    """

    def get_search_results(self, request: Any, queryset: models.QuerySet, search_term: str) -> Any:
        return search_results(self, request, queryset, search_term)

    def get_changelist(self, request: Any, **kwargs: Any) -> type[ChangeList]:
        return safe_changelist(super().get_changelist(request, **kwargs))

    def get_ordering(self, request: Any) -> Any:
        return safe_ordering(self.model, super().get_ordering(request))


def _wrap_search(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_search_results(self: ModelAdmin, request: Any, queryset: Any, search_term: str) -> Any:
        if not conf.admin_integration():
            return original(self, request, queryset, search_term)
        return search_results(self, request, queryset, search_term, original)

    return get_search_results


def _wrap_changelist(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_changelist(self: ModelAdmin, request: Any, **kwargs: Any) -> type[ChangeList]:
        changelist = original(self, request, **kwargs)
        if not conf.admin_integration() or not involves_encryption(self, request):
            return changelist
        return safe_changelist(changelist)

    return get_changelist


def _wrap_ordering(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_ordering(self: ModelAdmin, request: Any) -> Any:
        ordering = original(self, request)
        return safe_ordering(self.model, ordering) if conf.admin_integration() else ordering

    return get_ordering


_WRAPPERS = {
    "get_search_results": _wrap_search,
    "get_changelist": _wrap_changelist,
    "get_ordering": _wrap_ordering,
}


def install() -> None:
    """Wrap ``ModelAdmin.get_search_results``, ``get_changelist`` and ``get_ordering``.

    Called by ``KeyRotationConfig.ready()`` when ``django.contrib.admin`` is installed; a second
    call does nothing. Each wrapper passes the call through unchanged when
    ``KEYROTATION["ADMIN_INTEGRATION"]`` is ``False`` (read on every call).
    """
    for name, wrap in _WRAPPERS.items():
        current = getattr(ModelAdmin, name)
        if getattr(current, "_keyrotation_wrapper", False):
            continue
        wrapper = wrap(current)
        wrapper._keyrotation_wrapper = True  # type: ignore[attr-defined]
        setattr(ModelAdmin, name, wrapper)


def installed() -> bool:
    """Whether :func:`install` has wrapped ``ModelAdmin``."""
    return all(getattr(getattr(ModelAdmin, n), "_keyrotation_wrapper", False) for n in _WRAPPERS)


def serves(model_admin: ModelAdmin) -> bool:
    """Whether ``model_admin`` gets the integration (installed and enabled, or the mixin)."""
    if isinstance(model_admin, AdminIntegrationMixin):
        return True
    return installed() and conf.admin_integration()
