"""The background backend: where a re-encryption started from code or the admin runs.

``KEYROTATION["TASK_BACKEND"]`` (:func:`keyrotation.conf.task_backend`) chooses it: ``"celery"``
(:mod:`keyrotation.contrib.celery`), ``"django"`` (Django's tasks framework,
:mod:`keyrotation.tasks`), or ``None``, where nothing runs in the background and a run is started
with ``manage.py reencrypt``. :func:`start_reencryption` is the one entry point that the admin's
start button and your own code call, whichever backend is configured.

Example::

    from keyrotation import background

    if background.backend_name() is not None:
        started = background.start_reencryption(workers=3, actor=f"admin:{request.user}")
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from typing import Any

from . import conf
from .exceptions import ConfigurationError

__all__ = ["Started", "backend_name", "missing_package", "start_reencryption"]

# backend -> (module with start_reencryption, the import names any one of which it needs, what to install)
_BACKENDS = {
    "celery": ("keyrotation.contrib.celery", ("celery",), 'celery ("django-keyrotation[celery]")'),
    "django": (
        "keyrotation.tasks",
        ("django.tasks", "django_tasks"),
        'Django 6.0, or on Django 5.2 django-tasks ("django-keyrotation[tasks]")',
    ),
}


@dataclass(frozen=True)
class Started:
    """What :func:`start_reencryption` enqueued: the backend's name and the ids of its tasks."""

    backend: str
    task_ids: tuple[str, ...]


def backend_name() -> str | None:
    """The configured background backend: ``"celery"``, ``"django"`` or None (none).

    Raises:
        ConfigurationError: ``KEYROTATION["TASK_BACKEND"]`` is another value.
    """
    return conf.task_backend()


def missing_package() -> str | None:
    """What to install for the configured backend when it cannot be imported; None when it can
    (or none is configured). Looks the packages up without importing them."""
    name = conf.task_backend()
    if name is None:
        return None
    _, needs, install = _BACKENDS[name]
    if any(_spec(module) for module in needs):
        return None
    return install


def _spec(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def start_reencryption(workers: int = 1, models: list[str] | None = None, **options: Any) -> Started:
    """Start a re-encryption run of ``models`` as ``workers`` tasks of the configured backend
    (:func:`keyrotation.contrib.celery.start_reencryption` or
    :func:`keyrotation.tasks.start_reencryption`).

    Args:
        workers: how many tasks share the run.
        models: ``"app.Model"`` or ``"app.Model.field"`` labels; None for every registered column.
        options: ``database``, ``batch_size``, ``rate``, ``target_batch_ms``, ``max_duration``,
            ``on_error``, ``actor`` (as for :func:`keyrotation.jobs.reencrypt`), and what the
            backend's own ``start_reencryption`` takes besides.

    Returns:
        :class:`Started`.

    Raises:
        ConfigurationError: no backend is configured (``TASK_BACKEND`` is None) or it is not
            installed.
        TypeError, ValueError: an argument of the wrong type or value; nothing is enqueued.
        KeyRotationError: ``workers`` above 1 on a database whose jobs cannot share a run
            (SQLite; :func:`keyrotation.engine.single_worker_databases`); nothing is enqueued.
    """
    name = conf.task_backend()
    if name is None:
        raise ConfigurationError(
            'no background backend: set KEYROTATION["TASK_BACKEND"] to "celery" or "django", '
            "or run manage.py reencrypt"
        )
    install = missing_package()
    if install is not None:
        raise ConfigurationError(f'KEYROTATION["TASK_BACKEND"] is {name!r}: install {install}')
    module = import_module(_BACKENDS[name][0])
    return Started(name, tuple(module.start_reencryption(workers, models, **options)))
