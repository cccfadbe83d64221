"""The re-encryption engine: one entry point per use case, shared by commands, admin and code.

Example::

    from keyrotation import engine

    report = engine.reencrypt(["people.Person"], workers=2)
    assert report.status == "finished"
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import connections

from .. import conf, keyring, signals
from ..exceptions import KeyRotationError
from ..models import QuarantinedValue, ReencryptionRun, RunStatus
from . import plan as _plan
from . import runs, sql
from .runner import Options, RunFailed, WorkResult, retrying, work
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
    "status",
    "verify",
]


@dataclass
class Report:
    """What one ``reencrypt`` call did (this process and its workers)."""

    run_id: int | None
    status: str
    joined: bool = False
    rows_total: int = 0
    rows_done: int = 0
    rows_failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.FINISHED and not self.rows_failed and not self.errors

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "joined": self.joined,
            "rows_total": self.rows_total,
            "rows_done": self.rows_done,
            "rows_failed": self.rows_failed,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_done / self.seconds, 1) if self.seconds else None,
            "errors": self.errors,
            "quarantined": self.quarantined,
        }


def reencrypt(
    models: list[str] | None = None,
    *,
    workers: int = 1,
    batch_size: int | None = None,
    rate: float | None = None,
    target_batch_ms: float | None = None,
    max_duration: float | None = None,
    on_error: str = "stop",
    actor: str | None = None,
    using: str = "default",
    on_batch: Callable[[dict], None] | None = None,
    monitor: Callable[[], None] | None = None,
    chunk_span: int = runs.CHUNK_PK_SPAN,
    stale_after: float = 60.0,
    pipeline: bool = True,
) -> Report:
    """Move every row of the registered columns in ``models`` to the active key versions.

    Joins the open run of the same scope if there is one (another host, or a rerun after a
    crash), else plans a new run. Returns when no work is left, at ``max_duration``, or when an
    operator aborts.

    Args:
        models: ``"app.Model"`` or ``"app.Model.field"`` entries; None for every registered column.
        workers: processes on this host (each one claims chunks through the database).
        batch_size: rows per batch (default ``KEYROTATION["BATCH_SIZE"]``).
        rate: rows per second cap, per worker.
        target_batch_ms: adapt the batch size so that a batch takes about this long.
        max_duration: seconds; stop cleanly (resumable) after this long.
        on_error: ``"stop"`` (default): a value that cannot be decrypted fails the run naming
            model, field, pk and version; ``"quarantine"``: record it and go on (exit non-zero).
        pipeline: on PostgreSQL without ``rate``, keep two batches in flight per worker (one
            more connection per worker; see ``engine/pipeline.py``).

    Raises:
        RunFailed: ``on_error="stop"`` and a value could not be opened.
        KeyRotationError: a scope entry names no registered column.
    """
    if on_error not in ("stop", "quarantine"):
        raise ValueError(f"on_error must be 'stop' or 'quarantine', got {on_error!r}")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if workers > 1 and not sql.skip_locked(using):
        raise KeyRotationError(
            f"--workers {workers} needs row locks with SKIP LOCKED; "
            f"{connections[using].vendor} has none: run one worker"
        )
    started = time.monotonic()
    keyring.invalidate()  # plan against the key versions active right now
    plans = _plan.build(models)
    opts = Options(
        batch_size=batch_size or conf.batch_size(),
        rate=rate,
        target_batch_ms=target_batch_ms,
        max_duration=max_duration,
        on_error=on_error,
        actor=actor,
        using=using,
        on_batch=on_batch,
        stale_after=stale_after,
        pipeline=pipeline,
    )
    # Opening a run writes an audit row, which needs the KEK (the chain key): ride out an outage.
    run, joined = retrying(
        "opening the run",
        lambda: runs.open_run(
            plans,
            models,
            actor=actor,
            options=_public_options(opts, workers),
            chunk_span=chunk_span,
            using=using,
        ),
        opts,
    )
    report = Report(run_id=run.pk, status=run.status, joined=joined, rows_total=run.rows_total)
    if workers == 1:
        try:
            result = work(run, plans, opts)
        except RunFailed as exc:
            report.errors.append(str(exc))
            result = WorkResult()
    else:
        from .workers import run_workers

        result, report.errors = run_workers(run, plans, opts, workers, monitor)
    run.refresh_from_db()
    if run.status == RunStatus.RUNNING and not runs.progress(run, using=using)["running"] and result.stopped:
        runs.set_status(run.pk, RunStatus.INTERRUPTED, actor=actor, using=using)
        run.refresh_from_db()
    report.status = run.status
    report.rows_done = result.rows_done
    report.rows_failed = QuarantinedValue.objects.using(using).filter(run=run).count()
    report.quarantined = [str(q) for q in QuarantinedValue.objects.using(using).filter(run=run)[:100]]
    report.seconds = time.monotonic() - started
    signals.run_finished.send(
        sender=ReencryptionRun,
        run_id=run.pk,
        status=report.status,
        rows_done=report.rows_done,
        rows_failed=report.rows_failed,
    )
    return report


def _public_options(opts: Options, workers: int) -> dict:
    return {
        "workers": workers,
        "batch_size": opts.batch_size,
        "rate": opts.rate,
        "target_batch_ms": opts.target_batch_ms,
        "max_duration": opts.max_duration,
        "on_error": opts.on_error,
    }


def dry_run(models: list[str] | None = None, *, sample: int = 500, using: str = "default") -> dict:
    """What ``reencrypt`` would do, changing nothing: pending rows per model, the census per
    column, an estimate of the time from a measured sample (decrypt + encrypt in memory, no write),
    and the data keys the KEK would have to unwrap."""
    keyring.invalidate()
    plans = _plan.build(models)
    census = [c for c in _plan.census_rows(using=using) if _in_scope(c["label"], plans)]
    out_models, seconds_total = [], 0.0
    for p in plans:
        pending = p.pending(using=using)
        rows = sql.select_batch(p, using, None, None, sample, lock=False) if pending else []
        start = time.monotonic()
        failures = len(BatchTransformer(p, using).transform_batch(rows, stop=False)[1]) if rows else 0
        per_row = (time.monotonic() - start) / len(rows) if rows else 0.0
        seconds_total += per_row * pending
        out_models.append(
            {
                "model": p.label,
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


def pending(models: list[str] | None = None, *, using: str = "default") -> int:
    """Rows of ``models`` with any column not on its active key version."""
    keyring.invalidate()
    return sum(p.pending(using=using) for p in _plan.build(models))


def _in_scope(label: str, plans) -> bool:
    return any(label in p.targets() for p in plans)


def status(using: str = "default") -> dict:
    """The census of every registered column and the state of the latest run."""
    keyring.invalidate()
    census = _plan.census_rows(using=using)
    run = runs.latest_run(using=using)
    out = {"columns": census, "run": None}
    if run is not None:
        prog = runs.progress(run, using=using)
        elapsed = ((prog["heartbeat"] or run.started_at) - run.started_at).total_seconds()
        rate = prog["rows_done"] / elapsed if elapsed > 0 else None
        left = max(0, run.rows_total - prog["rows_done"])
        out["run"] = {
            "id": run.pk,
            "status": run.status,
            "scope": run.scope,
            "targets": run.targets,
            "actor": run.actor,
            "started_at": run.started_at.isoformat(),
            "heartbeat_at": prog["heartbeat"].isoformat() if prog["heartbeat"] else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "rows_total": run.rows_total,
            "rows_done": prog["rows_done"],
            "rows_failed": run.rows_failed,
            "chunks": prog["chunks"],
            "chunks_done": prog["done"],
            "rows_per_second": round(rate, 1) if rate else None,
            # Only a running run has an ETA; the rate is rows done over the run's active span.
            "eta_seconds": round(left / rate) if rate and run.status == RunStatus.RUNNING else None,
            "error": run.error,
        }
    return out


def _control(run_id: int | None, to: str, actor: str | None, using: str) -> ReencryptionRun:
    if run_id is None:
        run = (
            ReencryptionRun.objects.using(using).filter(status__in=runs.OPEN_STATUSES).order_by("-id").first()
        )
        if run is None:
            raise KeyRotationError("no open re-encryption run")
        run_id = run.pk
    return runs.set_status(run_id, to, actor=actor, using=using)


def pause(run_id: int | None = None, *, actor: str | None = None, using: str = "default") -> ReencryptionRun:
    """Pause a run (the latest open one by default): workers stop at their next batch boundary."""
    return _control(run_id, RunStatus.PAUSED, actor, using)


def resume(run_id: int | None = None, *, actor: str | None = None, using: str = "default") -> ReencryptionRun:
    """Resume a paused run; waiting workers continue at once."""
    return _control(run_id, RunStatus.RUNNING, actor, using)


def abort(run_id: int | None = None, *, actor: str | None = None, using: str = "default") -> ReencryptionRun:
    """Abort a run: workers stop at their next batch boundary; rows done stay done."""
    return _control(run_id, RunStatus.ABORTED, actor, using)
