"""The latest run with its rate over time, and the runs before it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .. import databases
from ..engine import runs, samples
from ..engine.overview import RunOverview
from ..models import ReencryptionRun, RunStatus

HISTORY = 10

# A run's status as an outcome a person reads ("done" rather than "finished").
OUTCOMES = {
    RunStatus.RUNNING: "running",
    RunStatus.PAUSED: "paused",
    RunStatus.INTERRUPTED: "interrupted",
    RunStatus.FINISHED: "done",
    RunStatus.ABORTED: "aborted",
    RunStatus.FAILED: "failed",
    RunStatus.SUPERSEDED: "superseded",
}


def duration_text(seconds: float | None) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 5 min``, ``3 d 4 h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if s >= size:
            whole, rest = divmod(s, size)
            part = rest // sub_size
            return f"{whole} {unit} {part} {sub}" if part else f"{whole} {unit}"
    return f"{s} s"


@dataclass(frozen=True)
class RunFigures:
    """The latest run, with its rate over time."""

    overview: RunOverview
    rate: tuple[samples.RatePoint, ...]

    @property
    def run(self) -> ReencryptionRun:
        return self.overview.run

    @property
    def outcome(self) -> str:
        return OUTCOMES.get(self.run.status, self.run.status)

    @property
    def percent(self) -> float:
        return int(10 * self.overview.tally.percent) / 10

    @property
    def is_open(self) -> bool:
        return self.run.status in runs.OPEN_STATUSES

    @property
    def eta_text(self) -> str:
        return duration_text(self.overview.eta_seconds)

    @property
    def peak(self) -> float:
        return max((p.rows_per_second for p in self.rate), default=0.0)

    @property
    def rate_text(self) -> str:
        """The rate chart in words."""
        if not self.rate:
            return "No rate recorded yet."
        first, last = self.rate[0].rows_per_second, self.rate[-1].rows_per_second
        return (
            f"Rows per second over the run, {len(self.rate)} intervals of "
            f"{self.rate[0].seconds:.0f} s: {first:.0f} at first, {last:.0f} latest, peak {self.peak:.0f}."
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.overview.as_dict(),
            "outcome": self.outcome,
            "percent": self.percent,
            "rate": [p.as_dict() for p in self.rate],
        }


@dataclass(frozen=True)
class PastRun:
    """A run before the latest one: how it ended, how many rows, how long."""

    id: int
    status: str
    rows_done: int
    rows_total: int
    actor: str
    started_at: datetime
    ended_at: datetime | None  # finished, or last heartbeat

    @property
    def outcome(self) -> str:
        return OUTCOMES.get(self.status, self.status)

    @property
    def duration(self) -> timedelta | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    @property
    def duration_text(self) -> str:
        return duration_text(None if self.duration is None else self.duration.total_seconds())

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "outcome": self.outcome,
            "rows_done": self.rows_done,
            "rows_total": self.rows_total,
            "actor": self.actor,
            "started_at": self.started_at.isoformat(),
            "ended_at": None if self.ended_at is None else self.ended_at.isoformat(),
            "duration_seconds": None if self.duration is None else round(self.duration.total_seconds()),
        }


def past_runs(latest: ReencryptionRun | None, limit: int = HISTORY) -> tuple[PastRun, ...]:
    """The runs before ``latest`` that had work to do, newest first."""
    qs = ReencryptionRun.objects.using(databases.engine_database()).exclude(
        status=RunStatus.FINISHED, rows_total=0
    )
    if latest is not None:
        qs = qs.filter(pk__lt=latest.pk)
    out = []
    for run in qs.order_by("-id")[:limit]:
        prog = runs.progress(run)
        out.append(
            PastRun(
                id=run.pk,
                status=run.status,
                rows_done=prog.rows_done,
                rows_total=max(run.rows_total, prog.rows_done),
                actor=run.actor,
                started_at=run.started_at,
                ended_at=run.finished_at or prog.heartbeat,
            )
        )
    return tuple(out)


def latest() -> RunFigures | None:
    """The latest run that had work to do (:func:`keyrotation.engine.runs.latest_run`)."""
    run = runs.latest_run()
    if run is None:
        return None
    return RunFigures(RunOverview(run, runs.progress(run)), tuple(samples.series(run)))
