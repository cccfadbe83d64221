"""The one place that writes ``KeyRotationAudit`` rows.

Callers pass identities and counts only; ``details`` must be JSON of ids, counts and versions.
It is checked here for types so a careless caller cannot slip bytes (key material) into it.

Every row is sealed into the hash chain (``audit_chain``). Appends are serialised so that two
processes can never both extend the same tail (a fork):

* PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key, held until the caller's transaction ends;
* SQLite: a no-op write takes the database's single writer lock before the tail is read;
* MySQL/MariaDB: a row lock (``SELECT ... FOR UPDATE``) on the chain key's ``DataKey`` row, held
  until the caller's transaction ends (``GET_LOCK`` would outlive the transaction: it is held by
  the connection). Until the first append there is no chain key row to lock: two first appends
  race to create the chain key, and its unique (keyring, purpose, version) makes one of them fail;
* everywhere: a unique constraint on ``prev_hash`` turns any fork that slips through (another
  backend, an isolation level that reads an old snapshot) into an IntegrityError, never a fork.

Lock order: callers take their row locks (DataKey, ReencryptionRun) first and call ``record()``
last in their transaction, so the chain lock is always the last lock taken and cannot deadlock.
(The lifecycle then writes the state MACs of DataKey rows it already holds locked.)

After the caller's transaction commits, the new head goes to the ``AUDIT_ANCHOR``, if one is
configured (:mod:`keyrotation.audit_anchor`). A trail whose chain key is missing is never given
a new one: see :func:`record`.
"""

from __future__ import annotations

import getpass
import hashlib
import math
import os
import socket
from typing import Any

from django.db import connections, router, transaction
from django.utils import timezone

from . import audit_anchor, audit_chain
from .models import DataKey, KeyRotationAudit

# Any fixed 64-bit key; the same in every process (derived from the name, documented here).
_PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"keyrotation.audit.chain").digest()[:8], "big", signed=True)

_ALLOWED_LEAVES = (str, int, float, bool, type(None))


def default_actor() -> str:
    """The OS user running this process, for commands run without ``--actor``."""
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # pragma: no cover - no passwd entry in some containers
        return f"os:uid={os.getuid()}"


def _check_details(value: Any, path: str = "details") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} keys must be str")
            _check_details(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_details(item, f"{path}[{i}]")
    elif not isinstance(value, _ALLOWED_LEAVES):
        raise TypeError(f"{path} must hold only JSON scalars, got {type(value).__name__}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} must be a finite number (JSON has no NaN or infinity)")


def _lock_chain(using: str) -> None:
    """Serialise appends until the current transaction ends (see the module docstring)."""
    conn = connections[using]
    with conn.cursor() as cur:
        if conn.vendor == "postgresql":
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_PG_LOCK_KEY])
        elif conn.vendor == "sqlite":
            # Takes SQLite's RESERVED (writer) lock now, before the tail is read below.
            cur.execute(f"UPDATE {conn.ops.quote_name(KeyRotationAudit._meta.db_table)} SET id = id WHERE 0")
        elif conn.vendor == "mysql":
            # READ COMMITTED (Django's default on MySQL): the tail read after this lock is granted
            # is a fresh snapshot, so it sees the row the previous holder committed.
            table = conn.ops.quote_name(DataKey._meta.db_table)
            cur.execute(f"SELECT id FROM {table} WHERE keyring = %s FOR UPDATE", [audit_chain.AUDIT_KEYRING])


def record(
    action: str,
    *,
    actor: str | None = None,
    keyring: str = "",
    purpose: str = "",
    from_version: int | None = None,
    to_version: int | None = None,
    status: str = "ok",
    rows_processed: int | None = None,
    rows_failed: int | None = None,
    details: dict[str, Any] | None = None,
    using: str | None = None,
) -> KeyRotationAudit:
    """Append one audit row, sealed into the hash chain.

    Call it inside the transaction of the change it records: the row commits or rolls back with
    the change, and the chain lock is held until that transaction ends. Once it commits, the new
    head goes to the ``AUDIT_ANCHOR``, if one is configured.

    Raises:
        TypeError, ValueError: ``details`` holds something other than JSON scalars.
        KeyStateError: the audit chain key is missing while audit rows exist (a new key would
            leave every existing row unverifiable, so none is made).
    """
    details = details or {}
    _check_details(details)
    using = using or router.db_for_write(KeyRotationAudit)
    values = {
        "action": action,
        "actor": actor or default_actor(),
        "keyring": keyring,
        "purpose": purpose,
        "from_version": from_version,
        "to_version": to_version,
        "status": status,
        "rows_processed": rows_processed,
        "rows_failed": rows_failed,
        "details": details,
    }
    row = append(KeyRotationAudit, None, using, values)
    head = audit_anchor.ChainHead(row.pk, row.row_hash)
    transaction.on_commit(lambda: audit_anchor.publish(head), using=using)
    return row


def append(audit_model, datakey_model, using: str, values: dict[str, Any]):
    """Seal ``values`` (model field values) into a new row at the tail of the chain.

    Takes the models as arguments so that a migration can append with its historical models
    (:func:`record` is this with the app's models, checked ``details`` and the anchor). Takes
    the chain lock for the rest of the current transaction. On an empty trail without a chain key,
    first creates the key; the new row, the first of the trail, authenticates the key's state.
    """
    with transaction.atomic(using=using):
        _lock_chain(using)
        return _append_locked(audit_model, datakey_model, using, values)


def _append_locked(audit_model, datakey_model, using: str, values: dict[str, Any]):
    from . import key_state

    tail = audit_model.objects.using(using).order_by("-id").values_list("row_hash", flat=True).first()
    key = audit_chain.find_chain_key(using, datakey_model)
    if key is None:
        if tail is not None:
            raise audit_chain.missing_key_error()
        key = audit_chain.create_chain_key(using, datakey_model)
        row = _save(audit_model, using, key, "", values)
        # The first row of the trail is the one that records the chain key's creation.
        chain_rows = _datakey(datakey_model).objects.using(using).filter(keyring=audit_chain.AUDIT_KEYRING)
        key_state.seal(chain_rows, row.pk, using, datakey_model)
        return row
    return _save(audit_model, using, key, tail or "", values)


def _datakey(datakey_model):
    if datakey_model is not None:
        return datakey_model
    from .models import DataKey

    return DataKey


def _save(audit_model, using: str, key: audit_chain.ChainKey, prev_hash: str, values: dict[str, Any]):
    fields = {"details": {}, "host": socket.gethostname()[:255], "pid": os.getpid(), **values}
    row = audit_model(created_at=timezone.now(), **fields)
    row.chain_key_version = key.version
    row.prev_hash = prev_hash
    hashed = {name: getattr(row, name) for name in audit_chain.HASHED_FIELDS}
    row.row_hash = audit_chain.row_hash(key.row_key, prev_hash, hashed)
    row.save(using=using)
    return row
