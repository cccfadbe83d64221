"""``manage.py audit_verify``: recompute the audit hash chain, compare its head with the anchor,
and check that every stored key state is authenticated; exit 1 on any failure."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from ... import audit_anchor, audit_chain, databases, key_state
from ...exceptions import KeyRotationError


class Command(BaseCommand):
    help = (
        "Verify the key rotation audit trail's hash chain, its head against the AUDIT_ANCHOR setting "
        "(if set), and the authentication of every key state. Prints 'OK' and the row count, or "
        "names the first row that does not verify (id, action, created_at), the anchor mismatch and "
        "each key whose state is not authenticated, and exits 1. Needs the KEK (the chain is keyed)."
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
        try:
            databases.check_alias(opts["database"])
            failures, lines = self._verify(opts["database"], opts["head"])
        except KeyRotationError as exc:
            raise CommandError(str(exc)) from None
        for line in lines:
            self.stdout.write(line)
        for line in failures:
            self.stderr.write(f"FAILED: {line}")
        if failures:
            sys.exit(1)

    def _verify(self, using: str, head: str | None) -> tuple[list[str], list[str]]:
        failures, lines = [], []
        report = audit_chain.verify(using=using)
        if not report.ok:
            failures.append(str(report))
        else:
            lines.append(f"OK: {report.rows} rows, head {report.head or '-'}")
            if head and not audit_chain.contains_head(head, using=using):
                failures.append(f"no row has row_hash {head} (newest rows deleted?)")
            anchored, reason = audit_anchor.check(report.head_id, using=using)
            if reason:
                failures.append(f"audit anchor: {reason}")
            elif anchored is not None:
                lines.append(f"anchor: row #{anchored.id} is in the chain")
        problems = key_state.problems(using=using)
        failures += [str(p) for p in problems]
        if not problems:
            lines.append("key states: every key's state is authenticated")
        return failures, lines
