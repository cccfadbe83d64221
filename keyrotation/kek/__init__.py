"""Key-encryption-key (KEK) backends: the master key that wraps data keys.

A backend is any object with the :class:`KEKBackend` methods. It is picked from
``KEYROTATION["KEK"]["BACKEND"]``: ``"local"`` (the embedded default), ``"vault"`` (HashiCorp
Vault / OpenBao Transit through hvac), or a dotted path to a class taking the options dict.

Wrapping binds the wrapped key to its identity (``context``: keyring, purpose, version), so a
wrapped key copied onto another DataKey row fails to unwrap.

``KEYROTATION["KEK"]["PREVIOUS"]`` names the KEK a project is moving away from (any backend);
:func:`load_kek` returns both behind one :class:`~keyrotation.kek.switch.KEKSwitch`, which sends
each data key to the KEK that wrapped it (see :mod:`keyrotation.kek.identity`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from django.utils.module_loading import import_string

from .. import conf
from ..exceptions import ConfigurationError
from ..tracebacks import forgets_locals
from .identity import Claim
from .switch import KEKSwitch, Wrapper

__all__ = [
    "BACKENDS",
    "Claim",
    "KEKBackend",
    "KEKSwitch",
    "Wrapper",
    "context_for",
    "load_backend",
    "load_kek",
]

BACKENDS = {
    "local": "keyrotation.kek.local.LocalKEK",
    "vault": "keyrotation.kek.vault.VaultTransitKEK",
}


@runtime_checkable
class KEKBackend(Protocol):
    """What a KEK backend provides. None of these may log or raise with key material, nor leave it
    in a local variable of a frame that an exception carries (see :mod:`keyrotation.tracebacks`)."""

    def wrap(self, dek: bytes, context: bytes) -> tuple[bytes, str]:
        """Wrap a data key; return (wrapped bytes, id of the KEK version that wrapped it)."""

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        """Return the data key. Raises KEKUnavailable on any failure: KEKUnreachable when waiting
        may help (the engine retries it), KEKRefused when it cannot (reported at once)."""

    def rewrap(self, wrapped: bytes, context: bytes) -> tuple[bytes, str]:
        """Re-wrap under the current KEK version without exposing the key where possible."""

    def rotate(self) -> str:
        """Make a new KEK version current, if the backend can (Vault); return its id."""

    def current_id(self) -> str:
        """Id of the KEK version that wraps new keys (safe to log)."""

    def describe(self) -> str:
        """Human description (backend, address, key name), never secrets."""

    def check(self) -> None:
        """Raise KEKUnavailable if the KEK cannot be used right now (``check --deploy`` then also
        unwraps the newest stored data keys)."""


def context_for(keyring: str, purpose: str, version: int) -> bytes:
    """The bytes a wrapped data key is bound to."""
    return f"keyrotation:{keyring}:{purpose}:{version}".encode()


@forgets_locals  # ``options`` holds the master keys or the Vault token
def load_backend(options: dict[str, Any] | None = None) -> KEKBackend:
    """Build the configured KEK backend (not cached: callers cache the keyring, not the KEK).

    ``options`` defaults to ``KEYROTATION["KEK"]``; its ``PREVIOUS`` entry is not passed on.
    """
    options = conf.current_kek() if options is None else options
    name = options["BACKEND"]
    path = BACKENDS.get(name, name)
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ConfigurationError(
            f'KEYROTATION["KEK"]["BACKEND"] = {name!r} cannot be imported: {exc}. '
            f"Built-in backends: {', '.join(BACKENDS)}"
        ) from exc
    return cls(options)


@forgets_locals  # the options hold the master keys or the Vault tokens
def load_kek() -> KEKSwitch:
    """The configured KEK and, if ``KEYROTATION["KEK"]["PREVIOUS"]`` is set, the previous one."""
    current = load_backend()
    current_name = conf.current_kek()["BACKEND"]
    options = conf.previous_kek()
    if options is None:
        return KEKSwitch(current, names=(current_name, None))
    problem = None
    try:
        return KEKSwitch(current, load_backend(options), names=(current_name, options["BACKEND"]))
    except ConfigurationError as exc:
        problem = str(exc)
    # Raised outside the handler: the backend's error is not chained (its frames held the options).
    raise ConfigurationError(f'in KEYROTATION["KEK"]["PREVIOUS"]: {problem}')
