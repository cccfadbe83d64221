"""Keyrings: the versions of one (keyring, purpose), unwrapped lazily and cached in process.

Cost model (why this is safe at scale): a keyring is *listed* from the database at most once per
``CACHE_SECONDS`` (one small query), and a data key is *unwrapped* by the KEK once per process and
version, the first time a value under that version is read or written. Reading a million rows
under two versions costs two KEK calls, and one more for the audit chain key, whose MACs
authenticate the key states (once per process). Unwrapped keys and per-column subkeys stay in this
process's memory only and never appear in ``repr()``.

A ciphertext naming a version the cache does not know (another process just rotated) makes the
keyring reload once, immediately, instead of waiting for the TTL.

Key states are checked once per listing (at the first use of one of its keys), never per value:

* each row's state must be authenticated (:mod:`keyrotation.key_state`): a row whose MAC does not
  verify, or that names an older change than the audit trail's latest for its keyring, keeps
  its place (its version is known, so it causes no reload) but its key is never used, and the
  error says why;
* a process never encrypts or indexes under a key state older than the newest it has used for
  that keyring and purpose (its *high-water mark*): not under a lower active version, unless an
  authenticated rollback newer than the state it has seen says so. A key table put back to an
  earlier moment, authentic as it may be, is refused by every process that saw the later one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.core.signals import setting_changed

from . import conf, crypto
from .exceptions import DecryptionError, KEKUnavailable, KeyStateError, NoActiveKey, UnknownKeyVersion
from .kek import KEKBackend, KEKSwitch, context_for, load_kek
from .tracebacks import forgets_locals

DECRYPTABLE = frozenset({"active", "decrypt_only"})

logger = logging.getLogger("keyrotation.keyring")


@dataclass(frozen=True)
class KeyVersion:
    """A listed DataKey row; ``wrapped`` is ciphertext under the KEK (not secret on its own).

    ``seal`` is the authentication of its state as stored (see :mod:`keyrotation.key_state`).
    """

    version: int
    state: str
    wrapped: bytes | None = field(repr=False)
    seal: Seal | None = field(default=None, repr=False)
    kek_id: str = ""  # which KEK wrapped it (routes the unwrap, see keyrotation.kek.switch)


@dataclass(frozen=True)
class Seal:
    """A row's ``state_audit_id``, ``state_mac_version`` and ``state_mac`` (MACs, not secrets)."""

    audit_id: int | None
    mac_version: int | None
    mac: str


@dataclass(frozen=True)
class HighWater:
    """The newest key state a process has used for one keyring and purpose.

    ``audit_id`` is the audit row that authenticated that state, ``version`` its active version.
    """

    audit_id: int
    version: int

    def refuses(self, listed: HighWater) -> bool:
        """Whether ``listed`` is older: an earlier state, or a lower active version that no newer
        authenticated change (a rollback) explains."""
        return listed.audit_id < self.audit_id or (
            listed.version < self.version and listed.audit_id <= self.audit_id
        )


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
                self._backend = load_kek()
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
                    dek = self._unwrap(keyring, purpose, kv)
                    with self._lock:
                        self._keys[cache_key] = dek
        return dek

    @forgets_locals  # the backend's frames (a custom one's too) may hold the KEK or the data key
    def _unwrap(self, keyring: str, purpose: str, kv: KeyVersion) -> bytes:
        backend = self.backend()
        context = context_for(keyring, purpose, kv.version)
        if isinstance(backend, KEKSwitch):
            dek = backend.unwrap(kv.wrapped, context, kek_id=kv.kek_id)
        else:  # a bare backend put in place by a test
            dek = backend.unwrap(kv.wrapped, context)
        if type(dek) is not bytes or len(dek) != crypto.KEY_BYTES:
            got = f"{len(dek)} bytes" if isinstance(dek, (bytes, bytearray)) else type(dek).__name__
            raise KEKUnavailable(
                f"KEK backend {type(backend).__name__} unwrapped data key {keyring}/{purpose} "
                f"v{kv.version} to {got}, not {crypto.KEY_BYTES} bytes"
            )
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
    """The versions of one keyring for one purpose, as listed at ``loaded_at``.

    Each version's state is authenticated once per listing, the first time a key of the listing
    is used (:meth:`subkey`, :meth:`decryptable_versions`): listing needs no KEK call, so a status
    page or a planner still works while the KEK is out of reach.
    """

    def __init__(
        self,
        name: str,
        purpose: str,
        versions: list[KeyVersion],
        loaded_at: float,
        *,
        latest_audit_id: int | None = None,
        chain_keys: dict[int, tuple[bytes, str]] | None = None,
        high_water: Callable[[Keyring, HighWater], str] | None = None,
    ):
        self.name = name
        self.purpose = purpose
        self.loaded_at = loaded_at
        self._versions = {kv.version: kv for kv in versions}
        active = [kv.version for kv in versions if kv.state == "active"]
        self._active = active[0] if active else None
        # What authenticates the listing: the keyring's newest key-state change in the audit
        # trail, the wrapped audit chain keys (for the MACs), and the cache's high-water check.
        self._latest_audit_id = latest_audit_id
        self._chain_keys = chain_keys or {}
        self._high_water = high_water
        self._refused: dict[int, str] | None = None  # version -> why it is not used; None: not checked yet
        self._check_lock = threading.Lock()
        self._subkeys: dict[tuple[int, str], bytes] = {}
        self._ciphers: dict[tuple[int, str], crypto.Cipher] = {}
        self.expires_at = loaded_at  # set by the cache: when this listing stops being trusted
        self.generation = 0  # set by the cache: the cache generation this listing started

    def __repr__(self) -> str:
        states = ", ".join(f"v{v}={kv.state}" for v, kv in sorted(self._versions.items()))
        return f"<Keyring {self.name}/{self.purpose}: {states or 'empty'}>"

    def refused(self) -> dict[int, str]:
        """``{version: why}`` for the versions whose state this listing does not use.

        Checked once per listing (the first call unwraps the audit chain key if this process has
        not yet): a version whose state is not authenticated (:func:`keyrotation.key_state.problem`),
        and an active version older than one this process has already used (a downgrade).
        Each refusal is logged once, as an error.
        """
        refused = self._refused
        if refused is None:
            with self._check_lock:  # threads starting on a new listing together check (and log) it once
                refused = self._refused
                if refused is None:
                    refused = self._refused = self._check()
        return refused

    def _check(self) -> dict[int, str]:
        refused = {}
        for kv in self._versions.values():
            reason = self._authenticate(kv)
            if reason:
                refused[kv.version] = f"key state ({kv.state}) is not authenticated: {reason}"
        active = self._active
        if active is not None and active not in refused and self._high_water is not None:
            assert self._latest_audit_id is not None  # an authenticated state names it
            reason = self._high_water(self, HighWater(self._latest_audit_id, active))
            if reason:
                refused[active] = reason
        for version, reason in sorted(refused.items()):
            logger.error("%s [keyring=%r purpose=%r version=%s]", reason, self.name, self.purpose, version)
        return refused

    def _authenticate(self, kv: KeyVersion) -> str:
        from . import audit_chain, key_state

        seal = kv.seal or Seal(None, None, "")
        stored = self._chain_keys.get(seal.mac_version) if seal.mac_version is not None else None
        chain_key = audit_chain.chain_key(seal.mac_version, *stored) if stored is not None else None
        row = key_state.StateRow(
            self.name, self.purpose, kv.version, kv.state, seal.audit_id, seal.mac_version, seal.mac
        )
        return key_state.problem(row, self._latest_audit_id, chain_key)

    @property
    def versions(self) -> dict[int, str]:
        """``{version: state}``."""
        return {v: kv.state for v, kv in self._versions.items()}

    @property
    def active_version(self) -> int:
        """The version listed as active: new values are encrypted (or indexed) under it.

        As listed: using it (:meth:`encrypt`, :meth:`index`, :meth:`cipher`, :meth:`subkey`)
        checks that its state is authenticated and not a downgrade.
        """
        if self._active is None:
            raise NoActiveKey(
                "no active key; run `manage.py rotatekeys --init`",
                keyring=self.name,
                purpose=self.purpose,
            )
        return self._active

    def decryptable_versions(self) -> list[int]:
        """Versions that may open values, newest first (active first); refused versions left out."""
        refused = self.refused()
        return sorted(
            (v for v, kv in self._versions.items() if kv.state in DECRYPTABLE and v not in refused),
            reverse=True,
        )

    def knows(self, version: int) -> bool:
        return version in self._versions

    def subkey(self, version: int, label: str) -> bytes:
        """The per-column key of ``version`` (checked for state: only active/decrypt-only)."""
        cached = self._subkeys.get((version, label))
        if cached is not None:
            return cached
        return self._derive(version, label)

    @forgets_locals  # ``dek``: the data key
    def _derive(self, version: int, label: str) -> bytes:
        kv = self._versions.get(version)
        if kv is None:
            raise UnknownKeyVersion(
                "unknown key version", keyring=self.name, purpose=self.purpose, version=version
            )
        reason = self.refused().get(version)
        if reason:
            raise KeyStateError(reason, keyring=self.name, purpose=self.purpose, version=version)
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
            cipher = self._ciphers[(version, label)] = self._new_cipher(version, label)
        return cipher

    @forgets_locals  # the frame of Cipher() holds the subkey
    def _new_cipher(self, version: int, label: str) -> crypto.Cipher:
        return crypto.Cipher(self.subkey(version, label), version, label)

    def encrypt(self, label: str, plaintext: bytes) -> tuple[bytes, int]:
        """Encrypt under the active version; return (token, version)."""
        version = self.active_version
        return self.cipher(version, label).encrypt(plaintext), version

    def encrypt_bound(self, label: str, plaintext: bytes, binding: bytes) -> tuple[bytes, int]:
        """Format 0x02 (bound to the row whose bound value's bytes are ``binding``) under the
        active version; return (token, version)."""
        version = self.active_version
        return self.cipher(version, label).encrypt_bound(plaintext, binding), version

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
        # (keyring, purpose) -> the newest state used, and the generation of the listing it came from
        self._marks: dict[tuple[str, str], tuple[HighWater, int]] = {}
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
        versions, latest_audit_id, chain_keys = _list(name, purpose)
        ring = Keyring(
            name,
            purpose,
            versions,
            now,
            latest_audit_id=latest_audit_id,
            chain_keys=chain_keys,
            high_water=self._check_high_water,
        )
        ring.expires_at = now + conf.cache_seconds()
        with self._lock:
            self._rings[(name, purpose)] = ring
            self.loads += 1
            self.generation += 1
            ring.generation = self.generation
        return ring

    def _check_high_water(self, ring: Keyring, listed: HighWater) -> str:
        """Why ``ring``, whose authenticated state is ``listed``, may not be used; else record it."""
        key = (ring.name, ring.purpose)
        with self._lock:
            seen, seen_generation = self._marks.get(key, (None, 0))
            if ring.generation < seen_generation:
                # Listed before the state already used was listed (a thread still holding the
                # previous listing during a rotation): older by time, not evidence of a downgrade.
                return ""
            if seen is not None and seen.refuses(listed):
                return (
                    f"downgraded key state refused: active version {listed.version} (authenticated by "
                    f"audit row #{listed.audit_id}) is older than active version {seen.version} (audit "
                    f"row #{seen.audit_id}), which this process has already used"
                )
            self._marks[key] = (listed, ring.generation)
            return ""

    def clear(self) -> None:
        with self._lock:
            self._rings.clear()
            self.generation += 1

    def forget_high_water_marks(self) -> None:
        """Forget the newest states seen (tests; see :func:`clear_cache`)."""
        with self._lock:
            self._marks.clear()


def _list(name: str, purpose: str) -> tuple[list[KeyVersion], int | None, dict[int, tuple[bytes, str]]]:
    """(versions of (name, purpose), the keyring's newest key-state change, wrapped chain keys
    with their kek ids).

    One query: the keyring's rows, the audit chain key's rows (their wrapped keys check the MACs,
    see :meth:`Keyring.refused`) and, as a subquery, the newest audit row that changed the
    keyring's states.
    """
    from django.db.models import Q

    from . import audit_chain, key_state
    from .databases import keys_database
    from .models import DataKey

    chain = (audit_chain.AUDIT_KEYRING, audit_chain.AUDIT_PURPOSE)
    # From the keys database, never a replica a router picks for reads: a lagging copy could still
    # show a retired version as usable, or lack a version a ciphertext names.
    rows = list(
        DataKey.objects.using(keys_database())
        .filter(Q(keyring=name, purpose=purpose) | Q(keyring=chain[0], purpose=chain[1]))
        .annotate(latest_audit_id=key_state.latest_audit_id_subquery(name, purpose))
        .values_list(
            "keyring",
            "purpose",
            "version",
            "state",
            "wrapped_key",
            "kek_id",
            *key_state.SEAL_FIELDS,
            "latest_audit_id",
        )
    )
    chain_keys = {r[2]: (bytes(r[4]), r[5]) for r in rows if (r[0], r[1]) == chain and r[4] is not None}
    versions, latest_audit_id = [], None
    for keyring_, purpose_, version, state, wrapped, kek_id, audit_id, mac_version, mac, latest in rows:
        if (keyring_, purpose_) == (name, purpose):
            latest_audit_id = latest
            seal = Seal(audit_id, mac_version, mac or "")
            material = bytes(wrapped) if wrapped is not None else None
            versions.append(KeyVersion(version, state, material, seal, kek_id or ""))
    return versions, latest_audit_id, chain_keys


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


def encrypt_bound(name: str, label: str, plaintext: bytes, binding: bytes) -> tuple[bytes, int]:
    """:func:`encrypt` as format 0x02, bound to ``binding`` (the bound field's canonical bytes)."""
    return get_keyring(name, "encrypt").encrypt_bound(label, plaintext, binding)


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
    """Forget every cached keyring, unwrapped key (the audit chain key's too) and high-water mark
    (tests; after a KEK change).

    :func:`invalidate` and the TTL keep the high-water marks: only this resets them.
    """
    from . import audit_chain

    CACHE.clear()
    CACHE.forget_high_water_marks()
    _UNWRAPPED.clear()
    audit_chain.clear_cache()


def invalidate() -> None:
    """Forget listed keyrings (not unwrapped keys): the next use lists them again."""
    CACHE.clear()


def unwrap(name: str, purpose: str, version: int, wrapped: bytes, kek_id: str = "") -> bytes:
    """The data key ``version`` of (name, purpose) from its wrapped bytes, through the process's
    unwrapped-key cache (one KEK call per process and wrapped key, one at a time). ``kek_id``
    (``DataKey.kek_id``) tells which KEK wrapped it while ``KEK["PREVIOUS"]`` is set."""
    return _UNWRAPPED.get(name, purpose, KeyVersion(version, "", wrapped, kek_id=kek_id))


def kek_backend() -> KEKBackend:
    """The process's KEK (shared with the keyring cache): a :class:`~keyrotation.kek.KEKSwitch`
    holding the current KEK and, while ``KEYROTATION["KEK"]["PREVIOUS"]`` is set, the previous one."""
    return _UNWRAPPED.backend()


def _on_setting_changed(*, setting: str, **kwargs) -> None:
    if setting == "KEYROTATION":
        clear_cache()


setting_changed.connect(_on_setting_changed)
