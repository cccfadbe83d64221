"""Gentleness: a rows-per-second cap and an adaptive batch size aimed at a target batch time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

MIN_BATCH = 50
MAX_BATCH = 20_000


@dataclass
class Throttle:
    """``rate``: rows/s cap for this worker (None: none). ``target_ms``: aim each batch at this
    duration by growing or shrinking the batch size (at most x2 / x0.5 per step)."""

    batch_size: int
    rate: float | None = None
    target_ms: float | None = None
    deadline: float | None = None  # clock() value; the rate sleep never runs past it
    clock: callable = field(default=time.monotonic, repr=False)
    sleep: callable = field(default=time.sleep, repr=False)
    _start: float | None = field(default=None, init=False, repr=False)
    _rows: int = field(default=0, init=False, repr=False)

    def after_batch(self, rows: int, seconds: float) -> None:
        """Record a batch; adapt the size; sleep if ahead of the rate cap."""
        now = self.clock()
        if self._start is None:
            self._start = now - seconds
        self._rows += rows
        if self.target_ms and rows and seconds > 0:
            factor = min(2.0, max(0.5, (self.target_ms / 1000.0) / seconds))
            self.batch_size = int(min(MAX_BATCH, max(MIN_BATCH, self.batch_size * factor)))
        if self.rate:
            ahead = self._rows / self.rate - (now - self._start)
            if self.deadline is not None:
                ahead = min(ahead, self.deadline - now)
            if ahead > 0:
                self.sleep(ahead)
