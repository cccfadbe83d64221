"""``manage.py audit_export``: the audit trail for auditors, hashes included (JSON lines or CSV)."""

from __future__ import annotations

import csv
import json
from datetime import datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from ... import audit_chain, databases
from ...exceptions import KeyRotationError

COLUMNS = ("id", *audit_chain.HASHED_FIELDS, "prev_hash", "row_hash")


def _since(text: str) -> datetime:
    wrong = CommandError(f"--since must be a date (2025-01-31) or an ISO datetime, got {text!r}")
    try:  # well-formed but impossible (2025-13-45) is a ValueError
        value = parse_datetime(text)
        day = parse_date(text) if value is None else None
    except ValueError:
        raise wrong from None
    if value is None:
        if day is None:
            raise wrong
        value = datetime.combine(day, time.min)
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_current_timezone())
    return value


def export_row(row: dict) -> dict:
    """One row as exported: datetimes in the canonical form the hash covers."""
    out = {}
    for name in COLUMNS:
        value = row[name]
        out[name] = audit_chain.utc_text(value) if isinstance(value, datetime) else value
    return out


class Command(BaseCommand):
    help = (
        "Export the key rotation audit trail with prev_hash/row_hash, so that the chain can be "
        "checked offline (with the chain key) and its head compared with `audit_verify --head`."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--format",
            choices=["jsonl", "csv"],
            default="jsonl",
            help="jsonl: one JSON object per line (default); csv: a header line, then one row per line.",
        )
        parser.add_argument(
            "--since",
            metavar="DATE",
            help="Only rows created at or after DATE (YYYY-MM-DD, or ISO datetime; local time zone).",
        )
        parser.add_argument("--database", default="default", help="Database alias (default: default).")

    def handle(self, *args, **opts):
        try:
            databases.check_alias(opts["database"])
        except KeyRotationError as exc:
            raise CommandError(str(exc)) from None
        since = _since(opts["since"]) if opts["since"] else None
        rows = audit_chain.iter_rows(using=opts["database"], since=since)
        if opts["format"] == "jsonl":
            for row in rows:
                self.stdout.write(json.dumps(export_row(row), sort_keys=True, ensure_ascii=False))
            return
        writer = csv.DictWriter(self.stdout, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            out = export_row(row)
            out["details"] = json.dumps(out["details"], sort_keys=True, separators=(",", ":"))
            writer.writerow(out)
