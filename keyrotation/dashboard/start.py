"""Whether a re-encryption can be started from the status page, and on which backend.

The answer reads what the rest of the app knows (the census folded into
:class:`~keyrotation.dashboard.columns.Overall`, the latest run, the configured
``TASK_BACKEND``) and decides nothing about who may press the button: the view adds the
permission.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import background, engine
from ..exceptions import ConfigurationError
from .columns import Overall
from .run import RunFigures

# How the page names each backend in its messages.
BACKEND_NAMES = {"celery": "Celery", "django": "Django tasks"}
# The most jobs the start form offers, where the database lets jobs share a run.
MAX_WORKERS = 16


@dataclass(frozen=True)
class StartOption:
    """Attributes:
    backend: the configured ``TASK_BACKEND`` (``"celery"``, ``"django"``) or None.
    problem: why the backend cannot be used (not installed, a bad setting); None when it can.
    pending: some rows are not on the active versions.
    open_run: the id of the open run, if one is open (a start would only join it).
    max_workers: how many jobs may share the run: 1 where a database cannot share a table
        between workers (SQLite: no ``SKIP LOCKED``), else ``MAX_WORKERS``.
    """

    backend: str | None
    problem: str | None
    pending: bool
    open_run: int | None
    max_workers: int = MAX_WORKERS

    @property
    def backend_label(self) -> str | None:
        return None if self.backend is None else BACKEND_NAMES.get(self.backend, self.backend)

    @property
    def possible(self) -> bool:
        """A start would queue jobs with work to do: a usable backend, rows to do, no open run."""
        return self.backend is not None and self.problem is None and self.pending and self.open_run is None

    @property
    def offered(self) -> bool:
        """The page shows the start form or the command to run instead: rows to do, no open run."""
        return self.pending and self.open_run is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "can_start": self.possible,
            "backend": self.backend,
            "problem": self.problem,
            "pending": self.pending,
            "open_run": self.open_run,
            "max_workers": self.max_workers,
        }


def start_option(overall: tuple[Overall, ...], run: RunFigures | None) -> StartOption:
    """What :class:`StartOption` says now."""
    problem = None
    try:
        backend = background.backend_name()
    except ConfigurationError as exc:  # its message names the setting and the values it takes
        backend, problem = None, str(exc)
    if backend is not None:
        missing = background.missing_package()
        if missing is not None:
            problem = f'KEYROTATION["TASK_BACKEND"] is {backend!r}: install {missing}'
    return StartOption(
        backend=backend,
        problem=problem,
        pending=any(o.on_active < o.rows for o in overall),
        open_run=run.run.pk if run is not None and run.is_open else None,
        max_workers=1 if engine.single_worker_databases() else MAX_WORKERS,
    )
