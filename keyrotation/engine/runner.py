"""The worker loop: claim a chunk → (select → transform → write → persist) per batch → sweep.

Each batch is one transaction: the rows it claims, the values it writes and the chunk cursor it
advances commit together, so ``kill -9`` at any instant loses nothing: the rerun continues at
the last committed cursor, and a row written twice is impossible because every write is guarded
by the row's old key versions.

Two databases are involved when the rows live elsewhere than the engine's own tables
(``Options.using`` holds the rows, ``Options.state`` the run, chunks and quarantine; see
:func:`keyrotation.engine.runs.batch_transaction`). Both are always named explicitly: a router
that sends reads to a replica never sees an engine query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.db import DatabaseError, Error, connections, transaction

from .. import signals
from ..exceptions import KeyRotationError, RunFailed
from ..models import QuarantinedValue, ReencryptionChunk, ReencryptionRun, RunStatus
from ..tracebacks import forgets_locals
from . import dialects, runs
from .batch import PK, Row
from .db_errors import Step, safely
from .pipeline import Pipeline
from .plan import ModelPlan
from .retry import RetryPolicy, retrying
from .throttle import Throttle
from .transform import BatchTransformer, RowFailure, RowFailureError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Options:
    batch_size: int = 2000
    rate: float | None = None
    target_batch_ms: float | None = None
    max_duration: float | None = None
    on_error: str = "stop"  # or "quarantine"
    stale_after: float = 60.0
    pipeline: bool = True  # two batches in flight when possible (engine/pipeline.py)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_seconds: float = 1.0
    actor: str | None = None
    using: str = "default"  # the database whose rows are re-encrypted
    state: str = "default"  # the database of the run, its chunks and quarantined values
    on_batch: Callable[[dict], None] | None = field(default=None, repr=False)
    # One of a fleet of queued jobs (keyrotation.jobs), with no parent process to rerun it: a
    # pause ends the call instead of holding it, and a call with no chunk left to claim stays
    # while other workers hold chunks, so that it takes over the chunk of one that dies.
    fleet: bool = False

    @property
    def aliases(self) -> list[str]:
        """The databases a worker talks to (one, or two when the rows live elsewhere)."""
        return [self.state] if self.state == self.using else [self.state, self.using]

    def step(self, action: str, run: int | None = None, **where: Any) -> Step:
        """A :class:`~keyrotation.engine.db_errors.Step` on this run's databases."""
        return Step(action, tuple(self.aliases), run=run, **where)

    def retrying(self, step: Step, fn: Callable[[], T]) -> T:
        """``fn`` under this run's retry policy (:func:`keyrotation.engine.retry.retrying`); a
        database error that is not retried, or still fails after the retries, is raised as an
        :class:`~keyrotation.exceptions.EngineDatabaseError` naming ``step``, never quoting the
        database (:func:`keyrotation.engine.db_errors.safely`)."""
        return safely(step, lambda: retrying(str(step), fn, self.retry, self.aliases))


@dataclass
class WorkResult:
    rows_done: int = 0
    rows_failed: int = 0
    stopped: str = ""  # "", "deadline", "paused" (a fleet worker), "aborted", "superseded", "failed"


class _Worker:
    """One process's share of a run. Its public methods are the
    :class:`~keyrotation.engine.pipeline.BatchWorker` the pipeline drives it through."""

    def __init__(self, run: ReencryptionRun, plans: list[ModelPlan], opts: Options):
        self.run = run
        self.plans = {p.label: p for p in plans}
        self.opts = opts
        self.dialect = dialects.for_alias(opts.using)
        self.deadline = time.monotonic() + opts.max_duration if opts.max_duration else None
        self.throttle = Throttle(opts.batch_size, opts.rate, opts.target_batch_ms, deadline=self.deadline)
        self.result = WorkResult()

    # -- what the pipeline uses (pipeline.BatchWorker) -------------------------------------

    @property
    def run_id(self) -> int:
        return self.run.pk

    @property
    def using(self) -> str:
        return self.opts.using

    @property
    def state(self) -> str:
        return self.opts.state

    @property
    def aliases(self) -> Sequence[str]:
        return self.opts.aliases

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def claim(self, plan: ModelPlan, lo: Any, hi: Any, *, skip_locked: bool) -> list[Row]:
        return self.dialect.select_batch(plan, lo, hi, self.throttle.batch_size, lock=True, skip=skip_locked)

    def transform_and_write(self, plan: ModelPlan, rows: list[Row]) -> tuple[int, list[RowFailure]]:
        """Re-encrypt claimed rows and write them (one statement where the dialect can); (rows
        written, failures)."""
        try:
            write, failures = BatchTransformer(plan, self.opts.using).transform_batch(
                rows, stop=self.opts.on_error != "quarantine"
            )
        except RowFailureError as exc:
            raise RunFailed(str(exc)) from None
        return self.dialect.write_batch(plan, write), failures

    def quarantine(self, failures: list[RowFailure]) -> None:
        QuarantinedValue.objects.using(self.opts.state).bulk_create(
            [
                QuarantinedValue(
                    run=self.run, label=f.label, pk_value=str(f.pk), key_version=f.version, reason=f.reason
                )
                for f in failures
            ],
            ignore_conflicts=True,
        )
        self.result.rows_failed += len(failures)
        for f in failures:
            logger.error("run #%s: quarantined %s", self.run.pk, f)

    def after_batch(self, plan: ModelPlan, seen: int, written: int, seconds: float) -> None:
        self.result.rows_done += written
        self.throttle.after_batch(seen, seconds)
        payload = {"run_id": self.run.pk, "model": plan.label, "rows": written, "seconds": seconds}
        signals.batch_completed.send(sender=ReencryptionRun, **payload)
        if self.opts.on_batch:
            self.opts.on_batch(payload)

    # -- helpers ---------------------------------------------------------------------------

    def _wait_while_paused(self) -> str:
        """Return the run status once it is not paused (or 'deadline'); a fleet worker does not
        wait: it returns 'paused' at once, so that its job ends and frees its worker."""
        while True:
            status = self.opts.retrying(
                self._step("status check"), lambda: runs.current_status(self.run.pk, using=self.opts.state)
            )
            if status != RunStatus.PAUSED or self.opts.fleet:
                return status
            if self.past_deadline():
                return "deadline"
            time.sleep(self.opts.poll_seconds)

    def _step(self, action: str, **where: Any) -> Step:
        return self.opts.step(action, run=self.run.pk, **where)

    # -- one batch -------------------------------------------------------------------------

    @forgets_locals  # ``rows`` hold legacy plaintexts, and transforming them every plaintext
    def _batch(
        self, plan: ModelPlan, lo: Any, hi: Any, *, skip_locked: bool, chunk: ReencryptionChunk | None = None
    ) -> tuple[int, Any, int]:
        """One transaction. Returns (rows seen, last pk seen or None, rows written)."""
        with runs.batch_transaction(data=self.opts.using, state=self.opts.state):
            if not skip_locked:
                self.dialect.limit_lock_wait()
            rows = self.claim(plan, lo, hi, skip_locked=skip_locked)
            if not rows:
                return 0, None, 0
            written, failures = self.transform_and_write(plan, rows)
            last = rows[-1][PK]
            if chunk is not None:
                runs.persist_batch(chunk, last, written, using=self.opts.state)
            if failures:
                self.quarantine(failures)
        return len(rows), last, written

    # -- chunks and sweep ------------------------------------------------------------------

    def _pipelined(self) -> bool:
        """Two batches in flight (engine/pipeline.py): where the dialect pipelines, and with no
        rate cap (a rate-capped run sleeps between batches, and a batch waiting in the pipeline
        would hold its row locks through that sleep). ``target_batch_ms`` only resizes batches:
        it pipelines."""
        opts = self.opts
        return opts.pipeline and self.dialect.pipelines and not opts.rate

    def _process_chunk(self, chunk) -> str:
        plan = self.plans[chunk.model]
        cursor = chunk.cursor if chunk.cursor is not None else chunk.lo
        serial = 0  # batches to run one by one (after a transient error in the pipeline)
        while True:
            status = self._wait_while_paused()
            if status != RunStatus.RUNNING:
                return status
            if self.past_deadline():
                return "deadline"
            batch = self._step("batch", plan=plan, after=cursor, upto=chunk.hi)
            if self._pipelined() and not serial:
                outcome, cursor = safely(batch, Pipeline(self, plan, chunk, cursor).run)
                if outcome == "done":
                    self.opts.retrying(
                        self._step("chunk finish"), lambda: runs.finish_chunk(chunk, using=self.opts.state)
                    )
                    return "done"
                if outcome == "error":
                    serial = 1  # the next batch retries with backoff; then the pipeline again
                continue
            serial = max(0, serial - 1)
            start = time.monotonic()
            seen, last, written = self.opts.retrying(
                batch,
                lambda cursor=cursor: self._batch(plan, cursor, chunk.hi, skip_locked=True, chunk=chunk),
            )
            if not seen:
                self.opts.retrying(
                    self._step("chunk finish"), lambda: runs.finish_chunk(chunk, using=self.opts.state)
                )
                return "done"
            cursor = last
            self.after_batch(plan, seen, written, time.monotonic() - start)

    def _sweep(self) -> None:
        """Re-check every row, waiting for row locks this time (rows skipped while locked by
        the application, rows written meanwhile by a process with a stale keyring cache)."""
        for plan in self.plans.values():
            for _pass in range(3):
                cursor, written_total = None, 0
                while True:
                    start = time.monotonic()
                    seen, last, written = self.opts.retrying(
                        self._step("sweep", plan=plan, after=cursor),
                        lambda cursor=cursor, plan=plan: self._batch(plan, cursor, None, skip_locked=False),
                    )
                    if not seen:
                        break
                    cursor = last
                    written_total += written
                    self.after_batch(plan, seen, written, time.monotonic() - start)
                remaining, quarantined = self.opts.retrying(
                    self._step("sweep census", plan=plan), lambda plan=plan: self._left(plan)
                )
                if remaining <= quarantined:
                    break

    def _left(self, plan: ModelPlan) -> tuple[int, int]:
        """Rows still pending in ``plan``, and how many of its rows this run quarantined."""
        quarantined = QuarantinedValue.objects.using(self.opts.state).filter(
            run=self.run, label__startswith=plan.label + "."
        )
        return self.dialect.count_pending(plan), quarantined.values("pk_value").distinct().count()

    def work(self) -> WorkResult:
        using = self.opts.state
        while True:
            status = self._wait_while_paused()
            if status != RunStatus.RUNNING:
                self.result.stopped = status
                return self.result
            chunk = self.opts.retrying(
                self._step("chunk claim"),
                lambda: runs.claim_chunk(self.run.pk, stale_after=self.opts.stale_after, using=using),
            )
            if chunk is None:
                # Sweep only once every chunk is done. "No chunk running" is not enough: another
                # worker may hold a pending chunk locked in its (not yet committed) claim, which
                # our claim skipped.
                progress = self.opts.retrying(
                    self._step("progress"), lambda: runs.progress(self.run, using=using)
                )
                if progress.all_chunks_done:
                    break
                # Another worker still owns chunks, and the last one to finish sweeps. A fleet
                # worker stays, to take over the chunk of a worker that dies (claim_chunk).
                if not self.opts.fleet:
                    return self.result
                if self.past_deadline():
                    self.result.stopped = "deadline"
                    return self.result
                time.sleep(self.opts.poll_seconds)
                continue
            try:
                outcome = self._process_chunk(chunk)
            except BaseException:
                if _db_alive(using):  # give the chunk back; else it is reclaimed when stale
                    runs.release_chunk(chunk, using=using)
                raise
            if outcome != "done":
                self.opts.retrying(
                    self._step("chunk release"), lambda chunk=chunk: runs.release_chunk(chunk, using=using)
                )
                self.result.stopped = outcome
                return self.result
        self._sweep()
        self.opts.retrying(self._step("finish"), self._finish)
        return self.result

    def _finish(self) -> None:
        using = self.opts.state
        with transaction.atomic(using=using):
            ReencryptionRun.objects.using(using).filter(pk=self.run.pk).update(
                rows_failed=QuarantinedValue.objects.using(using).filter(run=self.run).count()
            )
            try:
                runs.set_status(self.run.pk, RunStatus.FINISHED, actor=self.opts.actor, using=using)
            except KeyRotationError:
                pass  # another worker finished it first, or an operator aborted it


def _db_alive(using: str) -> bool:
    try:
        connections[using].ensure_connection()
        return connections[using].is_usable()
    except DatabaseError:
        return False


def work(run: ReencryptionRun, plans: list[ModelPlan], opts: Options) -> WorkResult:
    """Process chunks of ``run`` in this process until none is left (then sweep and finish),
    the deadline passes, or an operator pauses past the deadline / aborts."""
    worker = _Worker(run, plans, opts)
    try:
        return worker.work()
    except RunFailed as exc:
        try:
            runs.set_status(run.pk, RunStatus.FAILED, actor=opts.actor, error=str(exc), using=opts.state)
        except Error as lost:  # the database that failed the run is out of reach too
            logger.warning(
                "run #%s could not be marked failed (%s); it stays open and a rerun joins it",
                run.pk,
                type(lost).__name__,
            )
        raise
