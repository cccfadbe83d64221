"""``manage.py audit_verify``: recompute the audit hash chain; exit 1 at the first broken row."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand

from ... import audit_chain


class Command(BaseCommand):
    help = (
        "Verify the key rotation audit trail's hash chain. Prints 'OK' and the row count, or names "
        "the first row that does not verify (id, action, created_at) and exits 1. Needs the KEK "
        "(the chain is keyed)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--database", default="default", help="Database alias (default: default).")
        parser.add_argument(
            "--head",
            metavar="HASH",
            help="A row_hash recorded earlier (e.g. the last line of an export): also fail if no row "
            "carries it, which detects deletion of the newest rows.",
        )

    def handle(self, *args, **opts):
        using = opts["database"]
        report = audit_chain.verify(using=using)
        if not report.ok:
            self.stderr.write(f"FAILED: {report}")
            sys.exit(1)
        if opts["head"] and not audit_chain.contains_head(opts["head"], using=using):
            self.stderr.write(f"FAILED: no row has row_hash {opts['head']} (newest rows deleted?)")
            sys.exit(1)
        self.stdout.write(f"OK: {report.rows} rows, head {report.head or '-'}")
