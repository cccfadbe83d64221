"""What the admin's rotation status page shows, as one typed value: :func:`build`.

The page and its JSON twin both render a :class:`Dashboard`; this module has no view and no
template. It reads what the rest of the app already knows, and decides nothing itself:

* the census per column and key version (:func:`keyrotation.engine.plan.census_rows`), summed
  per keyring and purpose into one overall figure, and folded per model (columns with no row
  are counted, not listed);
* the latest run (:class:`~keyrotation.engine.overview.RunOverview`), its rate over time
  (:mod:`keyrotation.engine.samples`) and the runs before it;
* each active key's age against the rotation policy (:func:`keyrotation.policy.status`), and
  for each version that still decrypts, what ``rotatekeys --retire`` would answer right now
  (:func:`keyrotation.gates.retire`, the gate itself, not a copy of its rules).

Counts, versions, times and labels only: no stored value and no key material ever reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from . import databases, gates, keyring, policy
from .audit_chain import AUDIT_KEYRING
from .engine import plan, runs, samples
from .engine.overview import RunOverview
from .models import DataKey, KeyState, ReencryptionRun, RunStatus

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


def _percent(part: int, whole: int) -> float:
    """``part`` of ``whole`` in percent, rounded down to 0.1 (99.96 % is not yet 100 %)."""
    if whole <= 0:
        return 0.0
    return int(1000 * part / whole) / 10


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
class Share:
    """The rows of one column under one key version (``version`` None: rows whose version is not
    known yet, a legacy value being adopted or a value with no version column)."""

    version: int | None
    rows: int
    percent: float
    active: bool

    @property
    def name(self) -> str:
        return "no version yet" if self.version is None else f"v{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "rows": self.rows, "percent": self.percent, "active": self.active}


@dataclass(frozen=True)
class ColumnFigures:
    """One encrypted column or blind index: its rows per key version."""

    label: str
    purpose: str
    keyring: str
    active_version: int
    rows: int
    on_active: int
    shares: tuple[Share, ...]
    databases: tuple[str, ...]

    @property
    def field(self) -> str:
        return self.label.rsplit(".", 1)[-1]

    @property
    def percent(self) -> float:
        return _percent(self.on_active, self.rows)

    @property
    def text(self) -> str:
        """The bar in words (its ``title`` and ``aria-label``)."""
        parts = [f"{s.name}{' (active)' if s.active else ''}: {s.rows} rows" for s in self.shares]
        return f"{self.label}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "purpose": self.purpose,
            "keyring": self.keyring,
            "active_version": self.active_version,
            "rows": self.rows,
            "on_active": self.on_active,
            "percent_active": self.percent,
            "versions": [s.as_dict() for s in self.shares],
            "databases": list(self.databases),
        }


@dataclass(frozen=True)
class ModelFigures:
    """The columns of one model that hold rows, and the labels of those that hold none."""

    model: str
    columns: tuple[ColumnFigures, ...]
    empty_columns: tuple[str, ...]

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.columns)

    @property
    def on_active(self) -> int:
        return sum(c.on_active for c in self.columns)

    @property
    def percent(self) -> float:
        return _percent(self.on_active, self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "columns": [c.as_dict() for c in self.columns],
            "empty_columns": list(self.empty_columns),
        }


@dataclass(frozen=True)
class Overall:
    """Rows on the active version against all rows, for one keyring and purpose, summed over
    every column and database that uses it (a row with three encrypted columns counts three)."""

    keyring: str
    purpose: str
    active_version: int
    rows: int
    on_active: int

    @property
    def percent(self) -> float:
        return _percent(self.on_active, self.rows) if self.rows else 100.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "keyring": self.keyring,
            "purpose": self.purpose,
            "active_version": self.active_version,
            "rows": self.rows,
            "on_active": self.on_active,
            "percent": self.percent,
        }


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


@dataclass(frozen=True)
class RetireGate:
    """What the retire gate answers for one version that still decrypts: ``rows`` left under it
    (None when the gate refused before counting), and its refusal message if any."""

    version: int
    allowed: bool
    rows: int | None
    reason: str  # "" when allowed, else the gate's reason code
    message: str

    @property
    def line(self) -> str:
        if self.allowed:
            return f"v{self.version}: no rows left — can be retired"
        if self.reason == "referenced":
            return f"v{self.version}: {self.rows:,} rows left — retire refused"
        return f"v{self.version}: retire refused — {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "allowed": self.allowed,
            "rows": self.rows,
            "reason": self.reason,
            "message": self.message,
            "line": self.line,
        }


@dataclass(frozen=True)
class KeyFigures:
    """One keyring and purpose: its active version's age, the versions still holding rows (by
    the census), and the retire gate of each version that still decrypts."""

    keyring: str
    purpose: str
    age: policy.KeyAge
    holding: tuple[tuple[int, int], ...]  # (version, rows), newest first
    gates: tuple[RetireGate, ...]

    @property
    def active_version(self) -> int:
        return self.age.version

    def as_dict(self) -> dict[str, Any]:
        return {
            "keyring": self.keyring,
            "purpose": self.purpose,
            "active_version": self.active_version,
            "age": self.age.as_dict(),
            "holding": [{"version": v, "rows": n} for v, n in self.holding],
            "retire": [g.as_dict() for g in self.gates],
        }


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

    @property
    def empty_models(self) -> tuple[ModelFigures, ...]:
        """Models none of whose columns hold a row."""
        return tuple(m for m in self.models if not m.columns)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready. ``columns`` and ``run`` keep the keys of :func:`keyrotation.engine.status`
        (``run`` adds ``outcome``, ``percent`` and ``rate``)."""
        return {
            "generated_at": self.generated_at.isoformat(),
            "overall": [o.as_dict() for o in self.overall],
            "models": [m.as_dict() for m in self.models],
            "run": None if self.run is None else self.run.as_dict(),
            "history": [r.as_dict() for r in self.history],
            "keys": [k.as_dict() for k in self.keys],
            "columns": list(self.columns),
        }


def column_figures(row: dict[str, Any]) -> ColumnFigures:
    """One census row (:func:`~keyrotation.engine.plan.census_rows`) as bar segments, the active
    version first, then older versions newest first, then rows with no version yet."""
    active, rows = row["active_version"], row["rows"]
    versions = sorted(
        ((int(v), n) for v, n in row["versions"].items() if n), key=lambda vn: (vn[0] != active, -vn[0])
    )
    shares = [Share(v, n, _percent(n, rows), v == active) for v, n in versions]
    unknown = rows - sum(n for _, n in versions)
    if unknown > 0:
        shares.append(Share(None, unknown, _percent(unknown, rows), False))
    return ColumnFigures(
        label=row["label"],
        purpose=row["purpose"],
        keyring=row["keyring"],
        active_version=active,
        rows=rows,
        on_active=row["on_active"],
        shares=tuple(shares),
        databases=tuple(row["databases"]),
    )


def fold(census: list[dict[str, Any]]) -> tuple[ModelFigures, ...]:
    """Columns grouped by model, in census order; a column with no row is only named. Models with
    no row at all come last."""
    grouped: dict[str, tuple[list[ColumnFigures], list[str]]] = {}
    for row in census:
        full, empty = grouped.setdefault(row["model"], ([], []))
        if row["rows"]:
            full.append(column_figures(row))
        else:
            empty.append(row["label"])
    models = [ModelFigures(m, tuple(full), tuple(empty)) for m, (full, empty) in grouped.items()]
    return tuple(sorted(models, key=lambda m: not m.columns))


def overall(census: list[dict[str, Any]]) -> tuple[Overall, ...]:
    """One :class:`Overall` per keyring and purpose, sorted by them."""
    sums: dict[tuple[str, str], list[int]] = {}
    for row in census:
        acc = sums.setdefault((row["keyring"], row["purpose"]), [row["active_version"], 0, 0])
        acc[1] += row["rows"]
        acc[2] += row["on_active"]
    return tuple(Overall(k, p, a, rows, on) for (k, p), (a, rows, on) in sorted(sums.items()))


def retire_gate(key: DataKey) -> RetireGate:
    """What :func:`keyrotation.gates.retire` answers for ``key`` now (it counts; it changes nothing)."""
    counted, refusal = gates.retire(key)
    rows = None if counted is None else sum(counted.totals().values())
    if refusal is None:
        return RetireGate(key.version, True, rows, "", "")
    return RetireGate(key.version, False, rows, refusal.reason, refusal.message)


def key_figures(census: list[dict[str, Any]], now: datetime) -> tuple[KeyFigures, ...]:
    holding: dict[tuple[str, str], dict[int, int]] = {}
    for row in census:
        acc = holding.setdefault((row["keyring"], row["purpose"]), {})
        for version, n in row["versions"].items():
            if n:
                acc[int(version)] = acc.get(int(version), 0) + n
    decrypting = (
        DataKey.objects.using(databases.keys_database())
        .filter(state=KeyState.DECRYPT_ONLY)
        .exclude(keyring=AUDIT_KEYRING)
        .defer("wrapped_key")
        .order_by("keyring", "purpose", "-version")
    )
    by_pair: dict[tuple[str, str], list[DataKey]] = {}
    for key in decrypting:
        by_pair.setdefault((key.keyring, key.purpose), []).append(key)
    out = []
    for age in policy.status(now):
        pair = (age.keyring, age.purpose)
        held = tuple(sorted(holding.get(pair, {}).items(), reverse=True))
        out.append(
            KeyFigures(
                age.keyring, age.purpose, age, held, tuple(retire_gate(k) for k in by_pair.get(pair, []))
            )
        )
    return tuple(out)


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


def build(now: datetime | None = None) -> Dashboard:
    """The status page's figures, read now."""
    now = now or timezone.now()
    keyring.invalidate()
    census = plan.census_rows()
    latest = runs.latest_run()
    run = None
    if latest is not None:
        run = RunFigures(RunOverview(latest, runs.progress(latest)), tuple(samples.series(latest)))
    return Dashboard(
        overall=overall(census),
        models=fold(census),
        run=run,
        history=past_runs(latest),
        keys=key_figures(census, now),
        columns=tuple(census),
        generated_at=now,
    )
