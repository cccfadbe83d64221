"""Encrypted fields in your own ``ModelAdmin``: exact search through blind indexes, and no sorting,
filtering or date hierarchy on ciphertext.

Django's admin builds ``<field>__icontains`` searches, ``ORDER BY`` clauses, list filters and date
hierarchies straight on columns. On an encrypted column each of those either raises ``FieldError``
(a server error) or compares ciphertexts (a silently wrong answer). With this package an
unmodified ``ModelAdmin`` behaves as follows:

* **Search** (:mod:`~keyrotation.admin_integration.search`). A ``search_fields`` entry naming an
  encrypted field that has a blind index (``"email"``, ``"=email"``, ``"email__exact"``,
  ``"email__iexact"``, ``"person__email"``) matches a search term *exactly*, through the index,
  so with the index's normalisation (by default NFKC + casefold + strip: case does not matter).
  It is OR-ed with the other entries, which Django searches as usual. Every other entry on an
  encrypted field (``"^email"``, ``"@email"``, ``"email__icontains"``, a field without a blind
  index) matches nothing, and a term the base field rejects (``"abc"`` for an ``IntegerField``)
  matches nothing for that entry.
* **Change list** (:mod:`~keyrotation.admin_integration.changelist`). Columns of ``list_display``
  on encrypted fields have no sort link, and a crafted ``?o=`` naming one is ignored;
  ``ordering``, ``list_filter`` and ``date_hierarchy`` entries on encrypted fields are left out.
* **Checks** (:mod:`~keyrotation.admin_integration.checks`). ``keyrotation.E111`` to ``E115``
  report at startup each ``ModelAdmin`` attribute whose encrypted entries are left out or match
  nothing.

:func:`install`, called by ``KeyRotationConfig.ready()`` when ``django.contrib.admin`` is
installed, wraps three ``ModelAdmin`` methods once. The wrappers change nothing for admins whose
model and change-list settings involve no encrypted field, nor when
``KEYROTATION["ADMIN_INTEGRATION"]`` is ``False``; then :class:`AdminIntegrationMixin` gives the
same behaviour to the admins that list it.
"""

from .checks import model_admin_errors
from .hooks import AdminIntegrationMixin, install, installed, serves

__all__ = ["AdminIntegrationMixin", "install", "installed", "model_admin_errors", "serves"]
