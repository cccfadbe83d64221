"""``manage.py reencrypt``: move rows to the active key versions; a thin shell over ``engine``."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from ... import engine, reporting, schema_state
from ...exceptions import KeyRotationError
from ..options import positive_float, positive_int


class Command(BaseCommand):
    help = (
        "Re-encrypt rows of encrypted fields (and recompute blind indexes) under the active key "
        "versions, in set-based batches, while the application keeps running. Resumable: run it "
        "again after any stop and it continues; any number of processes and hosts may run it at "
        "once against the same database. Exit 0 when every row is on the active versions."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--model",
            action="append",
            dest="models",
            metavar="APP.MODEL[.FIELD]",
            help="Limit to a model or one of its fields (repeatable). Default: every registered column.",
        )
        parser.add_argument(
            "--database",
            metavar="ALIAS",
            default=None,
            help="Only the rows on this DATABASES alias (also for --dry-run and --verify). Default: "
            "every database that holds an encrypted model and takes writes, one after the other.",
        )
        parser.add_argument(
            "--workers", type=positive_int, default=1, help="Worker processes on this host (default 1)."
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=None,
            help="Rows per batch (default: KEYROTATION['BATCH_SIZE']).",
        )
        parser.add_argument(
            "--rate", type=positive_float, default=None, help="Cap each worker at this many rows/second."
        )
        parser.add_argument(
            "--target-batch-ms",
            type=positive_float,
            default=None,
            help="Adapt the batch size so each batch takes about this many milliseconds.",
        )
        parser.add_argument(
            "--one-batch-at-a-time",
            action="store_true",
            help="On PostgreSQL, keep one batch in flight per worker instead of two: one connection "
            "per worker instead of two, 20-30%% slower in our measurements, and it leaves CPU to an "
            "application that shares the host's cores. --rate implies it.",
        )
        parser.add_argument(
            "--max-duration",
            type=positive_float,
            default=None,
            metavar="SECONDS",
            help="Stop cleanly after this long (maintenance window); run again to continue.",
        )
        parser.add_argument(
            "--on-error",
            choices=["stop", "quarantine"],
            default="stop",
            help="A value that cannot be decrypted: stop the run (default), or record it and go on.",
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--dry-run", action="store_true", help="Report what would change; change nothing.")
        mode.add_argument(
            "--verify",
            action="store_true",
            help="Open every value and recompute every blind index; exit 1 on any mismatch. Changes nothing.",
        )
        mode.add_argument("--pause", action="store_true", help="Pause the open run (workers wait).")
        mode.add_argument("--resume", action="store_true", help="Resume the paused run.")
        mode.add_argument("--abort", action="store_true", help="Abort the open run (rows done stay done).")
        parser.add_argument(
            "--run",
            type=positive_int,
            default=None,
            help="Run id for --pause/--resume/--abort (default: the latest open run).",
        )
        parser.add_argument(
            "--actor", default=None, help="Who runs this, for the audit trail (default: OS user)."
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON report (no progress bar).")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar or progress lines.")

    def handle(self, *args, **o):
        try:
            code = self._handle(o)
        except KeyRotationError as exc:
            raise CommandError(str(exc)) from None
        if code:
            sys.exit(code)

    def _out(self, o, data, lines):
        if o["json"]:
            self.stdout.write(reporting.dumps(data))
        else:
            for line in lines:
                self.stdout.write(line)

    def _handle(self, o) -> int:
        if o["run"] is not None and not (o["pause"] or o["resume"] or o["abort"]):
            raise CommandError("--run names the run for --pause, --resume or --abort; give one of them")
        schema_state.require_migrated()
        for flag, fn in (("pause", engine.pause), ("resume", engine.resume), ("abort", engine.abort)):
            if o[flag]:
                run = fn(o["run"], actor=o["actor"])
                self._out(o, {"run_id": run.pk, "status": run.status}, [f"run #{run.pk} is now {run.status}"])
                return 0
        if o["dry_run"]:
            plan = engine.dry_run(o["models"], database=o["database"])
            lines = [f"dry run: nothing was changed; {plan['rows_pending']:,} row(s) pending"]
            several = len({m["database"] for m in plan["models"]}) > 1
            for m in plan["models"]:
                where = f" on {m['database']}" if several else ""
                lines.append(f"  {m['model']}{where}: {m['rows_pending']:,} pending -> {m['targets']}")
            lines += ["census:"] + ["  " + line for line in reporting.census_table(plan["census"])]
            lines.append(
                f"estimated crypto time: {plan['estimated_crypto_seconds']}s (from a measured sample)"
            )
            lines.append(f"data keys to unwrap (KEK calls): {len(plan['kek_unwraps'])}")
            self._out(o, plan, lines)
            return 0
        if o["verify"]:
            result = engine.verify(o["models"], database=o["database"])
            lines = [f"verified {result['rows_checked']:,} row(s): {result['failure_count']} failure(s)"]
            lines += [f"  {f}" for f in result["failures"]]
            self._out(o, result, lines)
            return 1 if result["failure_count"] else 0
        progress = None
        if not o["json"] and not o["no_progress"]:
            pending = engine.pending(o["models"], database=o["database"])
            if pending:  # no bar of 0/0 rows when there is nothing to do
                progress = reporting.Progress(pending, stream=self.stderr._out)
        report = engine.reencrypt(
            o["models"],
            database=o["database"],
            workers=o["workers"],
            batch_size=o["batch_size"],
            rate=o["rate"],
            target_batch_ms=o["target_batch_ms"],
            pipeline=not o["one_batch_at_a_time"],
            max_duration=o["max_duration"],
            on_error=o["on_error"],
            actor=o["actor"],
            on_batch=(lambda b: progress.add(b["rows"])) if progress else None,
            monitor=progress.set if progress else None,
        )
        if progress:
            progress.set(report.rows_done)  # with workers, the final sweep is in no chunk
            progress.close()
        d = report.as_dict()
        if report.nothing_to_do:
            self._out(o, d, [_nothing_to_do(report)])
            return 0
        if len(report.runs) > 1 or report.idle:
            which = ("runs " if len(report.runs) > 1 else "run ") + ", ".join(
                f"#{run_id} on {alias}" for alias, run_id in report.runs.items()
            )
        else:
            which = f"run #{report.run_id}"
        lines = [
            f"{which} {report.status}: {report.rows_done:,} row(s) re-encrypted in "
            f"{report.seconds:.1f}s"
            + (f" ({d['rows_per_second']:,.0f} rows/s)" if d["rows_per_second"] else ""),
        ]
        if report.idle:
            lines.append(f"nothing to re-encrypt on {', '.join(report.idle)}")
        lines += report.notes
        lines += [f"error: {e}" for e in report.errors]
        if report.rows_failed:
            lines.append(f"{report.rows_failed} value(s) quarantined (not decryptable):")
            lines += [f"  {q}" for q in report.quarantined]
        if report.status == "interrupted":
            lines.append("stopped before the end; run `manage.py reencrypt` again to continue")
        self._out(o, d, lines)
        if report.errors or report.rows_failed or report.status in ("failed", "aborted"):
            return 1
        return 0 if report.status == "finished" else 3


def _nothing_to_do(report: engine.Report) -> str:
    """``nothing to re-encrypt: every row of app.Model is on default/encrypt v2, default/index v2``."""
    models = report.models
    which = ", ".join(models) if len(models) <= 3 else f"the {len(models)} encrypted models"
    versions = ", ".join(f"{ring} v{version}" for ring, version in report.active_versions.items())
    if not models:
        return "nothing to re-encrypt: no encrypted or indexed column is registered"
    return f"nothing to re-encrypt: every row of {which} is on {versions}"
