"""The public API: what the management commands do, as functions.

Re-exported from :mod:`keyrotation` (``keyrotation.rotate()``, ``keyrotation.reencrypt()``, ...),
loaded on first use so that ``import keyrotation`` works before Django's apps are ready. A routine
rotation from code is two calls::

    import keyrotation

    keyrotation.rotate()             # a new active version of every purpose of the default keyring
    report = keyrotation.reencrypt() # every registered column moved to it, resumable

Every function here is a thin, typed front of the module that owns the work
(:mod:`keyrotation.lifecycle` for keys, :mod:`keyrotation.engine` for rows); those modules are
internal and may change between releases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import API_NAMES, crypto, engine, lifecycle, policy

if TYPE_CHECKING:
    from datetime import datetime

    from .engine import Report
    from .models import DataKey, ReencryptionRun
    from .policy import KeyAge, RotationReport

__all__ = list(API_NAMES)


def _purposes(purpose: str | None) -> tuple[str, ...]:
    if purpose is None:
        return tuple(crypto.PURPOSES)
    if purpose not in crypto.PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(crypto.PURPOSES)}, got {purpose!r}")
    return (purpose,)


def init(keyring: str | None = None, *, actor: str | None = None) -> list[DataKey]:
    """Create version 1 of each purpose of ``keyring`` (default ``DEFAULT_KEYRING``) that has no
    key yet; return the keys created (none when the keyring exists). ``rotatekeys --init``."""
    return lifecycle.init(keyring, actor=actor)


def rotate(
    keyring: str | None = None, purpose: str | None = None, *, actor: str | None = None
) -> list[DataKey]:
    """Make a new version active for each purpose (or only ``purpose``: ``"encrypt"`` or
    ``"index"``); the previous one stays readable (decrypt-only) until :func:`reencrypt` has moved
    every row and it is retired. Returns the new keys. ``rotatekeys``.

    Raises:
        NoActiveKey: the keyring has no keys (call :func:`init` first).
    """
    return [lifecycle.rotate(keyring, p, actor=actor) for p in _purposes(purpose)]


def due_keys(
    keyring: str | None = None, purpose: str | None = None, *, now: datetime | None = None
) -> list[KeyAge]:
    """The active key versions past their rotation period (``KEYROTATION["ROTATION_PERIOD"]``),
    of every keyring (or of ``keyring``, ``purpose``), each a
    :class:`~keyrotation.policy.KeyAge`; empty with no policy. ``rotation_status --fail-if-due``.

    Raises:
        ConfigurationError: ``ROTATION_PERIOD`` is malformed.
    """
    if purpose is not None:
        _purposes(purpose)
    return policy.due(now, keyring=keyring, purpose=purpose)


def rotate_if_due(
    keyring: str | None = None,
    purpose: str | None = None,
    *,
    actor: str | None = None,
    now: datetime | None = None,
) -> RotationReport:
    """Rotate exactly the key versions :func:`due_keys` returns, each once even when several
    processes call this at the same moment; every rotation is audited with its period and age.
    Returns a :class:`~keyrotation.policy.RotationReport`. ``rotatekeys --if-due``; then
    :func:`reencrypt` moves the rows.

    Raises:
        ConfigurationError: ``ROTATION_PERIOD`` is malformed.
        KeyRotationError: a rotation was refused; those before it are done.
    """
    if purpose is not None:
        _purposes(purpose)
    return policy.rotate_due(now, keyring=keyring, purpose=purpose, actor=actor)


def rollback(keyring: str | None = None, purpose: str = "encrypt", *, actor: str | None = None) -> DataKey:
    """Re-activate the previous version; the current one becomes decrypt-only. ``rotatekeys
    --rollback``."""
    return lifecycle.rollback(keyring, purpose, actor=actor)


def retire(
    version: int, keyring: str | None = None, purpose: str = "encrypt", *, actor: str | None = None
) -> DataKey:
    """Retire ``version``: refused (and the refusal audited) while any row still uses it.
    ``rotatekeys --retire N``."""
    return lifecycle.retire(keyring, purpose, version, actor=actor)


def restore(
    version: int, keyring: str | None = None, purpose: str = "encrypt", *, actor: str | None = None
) -> DataKey:
    """Make retired ``version`` decrypt-only again (disaster recovery). ``rotatekeys --restore N``."""
    return lifecycle.restore(keyring, purpose, version, actor=actor)


def destroy(
    version: int, keyring: str | None = None, purpose: str = "encrypt", *, actor: str | None = None
) -> DataKey:
    """Erase the wrapped material of retired ``version`` (irreversible; gated). ``rotatekeys
    --destroy N``."""
    return lifecycle.destroy(keyring, purpose, version, actor=actor)


def rewrap(*, actor: str | None = None) -> int:
    """Re-wrap every data key not yet under the current KEK (also from ``KEK["PREVIOUS"]``);
    return how many changed. ``rotatekeys --rewrap``."""
    return lifecycle.rewrap(actor=actor)


def keys(keyring: str | None = None, purpose: str | None = None) -> list[DataKey]:
    """The data key versions (never key bytes), like ``rotatekeys --list``."""
    return lifecycle.keys(keyring, purpose)


def reencrypt(
    models: list[str] | None = None,
    *,
    database: str | None = None,
    workers: int = 1,
    batch_size: int | None = None,
    rate: float | None = None,
    target_batch_ms: float | None = None,
    max_duration: float | None = None,
    on_error: str = "stop",
    actor: str | None = None,
) -> Report:
    """Move every row of the registered columns (or of ``models``: ``"app.Model"`` or
    ``"app.Model.field"``) to the active key versions; joins a run left open by a crash or by
    another host. Returns the run's :class:`~keyrotation.engine.Report`. ``reencrypt``.

    A run that fails (a value that cannot be opened and ``on_error="stop"``, a database error)
    is marked failed and its message is in the report's ``errors``.

    Raises:
        EngineDatabaseError: the database refused to count the pending rows or to record the
            run; like every database error of the engine, it names where and the driver's code,
            never the database's message.
        KeyRotationError: an unknown model, field or database.
    """
    return engine.reencrypt(
        models,
        database=database,
        workers=workers,
        batch_size=batch_size,
        rate=rate,
        target_batch_ms=target_batch_ms,
        max_duration=max_duration,
        on_error=on_error,
        actor=actor,
    )


def verify(models: list[str] | None = None, *, database: str | None = None) -> dict[str, Any]:
    """Open every stored value and recompute every blind index, changing nothing; the report's
    ``failures`` name model, field, pk and version only. ``reencrypt --verify``."""
    return engine.verify(models, database=database)


def status(database: str | None = None) -> dict[str, Any]:
    """The census of every registered column (rows per key version) and the latest run, as
    ``rotation_status --json`` prints it."""
    return engine.status(database)


def pause(run_id: int | None = None, *, actor: str | None = None) -> ReencryptionRun:
    """Pause the running re-encryption run (or ``run_id``); workers stop after their batch."""
    return engine.pause(run_id, actor=actor)


def resume(run_id: int | None = None, *, actor: str | None = None) -> ReencryptionRun:
    """Let a paused run go on (its workers, or the next ``reencrypt``, pick it up)."""
    return engine.resume(run_id, actor=actor)


def abort(run_id: int | None = None, *, actor: str | None = None) -> ReencryptionRun:
    """Stop a run for good; rows already moved stay moved (a later run plans the rest)."""
    return engine.abort(run_id, actor=actor)
