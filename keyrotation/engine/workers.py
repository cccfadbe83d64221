"""``--workers N``: N processes on this host, each running the worker loop on the same run.

Processes are forked after every database connection is closed (each child opens its own).
They coordinate only through the database (chunk claims), exactly like processes on other hosts.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable

from django.db import connections

from ..exceptions import KeyRotationError, RunFailed
from .db_errors import safely
from .runner import Options, WorkResult, work


def _child(run_id: int, plans, opts: Options, queue) -> None:
    """One worker. What it reports to the parent is safe to print: a keyrotation error's message
    (it names where, never a value), else only the exception's class: the report is printed,
    in ``--json`` too. A database error met reading the run row is reported like the run's own
    (:mod:`keyrotation.engine.db_errors`). Any other exception (a bug) is raised again once its
    class is reported, and its traceback goes to this process's stderr."""
    from ..models import ReencryptionRun

    connections.close_all()
    opts.on_batch = None
    try:
        run = safely(
            opts.step("worker start", run=run_id),
            lambda: ReencryptionRun.objects.using(opts.state).get(pk=run_id),
        )
        result = work(run, plans, opts)
        queue.put(("ok", result.rows_done, result.rows_failed, result.stopped))
    except RunFailed as exc:
        queue.put(("failed", 0, 0, str(exc)))
    except KeyRotationError as exc:
        queue.put(("error", 0, 0, f"{type(exc).__name__}: {exc}"))
        sys.exit(1)  # no traceback: the message says it all
    except BaseException as exc:  # report and exit non-zero; the parent decides
        queue.put(("error", 0, 0, f"{type(exc).__name__} in a worker (its traceback is on stderr)"))
        raise
    finally:
        connections.close_all()


def run_workers(
    run, plans, opts: Options, count: int, monitor: Callable[[], None] | None = None
) -> tuple[WorkResult, list[str]]:
    """Fork ``count`` workers, call ``monitor`` about twice a second until they end.

    Returns the summed result and the error messages of workers that failed.
    """
    connections.close_all()
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(run.pk, plans, opts, queue), daemon=False) for _ in range(count)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            if monitor:
                monitor()
            time.sleep(0.5)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    total, errors = WorkResult(), []
    while not queue.empty():
        status, done, failed, info = queue.get()
        total.rows_done += done
        total.rows_failed += failed
        if status != "ok":
            errors.append(info)
        elif info:
            total.stopped = info
    errors += [f"worker exited with code {p.exitcode}" for p in procs if p.exitcode and not errors]
    return total, errors
