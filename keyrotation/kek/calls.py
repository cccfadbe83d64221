"""Process-local counts of KEK calls and their failures, per backend, KEK and operation.

Every wrap, unwrap and rewrap that reaches a KEK backend goes through
:class:`~keyrotation.kek.switch.KEKSwitch`, which counts it here: what an exporter reads
(:mod:`keyrotation.contrib.prometheus`) without keyrotation depending on any metrics package.

The counts belong to this process and start at zero with it: a web server with several worker
processes has one set per process, and ``reencrypt`` has its own. They never hold a key, a key id
or a value: a :class:`Call` is the backend's name (``"local"``, ``"vault"`` or the dotted path
of a custom class), which configured KEK it is (``"current"`` or ``"previous"``) and the operation.

Example::

    from keyrotation.kek import calls

    with calls.COUNTS.counting(calls.Call("vault", "current", "unwrap")):
        ...  # the backend call; an exception is counted as an error, then propagates
    calls.COUNTS.calls()  # {Call("vault", "current", "unwrap"): 1}
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..exceptions import KEKRefused, KEKUnavailable, KEKUnreachable

OPERATIONS = ("wrap", "unwrap", "rewrap")

# Why a call failed, from the exception it raised (most specific first): whether waiting can help.
REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (KEKRefused, "refused"),
    (KEKUnreachable, "unreachable"),
    (KEKUnavailable, "unavailable"),  # a custom backend's plain KEKUnavailable (retried as transient)
)
OTHER = "other"  # anything else a backend raised (a bug, a library error)


@dataclass(frozen=True, order=True)
class Call:
    """What a count is kept for: the backend's name, the configured KEK, the operation."""

    backend: str
    kek: str  # "current" or "previous"
    operation: str  # one of OPERATIONS


def reason_of(exc: BaseException) -> str:
    """The reason label of a failed call: ``refused``, ``unreachable``, ``unavailable`` or ``other``."""
    for kind, reason in REASONS:
        if isinstance(exc, kind):
            return reason
    return OTHER


class CallCounts:
    """Thread-safe counters of calls and errors; only ever incremented (like Prometheus counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Call, int] = {}
        self._errors: dict[tuple[Call, str], int] = {}

    def __repr__(self) -> str:
        return f"<KEK call counts: {sum(self.calls().values())} calls>"

    @contextmanager
    def counting(self, call: Call) -> Iterator[None]:
        """Count one call of the block; an exception leaving it is counted as an error too."""
        with self._lock:
            self._calls[call] = self._calls.get(call, 0) + 1
        try:
            yield
        except Exception as exc:
            key = (call, reason_of(exc))
            with self._lock:
                self._errors[key] = self._errors.get(key, 0) + 1
            raise

    def calls(self) -> dict[Call, int]:
        """A copy of the call counts."""
        with self._lock:
            return dict(self._calls)

    def errors(self) -> dict[tuple[Call, str], int]:
        """A copy of the error counts, by call and reason."""
        with self._lock:
            return dict(self._errors)


#: The counts of this process, incremented by :class:`~keyrotation.kek.switch.KEKSwitch`.
COUNTS = CallCounts()
