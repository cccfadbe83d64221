"""What the engine retries: a failure that waiting can mend, never one that it cannot.

Transient: a lost or refused database connection (``OperationalError``, ``InterfaceError``) and a
KEK that cannot answer right now (:class:`~keyrotation.exceptions.KEKUnreachable`: connection
refused or reset, timeout, Vault sealed, 5xx, 429). A KEK that answered and refused
(:class:`~keyrotation.exceptions.KEKRefused`: permission denied, invalid token, unknown key, a
wrong master key) fails at once with its reason, instead of after minutes of back-off. A plain
:class:`~keyrotation.exceptions.KEKUnavailable` from a backend that does not classify its errors
is retried, as before the two kinds existed.
"""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from ..exceptions import KEKRefused, KEKUnavailable

TRANSIENT = (OperationalError, InterfaceError, KEKUnavailable)


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` may go away by itself, so the operation is worth retrying."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, KEKRefused)
