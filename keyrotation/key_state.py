"""Authenticated key states: a MAC on every ``DataKey`` row over what its state means.

A database writer can change ``DataKey.state`` with plain SQL: make a retired version active
again and the application would encrypt new rows under a key the writer may hold. So every row
carries, written by the lifecycle in the same transaction as the audit row of the change:

* ``state_audit_id``: the id of that audit row. Every lifecycle operation re-seals *all* rows of
  its keyring and purpose with its own audit row, so a row whose state was copied back from an
  older moment (with the MAC it had then) names an audit row older than its neighbours', and
  older than the newest key-state change the audit trail records for that keyring;
* ``state_mac = HMAC-SHA256(state key, canonical JSON of keyring, purpose, version, state,
  state_audit_id)``, where the state key is an HKDF subkey of the audit chain key (wrapped by the
  KEK, see :mod:`keyrotation.audit_chain`), and ``state_mac_version`` names the chain-key version.

A row is *authenticated* when its MAC verifies and its ``state_audit_id`` is the id of the newest
audit row that changed key state for its keyring and purpose (:data:`STATE_ACTIONS`, or a
:data:`GLOBAL_STATE_ACTIONS` row; for the audit chain key itself, also the first row of the
trail, whose append created it). The keyring cache checks this once per listing (the newest audit
id comes with the listing's one query, as a subquery) and never uses the state of a row that
fails; ``audit_verify`` and the system check ``keyrotation.E004`` report such rows.

What it cannot see: a writer who deletes the newest audit rows *and* puts back every key row of
a keyring exactly as it was at that older moment. The chain's external anchor
(``AUDIT_ANCHOR``) reveals the deleted audit rows, and a running process that has seen the newer
state refuses to encrypt under the older one (see ``keyrotation.keyring``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from django.db.models import Q

from . import audit_chain

# Audit actions that change the state of the keys of their (keyring, purpose).
STATE_ACTIONS = frozenset(
    {
        "key_generated",
        "key_rotated",
        "key_rolled_back",
        "key_retired",
        "key_restored",
        "key_destroyed",
        "key_state_accepted",
    }
)
# Audit actions that re-seal every key row of every keyring.
GLOBAL_STATE_ACTIONS = frozenset({"kek_rewrapped"})

SEAL_FIELDS = ("state_audit_id", "state_mac_version", "state_mac")


def message(keyring: str, purpose: str, version: int, state: str, audit_id: int) -> bytes:
    """The bytes a state MAC covers: sorted-key compact JSON of the five values."""
    doc = {"keyring": keyring, "purpose": purpose, "version": version, "state": state, "audit_id": audit_id}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def mac(state_key: bytes, keyring: str, purpose: str, version: int, state: str, audit_id: int) -> str:
    """``HMAC-SHA256(state_key, message(...))`` as 64 hex digits."""
    return hmac.new(state_key, message(keyring, purpose, version, state, audit_id), sha256).hexdigest()


def seal(rows: Iterable[Any], audit_id: int, using: str | None = None, datakey_model=None) -> None:
    """Authenticate the current state of ``rows`` (DataKey instances) by the audit row ``audit_id``.

    Call it in the transaction that wrote that audit row, with the rows locked: the state, the
    audit row and the seal commit together or not at all.
    """
    key = audit_chain.find_chain_key(using, datakey_model)
    assert key is not None, "audit.record() creates the chain key before any seal"
    for row in rows:
        row.state_audit_id = audit_id
        row.state_mac_version = key.version
        row.state_mac = mac(key.state_key, row.keyring, row.purpose, row.version, row.state, audit_id)
        row.save(update_fields=list(SEAL_FIELDS), using=using)


def _latest_filter(keyring: str, purpose: str) -> Q:
    q = Q(keyring=keyring, purpose=purpose, action__in=STATE_ACTIONS) | Q(action__in=GLOBAL_STATE_ACTIONS)
    if (keyring, purpose) == (audit_chain.AUDIT_KEYRING, audit_chain.AUDIT_PURPOSE):
        q |= Q(prev_hash="")  # the first row of the trail, whose append created the chain key
    return q


def latest_audit_id(keyring: str, purpose: str, using: str | None = None, audit_model=None) -> int | None:
    """The id of the newest audit row that changed the key states of (keyring, purpose)."""
    model = _audit_model(audit_model)
    qs = model.objects.using(using).filter(_latest_filter(keyring, purpose)).order_by("-id")
    return qs.values_list("id", flat=True).first()


def latest_audit_id_subquery(keyring: str, purpose: str):
    """:func:`latest_audit_id` as a subquery, to list a keyring and its newest change in one query."""
    from django.db.models import Subquery

    model = _audit_model(None)
    return Subquery(model.objects.filter(_latest_filter(keyring, purpose)).order_by("-id").values("id")[:1])


def _audit_model(audit_model):
    if audit_model is not None:
        return audit_model
    from .models import KeyRotationAudit

    return KeyRotationAudit


@dataclass(frozen=True)
class StateRow:
    """What authentication needs of one DataKey row."""

    keyring: str
    purpose: str
    version: int
    state: str
    audit_id: int | None
    mac_version: int | None
    mac: str


def problem(row: StateRow, expected_audit_id: int | None, chain_key) -> str:
    """Why ``row``'s state is not authenticated, or ``""`` when it is.

    Args:
        row: the row's values.
        expected_audit_id: :func:`latest_audit_id` of the row's keyring and purpose.
        chain_key: the :class:`~keyrotation.audit_chain.ChainKey` of ``row.mac_version``, or None
            when that version does not exist or has no key material.
    """
    if not row.mac or row.audit_id is None or row.mac_version is None:
        return "its state carries no MAC (written outside keyrotation's lifecycle)"
    if chain_key is None:
        return f"its MAC names audit chain key version {row.mac_version}, which is missing"
    expected = mac(chain_key.state_key, row.keyring, row.purpose, row.version, row.state, row.audit_id)
    if not hmac.compare_digest(expected, row.mac):
        return "its MAC does not match its state (changed outside keyrotation's lifecycle)"
    if expected_audit_id is None:
        return f"it names audit row #{row.audit_id}, but no audit row records a change of this keyring"
    if row.audit_id < expected_audit_id:
        return (
            f"it was sealed by audit row #{row.audit_id}, older than the keyring's latest change "
            f"#{expected_audit_id} (an earlier state put back)"
        )
    if row.audit_id != expected_audit_id:
        return (
            f"it names audit row #{row.audit_id}, but the keyring's latest change in the audit "
            f"trail is #{expected_audit_id} (audit rows deleted?)"
        )
    return ""


@dataclass(frozen=True)
class StateProblem:
    """A DataKey row whose state is not authenticated, and why (no key material)."""

    keyring: str
    purpose: str
    version: int
    state: str
    reason: str

    def __str__(self) -> str:
        return (
            f"key state not authenticated: keyring={self.keyring!r} purpose={self.purpose!r} "
            f"version={self.version} ({self.state}): {self.reason}"
        )


def problems(using: str | None = None) -> list[StateProblem]:
    """Every DataKey row whose state is not authenticated (``audit_verify``, check E004).

    Needs the KEK (to unwrap the audit chain key), like ``audit_verify``.
    """
    from .models import DataKey, KeyRotationAudit

    model = KeyRotationAudit.objects.using(using)
    state_rows = model.filter(Q(action__in=STATE_ACTIONS | GLOBAL_STATE_ACTIONS) | Q(prev_hash=""))
    latest: dict[tuple[str, str], int] = {}
    newest_global = None
    chain = (audit_chain.AUDIT_KEYRING, audit_chain.AUDIT_PURPOSE)
    for audit_id, action, keyring, purpose, prev in state_rows.values_list(
        "id", "action", "keyring", "purpose", "prev_hash"
    ):
        if action in GLOBAL_STATE_ACTIONS:
            newest_global = max(newest_global or audit_id, audit_id)
        if action in STATE_ACTIONS:
            latest[(keyring, purpose)] = max(latest.get((keyring, purpose), audit_id), audit_id)
        if prev == "":
            latest[chain] = max(latest.get(chain, audit_id), audit_id)
    keys = audit_chain.chain_keys(using)
    found = []
    fields = ("keyring", "purpose", "version", "state", *SEAL_FIELDS)
    for values in DataKey.objects.using(using).order_by("keyring", "purpose", "version").values_list(*fields):
        row = StateRow(*values[:6], values[6] or "")
        candidates = [i for i in (latest.get((row.keyring, row.purpose)), newest_global) if i is not None]
        reason = problem(row, max(candidates, default=None), keys.get(row.mac_version))
        if reason:
            found.append(StateProblem(row.keyring, row.purpose, row.version, row.state, reason))
    return found


def seal_existing(audit_model, datakey_model, using: str) -> int:
    """Authenticate the states stored before they were authenticated (migration ``0004``).

    One ``key_state_accepted`` audit row per keyring and purpose, naming each version's state, and
    its seal on the rows. Runs with the migration's historical models; needs the KEK only if there
    are keys. Returns how many keys were sealed.
    """
    from . import audit

    pairs = (
        datakey_model.objects.using(using).order_by("keyring", "purpose").values_list("keyring", "purpose")
    )
    sealed = 0
    for keyring, purpose in dict.fromkeys(pairs):
        rows = list(
            datakey_model.objects.using(using).filter(keyring=keyring, purpose=purpose).order_by("version")
        )
        entry = audit.append(
            audit_model,
            datakey_model,
            using,
            {
                "action": "key_state_accepted",
                "actor": "migration:keyrotation.0004",
                "keyring": keyring,
                "purpose": purpose,
                "details": {"states": {str(r.version): r.state for r in rows}},
            },
        )
        seal(rows, entry.pk, using, datakey_model)
        sealed += len(rows)
    return sealed
