"""What the admin's rotation status page shows, as one typed value: :func:`build`.

The page and its JSON twin both render a :class:`Dashboard`; this package has no view and no
template. It reads what the rest of the app already knows, and decides nothing itself:

* the census per column and key version (:func:`keyrotation.engine.plan.census_rows`), summed
  per keyring and purpose into one overall figure, and folded per model (columns with no row
  are counted, not listed);
* the latest run (:class:`~keyrotation.engine.overview.RunOverview`), its rate over time
  (:mod:`keyrotation.engine.samples`) and the runs before it;
* each active key's age against the rotation policy (:func:`keyrotation.policy.status`), and
  for each version that still decrypts, what ``rotatekeys --retire`` would answer right now
  (:func:`keyrotation.gates.retire`, the gate itself, not a copy of its rules);
* whether a re-encryption can be started in the background (:mod:`keyrotation.background`):
  :class:`StartOption`.

Counts, versions, times and labels only: no stored value and no key material ever reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from .. import keyring
from ..engine import plan
from .columns import ColumnFigures, ModelFigures, Overall, Share, column_figures, fold, overall
from .keys import KeyFigures, RetireGate, key_figures, retire_gate
from .run import OUTCOMES, PastRun, RunFigures, duration_text, latest, past_runs
from .start import BACKEND_NAMES, MAX_WORKERS, StartOption, start_option

__all__ = [
    "BACKEND_NAMES",
    "OUTCOMES",
    "ColumnFigures",
    "Dashboard",
    "MAX_WORKERS",
    "KeyFigures",
    "ModelFigures",
    "Overall",
    "PastRun",
    "RetireGate",
    "RunFigures",
    "Share",
    "StartOption",
    "build",
    "column_figures",
    "duration_text",
    "fold",
    "key_figures",
    "overall",
    "past_runs",
    "retire_gate",
    "start_option",
]


@dataclass(frozen=True)
class Dashboard:
    """Everything the status page shows. ``columns``: the census as ``engine.status()`` gives it."""

    overall: tuple[Overall, ...]
    models: tuple[ModelFigures, ...]
    run: RunFigures | None
    history: tuple[PastRun, ...]
    keys: tuple[KeyFigures, ...]
    columns: tuple[dict[str, Any], ...]
    generated_at: datetime
    start: StartOption

    @property
    def empty_models(self) -> tuple[ModelFigures, ...]:
        """Models none of whose columns hold a row."""
        return tuple(m for m in self.models if not m.columns)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready. ``columns`` and ``run`` keep the keys of :func:`keyrotation.engine.status`
        (``run`` adds ``outcome``, ``percent`` and ``rate``); ``start`` is
        :meth:`StartOption.as_dict`."""
        return {
            "generated_at": self.generated_at.isoformat(),
            "overall": [o.as_dict() for o in self.overall],
            "models": [m.as_dict() for m in self.models],
            "run": None if self.run is None else self.run.as_dict(),
            "history": [r.as_dict() for r in self.history],
            "keys": [k.as_dict() for k in self.keys],
            "columns": list(self.columns),
            "start": self.start.as_dict(),
        }


def build(now: datetime | None = None) -> Dashboard:
    """The status page's figures, read now."""
    now = now or timezone.now()
    keyring.invalidate()
    census = plan.census_rows()
    run = latest()
    totals = overall(census)
    return Dashboard(
        overall=totals,
        models=fold(census),
        run=run,
        history=past_runs(None if run is None else run.run),
        keys=key_figures(census, now),
        columns=tuple(census),
        generated_at=now,
        start=start_option(totals, run),
    )
