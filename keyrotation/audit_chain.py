"""The audit hash chain: canonical form of a row, its keyed hash, the chain key, verification.

Each ``KeyRotationAudit`` row stores ``prev_hash`` (the ``row_hash`` of the row before it, ``""``
for the first) and ``row_hash = HMAC-SHA256(chain key, prev_hash || canonical JSON of the row)``.

Why keyed: with a plain SHA-256 anyone with write access to the database could edit a row and
recompute every hash after it. The chain key is a data key of its own, stored wrapped by the KEK
in the ``DataKey`` table (keyring :data:`AUDIT_KEYRING`, purpose ``index``), so forging the chain
takes the KEK, and a KEK rewrap (``rotatekeys --rewrap``) re-wraps it like any other data key
without changing it. Each row names the chain-key version it was sealed with.

Only this module and ``audit.record()`` touch hashes; see docs/audit.md.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from hashlib import sha256
from typing import Any

from django.utils import timezone as dj_timezone

from . import crypto, keyring
from .exceptions import KeyStateError
from .kek import context_for

AUDIT_KEYRING = "_audit_chain"
AUDIT_PURPOSE = "index"
_LABEL = "keyrotation.KeyRotationAudit.row_hash"

# The row fields covered by the hash, in a fixed order (``id`` is not: the chain orders rows).
HASHED_FIELDS = (
    "created_at",
    "action",
    "status",
    "actor",
    "host",
    "pid",
    "keyring",
    "purpose",
    "from_version",
    "to_version",
    "rows_processed",
    "rows_failed",
    "details",
    "chain_key_version",
)


def utc_text(value: datetime) -> str:
    """``2025-01-31T12:00:00.000000Z``: the form datetimes take in the hash and in exports."""
    if dj_timezone.is_naive(value):  # USE_TZ=False: Django stores local wall time
        value = dj_timezone.make_aware(value)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _norm(value: Any) -> Any:
    # PostgreSQL's jsonb stores numbers as numeric: 1e20 comes back as the int 1000…0, 2.0 as 2.0
    # or 2. Integral floats are hashed as ints so the hash is the same before and after the trip.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes hashed for one row: sorted-key compact JSON, datetimes as ISO UTC with µs.

    The same on every database backend and every ``TIME_ZONE``.
    """
    doc = {}
    for name in HASHED_FIELDS:
        value = row.get(name)
        doc[name] = utc_text(value) if isinstance(value, datetime) else _norm(value)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def row_hash(key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    """``HMAC-SHA256(key, prev_hash || canonical(row))`` as 64 hex digits."""
    return hmac.new(key, prev_hash.encode("ascii") + canonical(row), sha256).hexdigest()


# -- the chain key ------------------------------------------------------------------------------

_STATE_LABEL = "keyrotation.DataKey.state"


@dataclass(frozen=True)
class ChainKey:
    """One version of the chain key: the row-hash key and the key-state MAC key derived from it.

    Two HKDF subkeys of the same wrapped data key, so that a row hash can never be passed off as a
    key-state MAC or the other way round. ``repr()`` shows the version only.
    """

    version: int
    row_key: bytes = field(repr=False)
    state_key: bytes = field(repr=False)


_KEYS: dict[tuple[int, bytes], ChainKey] = {}
_LOCK = threading.Lock()


def chain_key(version: int, wrapped: bytes, kek_id: str = "") -> ChainKey:
    """The chain key of ``version`` from its wrapped bytes (one KEK call per process and version);
    ``kek_id`` names the KEK that wrapped it (see :func:`keyrotation.keyring.unwrap`)."""
    # Cached by wrapped bytes: a rewrap or a rolled-back key creation can never serve a stale key.
    cache_key = (version, bytes(wrapped))
    key = _KEYS.get(cache_key)
    if key is None:
        # Through the keyring's unwrapped-key cache: one KEK call at a time per process (a Vault
        # client is not shared between threads), and none again after a clear of this cache only.
        dek = keyring.unwrap(AUDIT_KEYRING, AUDIT_PURPOSE, version, cache_key[1], kek_id)
        key = ChainKey(
            version,
            crypto.derive_subkey(dek, AUDIT_PURPOSE, _LABEL),
            crypto.derive_subkey(dek, AUDIT_PURPOSE, _STATE_LABEL),
        )
        with _LOCK:
            _KEYS[cache_key] = key
    return key


def clear_cache() -> None:
    """Forget unwrapped chain keys (tests)."""
    with _LOCK:
        _KEYS.clear()


def _datakey_model(datakey_model):
    if datakey_model is not None:
        return datakey_model
    from .models import DataKey

    return DataKey


def find_chain_key(using: str | None = None, datakey_model=None) -> ChainKey | None:
    """The active chain key, or None when there is none."""
    model = _datakey_model(datakey_model)
    qs = model.objects.using(using).filter(keyring=AUDIT_KEYRING, purpose=AUDIT_PURPOSE, state="active")
    row = qs.values_list("version", "wrapped_key", "kek_id").first()
    if row is None or row[1] is None:
        return None
    return chain_key(row[0], bytes(row[1]), row[2] or "")


def create_chain_key(using: str | None = None, datakey_model=None) -> ChainKey:
    """Create version 1 of the chain key, wrapped by the KEK (first use of an empty trail only).

    Call with appends serialised (``audit.record`` holds the chain lock), so two processes cannot
    both create version 1. Its state is authenticated by the caller, once the audit row that
    records it exists (see ``keyrotation.key_state``).
    """
    model = _datakey_model(datakey_model)
    wrapped, kek_id = keyring.kek_backend().wrap(
        os.urandom(crypto.KEY_BYTES), context_for(AUDIT_KEYRING, AUDIT_PURPOSE, 1)
    )
    now = dj_timezone.now()
    model.objects.using(using).create(
        keyring=AUDIT_KEYRING,
        purpose=AUDIT_PURPOSE,
        version=1,
        state="active",
        wrapped_key=wrapped,
        kek_id=kek_id,
        created_at=now,
        activated_at=now,
    )
    return chain_key(1, wrapped, kek_id)


def missing_key_error() -> KeyStateError:
    """The refusal to make a chain key while rows sealed by the lost one exist."""
    return KeyStateError(
        "the audit chain key is missing while audit rows exist; refusing to make a new one (every "
        "existing row would stop verifying): restore its DataKey row from a backup",
        keyring=AUDIT_KEYRING,
        purpose=AUDIT_PURPOSE,
    )


def active_chain_key(using: str | None = None, datakey_model=None, audit_model=None) -> tuple[int, bytes]:
    """(version, row-hash key) to seal new rows with, creating version 1 if there is none.

    Used by migration ``0003`` to seal rows written before the chain. Never creates a key while
    sealed rows exist: they would all stop verifying (``audit.record()`` refuses the same way).

    Raises:
        KeyStateError: there is no chain key but sealed audit rows exist.
    """
    key = find_chain_key(using, datakey_model)
    if key is None:
        if audit_model is None:
            from .models import KeyRotationAudit as audit_model
        if audit_model.objects.using(using).exclude(row_hash="").exists():
            raise missing_key_error()
        key = create_chain_key(using, datakey_model)
    return key.version, key.row_key


def chain_keys(using: str | None = None, datakey_model=None) -> dict[int, ChainKey | None]:
    """Every chain-key version; None for a destroyed one.

    Retired versions still verify the rows they sealed: their wrapped material is kept, and
    checking old seals is exactly the "decrypt old data" use that retirement forbids for data
    keys only because rows must have moved off them first.
    """
    model = _datakey_model(datakey_model)
    rows = (
        model.objects.using(using)
        .filter(keyring=AUDIT_KEYRING, purpose=AUDIT_PURPOSE)
        .values_list("version", "wrapped_key", "kek_id")
    )
    return {v: chain_key(v, bytes(w), k or "") if w is not None else None for v, w, k in rows}


def _created_at(using: str | None, datakey_model) -> dict[int, datetime]:
    model = _datakey_model(datakey_model)
    rows = model.objects.using(using).filter(keyring=AUDIT_KEYRING, purpose=AUDIT_PURPOSE)
    return dict(rows.values_list("version", "created_at"))


def seal_legacy(audit_model, datakey_model, using: str) -> int:
    """Seal, in id order, rows written before the chain existed (migration 0003); return how many.

    Runs with the migration's historical models, whose plain manager may update rows.
    """
    rows = list(audit_model.objects.using(using).order_by("id").values("id", *HASHED_FIELDS))
    if not rows:
        return 0
    version, key = active_chain_key(using, datakey_model, audit_model)
    prev = ""
    for row in rows:
        row["chain_key_version"] = version
        digest = row_hash(key, prev, row)
        audit_model.objects.using(using).filter(pk=row["id"]).update(
            chain_key_version=version, prev_hash=prev, row_hash=digest
        )
        prev = digest
    return len(rows)


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainReport:
    """The outcome of :func:`verify`. ``broken_*`` name the first row that does not verify."""

    rows: int
    ok: bool
    broken_id: int | None = None
    broken_action: str = ""
    broken_created_at: datetime | None = None
    reason: str = ""
    head: str = ""
    head_id: int | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"chain verified: {self.rows} rows"
        when = utc_text(self.broken_created_at) if self.broken_created_at else "?"
        return (
            f"chain broken at row #{self.broken_id} ({self.broken_action}, {when}): {self.reason}; "
            f"{self.rows} rows checked before it"
        )


def _fields() -> tuple[str, ...]:
    return ("id", *HASHED_FIELDS, "prev_hash", "row_hash")


def iter_rows(using: str | None = None, model=None, since: datetime | None = None) -> Iterator[dict]:
    """Audit rows as dicts in chain order (by id), streamed."""
    if model is None:
        from .models import KeyRotationAudit as model
    qs = model.objects.using(using).order_by("id")
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    return qs.values(*_fields()).iterator(chunk_size=2000)


def verify(using: str | None = None, model=None, datakey_model=None) -> ChainReport:
    """Recompute the whole chain; report the first row whose links or hash do not match.

    Detects an edited row (its hash), a deleted or inserted row (the next row's ``prev_hash``), and
    rows moved between positions. Cannot by itself detect the *newest* rows being deleted: compare
    :attr:`ChainReport.head` with a head recorded elsewhere (the ``AUDIT_ANCHOR`` setting, an
    export, ``audit_verify --head``).

    A row whose hash does not match and whose chain key was created *after* the row was written
    is reported as "chain key replaced": the key that sealed it is gone and another one took its
    version, so no row sealed before can verify; nothing says those rows were edited.
    """
    keys = chain_keys(using, datakey_model)
    created = _created_at(using, datakey_model)
    prev, prev_id, count = "", None, 0
    for row in iter_rows(using, model):
        reason = ""
        version = row["chain_key_version"]
        key = keys.get(version)
        if not row["row_hash"]:
            reason = "row is not sealed (no row_hash)"
        elif row["prev_hash"] != prev:
            reason = "prev_hash does not match the previous row (a row was deleted, inserted or moved)"
        elif key is None:
            reason = f"chain key version {version} is missing or not usable"
        elif not hmac.compare_digest(row_hash(key.row_key, prev, row), row["row_hash"]):
            if created.get(version) is not None and created[version] > row["created_at"]:
                reason = (
                    f"chain key replaced: chain key version {version} was created after this row was "
                    "sealed (its DataKey row was deleted and a new key made); rows sealed before "
                    "cannot be verified"
                )
            else:
                reason = "row_hash does not match its content (the row was edited)"
        if reason:
            return ChainReport(
                rows=count,
                ok=False,
                broken_id=row["id"],
                broken_action=row["action"],
                broken_created_at=row["created_at"],
                reason=reason,
                head=prev,
                head_id=prev_id,
            )
        prev, prev_id, count = row["row_hash"], row["id"], count + 1
    return ChainReport(rows=count, ok=True, head=prev, head_id=prev_id)


def contains_head(head: str, using: str | None = None, model=None) -> bool:
    """Whether a row with ``row_hash == head`` exists (detects truncation of the newest rows)."""
    if model is None:
        from .models import KeyRotationAudit as model
    return model.objects.using(using).filter(row_hash=head).exists()
