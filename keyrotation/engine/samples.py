"""A run's rate over time: small, bounded samples of rows written, and the series drawn from them.

Chunks say how many rows a run has done and when a chunk last moved, not how fast the run went
at each moment (a chunk spans up to 50,000 primary keys, so most runs have one chunk per model).
So each process adds up the rows it writes for a run and, inside the transaction of the batch
that ends an interval, stores them as one :class:`~keyrotation.models.ReencryptionSample`: the
sample commits with the rows it counts, or not at all. The interval is ``SAMPLE_SECONDS``, and
once the process has worked on the run for longer than ``SAMPLE_SECONDS * POINTS``, the time it
has worked divided by ``POINTS``: a process writes about ``POINTS * (1 + ln(T / 200 s))`` samples
for a run it works on for T, some 700 for a day. A chunk's end stores what is left and forgets
the run (a long-lived worker keeps no tally of runs it has finished).

:func:`series` turns a run's samples into at most ``BUCKETS`` evenly spaced rates.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..models import ReencryptionRun, ReencryptionSample

SAMPLE_SECONDS = 2.0
POINTS = 100
BUCKETS = 40


@dataclass
class _Tally:
    since: float  # monotonic time this process first wrote for the run
    last: float  # monotonic time of its last sample
    rows: int = 0  # written since then


_lock = threading.Lock()
_tallies: dict[int, _Tally] = {}


def _interval(tally: _Tally, now: float) -> float:
    return max(SAMPLE_SECONDS, (now - tally.since) / POINTS)


def note(run_id: int, rows: int, *, using: str, force: bool = False) -> None:
    """Count ``rows`` written for ``run_id``; store the count when its interval is over (or with
    ``force``, when a chunk ends). Call inside the transaction of the batch that wrote them."""
    now = time.monotonic()
    with _lock:
        tally = _tallies.setdefault(run_id, _Tally(since=now, last=now))
        tally.rows += rows
        if force and not tally.rows:
            del _tallies[run_id]
            return
        if not tally.rows or (not force and now - tally.last < _interval(tally, now)):
            return
        rows, tally.rows, tally.last = tally.rows, 0, now
        if force:
            del _tallies[run_id]
    ReencryptionSample.objects.using(using).create(run_id=run_id, rows=rows)


@dataclass(frozen=True)
class RatePoint:
    """Rows per second over one interval of a run, ending at ``at``."""

    at: datetime
    seconds: float
    rows: float  # a sample's rows are spread over the intervals it spans

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "seconds": round(self.seconds, 3),
            "rows": round(self.rows, 1),
            "rows_per_second": round(self.rows_per_second, 1),
        }


def bucket(started: datetime, samples: list[tuple[datetime, int]], buckets: int = BUCKETS) -> list[RatePoint]:
    """``samples`` (time, rows) of a run that started at ``started``, spread into at most
    ``buckets`` equal intervals from the start to the last sample.

    A sample counts the rows written since the sample before it (the run's start for the
    first), so its rows are spread evenly over that stretch: dropping a whole sample into the
    interval where it ends would make a steady run look jagged whenever two samples land in one
    interval and none in the next.
    """
    if not samples:
        return []
    samples = sorted(samples)
    span = (samples[-1][0] - started).total_seconds()
    if span <= 0:
        return []
    n = max(1, min(buckets, len(samples)))
    width = span / n
    rows = [0.0] * n
    prev = 0.0
    for at, count in samples:
        hi = min(span, max(0.0, (at - started).total_seconds()))
        lo, prev = min(prev, hi), max(prev, hi)
        if hi - lo <= 0:
            rows[min(n - 1, max(0, math.ceil(hi / width) - 1))] += count
            continue
        for i in range(int(lo // width), min(n, math.ceil(hi / width))):
            overlap = min(hi, (i + 1) * width) - max(lo, i * width)
            if overlap > 0:
                rows[i] += count * overlap / (hi - lo)
    return [RatePoint(started + timedelta(seconds=width * (i + 1)), width, rows[i]) for i in range(n)]


def series(run: ReencryptionRun, using: str | None = None) -> list[RatePoint]:
    """The rate of ``run`` over its course, from its samples (empty before the first)."""
    qs = ReencryptionSample.objects.using(using or run._state.db).filter(run=run).order_by("at")
    return bucket(run.started_at, list(qs.values_list("at", "rows")))
