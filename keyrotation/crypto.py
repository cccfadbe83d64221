"""The crypto core: stored byte formats, AES-256-GCM, HKDF subkeys and HMAC blind indexes.

No Django here. Everything is a pure function of its arguments; randomness enters only through
``os.urandom`` in :func:`encrypt`, and the private twin :func:`_encrypt_from_parts` takes the nonce
as an argument so known-answer vectors (``tests/vectors/``) can pin every byte.

Encrypted value (format 0x01, see docs/formats.md)::

    0x01 | key version (uint32 big-endian) | nonce (12 bytes) | AES-256-GCM ciphertext + 16-byte tag
    AAD = 0x01 | key version bytes | label (UTF-8, "app_label.ModelName.field_name")

Row-bound value (format 0x02, for ``EncryptedField(bind_to=...)``)::

    0x02 | key version (uint32 big-endian) | nonce (12 bytes) | AES-256-GCM ciphertext + 16-byte tag
    AAD = 0x02 | key version bytes | uint32 len(label) | label | uint32 len(binding) | binding

``binding`` is the canonical bytes of the bound field's value (``keyrotation.codecs``): a value moved
to a row with another bound value fails to open like any other wrong key. Both lengths are
big-endian, so no (label, binding) pair spells the same AAD as another.

Per-field subkey::

    HKDF-SHA256(ikm = DEK (32 bytes), salt = none, info = purpose | 0x00 | label, length = 32)

Blind index::

    HMAC-SHA256(index subkey, normalised value bytes)[:length]
"""

from __future__ import annotations

import hmac
import os
import struct
from hashlib import sha256

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_V1 = 0x01
FORMAT_V2 = 0x02  # row-bound: the AAD also holds the bound field's value
FORMATS = (FORMAT_V1, FORMAT_V2)
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_VERSION = 2**32 - 1
PURPOSES = ("encrypt", "index")

_HEADER = struct.Struct(">BI")
_LENGTH = struct.Struct(">I")  # the length prefixes of the 0x02 AAD
MAX_BINDING_BYTES = 2**32 - 1
HEADER_BYTES = _HEADER.size  # 5
MIN_TOKEN_BYTES = HEADER_BYTES + NONCE_BYTES + TAG_BYTES  # an empty plaintext


class InvalidToken(Exception):
    """One opaque error for every way a token can fail to decrypt (no detail by design)."""


def _check_key(key: bytes, name: str = "key") -> None:
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"{name} must be bytes, got {type(key).__name__}")
    if len(key) != KEY_BYTES:
        raise ValueError(f"{name} must be {KEY_BYTES} bytes, got {len(key)}")


def _check_version(version: int) -> None:
    if not isinstance(version, int) or isinstance(version, bool):
        raise TypeError(f"version must be an int, got {type(version).__name__}")
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"version must be between 1 and {MAX_VERSION}, got {version}")


def _check_label(label: str) -> bytes:
    if not isinstance(label, str):
        raise TypeError(f"label must be str, got {type(label).__name__}")
    if not label:
        raise ValueError("label must not be empty")
    return label.encode("utf-8")


def derive_subkey(dek: bytes, purpose: str, label: str) -> bytes:
    """Derive the 32-byte key of one column from a data key.

    Args:
        dek: the unwrapped data key (32 bytes).
        purpose: ``"encrypt"`` or ``"index"``.
        label: the column label, ``"app_label.ModelName.field_name"``.

    Returns:
        32 bytes, different for every (dek, purpose, label).
    """
    _check_key(dek, "dek")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    info = purpose.encode("ascii") + b"\x00" + _check_label(label)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(dek)


def _aad(version: int, label_bytes: bytes) -> bytes:
    return _HEADER.pack(FORMAT_V1, version) + label_bytes


def encrypt(subkey: bytes, version: int, label: str, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` for column ``label`` under key ``version`` (format 0x01)."""
    return _encrypt_from_parts(subkey, version, label, plaintext, os.urandom(NONCE_BYTES))


def _encrypt_from_parts(subkey: bytes, version: int, label: str, plaintext: bytes, nonce: bytes) -> bytes:
    _check_key(subkey, "subkey")
    _check_version(version)
    label_bytes = _check_label(label)
    if not isinstance(plaintext, (bytes, bytearray)):
        raise TypeError(f"plaintext must be bytes, got {type(plaintext).__name__}")
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    header = _HEADER.pack(FORMAT_V1, version)
    sealed = AESGCM(bytes(subkey)).encrypt(bytes(nonce), bytes(plaintext), _aad(version, label_bytes))
    return header + bytes(nonce) + sealed


def token_header(token: bytes) -> tuple[int, int]:
    """Return ``(format, key version)`` from a token's header (format 0x01 or 0x02).

    Raises:
        InvalidToken: not bytes, too short, an unknown format byte or version zero.
    """
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise InvalidToken
    token = bytes(token)
    if len(token) < MIN_TOKEN_BYTES:
        raise InvalidToken
    fmt, version = _HEADER.unpack_from(token)
    if fmt not in FORMATS or version == 0:
        raise InvalidToken
    return fmt, version


def token_version(token: bytes) -> int:
    """Return the key version named in a token's header (either format).

    Raises:
        InvalidToken: not bytes, too short, an unknown format byte or version zero.
    """
    return token_header(token)[1]


def header_version(token: bytes) -> int | None:
    """The key version in a token's header, or ``None`` where :func:`token_version` would raise.

    For ``bytes`` only and without a copy: the read path calls it once per loaded value.
    """
    if len(token) < MIN_TOKEN_BYTES or token[0] not in FORMATS:
        return None
    return _HEADER.unpack_from(token)[1] or None


def decrypt(subkey: bytes, label: str, token: bytes) -> bytes:
    """Authenticate and decrypt a format-0x01 token written for column ``label``.

    The subkey must belong to the version in the token's header (see :func:`token_version`).

    Raises:
        InvalidToken: for every failure: truncation, tampering, wrong key, wrong column.
    """
    _check_key(subkey, "subkey")
    label_bytes = _check_label(label)
    fmt, version = token_header(token)
    if fmt != FORMAT_V1:
        raise InvalidToken
    return _open(subkey, token, _aad(version, label_bytes))


def _open(subkey: bytes, token: bytes, aad: bytes) -> bytes:
    """AES-256-GCM open of the nonce and sealed bytes after a token's header, under ``aad``."""
    token = bytes(token)
    nonce = token[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
    try:
        return AESGCM(bytes(subkey)).decrypt(nonce, token[HEADER_BYTES + NONCE_BYTES :], aad)
    except InvalidTag:
        raise InvalidToken from None


# -- format 0x02: bound to a row ------------------------------------------------------------------


def _check_binding(binding: bytes) -> bytes:
    if not isinstance(binding, (bytes, bytearray)):
        raise TypeError(f"binding must be bytes, got {type(binding).__name__}")
    if len(binding) > MAX_BINDING_BYTES:
        raise ValueError(f"binding must be at most {MAX_BINDING_BYTES} bytes")
    return bytes(binding)


def _bound_aad_prefix(version: int, label_bytes: bytes) -> bytes:
    return _HEADER.pack(FORMAT_V2, version) + _LENGTH.pack(len(label_bytes)) + label_bytes


def _bound_aad(version: int, label_bytes: bytes, binding: bytes) -> bytes:
    return _bound_aad_prefix(version, label_bytes) + _LENGTH.pack(len(binding)) + binding


def encrypt_bound(subkey: bytes, version: int, label: str, binding: bytes, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` for column ``label`` of the row whose bound value is ``binding``
    (format 0x02).

    Args:
        binding: the canonical bytes of the bound field's value (see :mod:`keyrotation.codecs`).
    """
    return _encrypt_bound_from_parts(subkey, version, label, binding, plaintext, os.urandom(NONCE_BYTES))


def _encrypt_bound_from_parts(
    subkey: bytes, version: int, label: str, binding: bytes, plaintext: bytes, nonce: bytes
) -> bytes:
    _check_key(subkey, "subkey")
    _check_version(version)
    label_bytes = _check_label(label)
    binding = _check_binding(binding)
    if not isinstance(plaintext, (bytes, bytearray)):
        raise TypeError(f"plaintext must be bytes, got {type(plaintext).__name__}")
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    aad = _bound_aad(version, label_bytes, binding)
    sealed = AESGCM(bytes(subkey)).encrypt(bytes(nonce), bytes(plaintext), aad)
    return _HEADER.pack(FORMAT_V2, version) + bytes(nonce) + sealed


def decrypt_bound(subkey: bytes, label: str, binding: bytes, token: bytes) -> bytes:
    """Authenticate and decrypt a format-0x02 token written for column ``label`` and ``binding``.

    Raises:
        InvalidToken: for every failure, a value moved to a row with another bound value included
            (indistinguishable from a wrong key or tampering, by design), and a 0x01 token.
    """
    _check_key(subkey, "subkey")
    label_bytes = _check_label(label)
    binding = _check_binding(binding)
    fmt, version = token_header(token)
    if fmt != FORMAT_V2:
        raise InvalidToken
    return _open(subkey, token, _bound_aad(version, label_bytes, binding))


class Cipher:
    """One column's key at one version, ready for many values (the hot path).

    Same format and same failures as :func:`encrypt` / :func:`decrypt`, with the AEAD object,
    the header and the AAD built once instead of per value. A token whose header names another
    format or version fails with :class:`InvalidToken` like any other wrong key.

    The ``*_bound`` methods are the same for format 0x02 (:func:`encrypt_bound` /
    :func:`decrypt_bound`): the AAD is the column's prefix, built once, and the value's binding.
    """

    __slots__ = ("_aead", "_aad", "_header", "_bound_header", "_bound_prefix", "version")

    def __init__(self, subkey: bytes, version: int, label: str) -> None:
        _check_key(subkey, "subkey")
        _check_version(version)
        label_bytes = _check_label(label)
        self.version = version
        self._header = _HEADER.pack(FORMAT_V1, version)
        self._aad = self._header + label_bytes
        self._bound_header = _HEADER.pack(FORMAT_V2, version)
        self._bound_prefix = _bound_aad_prefix(version, label_bytes)
        self._aead = AESGCM(bytes(subkey))

    def __repr__(self) -> str:
        return f"<Cipher v{self.version}>"

    @property
    def header(self) -> bytes:
        """The format-0x01 header of this version's tokens (the first ``HEADER_BYTES`` of each)."""
        return self._header

    @property
    def bound_header(self) -> bytes:
        """The format-0x02 (row-bound) header of this version's tokens."""
        return self._bound_header

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return self._header + nonce + self._aead.encrypt(nonce, plaintext, self._aad)

    def encrypt_many(self, plaintexts: list[bytes]) -> list[bytes]:
        """:meth:`encrypt` for a batch: the same tokens, one ``os.urandom`` call for every nonce."""
        n = NONCE_BYTES
        randomness = os.urandom(n * len(plaintexts))
        header, aad, seal = self._header, self._aad, self._aead.encrypt
        out = []
        for start, plaintext in zip(range(0, n * len(plaintexts), n), plaintexts, strict=True):
            nonce = randomness[start : start + n]
            out.append(header + nonce + seal(nonce, plaintext, aad))
        return out

    def decrypt(self, token: bytes) -> bytes:
        if len(token) < MIN_TOKEN_BYTES or token[:HEADER_BYTES] != self._header:
            raise InvalidToken
        try:
            return self._aead.decrypt(
                token[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES],
                token[HEADER_BYTES + NONCE_BYTES :],
                self._aad,
            )
        except InvalidTag:
            raise InvalidToken from None

    def encrypt_bound(self, plaintext: bytes, binding: bytes) -> bytes:
        """Format 0x02: ``plaintext`` sealed to the row whose bound value's bytes are ``binding``."""
        nonce = os.urandom(NONCE_BYTES)
        aad = self._bound_prefix + _LENGTH.pack(len(binding)) + binding
        return self._bound_header + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def encrypt_many_bound(self, plaintexts: list[bytes], bindings: list[bytes]) -> list[bytes]:
        """:meth:`encrypt_bound` for a batch (``bindings[i]`` for ``plaintexts[i]``)."""
        n = NONCE_BYTES
        randomness = os.urandom(n * len(plaintexts))
        header, prefix, seal, length = (
            self._bound_header,
            self._bound_prefix,
            self._aead.encrypt,
            _LENGTH.pack,
        )
        out = []
        for start, plaintext, binding in zip(
            range(0, n * len(plaintexts), n), plaintexts, bindings, strict=True
        ):
            nonce = randomness[start : start + n]
            out.append(header + nonce + seal(nonce, plaintext, prefix + length(len(binding)) + binding))
        return out

    def decrypt_bound(self, token: bytes, binding: bytes) -> bytes:
        """Open a 0x02 token of this column and version sealed with ``binding``; a 0x01 token, or
        one sealed for another row, raises :class:`InvalidToken`."""
        if len(token) < MIN_TOKEN_BYTES or token[:HEADER_BYTES] != self._bound_header:
            raise InvalidToken
        try:
            return self._aead.decrypt(
                token[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES],
                token[HEADER_BYTES + NONCE_BYTES :],
                self._bound_prefix + _LENGTH.pack(len(binding)) + binding,
            )
        except InvalidTag:
            raise InvalidToken from None


def blind_index(subkey: bytes, value: bytes, length: int) -> bytes:
    """HMAC-SHA256 of a normalised value under an index subkey, truncated to ``length`` bytes."""
    _check_key(subkey, "subkey")
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"value must be bytes, got {type(value).__name__}")
    if not isinstance(length, int) or not 4 <= length <= 32:
        raise ValueError(f"length must be an int from 4 to 32, got {length!r}")
    return hmac.new(bytes(subkey), bytes(value), sha256).digest()[:length]


def fingerprint(key: bytes) -> str:
    """A short public identifier of a key (first 8 bytes of HMAC-SHA256(key, label), hex).

    Safe to log and to store: it reveals nothing usable about the key.
    """
    _check_key(key)
    return hmac.new(bytes(key), b"keyrotation key fingerprint", sha256).hexdigest()[:16]
