"""What ``rotation_status``, the admin and :func:`keyrotation.engine.status` say about a run: its
progress (from :func:`~keyrotation.engine.runs.progress`), its rate and its ETA, as one typed
value; :meth:`RunOverview.as_dict` is the JSON form."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..models import ReencryptionRun, RunStatus
from ..reporting import Tally
from .runs import RunProgress


@dataclass(frozen=True)
class RunOverview:
    """One run as an operator sees it. ``tally``: rows done against a total that grows with rows
    that became pending during the run (never below the rows done)."""

    run: ReencryptionRun
    progress: RunProgress

    @property
    def tally(self) -> Tally:
        return Tally(self.run.rows_total, self.progress.rows_done)

    @property
    def rows_per_second(self) -> float | None:
        """Rows done over the run's active span (start to the latest chunk heartbeat)."""
        latest: datetime = self.progress.heartbeat or self.run.started_at
        elapsed = (latest - self.run.started_at).total_seconds()
        rate = self.progress.rows_done / elapsed if elapsed > 0 else None
        return rate or None

    @property
    def eta_seconds(self) -> int | None:
        """Only a running run has an ETA."""
        rate = self.rows_per_second
        if not rate or self.run.status != RunStatus.RUNNING:
            return None
        return round(self.tally.left / rate)

    def as_dict(self) -> dict[str, Any]:
        run, prog, tally, rate = self.run, self.progress, self.tally, self.rows_per_second
        return {
            "id": run.pk,
            "status": run.status,
            "scope": run.scope,
            "database": run.database,
            "targets": run.targets,
            "actor": run.actor,
            "started_at": run.started_at.isoformat(),
            "heartbeat_at": prog.heartbeat.isoformat() if prog.heartbeat else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "rows_total": tally.total,
            "rows_planned": run.rows_total,
            "rows_added": tally.added,
            "rows_done": prog.rows_done,
            "rows_failed": run.rows_failed,
            "chunks": prog.chunks,
            "chunks_done": prog.chunks_done,
            "rows_per_second": round(rate, 1) if rate else None,
            "eta_seconds": self.eta_seconds,
            "error": run.error,
        }
