"""Local master-key backend: the embedded default.

Master keys are 32 random bytes, base64-encoded, given as ``KEYROTATION["KEK"]["KEYS"]``: the
first wraps new data keys, every one of them unwraps, so the KEK itself rotates by putting a new
key first and running ``manage.py rotatekeys --rewrap``.

Wrapped data key (format 0x01)::

    0x01 | KEK fingerprint (8 bytes) | nonce (12) | AES-256-GCM(KEK, nonce, DEK, AAD=context) + tag

Run ``python -m keyrotation.kek.local`` to print a fresh key.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..crypto import KEY_BYTES, NONCE_BYTES, fingerprint
from ..exceptions import ConfigurationError, KEKRefused
from ..tracebacks import forgets_locals
from .identity import Claim

WRAP_FORMAT = 0x01
_FP_BYTES = 8


def generate_key() -> str:
    """A new master key, base64 text."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def _decode(index: int, text: Any) -> bytes:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str):
        raise ConfigurationError(f'KEYROTATION["KEK"]["KEYS"][{index}] must be a base64 string')
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f'KEYROTATION["KEK"]["KEYS"][{index}] is not valid base64') from None
    if len(raw) != KEY_BYTES:
        raise ConfigurationError(
            f'KEYROTATION["KEK"]["KEYS"][{index}] must decode to {KEY_BYTES} bytes, got {len(raw)}'
        )
    return raw


def _open_wrapped(key: bytes, nonce: bytes, sealed: bytes, context: bytes) -> bytes | None:
    """The data key, or None if the tag does not verify.

    It returns instead of raising so that the frame that raises (``unwrap``) never held the key.
    """
    try:
        return AESGCM(key).decrypt(nonce, sealed, context)
    except InvalidTag:
        return None


class LocalKEK:
    """Master keys held in settings (environment variables, a secrets manager…).

    No frame of an exception raised by its methods holds a master key or a data key.
    """

    @forgets_locals  # ``options`` and ``keys`` hold the master keys
    def __init__(self, options: dict[str, Any]) -> None:
        keys = options.get("KEYS")
        if isinstance(keys, str):
            keys = [keys]
        if not keys or not isinstance(keys, (list, tuple)):
            raise ConfigurationError(
                'KEYROTATION["KEK"]["KEYS"] must be a non-empty list of base64 master keys '
                "(the first wraps, all unwrap); generate one with "
                "`python -m keyrotation.kek.local`"
            )
        raw = [_decode(i, k) for i, k in enumerate(keys) if k]
        if not raw:
            raise ConfigurationError('KEYROTATION["KEK"]["KEYS"] holds only empty values')
        self._keys = {bytes.fromhex(fingerprint(k))[:_FP_BYTES]: k for k in raw}
        self._current = bytes.fromhex(fingerprint(raw[0]))[:_FP_BYTES]

    def __repr__(self) -> str:
        return f"<LocalKEK current={self.current_id()} keys={len(self._keys)}>"

    def current_id(self) -> str:
        return f"local:{self._current.hex()}"

    def describe(self) -> str:
        return f"local master key {self._current.hex()} ({len(self._keys)} configured)"

    def check(self) -> None:
        """Local keys are validated in the constructor; nothing to reach."""

    def claim(self, kek_id: str, wrapped: bytes) -> Claim:
        """Whether one of these master keys wrapped ``wrapped``: its fingerprint is in the bytes."""
        wrapped = bytes(wrapped)
        if len(wrapped) < 1 + _FP_BYTES or wrapped[0] != WRAP_FORMAT:
            return Claim.NO
        return Claim.EXACT if wrapped[1 : 1 + _FP_BYTES] in self._keys else Claim.NO

    @forgets_locals  # ``dek`` is a parameter
    def wrap(self, dek: bytes, context: bytes) -> tuple[bytes, str]:
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self._keys[self._current]).encrypt(nonce, dek, context)
        return bytes([WRAP_FORMAT]) + self._current + nonce + sealed, self.current_id()

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        wrapped = bytes(wrapped)
        if len(wrapped) < 1 + _FP_BYTES + NONCE_BYTES + 16 or wrapped[0] != WRAP_FORMAT:
            raise KEKRefused("wrapped key is not in the local KEK format")
        fp = wrapped[1 : 1 + _FP_BYTES]
        if fp not in self._keys:
            raise KEKRefused(
                f"data key was wrapped by local master key {fp.hex()}, which is not among "
                f'KEYROTATION["KEK"]["KEYS"] (configured: {", ".join(k.hex() for k in self._keys)})'
            )
        nonce = wrapped[1 + _FP_BYTES : 1 + _FP_BYTES + NONCE_BYTES]
        dek = _open_wrapped(self._keys[fp], nonce, wrapped[1 + _FP_BYTES + NONCE_BYTES :], context)
        if dek is None:
            raise KEKRefused(
                f"local master key {fp.hex()} failed to unwrap a data key (tampered or misplaced)"
            )
        return dek

    def rewrap(self, wrapped: bytes, context: bytes) -> tuple[bytes, str]:
        return self.wrap(self.unwrap(wrapped, context), context)

    def rotate(self) -> str:
        raise ConfigurationError(
            "a local KEK is rotated by configuration: put a new key first in "
            'KEYROTATION["KEK"]["KEYS"], keep the old one after it, then run '
            "`manage.py rotatekeys --rewrap`"
        )


if __name__ == "__main__":  # pragma: no cover
    print(generate_key())
