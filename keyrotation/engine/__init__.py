"""The re-encryption engine: one entry point per use case, shared by commands, admin and code.

Example::

    from keyrotation import engine

    report = engine.reencrypt(["people.Person"], workers=2)
    assert report.status == "finished"
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import Error, connections

from .. import conf, databases, keyring, signals
from ..exceptions import EngineDatabaseError, KeyRotationError, RunFailed
from ..models import ChunkStatus, QuarantinedValue, ReencryptionChunk, ReencryptionRun, RunStatus
from . import dialects, runs
from . import plan as _plan
from .db_errors import reading, safely
from .overview import RunOverview
from .retry import RetryPolicy
from .runner import Options, WorkResult, work
from .transform import BatchTransformer
from .verify import verify

__all__ = [
    "Report",
    "RunFailed",
    "abort",
    "dry_run",
    "pause",
    "pending",
    "reencrypt",
    "resume",
    "single_worker_databases",
    "status",
    "verify",
]


def single_worker_databases(database: str | None = None) -> tuple[str, ...]:
    """The databases that may hold encrypted rows (as the routers say: no query is made) whose
    engine cannot share a table between workers, having no ``SKIP LOCKED`` (SQLite): a run on
    any of them takes one worker, or one queued job. ``database``: only that alias.

    Example::

        engine.single_worker_databases()  # ("default",) on SQLite, () on PostgreSQL
    """
    aliases = _plan.registered_databases(database)
    return tuple(alias for alias in aliases if not dialects.for_alias(alias).skip_locked)


@dataclass
class Report:
    """What one ``reencrypt`` call did (this process and its workers), over every database it
    worked on (``runs``: database alias -> run id; ``run_id``: the last of them)."""

    run_id: int | None
    status: str
    joined: bool = False
    rows_total: int = 0
    rows_done: int = 0
    rows_failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)
    # Databases where no row was pending and no run was open: no run was recorded there.
    idle: list[str] = field(default_factory=list)
    # "keyring/purpose" -> the active version the rows in scope were planned against.
    active_versions: dict[str, int] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    # Lines for the operator, e.g. why some of --workers N had nothing to do.
    notes: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        """No row in scope was pending anywhere: every row is on the active key versions."""
        return not self.runs and self.status == RunStatus.FINISHED

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.FINISHED and not self.rows_failed and not self.errors

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "runs": self.runs,
            "status": self.status,
            "joined": self.joined,
            "rows_total": self.rows_total,
            "rows_done": self.rows_done,
            "rows_failed": self.rows_failed,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_done / self.seconds, 1) if self.seconds else None,
            "errors": self.errors,
            "quarantined": self.quarantined,
            "nothing_to_do": self.nothing_to_do,
            "notes": self.notes,
            "idle_databases": self.idle,
            "active_versions": self.active_versions,
        }


def reencrypt(
    models: list[str] | None = None,
    *,
    database: str | None = None,
    workers: int = 1,
    batch_size: int | None = None,
    rate: float | None = None,
    target_batch_ms: float | None = None,
    max_duration: float | None = None,
    on_error: str = "stop",
    actor: str | None = None,
    on_batch: Callable[[dict], None] | None = None,
    monitor: Callable[[int], None] | None = None,
    chunk_span: int = runs.CHUNK_PK_SPAN,
    stale_after: float = 60.0,
    pipeline: bool = True,
    fleet: int | None = None,
    retry: RetryPolicy | None = None,
) -> Report:
    """Move every row of the registered columns in ``models`` to the active key versions.

    On every database that holds one of the models and takes writes
    (:func:`keyrotation.databases.holding`), one after the other, stopping at the first that does
    not finish. On each, joins the open run of the same scope if there is one (another host, or a
    rerun after a crash), else plans a new run. Returns when no work is left, at
    ``max_duration`` (one window for all the databases), or when an operator aborts.

    Args:
        models: ``"app.Model"`` or ``"app.Model.field"`` entries; None for every registered column.
        database: only this database alias (default: every database that holds the models).
        workers: processes on this host (each one claims chunks through the database).
        batch_size: rows per batch (default ``KEYROTATION["BATCH_SIZE"]``).
        rate: rows per second cap, per worker.
        target_batch_ms: adapt the batch size so that a batch takes about this long.
        max_duration: seconds; stop cleanly (resumable) after this long.
        on_error: ``"stop"`` (default): a value that cannot be decrypted fails the run naming
            model, field, pk and version; ``"quarantine"``: record it and go on (exit non-zero).
        pipeline: on PostgreSQL without ``rate``, keep two batches in flight per worker (one
            more connection per worker; see ``engine/pipeline.py``).
        on_batch: called in this process after each batch it writes (``workers=1``), with
            ``{"run_id", "model", "rows", "seconds"}``.
        monitor: with ``workers > 1``, called about twice a second with the rows this call has
            re-encrypted so far (every worker, every database, from the chunks' progress).
        fleet: this call is one of ``fleet`` processes started together as queued jobs
            (:mod:`keyrotation.jobs`), each calling with ``workers=1``: a new run is cut into
            chunks for ``fleet`` workers; a pause ends the call (status ``"paused"``) instead of
            holding it; and the call returns only once the run is done, paused, aborted or
            past ``max_duration``, taking over the chunk of a worker that died meanwhile.
        retry: how often and how long to wait out a transient error (a lost connection, a KEK
            outage) before letting it through (default :class:`~keyrotation.engine.retry.RetryPolicy`).

    A run that fails (a value that cannot be opened, a database error in its work) is marked
    ``failed`` and its message is in the report's ``errors``; a database error names where and
    the driver's error code, never the database's message
    (:class:`~keyrotation.exceptions.EngineDatabaseError`).

    Raises:
        EngineDatabaseError: the database refused to plan, to count the pending rows or to record
            the run (nothing was recorded); or the run failed on a database that was still out of
            reach afterwards, when its outcome was to be read (the run stays open: run
            ``reencrypt`` again once the database is back and it continues).
        KeyRotationError: a scope entry names no registered column; ``database`` is unknown,
            read-only or holds none of the models.
    """
    if on_error not in ("stop", "quarantine"):
        raise ValueError(f"on_error must be 'stop' or 'quarantine', got {on_error!r}")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if fleet is not None and (fleet < 1 or workers != 1):
        raise ValueError("fleet must be >= 1, and each process of a fleet runs with workers=1")
    started = time.monotonic()
    keyring.invalidate()  # plan against the key versions active right now
    plans, targets = reading("planning", database, lambda: _planned(models, database))
    planned = fleet or workers  # the workers a new run's chunks are cut for
    for alias, _ in targets:
        dialect = dialects.for_alias(alias)
        if planned > 1 and not dialect.skip_locked:
            what = f"a fleet of {fleet} jobs" if fleet else f"--workers {workers}"
            raise KeyRotationError(
                f"{what} needs row locks with SKIP LOCKED; {dialect.vendor} has none: run one worker"
            )
    report = Report(
        run_id=None,
        status=RunStatus.FINISHED if not plans else "",
        active_versions=_active_versions(plans),
        models=[p.label for p in plans],
    )
    for alias, on in targets:
        opts = Options(
            batch_size=batch_size or conf.batch_size(),
            rate=rate,
            target_batch_ms=target_batch_ms,
            max_duration=max_duration,
            on_error=on_error,
            actor=actor,
            using=alias,
            state=databases.engine_database(),
            on_batch=on_batch,
            stale_after=stale_after,
            pipeline=pipeline,
            retry=retry or RetryPolicy(),
            fleet=fleet is not None,
        )
        if max_duration is not None:  # one maintenance window for all the databases
            opts.max_duration = max(0.001, max_duration - (time.monotonic() - started))
        _run_on(report, on, models, opts, workers, monitor, chunk_span, planned)
        if report.status != RunStatus.FINISHED or report.errors:
            break
    report.seconds = time.monotonic() - started
    return report


def _planned(models: list[str] | None, database: str | None) -> tuple[list[_plan.ModelPlan], list]:
    plans = _plan.build(models)
    return plans, _targets(plans, database)


def _active_versions(plans: list[_plan.ModelPlan]) -> dict[str, int]:
    """``{"keyring/purpose": version}`` of every column the plans move rows to."""
    out: dict[str, int] = {}
    for p in plans:
        for col in p.enc:
            out[f"{col.keyring}/encrypt"] = col.target
        for col in p.idx:
            out[f"{col.keyring}/index"] = col.target
    return dict(sorted(out.items()))


def _targets(plans: list[_plan.ModelPlan], database: str | None) -> list[tuple[str, list]]:
    """``[(alias, plans of the models it holds)]``: the databases ``reencrypt`` writes on, in
    ``DATABASES`` order. A database that refuses writes (a PostgreSQL hot standby) is left to its
    primary, which is counted and re-encrypted in its own right."""
    where = databases.holding_all([p.model for p in plans], only=database)
    out = []
    for alias in connections.settings:
        on = [p for p in plans if alias in where[p.model]]
        if not on:
            continue
        if not databases.writable(alias):
            if database is not None:
                raise KeyRotationError(f"database {alias!r} is read-only: re-encrypt on its primary")
            continue
        out.append((alias, on))
    if not out and database is not None and plans:
        raise KeyRotationError(f"no registered column in scope lives on database {database!r}")
    return out or [(database or databases.engine_database(), [])]


def _run_on(
    report: Report, plans, models, opts: Options, workers: int, monitor, chunk_span: int, planned: int
) -> None:
    """Open or join the run of ``plans`` on ``opts.using`` (a new run cut into chunks for
    ``planned`` workers) and work it with ``workers`` processes; add to ``report``."""
    # Opening a run writes an audit row, which needs the KEK (the chain key): ride out an outage.
    run, joined = opts.retrying(
        opts.step("opening the run"),
        lambda: runs.open_run(
            plans,
            models,
            database=opts.using,
            actor=opts.actor,
            options=_public_options(opts, planned),
            chunk_span=chunk_span,
            using=opts.state,
            workers=planned,
            batch_size=opts.batch_size,
        ),
    )
    if run is None:  # nothing pending and no open run: nothing is recorded
        report.idle.append(opts.using)
        report.status = report.status or RunStatus.FINISHED
        return
    report.run_id = report.runs[opts.using] = run.pk
    report.joined = report.joined or joined
    report.rows_total += run.rows_total
    if workers > 1:
        note = opts.retrying(
            opts.step("planning the workers", run=run.pk),
            lambda: _idle_workers_note(run, plans, workers, opts),
        )
        if note:
            report.notes.append(note)
    failure: RunFailed | None = None
    if workers == 1:
        try:
            result = work(run, plans, opts)
        except RunFailed as exc:
            report.errors.append(str(exc))
            failure, result = exc, WorkResult()
    else:
        from .workers import run_workers

        result, errors = run_workers(run, plans, opts, workers, _monitor_of(run, report, opts, monitor))
        report.errors += errors
    outcome = _outcome(run, result, opts, failure)
    report.status = run.status
    report.rows_done += result.rows_done
    report.rows_failed += outcome.rows_failed
    report.quarantined += outcome.quarantined
    signals.run_finished.send(
        sender=ReencryptionRun,
        run_id=run.pk,
        status=run.status,
        rows_done=result.rows_done,
        rows_failed=outcome.rows_failed,
    )


@dataclass(frozen=True)
class _Outcome:
    rows_failed: int
    quarantined: list[str]


def _outcome(run: ReencryptionRun, result: WorkResult, opts: Options, failure: RunFailed | None) -> _Outcome:
    """Read how ``run`` stands once this process stopped working on it (its status, marked
    interrupted if every worker stopped with work left; its quarantined values).

    The reads ride out an outage like the work does. After a run that failed on the database
    (its retries already spent, its ``failed`` mark maybe not written), they are tried once; if
    the database is still out of reach, the run's own error is raised: it names the run, the
    step, the databases and the error's class and code.
    """
    step = opts.step("reading the run's outcome", run=run.pk)
    read = functools.partial(_read_outcome, run, result, opts)
    if not isinstance(failure, EngineDatabaseError):
        return opts.retrying(step, read)
    try:
        return safely(step, read)
    except EngineDatabaseError:
        pass
    raise failure  # outside the except block: nothing chained to the run's own error


def _read_outcome(run: ReencryptionRun, result: WorkResult, opts: Options) -> _Outcome:
    state = opts.state
    run.refresh_from_db(using=state)  # not from a replica a router would pick for reads
    running = runs.progress(run, using=state).chunks_running
    if run.status == RunStatus.RUNNING and not running and result.stopped:
        runs.set_status(run.pk, RunStatus.INTERRUPTED, actor=opts.actor, using=state)
        run.refresh_from_db(using=state)
    quarantined = QuarantinedValue.objects.using(state).filter(run=run)
    return _Outcome(quarantined.count(), [str(q) for q in quarantined[:100]])


def _idle_workers_note(run: ReencryptionRun, plans, workers: int, opts: Options) -> str:
    """One line when the run has fewer chunks left than ``workers`` (some would have nothing to
    do), saying why; "" otherwise."""
    left = (
        ReencryptionChunk.objects.using(opts.state).filter(run=run).exclude(status=ChunkStatus.DONE).count()
    )
    if left >= workers:
        return ""
    without_ranges = [p.label for p in plans if not runs.integer_pk(p.model)]
    why = (
        f"{', '.join(without_ranges)} has no integer primary key to cut into ranges"
        if without_ranges and left <= len(without_ranges)
        else f"a chunk is at least one batch of {opts.batch_size:,} rows"
    )
    return (
        f"run #{run.pk} on {opts.using}: {run.rows_total:,} row(s) in {left} chunk(s) ({why}); "
        f"--workers {workers} uses {max(left, 1)} worker(s)"
    )


def _monitor_of(run: ReencryptionRun, report: Report, opts: Options, monitor) -> Callable[[], None] | None:
    """``monitor`` called with the rows done by this call: those of the databases done before,
    plus what the chunks of ``run`` gained since this call joined it (a joined run may have rows
    done by an earlier call or by another host)."""
    if monitor is None:
        return None
    before = report.rows_done
    baseline = opts.retrying(
        opts.step("progress", run=run.pk), lambda: runs.progress(run, using=opts.state).rows_done
    )

    def update() -> None:
        try:
            done = runs.progress(run, using=opts.state).rows_done
        except Error:  # a progress display only: the workers meet the outage and report it
            return
        monitor(before + done - baseline)

    return update


def _public_options(opts: Options, workers: int) -> dict:
    return {
        "workers": workers,
        "batch_size": opts.batch_size,
        "rate": opts.rate,
        "target_batch_ms": opts.target_batch_ms,
        "max_duration": opts.max_duration,
        "on_error": opts.on_error,
    }


def dry_run(models: list[str] | None = None, *, sample: int = 500, database: str | None = None) -> dict:
    """What ``reencrypt`` would do, changing nothing: pending rows per model and database, the
    census per column, an estimate of the time from a measured sample (decrypt + encrypt in
    memory, no write), and the data keys the KEK would have to unwrap.

    Raises:
        EngineDatabaseError: a database refused a read (or is out of reach).
    """
    keyring.invalidate()
    return reading("dry run", database, lambda: _dry_run(models, sample, database))


def _dry_run(models: list[str] | None, sample: int, database: str | None) -> dict:
    plans = _plan.build(models)
    census = [c for c in _plan.census_rows(database) if _in_scope(c["label"], plans)]
    out_models, seconds_total = [], 0.0
    for alias, on in _targets(plans, database):
        dialect = dialects.for_alias(alias)
        for p in on:
            pending = dialect.count_pending(p)
            rows = dialect.select_batch(p, None, None, sample, lock=False) if pending else []
            start = time.monotonic()
            failures = len(BatchTransformer(p, alias).transform_batch(rows, stop=False)[1]) if rows else 0
            per_row = (time.monotonic() - start) / len(rows) if rows else 0.0
            seconds_total += per_row * pending
            out_models.append(
                {
                    "model": p.label,
                    "database": alias,
                    "rows_pending": pending,
                    "targets": p.targets(),
                    "sample_rows": len(rows),
                    "sample_failures": failures,
                    "crypto_seconds_per_row": per_row,
                }
            )
    unwraps = sorted(
        {
            f"{c['keyring']}/{c['purpose']}/v{v}"
            for c in census
            for v in [*c["versions"].keys(), str(c["active_version"])]
        }
    )
    return {
        "models": out_models,
        "census": census,
        "rows_pending": sum(m["rows_pending"] for m in out_models),
        "estimated_crypto_seconds": round(seconds_total, 2),
        "kek_unwraps": unwraps,
    }


def pending(models: list[str] | None = None, *, database: str | None = None) -> int:
    """Rows of ``models`` with any column not on its active key version, on every database
    ``reencrypt`` would write on (or on ``database``).

    Raises:
        EngineDatabaseError: a database refused the count (or is out of reach).
    """
    keyring.invalidate()
    return reading(
        "counting the pending rows",
        database,
        lambda: sum(
            dialects.for_alias(alias).count_pending(p)
            for alias, on in _targets(_plan.build(models), database)
            for p in on
        ),
    )


def _in_scope(label: str, plans) -> bool:
    return any(label in p.targets() for p in plans)


def status(database: str | None = None) -> dict:
    """The census of every registered column (on every database that holds it, or on
    ``database``) and the state of the latest run.

    Raises:
        EngineDatabaseError: a database refused a read (or is out of reach).
    """
    keyring.invalidate()
    return reading("status", database, lambda: _status(database))


def _status(database: str | None) -> dict:
    census = _plan.census_rows(database)
    run = runs.latest_run()
    overview = RunOverview(run, runs.progress(run)) if run is not None else None
    return {"columns": census, "run": overview.as_dict() if overview else None}


def _control(run_id: int | None, to: str, actor: str | None) -> ReencryptionRun:
    using = databases.engine_database()
    if run_id is None:
        run = (
            ReencryptionRun.objects.using(using).filter(status__in=runs.OPEN_STATUSES).order_by("-id").first()
        )
        if run is None:
            raise KeyRotationError("no open re-encryption run")
        run_id = run.pk
    return runs.set_status(run_id, to, actor=actor, using=using)


def pause(run_id: int | None = None, *, actor: str | None = None) -> ReencryptionRun:
    """Pause a run (the latest open one by default): workers stop at their next batch boundary."""
    return _control(run_id, RunStatus.PAUSED, actor)


def resume(run_id: int | None = None, *, actor: str | None = None) -> ReencryptionRun:
    """Resume a paused run; waiting workers continue at once."""
    return _control(run_id, RunStatus.RUNNING, actor)


def abort(run_id: int | None = None, *, actor: str | None = None) -> ReencryptionRun:
    """Abort a run: workers stop at their next batch boundary; rows done stay done."""
    return _control(run_id, RunStatus.ABORTED, actor)
