"""What the engine retries, how often and how long it waits: a failure that waiting can mend,
never one that it cannot.

Transient: a lost or refused database connection (``OperationalError``, ``InterfaceError``) and a
KEK that cannot answer right now (:class:`~keyrotation.exceptions.KEKUnreachable`: connection
refused or reset, timeout, Vault sealed, 5xx, 429). A KEK that answered and refused
(:class:`~keyrotation.exceptions.KEKRefused`: permission denied, invalid token, unknown key, a
wrong master key) fails at once with its reason, instead of after minutes of back-off. A plain
:class:`~keyrotation.exceptions.KEKUnavailable` from a backend that does not classify its errors
is retried, as before the two kinds existed.

Before each retry the connections involved are closed (one may be broken; each reconnects on its
next use).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connections

from ..exceptions import KEKRefused, KEKUnavailable

logger = logging.getLogger(__name__)

TRANSIENT = (OperationalError, InterfaceError, KEKUnavailable)

T = TypeVar("T")


#: MySQL/MariaDB report some errors about the statement or its data as ``OperationalError``
#: (unknown column or table, syntax, a value the column refuses, a trigger's ``SIGNAL``):
#: waiting mends none of them.
PERMANENT_MYSQL_ERRORS = frozenset({1054, 1064, 1146, 1264, 1292, 1366, 1406, 1644})


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` may go away by itself, so the operation is worth retrying."""
    if isinstance(exc, OperationalError) and exc.args and exc.args[0] in PERMANENT_MYSQL_ERRORS:
        return False
    return isinstance(exc, TRANSIENT) and not isinstance(exc, KEKRefused)


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` attempts after the first, waiting ``first_delay`` seconds, doubled after each
    failure up to ``backoff_max``."""

    retries: int = 8
    backoff_max: float = 30.0
    first_delay: float = 0.5


def reset_connections(aliases: Iterable[str]) -> None:
    """Close this thread's connections to ``aliases``; each reconnects on its next use."""
    for alias in aliases:
        connections[alias].close()


def retrying(what: str, fn: Callable[[], T], policy: RetryPolicy, aliases: Iterable[str]) -> T:
    """Run ``fn``; on a transient error, close the connections to ``aliases``, back off and try
    again (``policy.retries`` times); then let the error through. A permanent error goes
    through at once."""
    aliases = list(aliases)
    delay = policy.first_delay
    for attempt in range(policy.retries + 1):
        try:
            return fn()
        except TRANSIENT as exc:
            if attempt == policy.retries or not is_transient(exc):
                raise
            logger.warning(
                "%s failed (%s); retry %d/%d in %.1fs",
                what,
                type(exc).__name__,
                attempt + 1,
                policy.retries,
                delay,
            )
            reset_connections(aliases)
            time.sleep(delay)
            delay = min(policy.backoff_max, delay * 2)
    raise AssertionError("unreachable")  # pragma: no cover
