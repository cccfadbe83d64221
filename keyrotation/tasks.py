"""Django's tasks framework: re-encryption and rotate-when-due as Django tasks.

The framework is ``django.tasks`` on Django 6.0 and later; on Django 5.2 it is the ``django-tasks``
package (``pip install "django-keyrotation[tasks]"``), whose tasks behave the same. Neither is
needed to import keyrotation: without them this module still imports, and using one of its tasks
raises ``ImproperlyConfigured`` naming the package to install.

Tasks (each a ``Task`` of the framework; their names are their import paths):

* ``keyrotation.tasks.reencrypt`` — one worker's share of a re-encryption run
  (:func:`keyrotation.jobs.reencrypt`); start a fleet of them with :func:`start_reencryption`.
* ``keyrotation.tasks.rotate_if_due`` — rotate the data keys past their rotation period
  (:func:`keyrotation.jobs.rotate_if_due`), optionally starting a re-encryption fleet after.

They run on the backend that ``settings.TASKS`` names (``"default"`` unless you pass
``backend=``), e.g. the database backend of ``django-tasks-db`` and its ``db_worker`` command. The
arguments are model labels, a database alias and numbers: the backend stores them (the database
backend in a table), never plaintext or key material.

Failures: the framework has no retries of its own. A transient error (a lost database
connection, a KEK that cannot answer) is waited out inside the task with the engine's back-off
(about a minute and a half in all); if it persists the task fails, and the run it worked on stays
open for the next task (or ``manage.py reencrypt``) to continue. Anything else fails the task at
once. A pause or an abort ends every task of the run at its next batch boundary, successfully,
with ``"status": "paused"`` or ``"aborted"`` in its return value.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from . import jobs

try:  # Django 6.0 and later
    from django.tasks import task as _task
except ImportError:
    try:  # Django 5.2 with the django-tasks package
        from django_tasks import task as _task
    except ImportError:
        _task = None

__all__ = ["available", "reencrypt", "rotate_if_due", "start_reencryption"]

_MISSING = (
    "keyrotation.tasks needs Django's tasks framework: Django 6.0 or later, or on Django 5.2 the "
    'django-tasks package (pip install "django-keyrotation[tasks]")'
)


def available() -> bool:
    """Whether Django's tasks framework can be imported (``django.tasks`` or ``django_tasks``)."""
    return _task is not None


class _Unavailable:
    """Stands for a task when the framework is missing: any use raises ``ImproperlyConfigured``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        raise ImproperlyConfigured(_MISSING)

    def __repr__(self) -> str:
        return f"<unavailable task keyrotation.tasks.{self.name}>"


def _as_task(func):
    return _Unavailable(func.__name__) if _task is None else _task(func)


@_as_task
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
    actor: str | None = None,
) -> dict[str, Any]:
    """Join or start the re-encryption run of ``models`` and work it until it is done, paused,
    aborted or ``max_duration`` passes (:func:`keyrotation.jobs.reencrypt`, whose arguments it
    takes; ``actor`` defaults to ``"django-tasks"``).

    Returns:
        :meth:`keyrotation.jobs.JobResult.as_dict`.
    """
    return jobs.reencrypt(
        models,
        database=database,
        fleet=fleet,
        batch_size=batch_size,
        rate=rate,
        target_batch_ms=target_batch_ms,
        max_duration=max_duration,
        on_error=on_error,
        actor=actor or "django-tasks",
    ).as_dict()


@_as_task
def rotate_if_due(
    keyring: str | None = None,
    purpose: str | None = None,
    *,
    actor: str | None = None,
    reencrypt_workers: int = 0,
) -> dict[str, Any]:
    """Rotate every (keyring, purpose) whose active version is past its rotation period
    (:func:`keyrotation.jobs.rotate_if_due`; ``actor`` defaults to ``"django-tasks"``).

    Args:
        keyring, purpose: limit the rotation to one keyring or purpose; None for all.
        actor: who the audit trail names.
        reencrypt_workers: when above 0 and a key was rotated, also enqueue that many
            :data:`reencrypt` tasks (:func:`start_reencryption`, every registered column) on
            this task's backend. Default 0: rotate only.

    Returns:
        :func:`keyrotation.jobs.rotate_if_due`'s summary, plus ``"reencryption"``: the ids of the
        re-encryption tasks enqueued (empty when none).
    """
    if isinstance(reencrypt_workers, bool) or not isinstance(reencrypt_workers, int) or reencrypt_workers < 0:
        raise ValueError(f"reencrypt_workers must be an integer >= 0, got {reencrypt_workers!r}")
    summary = jobs.rotate_if_due(keyring, purpose, actor=actor or "django-tasks")
    started: list[str] = []
    if summary["rotated"] and reencrypt_workers:
        started = start_reencryption(reencrypt_workers, actor=actor or "django-tasks")
    return {**summary, "reencryption": started}


def start_reencryption(
    workers: int = 1,
    models: list[str] | None = None,
    *,
    database: str | None = None,
    batch_size: int | None = None,
    rate: float | None = None,
    target_batch_ms: float | None = None,
    max_duration: float | None = None,
    on_error: str = "stop",
    actor: str | None = None,
    backend: str | None = None,
    queue_name: str | None = None,
    priority: int | None = None,
) -> list[str]:
    """Enqueue ``workers`` :data:`reencrypt` tasks with ``fleet=workers`` and return their ids.

    The Django-tasks form of ``manage.py reencrypt --workers N``: the first task to start opens
    the run, cut into chunks for ``workers`` workers, and the others join it. Each task occupies
    one worker until the run is done, so run at least ``workers`` workers (e.g. that many
    ``manage.py db_worker`` processes with the database backend).

    Args:
        workers: how many tasks (and so workers) share the run.
        models, database, batch_size, rate, target_batch_ms, max_duration, on_error, actor: as for
            :func:`keyrotation.jobs.reencrypt` (``rate`` and ``max_duration`` per task).
        backend, queue_name, priority: passed to the task's ``using()``; None keeps its defaults.

    Raises:
        ImproperlyConfigured: Django's tasks framework is missing.
        TypeError, ValueError: an argument that is not a JSON value of its documented type;
            raised here, before anything is enqueued.

    Example::

        from keyrotation.tasks import start_reencryption

        result_ids = start_reencryption(workers=3, models=["people.Person"], actor="ops:alice")
    """
    if not available():
        raise ImproperlyConfigured(_MISSING)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    kwargs = jobs.check_arguments(
        models,
        database=database,
        fleet=workers,
        batch_size=batch_size,
        rate=rate,
        target_batch_ms=target_batch_ms,
        max_duration=max_duration,
        on_error=on_error,
        actor=actor,
    )
    task = reencrypt.using(backend=backend, queue_name=queue_name, priority=priority)
    return [str(task.enqueue(**kwargs).id) for _ in range(workers)]
