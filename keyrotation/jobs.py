"""Re-encryption as queued jobs: the core that every job backend calls.

A job backend (:mod:`keyrotation.contrib.celery`; Django's ``django.tasks`` later) enqueues one
call of :func:`reencrypt` per worker it wants. Each call joins the open re-encryption run of its
models and database, or starts it, then works chunks until the run is done, paused, aborted or
``max_duration`` passes. Calls made at the same instant start one run between them (the others
join it), and a call whose worker dies loses nothing: its batch in flight rolls back, and the
calls still working take over its chunk (at once on the same host, once its heartbeat is older
than a minute on another).

:func:`rotate_if_due` is the other job: the rotation policy's :func:`keyrotation.rotate_if_due`,
with a summary a backend can store as the job's result.

The arguments are plain JSON values (model labels, a database alias, numbers, short strings),
because a backend serialises them into a message that its broker stores, often unencrypted and
for as long as the job waits. Never put plaintext or key material in them: nothing here needs
either. :func:`reencrypt` checks their types, so a model class or a ``RetryPolicy`` is refused
before it reaches a broker that would pickle it.

Which failures a backend should retry, with back-off, is decided by :func:`transient` (the
engine's own rule): a lost database connection or a KEK outage. A value that cannot be decrypted
(:class:`~keyrotation.engine.RunFailed`) or a configuration error
(:class:`~keyrotation.exceptions.KeyRotationError`, ``ValueError``) is raised and must not be
retried: waiting mends neither.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from django.db import connections

from . import api, engine
from .engine import RunFailed
from .engine.retry import RetryPolicy, is_transient
from .exceptions import KeyRotationError

__all__ = ["JobResult", "check_arguments", "reencrypt", "rotate_if_due", "transient"]


@dataclass(frozen=True)
class JobResult:
    """What one job did.

    Attributes:
        run_id: the run it worked on; None when no row was pending and no run was open (nothing
            is recorded then).
        rows_done: rows this call re-encrypted (not the run's total: other jobs share the run).
        rows_failed: values quarantined by the run (``on_error="quarantine"``).
        status: the run's state when the call returned: ``"finished"``, ``"paused"``,
            ``"aborted"``, or ``"running"`` / ``"interrupted"`` after ``max_duration``.
    """

    run_id: int | None
    rows_done: int
    rows_failed: int
    status: str

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON values (what a backend stores as the job's result)."""
        return asdict(self)


def transient(exc: BaseException) -> bool:
    """Whether a job that raised ``exc`` is worth running again later (a lost database
    connection, a KEK that cannot answer right now); False for everything else."""
    return is_transient(exc)


def reencrypt(
    models: list[str] | None = None,
    *,
    database: str | None = None,
    fleet: int = 1,
    batch_size: int | None = None,
    rate: float | None = None,
    target_batch_ms: float | None = None,
    max_duration: float | None = None,
    on_error: str = "stop",
    retries: int | None = None,
    actor: str | None = None,
) -> JobResult:
    """Join or start the re-encryption run of ``models`` on ``database``, and work it until it is
    done, paused, aborted or ``max_duration`` passes.

    Args:
        models: ``"app.Model"`` or ``"app.Model.field"`` labels; None for every registered column.
        database: a ``DATABASES`` alias; None for every database that holds the models.
        fleet: how many jobs are started together for this run (a new run is cut into chunks for
            that many workers); each call still works as one process.
        batch_size, rate, target_batch_ms, max_duration, on_error: as for
            :func:`keyrotation.reencrypt` (``rate`` is per job).
        retries: transient errors waited out inside the call, with back-off, before one is raised
            for the backend to retry the job later (default: the engine's, about a minute and a
            half in all).
        actor: who the audit trail names for a run this call starts or changes.

    Returns:
        A :class:`JobResult`.

    Raises:
        keyrotation.exceptions.RunFailed: a value could not be decrypted (``on_error="stop"``); do not retry.
        KeyRotationError: an unknown model, field or database, or a fleet on SQLite; do not retry.
        TypeError, ValueError: an argument of the wrong type or value; do not retry.
        Exception: what :func:`transient` says may pass (once ``retries`` are spent): retry later.

    Example::

        result = jobs.reencrypt(["people.Person"], fleet=3, max_duration=3000)
        if result.status == "paused": ...
    """
    args = check_arguments(
        models,
        database=database,
        fleet=fleet,
        batch_size=batch_size,
        rate=rate,
        target_batch_ms=target_batch_ms,
        max_duration=max_duration,
        on_error=on_error,
        retries=retries,
        actor=actor,
    )
    retries = args.pop("retries")
    report = engine.reencrypt(
        args.pop("models"), **args, retry=RetryPolicy() if retries is None else RetryPolicy(retries=retries)
    )
    if report.errors:
        raise RunFailed("; ".join(report.errors))
    return JobResult(
        run_id=report.run_id, rows_done=report.rows_done, rows_failed=report.rows_failed, status=report.status
    )


_UNITS = {"rate": "rows per second", "target_batch_ms": "milliseconds", "max_duration": "seconds"}
_OPTIONS = frozenset({"database", "fleet", "batch_size", "on_error", "retries", "actor", *_UNITS})


def check_arguments(models: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """The arguments of :func:`reencrypt` as the JSON object a backend puts in its message, once
    each is checked to be a JSON value of its documented type (``models`` becomes a list).

    A backend calls it before it enqueues, so that a wrong argument raises in the caller rather
    than in every worker.

    Raises:
        TypeError: an unknown argument, or a value of another type.
        ValueError: ``fleet`` below 1, ``retries`` below 0, ``on_error`` not ``"stop"`` or
            ``"quarantine"``.
        KeyRotationError: ``fleet`` above 1 where a database the run may touch cannot share a run
            between jobs (SQLite: :func:`keyrotation.engine.single_worker_databases`).
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(
            f"unknown argument(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(_OPTIONS))}"
        )
    if models is not None:
        if not isinstance(models, (list, tuple)) or not all(isinstance(m, str) for m in models):
            raise TypeError('models must be a list of "app.Model" or "app.Model.field" labels, or None')
        models = list(models)
    out: dict[str, Any] = {"models": models, "fleet": 1, "on_error": "stop", **options}
    for name in ("database", "on_error", "actor"):
        if out.get(name) is not None and not isinstance(out[name], str):
            raise TypeError(f"{name} must be a string, got {type(out[name]).__name__}")
    for name in ("fleet", "batch_size", "retries"):
        value = out.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    for name, unit in _UNITS.items():
        value = out.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{name} must be a number of {unit}, got {type(value).__name__}")
    if out["fleet"] < 1:
        raise ValueError("fleet must be >= 1")
    if out.get("retries") is not None and out["retries"] < 0:
        raise ValueError("retries must be >= 0")
    if out["on_error"] not in ("stop", "quarantine"):
        raise ValueError(f"on_error must be 'stop' or 'quarantine', got {out['on_error']!r}")
    if out["fleet"] > 1:
        alone = engine.single_worker_databases(out.get("database"))
        if alone:
            raise KeyRotationError(
                f"{out['fleet']} jobs cannot share a run on database {alone[0]!r}: "
                f"{connections[alone[0]].vendor} has no row locks with SKIP LOCKED; start one job"
            )
    return out


def rotate_if_due(
    keyring: str | None = None, purpose: str | None = None, *, actor: str | None = None
) -> dict[str, Any]:
    """Rotate every (keyring, purpose) whose active version is past its rotation period
    (:func:`keyrotation.rotate_if_due`: each once, however many jobs run at the same moment).

    Args:
        keyring, purpose: limit the rotation to one keyring or purpose; None for all.
        actor: who the audit trail names for each rotation.

    Returns:
        A JSON object: ``"rotated"``, one ``{"keyring", "purpose", "from_version",
        "to_version"}`` per rotation made; ``"skipped"``, one ``{"keyring", "purpose",
        "version"}`` per version found due that another process rotated first. Versions only,
        never key material.

    Raises:
        TypeError: an argument that is not a string or None.
        ConfigurationError: ``ROTATION_PERIOD`` is malformed; do not retry.
        KeyRotationError: a rotation was refused (those before it are done); do not retry.
        Exception: what :func:`transient` says may pass: retry later.
    """
    for name, value in (("keyring", keyring), ("purpose", purpose), ("actor", actor)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    report = api.rotate_if_due(keyring, purpose, actor=actor)
    return {
        "rotated": [
            {
                "keyring": r.was.keyring,
                "purpose": r.was.purpose,
                "from_version": r.was.version,
                "to_version": r.new_version,
            }
            for r in report.rotated
        ],
        "skipped": [
            {"keyring": a.keyring, "purpose": a.purpose, "version": a.version} for a in report.skipped
        ],
    }
