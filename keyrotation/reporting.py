"""Output for the commands: a progress bar on a terminal, plain lines otherwise, JSON for machines.

Only counts, labels, versions and rates are ever printed; values never reach this module.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .policy import KeyAge


@dataclass(frozen=True)
class Tally:
    """Rows done against a total that never falls behind them.

    The total is counted when a run is planned; rows that become pending while it runs (written
    under an older key version by a process whose keyring cache is stale, found again by the final
    sweep) are re-encrypted too. They grow the total instead of pushing progress past 100 %:
    ``20,001/20,001 rows (+1 written during the run)``, never ``20,001/20,000``.
    """

    planned: int
    done: int

    @property
    def total(self) -> int:
        return max(self.planned, self.done, 0)

    @property
    def added(self) -> int:
        """Rows done beyond the planned total: those that became pending during the run."""
        return max(0, self.done - max(self.planned, 0))

    @property
    def left(self) -> int:
        return self.total - self.done

    @property
    def percent(self) -> float:
        return 100.0 if not self.total else 100.0 * self.done / self.total

    def text(self) -> str:
        """``1,500/2,000 rows``, with ``(+N written during the run)`` when the total grew."""
        grown = f" (+{self.added:,} written during the run)" if self.added else ""
        return f"{self.done:,}/{self.total:,} rows{grown}"


class Progress:
    """A one-line progress bar (terminal) or a line every ``every`` seconds (logs, pipes).

    ``total`` is the rows pending when the run starts; the bar never shows more rows done than
    its total (see :class:`Tally`).
    """

    def __init__(
        self, total: int, *, stream: TextIO | None = None, tty: bool | None = None, every: float = 5.0
    ):
        self.planned = max(total, 0)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = 0.1 if self.tty else every
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    @property
    def tally(self) -> Tally:
        return Tally(self.planned, self.done)

    @property
    def total(self) -> int:
        return self.tally.total

    def set(self, done: int) -> None:
        self.done = max(done, 0)
        self._draw()

    def add(self, rows: int) -> None:
        self.set(self.done + rows)

    def _line(self) -> tuple[str, float]:
        tally = self.tally
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = tally.done / elapsed
        eta = f"{tally.left / rate:.0f}s" if rate > 0 and tally.left else "-"
        pct = tally.percent
        return f"{tally.text()} ({pct:5.1f}%)  {rate:,.0f} rows/s  ETA {eta}", pct

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        text, pct = self._line()
        if self.tty:
            width = 30
            filled = int(width * pct / 100)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}")
        else:
            self.stream.write(f"progress: {text}\n")
        self.stream.flush()

    def close(self) -> None:
        self._draw(force=True)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str, sort_keys=True)


def census_table(columns: list[dict]) -> list[str]:
    """Lines of the census: one per column, versions with counts, percent on the active version."""
    if not columns:
        return ["no encrypted or indexed columns are registered"]
    width = max(len(c["label"]) for c in columns)
    lines = [f"{'column':<{width}}  purpose  active  {'on active':>9}  rows per key version"]
    for c in columns:
        versions = ", ".join(
            f"v{v}: {n:,}" for v, n in sorted(c["versions"].items(), key=lambda x: int(x[0]))
        )
        lines.append(
            f"{c['label']:<{width}}  {c['purpose']:<7}  v{c['active_version']:<5} "
            f"{c['percent_active']:>8.2f}%  {versions or '-'}"
            + (f"  (+{c['empty']:,} empty)" if c["empty"] else "")
            + (f"  [{c['legacy_rows']:,} legacy row(s) left]" if c.get("legacy_rows") is not None else "")
            + (f"  [{c['unbound_rows']:,} row(s) not bound yet]" if c.get("unbound_rows") else "")
        )
    return lines


def residue_lines(tables: list) -> list[str]:
    """Lines of ``rotation_residue``: per table what is left, the next step, and the report's limits
    (``tables`` are :class:`keyrotation.residue.TableResidue`)."""
    if not tables:
        return ["no model with encrypted fields on these databases"]
    lines: list[str] = []
    for t in tables:
        lines.append(f"{t.model} on {t.database!r} ({t.vendor}, table {t.table})")
        for c in t.legacy_columns:
            state = f"{c.values:,} legacy value(s) left" if c.present else "dropped"
            lines.append(f"  legacy column {c.column} of {c.field}: {state}")
        for index in t.legacy_indexes:
            lines.append(f"  {index.describe()}: holds a copy of every legacy value")
        if t.postgresql:
            pg = t.postgresql
            times = ", ".join(
                f"{name} {_when(value)}"
                for name, value in (
                    ("vacuum", pg.last_vacuum),
                    ("autovacuum", pg.last_autovacuum),
                    ("analyze", pg.last_analyze),
                    ("autoanalyze", pg.last_autoanalyze),
                )
            )
            lines.append(f"  dead row versions: {pg.dead_tuples:,} (estimate); last {times}")
        if t.sqlite:
            lite = t.sqlite
            lines.append(
                f"  free pages: {lite.freelist_pages:,}; secure_delete "
                f"{'on' if lite.secure_delete else 'off'}; journal_mode {lite.journal_mode}"
            )
        lines.append(f"  next: {t.next_step}")
    for vendor, limits in sorted({t.vendor: t.limits for t in tables}.items()):
        lines.append(f"not reported ({vendor}): {limits}")
    return lines


def _when(value) -> str:
    return value.isoformat(timespec="seconds") if value else "never"


def duration(delta: timedelta) -> str:
    """``400 days``, ``1 day``; under a day ``12 hours``, ``5 minutes``, ``2 seconds`` (rounded down)."""
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


def moment(value: datetime) -> str:
    """``2026-06-01 14:03 UTC`` (a naive datetime, with ``USE_TZ = False``, is shown as it is)."""
    if value.tzinfo is None:
        return f"{value:%Y-%m-%d %H:%M}"
    return f"{value.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def age_text(age: KeyAge) -> str:
    """``default/encrypt v1 (active 400 days, period 365 days, due 2025-06-01 14:03 UTC)``."""
    if age.period is None or age.due_at is None:
        return f"{age.name} (active {duration(age.age)}, no rotation period)"
    return f"{age.name} (active {duration(age.age)}, period {duration(age.period)}, due {moment(age.due_at)})"


def age_table(ages: list[KeyAge]) -> list[str]:
    """One line per active key of ``rotation_status``: age, period, due date, state."""
    if not ages:
        return ["no active data key"]
    width = max(len(a.name) for a in ages)
    lines = []
    for a in ages:
        period = duration(a.period) if a.period is not None else "-"
        due = moment(a.due_at) if a.due_at is not None else "-"
        lines.append(
            f"{a.name:<{width}}  active {duration(a.age):>11}  period {period:>11}  due {due:<20}  "
            f"{a.state.value.replace('_', ' ')}"
        )
    return lines
