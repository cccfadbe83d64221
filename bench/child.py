"""Subprocess entry points of ``bench/run.py`` (so that RSS and CPU are measured per process).

python -m bench.child reencrypt --model benchapp.Customer [--workers N]   -> JSON on stdout
python -m bench.child writer --rows N --stop FILE --out FILE [--pause-ms 5]
python -m bench.child noop                                                -> baseline RSS
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()


def peak_rss_kb() -> int:
    """Peak RSS of this process since its exec (``VmHWM``) or of any of its children (the
    ``--workers``), in KiB."""
    status = Path("/proc/self/status").read_text().splitlines()
    own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def reencrypt(args) -> None:
    _setup()
    from keyrotation import engine, keyring

    batches: list[float] = []
    report = engine.reencrypt(
        args.model, workers=args.workers, on_batch=lambda p: batches.append(p["seconds"])
    )
    out = report.as_dict()
    out["batches"] = len(batches)
    out["batch_seconds_max"] = max(batches) if batches else None
    out["batch_seconds_median"] = statistics.median(batches) if batches else None
    # With --workers > 1 the unwraps happen in the forked children (their own counters).
    out["kek_requests"] = getattr(keyring.kek_backend(), "requests", None) if args.workers == 1 else None
    out["kek_backend"] = keyring.kek_backend().describe()
    out["peak_rss_kb"] = peak_rss_kb()
    json.dump(out, sys.stdout)


class RunQueueClock:
    """Nanoseconds the given processes spent runnable but waiting for a CPU
    (``/proc/<pid>/schedstat``, second field); None where the kernel does not expose it."""

    def __init__(self, *pids: int):
        try:
            self._files = [open(f"/proc/{pid}/schedstat", "rb", buffering=0) for pid in pids]  # noqa: SIM115
            self.read()
        except (OSError, ValueError, IndexError):
            self._files = []

    def read(self) -> int | None:
        if not self._files:
            return None
        total = 0
        for fh in self._files:
            fh.seek(0)
            total += int(fh.read().split()[1])
        return total


def writer(args) -> None:
    """The application: single-row ORM updates of an encrypted field, in autocommit, until the
    stop file appears. Writes ``[[monotonic start, seconds, run-queue seconds or None], ...]`` to
    ``--out``: the run-queue seconds are the time this process and the server's process or thread
    that serves its connection spent waiting for a CPU during that update (how much of a slow
    update was CPU contention)."""
    _setup()
    from django.db import connection

    from bench.benchapp.models import Customer
    from bench.databases import BY_NAME

    with connection.cursor() as cur:
        backend = BY_NAME[connection.vendor].backend_task(cur)
    runq = RunQueueClock(os.getpid(), *([backend] if backend else []))
    rng = random.Random(os.getpid())
    pause = args.pause_ms / 1000.0
    samples: list[tuple[float, float, float | None]] = []
    n = 0
    while not os.path.exists(args.stop):
        pk = rng.randint(1, args.rows)
        waited = runq.read()
        start = time.monotonic()
        Customer.objects.filter(pk=pk).update(notes=f"note rewritten by the application ({n})")
        seconds = time.monotonic() - start
        if waited is not None:
            waited = (runq.read() - waited) / 1e9
        samples.append((start, seconds, waited))
        n += 1
        if pause:
            time.sleep(pause)
    with open(args.out, "w") as fh:
        json.dump(samples, fh)


def noop(args) -> None:
    _setup()
    from django.db import connection

    from keyrotation import engine  # noqa: F401 - import what a reencrypt process imports

    connection.ensure_connection()
    json.dump({"peak_rss_kb": peak_rss_kb()}, sys.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("reencrypt")
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--workers", type=int, default=1)
    p = sub.add_parser("writer")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--stop", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pause-ms", type=float, default=5.0)
    sub.add_parser("noop")
    args = parser.parse_args()
    {"reencrypt": reencrypt, "writer": writer, "noop": noop}[args.cmd](args)


if __name__ == "__main__":
    main()
