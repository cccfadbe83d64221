"""The configured KEK, and the previous one while a project switches KEKs.

``KEYROTATION["KEK"]`` wraps new data keys. While ``KEYROTATION["KEK"]["PREVIOUS"]`` is set (any
backend: local, Vault, a dotted path), data keys that the previous KEK wrapped still unwrap, and
:meth:`KEKSwitch.rewrap` moves each one under the current KEK: the previous KEK unwraps it and the
current one wraps it (two backends cannot share Transit's in-place rewrap). A key already wrapped
by the current KEK keeps the backend's own ``rewrap`` (Transit's: the key never leaves Vault).

Routing: each data key goes to the KEK whose :class:`~keyrotation.kek.identity.Claim` on its
``kek_id`` and wrapped bytes is ``EXACT`` (the current one first if both are); failing that, the
``POSSIBLE`` ones are tried in turn, current first, until one unwraps; a key that both claim
``NO`` is refused at once, with its kek id and the fix, without any KEK call. Trying is the
fallback only: ids written by this version always tell local keys apart (fingerprint in the
bytes) and Vault keys apart (address, mount and key name).

Every call that reaches a backend (wrap, unwrap, rewrap) is counted in
:data:`keyrotation.kek.calls.COUNTS`, with its failures: a rewrap from the previous KEK counts as
the two calls it is (an unwrap by the previous KEK, a wrap by the current one).
"""

from __future__ import annotations

import enum
from contextlib import AbstractContextManager
from typing import Any

from ..exceptions import KEKRefused
from ..tracebacks import forgets_locals
from .calls import COUNTS, Call
from .identity import Claim, claim_of


class Wrapper(enum.Enum):
    """Which configured KEK wrapped a data key (shown by ``rotatekeys --list`` and the checks)."""

    CURRENT = "current"
    PREVIOUS = "previous"
    EITHER = "current or previous"  # both could have, only an unwrap tells (ids of older versions)
    UNKNOWN = "unknown"  # neither of them: it cannot be unwrapped as configured


def key_name(context: bytes) -> str:
    """``keyring/purpose vN`` from a wrapping context (see :func:`keyrotation.kek.context_for`)."""
    text = bytes(context).decode("utf-8", "replace")
    parts = text.split(":")
    if len(parts) >= 4 and parts[0] == "keyrotation":
        return f"{':'.join(parts[1:-2])}/{parts[-2]} v{parts[-1]}"
    return repr(text)


def backend_name(backend: Any) -> str:
    """The dotted path of a backend's class: its name in the counts when the settings give none."""
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


class KEKSwitch:
    """The current KEK and the optional previous one, behind the KEK backend interface.

    Attributes other than the interface's (``ensure_key``, ``requests``...) are the current
    backend's. Neither backend's options are kept here.
    """

    def __init__(
        self, current: Any, previous: Any | None = None, *, names: tuple[str, str | None] | None = None
    ) -> None:
        self.current = current
        self.previous = previous
        # How the counts name each backend: its KEYROTATION["KEK"]["BACKEND"] ("local", "vault",
        # a dotted path), never its options (addresses, key ids).
        current_name, previous_name = names or (None, None)
        self._names = {
            Wrapper.CURRENT: current_name or backend_name(current),
            Wrapper.PREVIOUS: previous_name or (backend_name(previous) if previous is not None else ""),
        }

    def __repr__(self) -> str:
        return f"<KEKSwitch {self.describe()}>"

    def __getattr__(self, name: str) -> Any:
        if name in ("current", "previous", "_names"):  # not set yet (unpickling, copying)
            raise AttributeError(name)
        return getattr(self.current, name)

    # -- which KEK wrapped a key -----------------------------------------------------------

    def _claims(self, kek_id: str, wrapped: bytes) -> list[tuple[Wrapper, Any, Claim]]:
        found = [(Wrapper.CURRENT, self.current, claim_of(self.current, kek_id, wrapped))]
        if self.previous is not None:
            found.append((Wrapper.PREVIOUS, self.previous, claim_of(self.previous, kek_id, wrapped)))
        return found

    def wrapper(self, kek_id: str, wrapped: bytes) -> Wrapper:
        """Which KEK wrapped the key (no network call)."""
        claims = self._claims(kek_id, wrapped)
        exact = [role for role, _, claim in claims if claim is Claim.EXACT]
        if exact:
            return exact[0]
        possible = [role for role, _, claim in claims if claim is Claim.POSSIBLE]
        if len(possible) == 1:
            return possible[0]
        return Wrapper.EITHER if possible else Wrapper.UNKNOWN

    def _candidates(self, kek_id: str, wrapped: bytes, context: bytes) -> list[tuple[Wrapper, Any]]:
        claims = self._claims(kek_id, wrapped)
        for role, backend, claim in claims:
            if claim is Claim.EXACT:
                return [(role, backend)]
        possible = [(role, backend) for role, backend, claim in claims if claim is Claim.POSSIBLE]
        if not possible:
            raise self.unknown_kek(key_name(context), kek_id)
        return possible

    def unknown_kek(self, name: str, kek_id: str) -> KEKRefused:
        """The refusal for a data key wrapped by neither the current nor the previous KEK."""
        wrapped_by = kek_id or "a KEK this version cannot name"
        if self.previous is None:
            return KEKRefused(
                f"data key {name} was wrapped by {wrapped_by}, which is not the current KEK "
                f'({self.current.describe()}), and KEYROTATION["KEK"]["PREVIOUS"] is not set: '
                'configure the KEK that wrapped it again (for a local key: among KEYROTATION["KEK"]'
                '["KEYS"]), or, if the project is moving to this KEK, set KEYROTATION["KEK"]["PREVIOUS"] '
                "to the settings of the KEK that wrapped it and run `manage.py rotatekeys --rewrap`"
            )
        return KEKRefused(
            f"data key {name} was wrapped by {wrapped_by}, which is neither the current KEK "
            f'({self.current.describe()}) nor KEYROTATION["KEK"]["PREVIOUS"] '
            f"({self.previous.describe()}): set PREVIOUS to the settings of the KEK that wrapped it"
        )

    def _counting(self, role: Wrapper, operation: str) -> AbstractContextManager[None]:
        return COUNTS.counting(Call(self._names[role], role.value, operation))

    # -- the KEK backend interface ---------------------------------------------------------

    @forgets_locals  # ``dek`` is a parameter
    def wrap(self, dek: bytes, context: bytes) -> tuple[bytes, str]:
        with self._counting(Wrapper.CURRENT, "wrap"):
            return self.current.wrap(dek, context)

    @forgets_locals  # a custom backend's frames may hold the data key
    def unwrap(self, wrapped: bytes, context: bytes, kek_id: str = "") -> bytes:
        """The data key, from whichever KEK wrapped it (see the module's routing rules)."""
        *tried_first, (last_role, last) = self._candidates(kek_id, wrapped, context)
        reasons = []
        for role, backend in tried_first:
            try:
                return self._unwrap_by(role, backend, wrapped, context)
            except KEKRefused as exc:  # KEKUnreachable is not a "no": it propagates
                reasons.append(f"{role.value} KEK: {exc}")
        if not reasons:
            return self._unwrap_by(last_role, last, wrapped, context)  # its own error, as is
        try:
            return self._unwrap_by(last_role, last, wrapped, context)
        except KEKRefused as exc:
            reasons.append(f"{last_role.value} KEK: {exc}")
        raise KEKRefused(f"data key {key_name(context)} did not unwrap: {'; '.join(reasons)}")

    def _unwrap_by(self, role: Wrapper, backend: Any, wrapped: bytes, context: bytes) -> bytes:
        with self._counting(role, "unwrap"):
            return backend.unwrap(wrapped, context)

    def rewrap(self, wrapped: bytes, context: bytes, kek_id: str = "") -> tuple[bytes, str]:
        """Wrap the key under the current KEK: in place if the current KEK wrapped it, else
        unwrapped by the previous KEK and wrapped by the current one."""
        *tried_first, last = self._candidates(kek_id, wrapped, context)
        reasons = []
        for role, backend in tried_first:
            try:
                return self._rewrap_from(role, backend, wrapped, context)
            except KEKRefused as exc:
                reasons.append(f"{role.value} KEK: {exc}")
        if not reasons:
            return self._rewrap_from(*last, wrapped, context)
        try:
            return self._rewrap_from(*last, wrapped, context)
        except KEKRefused as exc:
            reasons.append(f"{last[0].value} KEK: {exc}")
        raise KEKRefused(f"data key {key_name(context)} did not re-wrap: {'; '.join(reasons)}")

    def _rewrap_from(self, role: Wrapper, source: Any, wrapped: bytes, context: bytes) -> tuple[bytes, str]:
        if role is Wrapper.CURRENT:
            with self._counting(Wrapper.CURRENT, "rewrap"):
                return self.current.rewrap(wrapped, context)
        return self._move(role, source, wrapped, context)

    @forgets_locals  # the data key passes through this frame (never bound to a name)
    def _move(self, role: Wrapper, source: Any, wrapped: bytes, context: bytes) -> tuple[bytes, str]:
        return self.wrap(self._unwrap_by(role, source, wrapped, context), context)

    def rotate(self) -> str:
        return self.current.rotate()

    def current_id(self) -> str:
        return self.current.current_id()

    def describe(self) -> str:
        if self.previous is None:
            return self.current.describe()
        return f"{self.current.describe()} (previous: {self.previous.describe()})"

    def check(self) -> None:
        """Both KEKs must be usable while PREVIOUS is set: keys it wrapped are still read."""
        self.current.check()
        if self.previous is not None:
            self.previous.check()
