"""The key lifecycle: generate, activate, roll back, retire, destroy, rewrap.

Every function runs in one transaction that locks the keyring's rows, changes state, writes its
``KeyRotationAudit`` row, and authenticates the new state of every row of the keyring and purpose
with that audit row (see :mod:`keyrotation.key_state`), so the audit trail can never disagree with
the keys. A keyring whose stored state is not authenticated (changed by SQL) is refused: no
operation builds on it until an operator has looked at it and run :func:`accept_state`.
Processes see the change within ``CACHE_SECONDS`` (at once for a version they meet in a ciphertext).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from . import audit, audit_chain, conf, crypto, databases, gates, key_state, keyring, signals
from .exceptions import KeyStateError, NoActiveKey, UnknownKeyVersion
from .kek import KEKSwitch, Wrapper, context_for
from .models import DataKey, KeyState

ACTIVE, DECRYPT_ONLY, RETIRED, DESTROYED = (
    KeyState.ACTIVE,
    KeyState.DECRYPT_ONLY,
    KeyState.RETIRED,
    KeyState.DESTROYED,
)

# (from, to) -> why the edge exists. Anything not listed is refused.
TRANSITIONS: dict[tuple[str | None, str], str] = {
    (None, ACTIVE): "a new version is generated and takes new writes",
    (ACTIVE, DECRYPT_ONLY): "superseded by a newer active version, or rolled back",
    (DECRYPT_ONLY, ACTIVE): "rollback: the previous version takes new writes again",
    (DECRYPT_ONLY, RETIRED): "the census proves no row references it",
    (RETIRED, DECRYPT_ONLY): "disaster recovery: rows under it were restored from a backup",
    (RETIRED, DESTROYED): "crypto-shredding: the wrapped key material is erased for good",
}
DECRYPTABLE_STATES = (ACTIVE, DECRYPT_ONLY)


def check_transition(key: DataKey | None, to: str, keyring_name: str, purpose: str) -> None:
    """Raise KeyStateError unless ``key`` may move to ``to`` (see TRANSITIONS)."""
    frm = key.state if key is not None else None
    if (frm, to) not in TRANSITIONS:
        allowed = sorted(t for f, t in TRANSITIONS if f == frm)
        hint = ""
        if frm == ACTIVE and to in (RETIRED, DESTROYED):
            hint = f"; rotate first (`manage.py rotatekeys --keyring {keyring_name} --purpose {purpose}`)"
        raise KeyStateError(
            f"cannot move a key from {frm or 'nothing'} to {to} (allowed: {', '.join(allowed) or 'none'})"
            + hint,
            keyring=keyring_name,
            purpose=purpose,
            version=key.version if key is not None else None,
        )


def _locked(keyring_name: str, purpose: str, *, authenticated: bool = True) -> list[DataKey]:
    """The keyring's rows, locked; with ``authenticated``, refused unless every state is authentic.

    The rows are read twice: the first statement takes the locks (waiting for a concurrent
    transition to commit), the second reads what is there once they are ours. On PostgreSQL a
    statement that waited for another transaction's row locks returns the rows it waited for as
    that transaction left them, but not the rows it inserted (its snapshot is older): after a
    concurrent rotation it would show no active version, and the next version number would
    collide.
    """
    rows = DataKey.objects.select_for_update().filter(keyring=keyring_name, purpose=purpose)
    list(rows.values_list("pk", flat=True))
    keys = list(rows.order_by("version"))
    if authenticated and keys:
        _refuse_unauthenticated(keys, keyring_name, purpose)
    return keys


def _refuse_unauthenticated(keys: list[DataKey], keyring_name: str, purpose: str) -> None:
    expected = key_state.latest_audit_id(keyring_name, purpose, using=keys[0]._state.db)
    chain = audit_chain.chain_keys(keys[0]._state.db)
    for key in keys:
        reason = key_state.problem(_state_row(key), expected, chain.get(key.state_mac_version))
        if reason:
            raise KeyStateError(
                f"key state ({key.state}) is not authenticated: {reason}; check it with `rotatekeys "
                "--list` and the audit trail, then restore it or run `rotatekeys --accept-state`",
                keyring=keyring_name,
                purpose=purpose,
                version=key.version,
            )


def _state_row(key: DataKey) -> key_state.StateRow:
    return key_state.StateRow(
        key.keyring,
        key.purpose,
        key.version,
        key.state,
        key.state_audit_id,
        key.state_mac_version,
        key.state_mac or "",
    )


def _record_state_change(action: str, keyring_name: str, purpose: str, **fields):
    """Write the audit row of a state change of (keyring, purpose) and authenticate every row's
    new state with it, in the caller's transaction."""
    entry = audit.record(action, keyring=keyring_name, purpose=purpose, **fields)
    rows = DataKey.objects.using(entry._state.db).filter(keyring=keyring_name, purpose=purpose)
    key_state.seal(rows, entry.pk, entry._state.db)
    return entry


def _after_commit() -> None:
    transaction.on_commit(keyring.invalidate)


def _announce(key: DataKey, from_state: str | None) -> None:
    """Send ``key_state_changed`` once the change is committed (never for a rolled-back one)."""
    payload = {
        "keyring": key.keyring,
        "purpose": key.purpose,
        "version": key.version,
        "from_state": from_state,
        "to_state": key.state,
    }
    transaction.on_commit(lambda: signals.key_state_changed.send(sender=DataKey, **payload))


MAX_KEY_VERSION = 32767  # the <field>_key_version columns are small integers


def _new_key(keyring_name: str, purpose: str, version: int) -> DataKey:
    if version > MAX_KEY_VERSION:
        raise KeyStateError(
            f"key versions stop at {MAX_KEY_VERSION} (the version columns are small integers)",
            keyring=keyring_name,
            purpose=purpose,
            version=version,
        )
    backend = keyring.kek_backend()
    wrapped, kek_id = backend.wrap(os.urandom(crypto.KEY_BYTES), context_for(keyring_name, purpose, version))
    now = timezone.now()
    key = DataKey.objects.create(
        keyring=keyring_name,
        purpose=purpose,
        version=version,
        state=ACTIVE,
        wrapped_key=wrapped,
        kek_id=kek_id,
        activated_at=now,
    )
    _announce(key, None)
    return key


def init(
    keyring_name: str | None = None, *, purposes=crypto.PURPOSES, actor: str | None = None
) -> list[DataKey]:
    """Create version 1 of each purpose that has no key yet; return the keys created."""
    keyring_name = keyring_name or conf.default_keyring()
    created = []
    ensure_key = getattr(keyring.kek_backend(), "ensure_key", None)
    if ensure_key is not None:  # Vault: create the derived Transit key on first use
        ensure_key()
    with transaction.atomic():
        for purpose in purposes:
            if _locked(keyring_name, purpose, authenticated=False):
                continue
            key = _new_key(keyring_name, purpose, 1)
            _record_state_change("key_generated", keyring_name, purpose, actor=actor, to_version=1)
            created.append(key)
        _after_commit()
    return created


def rotate(keyring_name: str | None = None, purpose: str = "encrypt", *, actor: str | None = None) -> DataKey:
    """Generate a new version and make it active; the previous active becomes decrypt-only."""
    keyring_name = keyring_name or conf.default_keyring()
    with transaction.atomic():
        keys = _locked(keyring_name, purpose)
        if not keys:
            raise NoActiveKey(
                "keyring has no keys; run `rotatekeys --init` first", keyring=keyring_name, purpose=purpose
            )
        key = _rotate_locked(keys, keyring_name, purpose, actor)
        _after_commit()
    return key


def active_since(key: DataKey) -> datetime:
    """When ``key`` last became the active version (``activated_at``; ``created_at`` for a row
    written without it, e.g. by SQL). A rollback sets it again for the version it re-activates."""
    return key.activated_at or key.created_at


def rotate_if_active_since(
    keyring_name: str, purpose: str, cutoff: datetime, *, actor: str | None = None, details=None
) -> DataKey | None:
    """Rotate like :func:`rotate` only if the active version has been active since ``cutoff`` or
    earlier, judged with the keyring's rows locked; otherwise change nothing and return None.

    Two processes that both found the version too old (two cron hosts) rotate it once: the second
    waits for the first's lock, then finds a version activated after ``cutoff``. ``details`` go
    into the ``key_rotated`` audit row (why it was rotated; JSON scalars only).
    """
    with transaction.atomic():
        keys = _locked(keyring_name, purpose)  # judged on what is there once the rows are ours
        current = next((k for k in keys if k.state == ACTIVE), None)
        if current is None or active_since(current) > cutoff:
            return None
        key = _rotate_locked(keys, keyring_name, purpose, actor, details)
        _after_commit()
    return key


def _rotate_locked(
    keys: list[DataKey], keyring_name: str, purpose: str, actor: str | None, details=None
) -> DataKey:
    current = next((k for k in keys if k.state == ACTIVE), None)
    if current is not None:
        _set_state(current, DECRYPT_ONLY)
    key = _new_key(keyring_name, purpose, keys[-1].version + 1)
    _record_state_change(
        "key_rotated",
        keyring_name,
        purpose,
        actor=actor,
        from_version=current.version if current else None,
        to_version=key.version,
        details=details,
    )
    return key


# What _set_state changes (the seal is written by _record_state_change, after the audit row).
_LIFECYCLE_FIELDS = ("state", "activated_at", "deactivated_at", "retired_at", "destroyed_at", "wrapped_key")


def _set_state(key: DataKey, to: str) -> None:
    check_transition(key, to, key.keyring, key.purpose)
    now = timezone.now()
    if key.state == ACTIVE:
        key.deactivated_at = now
    if to == ACTIVE:
        key.activated_at = now
    elif to == RETIRED:
        key.retired_at = now
    elif to == DESTROYED:
        key.destroyed_at = now
        key.wrapped_key = None
    from_state = key.state
    key.state = to
    key.save(update_fields=[*_LIFECYCLE_FIELDS])
    _announce(key, from_state)


def _find(keys: list[DataKey], version: int, keyring_name: str, purpose: str) -> DataKey:
    for key in keys:
        if key.version == version:
            return key
    raise UnknownKeyVersion("no such key version", keyring=keyring_name, purpose=purpose, version=version)


def rollback(
    keyring_name: str | None = None, purpose: str = "encrypt", *, actor: str | None = None
) -> DataKey:
    """Re-activate the newest decrypt-only version below the active one.

    Rows written under the abandoned version stay readable (it becomes decrypt-only); run
    ``reencrypt`` to move them back.
    """
    keyring_name = keyring_name or conf.default_keyring()
    with transaction.atomic():
        keys = _locked(keyring_name, purpose)
        current = next((k for k in keys if k.state == ACTIVE), None)
        if current is None:
            raise NoActiveKey("nothing to roll back from", keyring=keyring_name, purpose=purpose)
        previous = [k for k in keys if k.state == DECRYPT_ONLY and k.version < current.version]
        if not previous:
            raise KeyStateError(
                "no decrypt-only version older than the active one to roll back to",
                keyring=keyring_name,
                purpose=purpose,
                version=current.version,
            )
        target = previous[-1]
        _set_state(current, DECRYPT_ONLY)
        _set_state(target, ACTIVE)
        _record_state_change(
            "key_rolled_back",
            keyring_name,
            purpose,
            actor=actor,
            from_version=current.version,
            to_version=target.version,
        )
        _after_commit()
    return target


def retire(keyring_name: str | None, purpose: str, version: int, *, actor: str | None = None) -> DataKey:
    """Retire a decrypt-only version once the census proves no row references it.

    Refused, and the refusal audited, while (a) the version stopped being active less than
    ``CACHE_SECONDS`` ago: another process may still believe it is active and write with it, after
    the census has counted; or (b) any row references it, by its version column or by its
    ciphertext header, on any database that holds one of its columns (see :mod:`keyrotation.gates`).
    The census runs inside the retiring transaction, after the key row is locked.
    """
    keyring_name = keyring_name or conf.default_keyring()
    with transaction.atomic(using=databases.keys_database()):
        key = _find(_locked(keyring_name, purpose), version, keyring_name, purpose)
        check_transition(key, RETIRED, keyring_name, purpose)
        counted, refusal = gates.retire(key)
        if refusal is None:
            _set_state(key, RETIRED)
            _record_state_change(
                "key_retired",
                keyring_name,
                purpose,
                actor=actor,
                from_version=version,
                rows_processed=0,
                details=counted.details(),
            )
            _after_commit()
            return key
    raise _refused("key_retire_refused", refusal, keyring_name, purpose, version, actor)


def _refused(
    action: str, refusal: gates.Refusal, keyring_name: str, purpose: str, version: int, actor: str | None
) -> KeyStateError:
    """Record a gate's refusal in its own transaction (the evidence must outlive the refused
    change, which rolled back) and return the error to raise."""
    audit.record(
        action,
        status="refused",
        actor=actor,
        keyring=keyring_name,
        purpose=purpose,
        from_version=version,
        details={"reason": refusal.reason, **refusal.details},
    )
    return KeyStateError(refusal.message, keyring=keyring_name, purpose=purpose, version=version)


def restore(keyring_name: str | None, purpose: str, version: int, *, actor: str | None = None) -> DataKey:
    """Disaster recovery: make a retired (not destroyed) version decrypt-only again."""
    keyring_name = keyring_name or conf.default_keyring()
    with transaction.atomic():
        key = _find(_locked(keyring_name, purpose), version, keyring_name, purpose)
        if key.state != RETIRED:
            raise KeyStateError(
                f"only a retired key can be restored, this one is {key.state}",
                keyring=keyring_name,
                purpose=purpose,
                version=version,
            )
        _set_state(key, DECRYPT_ONLY)
        _record_state_change("key_restored", keyring_name, purpose, actor=actor, to_version=version)
        _after_commit()
    return key


def destroy(keyring_name: str | None, purpose: str, version: int, *, actor: str | None = None) -> DataKey:
    """Erase the wrapped material of a retired version (irreversible crypto-shredding).

    Refused, and the refusal audited, unless the version has been retired for at least
    ``DESTROY_GRACE_SECONDS``, no transaction that began before it stopped taking writes is still
    open on a counted database (PostgreSQL), and a fresh census on every database finds no row
    under it (see :mod:`keyrotation.gates`).
    """
    keyring_name = keyring_name or conf.default_keyring()
    from .audit_chain import AUDIT_KEYRING

    if keyring_name == AUDIT_KEYRING:
        raise KeyStateError(
            "the audit chain key is never destroyed: the audit rows it sealed would become unverifiable",
            keyring=keyring_name,
            purpose=purpose,
            version=version,
        )
    with transaction.atomic(using=databases.keys_database()):
        key = _find(_locked(keyring_name, purpose), version, keyring_name, purpose)
        check_transition(key, DESTROYED, keyring_name, purpose)
        evidence, refusal = gates.destroy(key)
        if refusal is None:
            _set_state(key, DESTROYED)
            _record_state_change(
                "key_destroyed", keyring_name, purpose, actor=actor, from_version=version, details=evidence
            )
            _after_commit()
            return key
    raise _refused("key_destroy_refused", refusal, keyring_name, purpose, version, actor)


@dataclass(frozen=True)
class RewrapReport:
    """What :func:`rewrap_keys` did: ``moved`` counts the keys re-wrapped per kek id they left."""

    rewrapped: int
    unchanged: int  # already wrapped by the current KEK version: not touched
    moved: dict[str, int]
    kek_to: str


def rewrap(*, actor: str | None = None) -> int:
    """:func:`rewrap_keys`; return how many keys were re-wrapped."""
    return rewrap_keys(actor=actor).rewrapped


def rewrap_keys(*, actor: str | None = None) -> RewrapReport:
    """Re-wrap every stored data key not yet wrapped by the current KEK version.

    No row of user data is touched, and the data keys themselves do not change (so the key-state
    MACs and the audit chain stay valid). A key wrapped by an older version of the current KEK is
    re-wrapped by the backend itself (on Vault, the data key never leaves Transit); one wrapped
    by ``KEYROTATION["KEK"]["PREVIOUS"]`` is unwrapped by it and wrapped by the current KEK.
    Each is re-wrapped with its own identity as context.

    Idempotent: a key whose ``kek_id`` is the current KEK's id is left alone, so a second run
    re-wraps nothing (and writes no audit row). All or nothing: every key, the ``kek_rewrapped``
    audit row (with the kek ids left and the one reached) and the re-sealed key states commit in
    one transaction, so a run that fails half-way (a KEK out of reach) changes nothing and is
    simply run again.

    Raises:
        KEKRefused: a key was wrapped by neither the current nor the previous KEK (before any
            change and any KEK call), or a KEK refused to unwrap or wrap one.
    """
    backend = keyring.kek_backend()
    switch = backend if isinstance(backend, KEKSwitch) else KEKSwitch(backend)
    current_id = switch.current_id()
    with transaction.atomic():
        every = list(DataKey.objects.select_for_update().order_by("pk"))
        keys = [k for k in every if k.wrapped_key is not None]
        todo = [k for k in keys if k.kek_id != current_id]
        for key in todo:  # refused before any change, and without any KEK call
            if switch.wrapper(key.kek_id, bytes(key.wrapped_key)) is Wrapper.UNKNOWN:
                raise switch.unknown_kek(f"{key.keyring}/{key.purpose} v{key.version}", key.kek_id)
        if not todo:
            return RewrapReport(0, len(keys), {}, current_id)
        for (name, purpose), group in _by_keyring(every).items():
            _refuse_unauthenticated(group, name, purpose)
        moved = Counter(k.kek_id for k in todo)
        for key in todo:
            ctx = context_for(key.keyring, key.purpose, key.version)
            key.wrapped_key, key.kek_id = switch.rewrap(bytes(key.wrapped_key), ctx, kek_id=key.kek_id)
            key.save(update_fields=["wrapped_key", "kek_id"])
        entry = audit.record(
            "kek_rewrapped",
            actor=actor,
            rows_processed=len(todo),
            details={
                "kek_before": sorted(moved),
                "kek_moved": dict(sorted(moved.items())),
                "kek_after": current_id,
                "unchanged": len(keys) - len(todo),
                "backend": switch.describe(),
            },
        )
        # Every row, destroyed ones included: a keyring's rows all name its latest change.
        key_state.seal(every, entry.pk, entry._state.db)
        transaction.on_commit(keyring.clear_cache)
    return RewrapReport(len(todo), len(keys) - len(todo), dict(sorted(moved.items())), current_id)


def _by_keyring(keys: list[DataKey]) -> dict[tuple[str, str], list[DataKey]]:
    groups: dict[tuple[str, str], list[DataKey]] = {}
    for key in keys:
        groups.setdefault((key.keyring, key.purpose), []).append(key)
    return groups


def accept_state(keyring_name: str | None, purpose: str, *, actor: str | None = None) -> list[DataKey]:
    """Authenticate the key states of (keyring, purpose) as they are stored now.

    The way back after a refusal "key state ... is not authenticated": states changed by SQL, a
    key table restored from a backup, or a lifecycle command run by a version of keyrotation that
    did not authenticate states. First make the states right (compare ``rotatekeys --list`` with the
    audit trail); this records them, version by version, in a ``key_state_accepted`` audit row and
    authenticates them with it. Needs the KEK.
    """
    keyring_name = keyring_name or conf.default_keyring()
    with transaction.atomic():
        keys = _locked(keyring_name, purpose, authenticated=False)
        if not keys:
            raise NoActiveKey("keyring has no keys", keyring=keyring_name, purpose=purpose)
        _record_state_change(
            "key_state_accepted",
            keyring_name,
            purpose,
            actor=actor,
            details={"states": {str(k.version): k.state for k in keys}},
        )
        _after_commit()
    return [DataKey.objects.get(pk=k.pk) for k in keys]


def keys(keyring_name: str | None = None, purpose: str | None = None) -> list[DataKey]:
    """The DataKey rows (for listing), ordered by keyring, purpose, version."""
    qs = DataKey.objects.using(databases.keys_database()).order_by("keyring", "purpose", "version")
    if keyring_name:
        qs = qs.filter(keyring=keyring_name)
    if purpose:
        qs = qs.filter(purpose=purpose)
    return list(qs)
