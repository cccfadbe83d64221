"""Keyrings: the versions of one (keyring, purpose), unwrapped lazily and cached in process.

Cost model (why this is safe at scale): a keyring is *listed* from the database at most once per
``CACHE_SECONDS`` (one small query), and a data key is *unwrapped* by the KEK once per process and
version, the first time a value under that version is read or written. Reading a million rows
under two versions costs two KEK calls. Unwrapped keys and per-column subkeys stay in this
process's memory only and never appear in ``repr()``.

A ciphertext naming a version the cache does not know (another process just rotated) makes the
keyring reload once, immediately, instead of waiting for the TTL.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from django.core.signals import setting_changed

from . import conf, crypto
from .exceptions import DecryptionError, KeyStateError, NoActiveKey, UnknownKeyVersion
from .kek import KEKBackend, context_for, load_backend

DECRYPTABLE = frozenset({"active", "decrypt_only"})


@dataclass(frozen=True)
class KeyVersion:
    """A listed DataKey row; ``wrapped`` is ciphertext under the KEK (not secret on its own)."""

    version: int
    state: str
    wrapped: bytes | None = field(repr=False)


class _Unwrapped:
    """Process-wide cache of unwrapped data keys, keyed by their wrapped bytes.

    Keyed by the wrapped bytes so that a rewrap, a destroy or a reload never serves a stale key,
    while a plain TTL reload costs no KEK call.
    """

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str, int, bytes], bytes] = {}
        self._lock = threading.Lock()
        self._unwrap_lock = threading.Lock()
        self._backend: KEKBackend | None = None

    def backend(self) -> KEKBackend:
        with self._lock:
            if self._backend is None:
                self._backend = load_backend()
            return self._backend

    def get(self, keyring: str, purpose: str, kv: KeyVersion) -> bytes:
        assert kv.wrapped is not None
        cache_key = (keyring, purpose, kv.version, kv.wrapped)
        dek = self._keys.get(cache_key)
        if dek is None:
            # One unwrap at a time per process: threads asking for the same key (the engine's two
            # lanes start together) wait for the first one's KEK call instead of repeating it,
            # and a KEK client (hvac's requests session) is never used by two threads at once.
            with self._unwrap_lock:
                dek = self._keys.get(cache_key)
                if dek is None:
                    dek = self.backend().unwrap(kv.wrapped, context_for(keyring, purpose, kv.version))
                    with self._lock:
                        self._keys[cache_key] = dek
        return dek

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()
            self._backend = None

    def after_fork(self) -> None:
        """In a forked child: a KEK client of its own (the parent's HTTP connections must not
        be shared between processes), new locks (another thread may have held one at the fork).
        Unwrapped keys are kept: they are plain memory."""
        self._lock = threading.Lock()
        self._unwrap_lock = threading.Lock()
        self._backend = None

    def __repr__(self) -> str:
        return f"<unwrapped key cache: {len(self._keys)} keys>"


_UNWRAPPED = _Unwrapped()
# `reencrypt --workers N` forks, and so do pre-forking servers (gunicorn --preload): a Vault client
# made before the fork holds keep-alive connections that the children would otherwise share.
os.register_at_fork(after_in_child=_UNWRAPPED.after_fork)


class Keyring:
    """The versions of one keyring for one purpose, as listed at ``loaded_at``."""

    def __init__(self, name: str, purpose: str, versions: list[KeyVersion], loaded_at: float):
        self.name = name
        self.purpose = purpose
        self.loaded_at = loaded_at
        self._versions = {kv.version: kv for kv in versions}
        active = [kv.version for kv in versions if kv.state == "active"]
        self._active = active[0] if active else None
        self._subkeys: dict[tuple[int, str], bytes] = {}
        self._ciphers: dict[tuple[int, str], crypto.Cipher] = {}
        self.expires_at = loaded_at  # set by the cache: when this listing stops being trusted

    def __repr__(self) -> str:
        states = ", ".join(f"v{v}={kv.state}" for v, kv in sorted(self._versions.items()))
        return f"<Keyring {self.name}/{self.purpose}: {states or 'empty'}>"

    @property
    def versions(self) -> dict[int, str]:
        """``{version: state}``."""
        return {v: kv.state for v, kv in self._versions.items()}

    @property
    def active_version(self) -> int:
        if self._active is None:
            raise NoActiveKey(
                "no active key; run `manage.py rotatekeys --init`",
                keyring=self.name,
                purpose=self.purpose,
            )
        return self._active

    def decryptable_versions(self) -> list[int]:
        """Versions that may open values, newest first (active first)."""
        return sorted((v for v, kv in self._versions.items() if kv.state in DECRYPTABLE), reverse=True)

    def knows(self, version: int) -> bool:
        return version in self._versions

    def subkey(self, version: int, label: str) -> bytes:
        """The per-column key of ``version`` (checked for state: only active/decrypt-only)."""
        cached = self._subkeys.get((version, label))
        if cached is not None:
            return cached
        kv = self._versions.get(version)
        if kv is None:
            raise UnknownKeyVersion(
                "unknown key version", keyring=self.name, purpose=self.purpose, version=version
            )
        if kv.state not in DECRYPTABLE:
            raise KeyStateError(
                f"key version is {kv.state} and may not be used",
                keyring=self.name,
                purpose=self.purpose,
                version=version,
            )
        dek = _UNWRAPPED.get(self.name, self.purpose, kv)
        sub = crypto.derive_subkey(dek, self.purpose, label)
        self._subkeys[(version, label)] = sub
        return sub

    # -- encrypt purpose -------------------------------------------------------------------

    def cipher(self, version: int, label: str) -> crypto.Cipher:
        """The column's cipher at ``version`` (state-checked like :meth:`subkey`), cached."""
        cipher = self._ciphers.get((version, label))
        if cipher is None:
            cipher = self._ciphers[(version, label)] = crypto.Cipher(
                self.subkey(version, label), version, label
            )
        return cipher

    def encrypt(self, label: str, plaintext: bytes) -> tuple[bytes, int]:
        """Encrypt under the active version; return (token, version)."""
        version = self.active_version
        return self.cipher(version, label).encrypt(plaintext), version

    def decrypt(self, label: str, token: bytes, version: int) -> bytes:
        """Open a token whose header names ``version`` (already known to this keyring)."""
        try:
            return self.cipher(version, label).decrypt(token)
        except crypto.InvalidToken:
            raise DecryptionError(label=label, version=version) from None

    # -- index purpose ---------------------------------------------------------------------

    def index(self, label: str, value: bytes, length: int) -> tuple[bytes, int]:
        """Blind index of ``value`` under the active version; return (digest, version)."""
        version = self.active_version
        return crypto.blind_index(self.subkey(version, label), value, length), version

    def indexes(self, label: str, value: bytes, length: int) -> dict[int, bytes]:
        """Blind index of ``value`` under every decryptable version (for lookups mid-rotation)."""
        return {
            v: crypto.blind_index(self.subkey(v, label), value, length) for v in self.decryptable_versions()
        }


class KeyringCache:
    """The process's keyrings, each listed from the database at most once per ``CACHE_SECONDS``.

    ``generation`` is bumped whenever a listing is replaced or forgotten: anything derived from a
    listing (a field's cipher for a version) stays valid only while the generation it was read at
    is current. Hot paths read ``CACHE.generation`` directly; :func:`generation` is the same number.
    """

    def __init__(self) -> None:
        self._rings: dict[tuple[str, str], Keyring] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how many times a keyring was listed from the database
        # Bumped whenever a listed keyring is replaced or forgotten: what was derived from a listing
        # (see decrypt_cipher) stays valid only while the generation it was read at is current.
        self.generation = 0

    def get(self, name: str, purpose: str, *, max_age: float | None = None) -> Keyring:
        ring = self._rings.get((name, purpose))
        now = time.monotonic()
        # The TTL is read when a keyring is listed, not per value (settings lookups are not free);
        # a change of KEYROTATION clears the cache (see _on_setting_changed).
        if (
            ring is None
            or now >= ring.expires_at
            or (max_age is not None and now - ring.loaded_at >= max_age)
        ):
            ring = self._load(name, purpose, now)
        return ring

    def _load(self, name: str, purpose: str, now: float) -> Keyring:
        from .databases import keys_database
        from .models import DataKey

        # From the keys database, never a replica a router picks for reads: a lagging copy could
        # still show a retired version as usable, or lack a version a ciphertext names.
        rows = (
            DataKey.objects.using(keys_database())
            .filter(keyring=name, purpose=purpose)
            .values_list("version", "state", "wrapped_key")
        )
        versions = [KeyVersion(v, s, bytes(w) if w is not None else None) for v, s, w in rows]
        ring = Keyring(name, purpose, versions, now)
        ring.expires_at = now + conf.cache_seconds()
        with self._lock:
            self._rings[(name, purpose)] = ring
            self.loads += 1
            self.generation += 1
        return ring

    def clear(self) -> None:
        with self._lock:
            self._rings.clear()
            self.generation += 1


CACHE = KeyringCache()


def get_keyring(name: str, purpose: str) -> Keyring:
    """The cached keyring ``name`` for ``purpose`` (``"encrypt"`` or ``"index"``)."""
    return CACHE.get(name, purpose)


def keyring_for_version(name: str, purpose: str, version: int) -> Keyring:
    """The keyring, reloaded once right away if it does not know ``version`` yet."""
    ring = CACHE.get(name, purpose)
    if not ring.knows(version):
        ring = CACHE.get(name, purpose, max_age=0)
    return ring


def decrypt_cipher(name: str, label: str, version: int) -> tuple[crypto.Cipher, float, int]:
    """The cipher that opens column ``label``'s values under ``version``, and how long it may be reused.

    Returns ``(cipher, expires_at, generation)``: a caller may keep the cipher and use it without
    asking again while ``time.monotonic() < expires_at`` and :func:`generation` still equals
    ``generation``, i.e. exactly as long as the keyring listing that allowed it is the cached one
    (a TTL expiry, a reload, :func:`invalidate`, :func:`clear_cache` or a change of ``KEYROTATION``
    ends it). An unknown version reloads the keyring once, like :func:`decrypt`.

    Raises:
        UnknownKeyVersion, KeyStateError: the version does not exist or is retired/destroyed.
        KEKUnavailable: the data key could not be unwrapped.
    """
    generation = CACHE.generation  # read first: a listing replaced meanwhile leaves it stale, not wrong
    ring = keyring_for_version(name, "encrypt", version)
    return ring.cipher(version, label), ring.expires_at, generation


def generation() -> int:
    """Changes whenever a cached keyring listing is replaced or forgotten (see :func:`decrypt_cipher`)."""
    return CACHE.generation


def encrypt(name: str, label: str, plaintext: bytes) -> tuple[bytes, int]:
    """Encrypt ``plaintext`` for column ``label`` with keyring ``name``; return (token, version)."""
    return get_keyring(name, "encrypt").encrypt(label, plaintext)


def decrypt(name: str, label: str, token: bytes, *, pk: object = None, version: int | None = None) -> bytes:
    """Decrypt a stored token for column ``label``.

    Raises:
        DecryptionError: the token does not open (naming label, pk and version, nothing else).
        UnknownKeyVersion, KeyStateError: the version does not exist or is retired/destroyed.
        KEKUnavailable: the data key could not be unwrapped.

    ``version`` may be passed when the caller already parsed the header (it is checked again
    by the cipher: a token whose header names another version does not open).
    """
    if version is None:
        try:
            version = crypto.token_version(token)
        except crypto.InvalidToken:
            raise DecryptionError("Malformed encrypted value", label=label, pk=pk) from None
    ring = keyring_for_version(name, "encrypt", version)
    try:
        return ring.decrypt(label, token, version)
    except DecryptionError:
        raise DecryptionError(label=label, pk=pk, version=version) from None


def clear_cache() -> None:
    """Forget every cached keyring and unwrapped key (tests; after a KEK change)."""
    CACHE.clear()
    _UNWRAPPED.clear()


def invalidate() -> None:
    """Forget listed keyrings (not unwrapped keys): the next use lists them again."""
    CACHE.clear()


def kek_backend() -> KEKBackend:
    """The process's KEK backend instance (shared with the keyring cache)."""
    return _UNWRAPPED.backend()


def _on_setting_changed(*, setting: str, **kwargs) -> None:
    if setting == "KEYROTATION":
        clear_cache()


setting_changed.connect(_on_setting_changed)
