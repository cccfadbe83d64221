"""Which KEK wraps each stored data key: the current one, the previous one, or neither.

Read from ``DataKey.kek_id`` and the wrapped bytes against the configured KEKs (see
:mod:`keyrotation.kek.identity`), without any KEK call: ``rotatekeys --list``,
``rotation_status`` and the system checks ``keyrotation.W002`` / ``keyrotation.E006`` use it.

Example::

    from keyrotation import wrapping

    [k.wrapped_by for k in wrapping.stored_keys()]  # [Wrapper.CURRENT, Wrapper.PREVIOUS, ...]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigurationError
from .kek import KEKSwitch, Wrapper


@dataclass(frozen=True)
class WrappedKey:
    """One DataKey row and the KEK that wraps it (``wrapped_by`` is None for a destroyed key,
    which has no wrapped material, or when the KEK settings cannot be read)."""

    keyring: str
    purpose: str
    version: int
    state: str
    kek_id: str
    wrapped_by: Wrapper | None

    @property
    def name(self) -> str:
        return f"{self.keyring}/{self.purpose} v{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "keyring": self.keyring,
            "purpose": self.purpose,
            "version": self.version,
            "state": self.state,
            "kek_id": self.kek_id,
            "wrapped_by": self.wrapped_by.value if self.wrapped_by is not None else None,
        }


def configured_switch() -> KEKSwitch | None:
    """The configured KEKs (no network call), or None when the settings are malformed (the system
    check ``keyrotation.E001`` reports that)."""
    from .kek import load_kek

    try:
        return load_kek()
    except ConfigurationError:
        return None


def classify(rows: Iterable[Any], switch: KEKSwitch | None = None) -> list[WrappedKey]:
    """``rows``: DataKey instances, or tuples (keyring, purpose, version, state, kek_id, wrapped)."""
    switch = switch if switch is not None else configured_switch()
    out = []
    for row in rows:
        if isinstance(row, tuple):
            keyring, purpose, version, state, kek_id, wrapped = row
        else:
            keyring, purpose, version, state = row.keyring, row.purpose, row.version, row.state
            kek_id, wrapped = row.kek_id, row.wrapped_key
        by = None
        if wrapped is not None and switch is not None:
            by = switch.wrapper(kek_id or "", bytes(wrapped))
        out.append(WrappedKey(keyring, purpose, version, state, kek_id or "", by))
    return out


def stored_keys(using: str | None = None, switch: KEKSwitch | None = None) -> list[WrappedKey]:
    """Every DataKey row of the keys database (or ``using``), ordered by keyring, purpose, version."""
    from .databases import keys_database
    from .models import DataKey

    rows = (
        DataKey.objects.using(using or keys_database())
        .order_by("keyring", "purpose", "version")
        .values_list("keyring", "purpose", "version", "state", "kek_id", "wrapped_key")
    )
    return classify(list(rows), switch)
