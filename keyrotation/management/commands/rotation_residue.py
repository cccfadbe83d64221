"""``manage.py rotation_residue``: what a table may still hold on disk; a thin shell over ``residue``."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from ... import reporting, residue
from ...exceptions import KeyRotationError


class Command(BaseCommand):
    help = (
        "Report, per model with encrypted fields and per database that holds it, what its table may "
        "still hold after adoption or a rotation, as far as the database reports it: legacy values "
        "not adopted yet, indexes and unique constraints still covering a legacy column, dead row "
        "versions and vacuum times (PostgreSQL statistics: approximate, they may lag), free pages "
        "and secure_delete (SQLite); and the next clean-up step. Prints counts and names, never a "
        "value. Exit 0, or with --check 1 while any table has a next step."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--model",
            action="append",
            dest="models",
            metavar="APP.MODEL",
            help="Report this model only (repeatable). Default: every model with encrypted fields.",
        )
        parser.add_argument(
            "--database",
            metavar="ALIAS",
            default=None,
            help="Only this DATABASES alias. Default: every database that holds the model.",
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON document.")
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit 1 if any table still has a clean-up step to take (for scripts and CI).",
        )

    def handle(self, *args, **o):
        try:
            tables = residue.report(o["models"], database=o["database"])
        except KeyRotationError as exc:
            raise CommandError(str(exc)) from None
        clean = all(t.clean for t in tables)
        if o["json"]:
            self.stdout.write(reporting.dumps({"clean": clean, "tables": [t.as_dict() for t in tables]}))
        else:
            for line in reporting.residue_lines(tables):
                self.stdout.write(line)
        if o["check"] and not clean:
            sys.exit(1)
