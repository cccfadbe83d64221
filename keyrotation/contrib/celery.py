"""Celery: re-encryption as tasks, shared by any number of workers on any number of hosts.

Tasks, registered with ``@shared_task`` (they bind to your Celery app) under these names:

* ``keyrotation.reencrypt`` — one worker's share of a re-encryption run
  (:func:`keyrotation.jobs.reencrypt`); start a fleet of them with :func:`start_reencryption`.
* ``keyrotation.rotate_if_due`` — rotate the data keys past their rotation period
  (:func:`keyrotation.jobs.rotate_if_due`), and optionally start a re-encryption fleet when it
  rotated something; schedule it with Celery beat (an example is in the operations guide).

Your workers register them by importing this module, e.g. ``app.conf.imports =
["keyrotation.contrib.celery"]`` (Django's apps are ready by then: Celery's Django support sets
them up first). This module imports nothing of keyrotation's until a task runs or is started.

A task's arguments are model labels, a database alias and numbers, never plaintext or key
material: the broker stores them (see :mod:`keyrotation.jobs`).

Delivery and failures:

* ``acks_late`` and ``reject_on_worker_lost``: the message is acknowledged when the task returns,
  so a task whose worker process is killed is delivered again (at once when only the pool's child
  died; with Redis, after the broker's ``visibility_timeout`` when the whole worker died). A second
  delivery is harmless: it joins the run, or finds nothing left to do. Whether it comes or not,
  the run finishes: the other tasks of the fleet stay until every chunk is done, and take over
  the dead worker's chunk (at once on the same host, once its heartbeat is a minute old on
  another), continuing at its last committed batch.
* A transient error (a lost database connection, a KEK that cannot answer; as decided by
  :func:`keyrotation.jobs.transient`) is waited out inside the task :data:`IN_TASK_RETRIES` times,
  then the task is retried by Celery with exponential back-off (``retry_backoff`` seconds,
  doubled per retry up to ``retry_backoff_max``, with ``retry_jitter``; at most ``max_retries``
  times), which frees its worker meanwhile. Anything else fails the task at once, never retried:
  a value that cannot be decrypted (``RunFailed``, naming model, field, pk and key version) or a
  configuration error. Change these options with Celery's ``task_annotations``.
* A pause or an abort (admin, ``manage.py reencrypt --pause``, :func:`keyrotation.pause`) ends
  every task of the run at its next batch boundary, successfully, with ``"status": "paused"`` or
  ``"aborted"`` in its result. After a resume, start the tasks again.
"""

from __future__ import annotations

from typing import Any

from celery import group, shared_task
from celery.utils.time import get_exponential_backoff_interval

__all__ = ["IN_TASK_RETRIES", "reencrypt", "rotate_if_due", "start_reencryption"]

#: Transient errors a task waits out itself (0.5 s, then 1 s), before Celery retries it later.
IN_TASK_RETRIES = 2


@shared_task(
    bind=True,
    name="keyrotation.reencrypt",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=10,
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
)
def reencrypt(
    self,
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
    takes; ``actor`` defaults to ``"celery"``).

    Returns:
        :meth:`keyrotation.jobs.JobResult.as_dict`, plus ``"retries"``: how many times Celery
        retried this task before this attempt.
    """
    from .. import jobs

    try:
        result = jobs.reencrypt(
            models,
            database=database,
            fleet=fleet,
            batch_size=batch_size,
            rate=rate,
            target_batch_ms=target_batch_ms,
            max_duration=max_duration,
            on_error=on_error,
            retries=IN_TASK_RETRIES,
            actor=actor or "celery",
        )
    except Exception as exc:
        if not jobs.transient(exc):
            raise
        raise _retry(self, exc) from None
    return {**result.as_dict(), "retries": self.request.retries}


def _retry(task, exc: Exception) -> Exception:
    """The ``Retry`` to raise for a transient ``exc``: exponential back-off with the task's options."""
    countdown = get_exponential_backoff_interval(
        int(task.retry_backoff), task.request.retries, task.retry_backoff_max, task.retry_jitter
    )
    return task.retry(exc=exc, countdown=countdown)


@shared_task(
    bind=True,
    name="keyrotation.rotate_if_due",
    acks_late=True,
    max_retries=10,
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
)
def rotate_if_due(
    self,
    keyring: str | None = None,
    purpose: str | None = None,
    *,
    actor: str | None = None,
    reencrypt_workers: int = 0,
) -> dict[str, Any]:
    """Rotate every (keyring, purpose) whose active version is past its rotation period
    (:func:`keyrotation.jobs.rotate_if_due`; ``actor`` defaults to ``"celery"``). Several of
    these tasks at once (two beat schedulers, a retry) rotate each due version once.

    Args:
        keyring, purpose: limit the rotation to one keyring or purpose; None for all.
        actor: who the audit trail names.
        reencrypt_workers: when above 0 and a key was rotated, also start that many
            ``keyrotation.reencrypt`` tasks (:func:`start_reencryption`, every registered
            column) to move the rows to the new versions. Default 0: rotate only, and let your
            own schedule or an operator start the re-encryption.

    Returns:
        :func:`keyrotation.jobs.rotate_if_due`'s summary, plus ``"reencryption"``: the ids of the
        re-encryption tasks started (empty when none), and ``"retries"``.
    """
    from .. import jobs

    if isinstance(reencrypt_workers, bool) or not isinstance(reencrypt_workers, int) or reencrypt_workers < 0:
        raise ValueError(f"reencrypt_workers must be an integer >= 0, got {reencrypt_workers!r}")
    try:
        summary = jobs.rotate_if_due(keyring, purpose, actor=actor or "celery")
    except Exception as exc:
        if not jobs.transient(exc):
            raise
        raise _retry(self, exc) from None
    started: list[str] = []
    if summary["rotated"] and reencrypt_workers:
        started = start_reencryption(reencrypt_workers, actor=actor or "celery")
    return {**summary, "reencryption": started, "retries": self.request.retries}


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
    **apply_options: Any,
) -> list[str]:
    """Enqueue ``workers`` ``keyrotation.reencrypt`` tasks as one group and return their ids.

    The fleet equivalent of ``manage.py reencrypt --workers N``, spread over your Celery workers:
    the first task to start opens the run, cut into chunks for ``workers`` workers, and the others
    join it. Each task occupies one worker process until the run is done, so give it ``workers``
    free processes, and set ``worker_prefetch_multiplier = 1`` so that one worker does not
    reserve several tasks of the fleet and run them one after another.

    Args:
        workers: how many tasks (and so worker processes) share the run.
        models, database, batch_size, rate, target_batch_ms, max_duration, on_error, actor: as for
            :func:`keyrotation.jobs.reencrypt` (``rate`` and ``max_duration`` per task).
        apply_options: passed to Celery's ``apply_async`` (``queue=``, ``priority=``...).

    Raises:
        TypeError, ValueError: an argument that is not a JSON value of its documented type;
            raised here, before anything is enqueued.

    Example::

        from keyrotation.contrib.celery import start_reencryption

        task_ids = start_reencryption(workers=3, models=["people.Person"], actor="ops:alice")
    """
    from .. import jobs

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
    result = group(reencrypt.s(**kwargs) for _ in range(workers)).apply_async(**apply_options)
    return [task.id for task in result.results]
