"""Two batches in flight on one worker (where the dialect pipelines: PostgreSQL; no rate cap).

A batch is claim → transform → write → commit, in one transaction. Run one after the other, the
client computes while the database waits, then the database writes while the client waits. Here
two lanes (this thread and one helper thread, each with its own connection) take the batches of
a chunk in turn: while batch *n*'s ``UPDATE`` runs in the database, batch *n + 1* is claimed and
its crypto is done in Python.

What does not change:

* batch *n + 1* claims only rows after batch *n*'s last key (known once *n*'s ``SELECT``
  returns), so the two lanes never hold the same row and ``SKIP LOCKED`` skips nothing of ours;
* batches **commit in order**: a batch writes its rows, then waits for its predecessor's commit
  before it records the chunk cursor and commits. If the predecessor failed, it rolls back. The
  committed cursor therefore always covers a prefix of the chunk, exactly as with one lane, and
  ``kill -9`` at any instant loses nothing;
* every write carries the same guards.

Any error ends the pipeline after both lanes stop: a transient one (lost connection, KEK outage)
hands back to the caller, which retries one batch with backoff and starts the pipeline again;
any other error propagates. A pause or an abort ends it the same way: each batch checks the run's
status right before it commits, and rolls back if the run is no longer running. The deadline is
checked before a batch starts.

The pipeline drives the worker that runs it only through :class:`BatchWorker`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from ..models import ReencryptionChunk, RunStatus
from ..tracebacks import forgets_locals
from . import runs
from .batch import PK, Row
from .plan import ModelPlan
from .retry import is_transient, reset_connections
from .transform import RowFailure

logger = logging.getLogger(__name__)

_END = object()  # a slot's cursor when no batch may follow it (end of chunk, halt, failure)


class BatchWorker(Protocol):
    """What the pipeline needs from the worker that runs it (``runner.py``'s worker).

    Each method is called from either lane, inside that lane's batch transaction where it says
    so; each lane has its own connections.
    """

    @property
    def run_id(self) -> int:
        """The run being worked."""

    @property
    def using(self) -> str:
        """The database holding the rows."""

    @property
    def state(self) -> str:
        """The database holding the run, its chunks and quarantined values."""

    @property
    def aliases(self) -> Sequence[str]:
        """Every database the worker talks to (closed after a transient error)."""

    def past_deadline(self) -> bool:
        """The maintenance window (``max_duration``) is over: start no batch."""

    def claim(self, plan: ModelPlan, lo: Any, hi: Any, *, skip_locked: bool) -> list[Row]:
        """In the batch transaction: lock and read the next batch of pending rows after ``lo``."""

    def transform_and_write(self, plan: ModelPlan, rows: list[Row]) -> tuple[int, list[RowFailure]]:
        """In the batch transaction: re-encrypt claimed rows and write them; (rows written, rows
        that could not be opened). Raises ``RunFailed`` if a row fails and the run stops on errors."""

    def quarantine(self, failures: list[RowFailure]) -> None:
        """In the batch transaction: record values that could not be opened."""

    def after_batch(self, plan: ModelPlan, seen: int, written: int, seconds: float) -> None:
        """After a batch committed: count it, adapt the batch size, send the batch signal."""


class _Abandoned(Exception):
    """The previous batch did not commit: roll this one back."""


class _Slot:
    """One batch's hand-offs to the next: its last key, then whether it committed."""

    __slots__ = ("claimed", "cursor", "done", "ok")

    def __init__(self) -> None:
        self.claimed = threading.Event()
        self.done = threading.Event()
        self.cursor: Any = _END
        self.ok = False


class Pipeline:
    """Process one chunk from ``cursor`` with two lanes; see the module docstring."""

    def __init__(self, worker: BatchWorker, plan: ModelPlan, chunk: ReencryptionChunk, cursor: Any) -> None:
        self.worker = worker
        self.plan = plan
        self.chunk = chunk
        self.using = worker.using  # the rows
        self.state = worker.state  # the run and its chunks
        self.committed = cursor  # the cursor of the last committed batch
        self.outcome = "halt"
        self.error: BaseException | None = None
        self._slots: dict[int, _Slot] = {}
        self._lock = threading.Lock()
        self._first = _Slot()
        self._first.cursor, self._first.ok = cursor, True
        self._first.claimed.set()
        self._first.done.set()

    def _slot(self, n: int) -> _Slot:
        if n < 0:
            return self._first
        with self._lock:
            slot = self._slots.get(n)
            if slot is None:
                slot = self._slots[n] = _Slot()
            self._slots.pop(n - 3, None)  # nobody waits on it any more
            return slot

    def run(self) -> tuple[str, Any]:
        """Returns (outcome, committed cursor): ``"done"`` (no row left in the chunk), ``"halt"``
        (paused, aborted or past the deadline: the caller looks), or ``"error"`` (a transient
        error: the caller retries). Other errors are raised."""
        helper = threading.Thread(target=self._lane, args=(1,), name="keyrotation-lane-1", daemon=True)
        helper.start()
        try:
            self._lane(0)
        finally:
            helper.join()
        if self.error is not None:
            if is_transient(self.error):
                logger.warning(
                    "run #%s: batch of %s failed (%s); retrying one batch at a time",
                    self.worker.run_id,
                    self.plan.label,
                    type(self.error).__name__,
                )
                reset_connections(self.worker.aliases)  # one may be broken
                return "error", self.committed
            raise self.error
        return self.outcome, self.committed

    def _lane(self, lane: int) -> None:
        n = lane
        try:
            while self._batch(n):
                n += 2
        except BaseException:  # noqa: BLE001, S110 - recorded by _batch, raised again by run()
            pass
        finally:
            # The other lane may wait for our next batch: there will be none.
            after = self._slot(n + 2)
            after.claimed.set()
            after.done.set()
            if lane == 1:
                reset_connections(self.worker.aliases)  # this thread's own connections

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None and not isinstance(exc, _Abandoned):
                self.error = exc

    def _halted(self) -> bool:
        return self.error is not None or self.worker.past_deadline()

    def _still_running(self) -> bool:
        """Checked right before each commit: after a pause or an abort, no batch commits."""
        return runs.current_status(self.worker.run_id, using=self.state) == RunStatus.RUNNING

    @forgets_locals  # as the runner's: ``rows`` and what transforming them opens
    def _batch(self, n: int) -> bool:
        """Batch ``n``: True if a next batch may follow."""
        prev, me = self._slot(n - 1), self._slot(n)
        try:
            prev.claimed.wait()
            if prev.cursor is _END or self._halted():
                return False  # the outcome stays "halt" unless a lane found the chunk done
            start = time.monotonic()
            worker, plan = self.worker, self.plan
            with runs.batch_transaction(data=self.using, state=self.state):
                rows = worker.claim(plan, prev.cursor, self.chunk.hi, skip_locked=True)
                if not rows:
                    prev.done.wait()
                    if prev.ok:
                        self.outcome = "done"
                    return False
                me.cursor = rows[-1][PK]
                me.claimed.set()
                written, failures = worker.transform_and_write(plan, rows)
                prev.done.wait()
                if not prev.ok or self.error is not None or not self._still_running():
                    raise _Abandoned  # nothing commits after a failure, an interrupt or a pause
                runs.persist_batch(self.chunk, me.cursor, written, using=self.state)
                if failures:
                    worker.quarantine(failures)
            me.ok = True
            self.committed = me.cursor
            worker.after_batch(plan, len(rows), written, time.monotonic() - start)
            return True
        except BaseException as exc:
            self._fail(exc)  # before the events below: the next batch must see it
            raise
        finally:
            me.claimed.set()  # cursor stays _END unless the batch claimed rows
            me.done.set()
