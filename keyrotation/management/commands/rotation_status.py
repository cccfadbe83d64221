"""``manage.py rotation_status``: the key census and the state of the latest run."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from ... import databases, engine, policy, reporting, schema_state, wrapping
from ...engine.db_errors import Step, safely
from ...exceptions import KeyRotationError
from ..options import positive_int


class Command(BaseCommand):
    help = (
        "Show, for every encrypted field and blind index, how many rows each key version holds and "
        "the percent on the active version, plus the latest re-encryption run (state, heartbeat, "
        "rate, ETA), which KEK wraps each data key (current, previous, unknown), and each active key's "
        'age against its KEYROTATION["ROTATION_PERIOD"]. Exit codes for cron and alerting: see '
        "--fail-if-incomplete / --fail-if-version / --fail-if-due."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print a JSON document.")
        parser.add_argument(
            "--fail-if-incomplete",
            action="store_true",
            help="Exit 2 if any column has rows not on its active key version.",
        )
        parser.add_argument(
            "--fail-if-version",
            type=positive_int,
            metavar="N",
            help="Exit 2 if any row of any column (or of --purpose) still uses key version N.",
        )
        parser.add_argument(
            "--fail-if-due",
            action="store_true",
            help='Exit 2 if any active key (of --purpose) is past its KEYROTATION["ROTATION_PERIOD"] '
            "(rotate it with `rotatekeys --if-due`).",
        )
        parser.add_argument(
            "--purpose",
            choices=["encrypt", "index"],
            help="Limit --fail-if-version and --fail-if-due to this purpose.",
        )
        parser.add_argument(
            "--database",
            metavar="ALIAS",
            default=None,
            help="Count only the rows on this DATABASES alias (default: every database that holds "
            "an encrypted model, added up).",
        )

    def handle(self, *args, **o):
        try:
            schema_state.require_migrated()
            data = engine.status(database=o["database"])
            keys = safely(Step("listing the data keys", (databases.keys_database(),)), wrapping.stored_keys)
            data["keys"] = [k.as_dict() for k in keys]
            ages = safely(Step("reading the key ages", (databases.keys_database(),)), policy.status)
        except KeyRotationError as exc:
            raise CommandError(str(exc)) from None
        cols = data["columns"]
        incomplete = [c["label"] for c in cols if c["on_active"] != c["rows"]]
        stale = [
            c["label"]
            for c in cols
            if o["fail_if_version"] is not None
            and c["versions"].get(str(o["fail_if_version"]))
            and (o["purpose"] is None or c["purpose"] == o["purpose"])
        ]
        data["incomplete"] = incomplete
        data["key_ages"] = [a.as_dict() for a in ages]
        due = [a.name for a in ages if a.is_due and o["purpose"] in (None, a.purpose)]
        data["due"] = due
        if o["json"]:
            self.stdout.write(reporting.dumps(data))
        else:
            for line in reporting.census_table(cols):
                self.stdout.write(line)
            run = data["run"]
            if run:
                rate = f"{run['rows_per_second']:,.0f} rows/s" if run["rows_per_second"] else "-"
                eta = f"{run['eta_seconds']}s" if run["eta_seconds"] is not None else "-"
                self.stdout.write(
                    f"\nrun #{run['id']} {run['status']}: "
                    f"{reporting.Tally(run['rows_planned'], run['rows_done']).text()}, "
                    f"{run['chunks_done']}/{run['chunks']} chunks, {rate}, ETA {eta}, "
                    f"last heartbeat {run['heartbeat_at'] or '-'}"
                )
                if run["error"]:
                    self.stdout.write(f"error: {run['error']}")
            else:
                self.stdout.write("\nno re-encryption run yet")
            self.stdout.write("\ndata keys (wrapped by):")
            for key in data["keys"]:
                name = f"{key['keyring']}/{key['purpose']} v{key['version']}"
                self.stdout.write(
                    f"  {name:<28} {key['state']:<13} {key['wrapped_by'] or '-':<19} {key['kek_id']}"
                )
            self.stdout.write("\nactive keys (age, rotation period):")
            for line in reporting.age_table(ages):
                self.stdout.write(f"  {line}")
        if (o["fail_if_incomplete"] and incomplete) or stale or (o["fail_if_due"] and due):
            sys.exit(2)
