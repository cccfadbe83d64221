"""Runs and chunks in the database: open or join a run, plan its chunks, claim them, control it.

Work is shared through the database only: a chunk is claimed with ``SELECT … FOR UPDATE SKIP
LOCKED`` and marked with the claiming worker, so any number of processes on any number of hosts
can run ``reencrypt`` against the same database without overlap. A chunk whose worker died is
reclaimed when its heartbeat is older than ``stale_after`` seconds, or at once when its worker is
a dead process on this host.

Runs, chunks and quarantined values live on the engine's database
(:func:`keyrotation.databases.engine_database`, with the keys), whichever database holds the rows
a run re-encrypts (its ``database``): every function here reads and writes there unless ``using``
says otherwise, never on a replica a router would pick for reads.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Count, F, Max, Min, Q, Sum
from django.utils import timezone

from .. import audit, databases
from ..exceptions import KeyRotationError, RunNotFound
from ..models import ChunkStatus, ReencryptionChunk, ReencryptionRun, RunStatus
from . import open_lock, samples
from .plan import ModelPlan

# (from, to) -> why. Anything else is refused by ``set_status``.
RUN_TRANSITIONS: dict[tuple[str, str], str] = {
    ("running", "paused"): "an operator paused it (CLI or admin)",
    ("paused", "running"): "an operator resumed it",
    ("running", "interrupted"): "every worker stopped (max duration, signal, error) with work left",
    ("paused", "interrupted"): "workers stopped while paused",
    ("interrupted", "running"): "a worker joined it again",
    ("interrupted", "paused"): "an operator holds a stopped run so that a process joining it waits",
    ("running", "finished"): "the final sweep found no row left",
    ("running", "aborted"): "an operator aborted it",
    ("paused", "aborted"): "an operator aborted it",
    ("interrupted", "aborted"): "an operator aborted it",
    ("running", "failed"): "a value could not be decrypted (or retries ran out)",
    ("running", "superseded"): "the active key changed; a new run takes over",
    ("paused", "superseded"): "the active key changed; a new run takes over",
    ("interrupted", "superseded"): "the active key changed; a new run takes over",
}
OPEN_STATUSES = (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.INTERRUPTED)
CHUNK_PK_SPAN = 50_000
INTEGER_PK_TYPES = frozenset(
    {
        "AutoField",
        "BigAutoField",
        "SmallAutoField",
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveBigIntegerField",
        "PositiveSmallIntegerField",
    }
)


def _db(using: str | None) -> str:
    return using or databases.engine_database()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def set_status(
    run_id: int, to: str, *, actor: str | None = None, error: str = "", using=None
) -> ReencryptionRun:
    """Move a run to ``to`` if the transition table allows it, with its audit row."""
    using = _db(using)
    with transaction.atomic(using=using):
        run = ReencryptionRun.objects.using(using).select_for_update().filter(pk=run_id).first()
        if run is None:
            raise RunNotFound(f"no re-encryption run #{run_id} (see `manage.py rotation_status`)")
        if run.status == to:
            return run
        if (run.status, to) not in RUN_TRANSITIONS:
            raise KeyRotationError(f"run #{run_id} is {run.status}; it cannot become {to}")
        run.status = to
        fields = ["status"]
        if to in (RunStatus.FINISHED, RunStatus.ABORTED, RunStatus.FAILED, RunStatus.SUPERSEDED):
            run.finished_at = timezone.now()
            fields.append("finished_at")
        if error:
            run.error = error[:2000]
            fields.append("error")
        run.save(update_fields=fields)
        totals = progress(run, using=using)
        audit.record(
            f"run_{to}",
            actor=actor,
            status="failed" if to == RunStatus.FAILED else "ok",
            rows_processed=totals.rows_done,
            rows_failed=run.rows_failed,
            details={"run": run.pk, "scope": run.scope, "targets": run.targets, **_where(run.database)},
            using=using,
        )
    return run


def scope_key(scope: list[str] | None) -> str:
    return ",".join(sorted(s.lower() for s in scope)) if scope else "*"


def targets_of(plans: list[ModelPlan]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in plans:
        out.update(p.targets())
    return out


def _where(database: str) -> dict:
    """The audit detail naming a run's database, left out for ``default`` (the one-database case)."""
    return {} if database == "default" else {"database": database}


def open_run(
    plans,
    scope,
    *,
    database="default",
    actor=None,
    options=None,
    chunk_span=CHUNK_PK_SPAN,
    using=None,
    workers: int = 1,
    batch_size: int | None = None,
):
    """Join the open run of this scope on ``database`` with the same targets, or plan a new one.

    An open run with other targets (the active key changed since) is superseded. The rows are
    counted on ``database``; the run and its chunks are stored on ``using`` (the engine's database).
    A model's pending rows are cut into pk ranges of at most ``chunk_span``, and, for
    ``workers`` > 1, into as many ranges as there are workers while each range still holds more
    than one batch (``batch_size``) of rows: ``--workers 2`` on a table of a few thousand rows gives
    each worker a chunk.

    Processes that call it at the same instant open one run between them: each looks under the
    lock of :mod:`keyrotation.engine.open_lock`, so the first creates the run and the others join it.

    Returns (run, joined); (None, False) when there is no run to join and no row is pending: a
    run with nothing to do is not recorded (no run row, no audit row), so that the latest run
    shown by ``rotation_status`` and the admin stays the one that did the work.
    """
    key, targets, using = scope_key(scope), targets_of(plans), _db(using)
    with open_lock.opening(using):
        open_runs = list(
            ReencryptionRun.objects.using(using)
            .select_for_update()
            .filter(scope=key, database=database, status__in=OPEN_STATUSES)
            .order_by("id")
        )
        for run in open_runs:
            if run.targets == targets:
                if run.status == RunStatus.INTERRUPTED:
                    run = set_status(run.pk, RunStatus.RUNNING, actor=actor, using=using)
                return run, True
            set_status(run.pk, RunStatus.SUPERSEDED, actor=actor, using=using)
        counted = [(plan, _pending_bounds(plan, database)) for plan in plans]
        total = sum(agg["n"] for _, agg in counted)
        if not total:
            return None, False
        run = ReencryptionRun.objects.using(using).create(
            scope=key,
            database=database,
            targets=targets,
            options=options or {},
            actor=actor or audit.default_actor(),
        )
        chunks = []
        for plan, agg in counted:
            if agg["n"] and "lo" in agg:
                span = chunk_width(agg["lo"], agg["hi"], agg["n"], chunk_span, workers, batch_size)
                lo = agg["lo"] - 1
                while lo < agg["hi"]:
                    hi = min(lo + span, agg["hi"])
                    chunks.append(ReencryptionChunk(run=run, model=plan.label, lo=lo, hi=hi))
                    lo = hi
            elif agg["n"]:
                chunks.append(ReencryptionChunk(run=run, model=plan.label, lo=None, hi=None))
        ReencryptionChunk.objects.using(using).bulk_create(chunks)
        run.rows_total = total
        run.save(update_fields=["rows_total"])
        audit.record(
            "run_started",
            actor=actor,
            rows_processed=0,
            details={
                "run": run.pk,
                "scope": key,
                "targets": targets,
                "rows_pending": total,
                **_where(database),
            },
            using=using,
        )
    return run, False


def chunk_width(lo: int, hi: int, rows: int, span: int, workers: int, batch_size: int | None) -> int:
    """The pk width of the chunks of pending pks ``lo``..``hi`` (``rows`` of them): ``span``, or
    narrower so that ``workers`` workers each get a chunk, as long as a chunk still holds more than
    one batch of rows (pks are assumed spread evenly over the range)."""
    if workers <= 1 or not batch_size:
        return span
    wanted = min(workers, math.ceil(rows / batch_size))
    if wanted <= 1:
        return span
    return max(1, min(span, math.ceil((hi - lo + 1) / wanted)))


def integer_pk(model) -> bool:
    """Whether ``model``'s primary key is an integer (its pending rows can be cut into ranges)."""
    return model._meta.pk.get_internal_type() in INTEGER_PK_TYPES


def _pending_bounds(plan: ModelPlan, database: str) -> dict:
    """``{"n": pending rows}``, with ``"lo"``/``"hi"`` (their smallest and largest pk) for an
    integer primary key: ranges only for those (PostgreSQL has no min(uuid)); others get one chunk."""
    integer = integer_pk(plan.model)
    pending = plan.model._base_manager.using(database).filter(plan.pending_q())
    bounds = {"lo": Min("pk"), "hi": Max("pk")} if integer else {}
    return pending.aggregate(n=Count("pk"), **bounds)


def _dead_local_worker(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """A killed worker whose parent died too is re-parented to PID 1, which in a container often
    never reaps it: it still answers ``kill(pid, 0)`` but will never work again (Linux only)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def claim_chunk(run_id: int, *, stale_after: float = 60.0, using=None) -> ReencryptionChunk | None:
    """Claim the next pending chunk (or one abandoned by a dead worker); None when none is left."""
    me, using = worker_id(), _db(using)
    stale = timezone.now() - timedelta(seconds=stale_after)
    with transaction.atomic(using=using):
        qs = ReencryptionChunk.objects.using(using).filter(run_id=run_id)
        candidates = qs.filter(
            Q(status=ChunkStatus.PENDING)
            | Q(status=ChunkStatus.RUNNING, heartbeat_at__lt=stale)
            # Our own chunk, after a lost connection made us drop it: ours to continue.
            | Q(status=ChunkStatus.RUNNING, worker=me)
        )
        chunk = candidates.select_for_update(skip_locked=True).order_by("id").first()
        if chunk is None:
            for running in qs.filter(status=ChunkStatus.RUNNING).select_for_update(skip_locked=True):
                if _dead_local_worker(running.worker):
                    chunk = running
                    break
        if chunk is None:
            return None
        chunk.status = ChunkStatus.RUNNING
        chunk.worker = me
        chunk.heartbeat_at = timezone.now()
        chunk.save(update_fields=["status", "worker", "heartbeat_at"])
    return chunk


def release_chunk(chunk: ReencryptionChunk, using=None) -> None:
    """Give a chunk back (graceful stop): another worker or a rerun continues at its cursor."""
    samples.note(chunk.run_id, 0, using=_db(using), force=True)
    ReencryptionChunk.objects.using(_db(using)).filter(pk=chunk.pk, worker=worker_id()).update(
        status=ChunkStatus.PENDING, worker=""
    )


@contextmanager
def batch_transaction(*, data: str, state: str) -> Iterator[None]:
    """One batch's transaction: the rows on ``data``, the chunk cursor on ``state``.

    On one database (the usual case), one transaction: rows and cursor commit together. On two,
    one transaction on each, the rows committing first. A crash between the two commits leaves
    the cursor one batch behind; the rerun finds those rows already on their target versions (the
    pending filter skips them, the write guards would refuse them), so nothing is lost or written
    twice, and only the chunk's ``rows_done`` misses that batch.
    """
    with ExitStack() as stack:
        stack.enter_context(transaction.atomic(using=state))
        if data != state:
            stack.enter_context(transaction.atomic(using=data))
        yield


def persist_batch(chunk: ReencryptionChunk, cursor, rows: int, using=None) -> None:
    """Record a batch's progress; call inside the batch's transaction."""
    if not isinstance(cursor, (int, str)):
        cursor = str(cursor)  # UUID and other keys: stored as text, cast back by the SQL
    ReencryptionChunk.objects.using(_db(using)).filter(pk=chunk.pk).update(
        cursor=cursor, rows_done=F("rows_done") + rows, heartbeat_at=timezone.now()
    )
    chunk.cursor = cursor
    chunk.rows_done += rows
    samples.note(chunk.run_id, rows, using=_db(using))


def finish_chunk(chunk: ReencryptionChunk, using=None) -> None:
    samples.note(chunk.run_id, 0, using=_db(using), force=True)
    ReencryptionChunk.objects.using(_db(using)).filter(pk=chunk.pk).update(
        status=ChunkStatus.DONE, heartbeat_at=timezone.now()
    )


@dataclass(frozen=True)
class RunProgress:
    """A run's totals, derived from its chunks (never stored twice, so never out of step)."""

    rows_done: int
    heartbeat: datetime | None  # the latest chunk heartbeat
    chunks: int
    chunks_done: int
    chunks_running: int

    @property
    def all_chunks_done(self) -> bool:
        return self.chunks_done >= self.chunks


def progress(run: ReencryptionRun, using=None) -> RunProgress:
    """The run's :class:`RunProgress`, from its chunks."""
    agg = (
        ReencryptionChunk.objects.using(_db(using))
        .filter(run=run)
        .aggregate(
            rows_done=Sum("rows_done"),
            heartbeat=Max("heartbeat_at"),
            chunks=Count("id"),
            done=Count("id", filter=Q(status=ChunkStatus.DONE)),
            running=Count("id", filter=Q(status=ChunkStatus.RUNNING)),
        )
    )
    return RunProgress(
        rows_done=agg["rows_done"] or 0,
        heartbeat=agg["heartbeat"],
        chunks=agg["chunks"],
        chunks_done=agg["done"],
        chunks_running=agg["running"],
    )


def current_status(run_id: int, using=None) -> str:
    return ReencryptionRun.objects.using(_db(using)).values_list("status", flat=True).get(pk=run_id)


def latest_run(scope: list[str] | None = None, using=None) -> ReencryptionRun | None:
    """The newest run that had work to do (earlier versions recorded finished runs of no row;
    they never hide the run that did the work)."""
    qs = ReencryptionRun.objects.using(_db(using)).exclude(status=RunStatus.FINISHED, rows_total=0)
    if scope is not None:
        qs = qs.filter(scope=scope_key(scope))
    return qs.order_by("-id").first()
