"""The engine's writes never reach Django's SQL log: not with ``DEBUG = True``, not under
:func:`~keyrotation.testing.assert_no_leak` (which forces the debug cursor).

A batch that adopts a legacy column binds the legacy plaintexts as its write's guard. Every
statement that binds stored values runs on the driver's own cursor, so neither
``connection.queries`` nor the ``django.db.backends`` logger sees its parameters, on every
dialect (the generic one included), while the engine's other statements still show there.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from django.db import connection, reset_queries

from keyrotation import engine
from keyrotation.engine import dialects
from keyrotation.models import RunStatus
from keyrotation.testing import assert_no_leak
from tests.legacyapp.models import PlainContact

pytestmark = pytest.mark.django_db(transaction=True)

CONTACTS = "legacyapp.PlainContact"


def plain_contacts(n: int = 7) -> list[str]:
    """``n`` contacts whose email is still plaintext in the legacy column; their emails."""
    emails = [f"sqllog-{uuid.uuid4().hex[:16]}@example.org" for _ in range(n)]
    PlainContact.objects.bulk_create(PlainContact(email_legacy=e) for e in emails)
    return emails


def sql_log_text(caplog) -> str:
    """Everything Django's SQL log holds: ``connection.queries`` and the logger's records with
    their ``sql`` and ``params``."""
    parts = [f"{q['sql']} {q.get('params', '')}" for q in connection.queries]
    for record in caplog.records:
        if record.name == "django.db.backends":
            parts.append(record.getMessage())
            parts += [repr(getattr(record, "params", "")), str(getattr(record, "sql", ""))]
    return "\n".join(parts)


@pytest.fixture
def sql_log(settings, caplog):
    """``DEBUG = True`` and the SQL logger captured at DEBUG; call :func:`from_now` once the rows
    are seeded (their INSERT binds the plaintexts, as the application's own writes do)."""
    settings.DEBUG = True
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    return caplog


def from_now(caplog) -> None:
    """Empty ``connection.queries`` and the captured records."""
    reset_queries()
    caplog.clear()


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipeline", "one-batch-at-a-time"])
def test_an_adoption_run_shows_no_plaintext_in_the_sql_log(keys, sql_log, pipeline):
    emails = plain_contacts()
    from_now(sql_log)
    with assert_no_leak(emails) as leak:
        report = engine.reencrypt([CONTACTS], batch_size=3, pipeline=pipeline)
        leak.check_text(sql_log_text(sql_log), "Django's SQL log")
    assert report.status == RunStatus.FINISHED and report.ok, report.as_dict()
    assert report.rows_done == len(emails)
    assert not PlainContact.objects.filter(email_legacy__isnull=False).exists()
    assert sorted(c.email for c in PlainContact.objects.all()) == sorted(emails)
    log = sql_log_text(sql_log)
    # The log was on: the run's own statements are in it, the rows' writes are not.
    assert "keyrotation_reencryptionchunk" in log
    assert f"UPDATE {connection.ops.quote_name(PlainContact._meta.db_table)}" not in log
    for email in emails:
        assert email not in log


def test_the_generic_dialect_writes_off_the_log_too(keys, sql_log, monkeypatch):
    monkeypatch.setitem(dialects.BY_VENDOR, connection.vendor, dialects.Generic)
    emails = plain_contacts(4)
    from_now(sql_log)
    with assert_no_leak(emails) as leak:
        report = engine.reencrypt([CONTACTS], batch_size=3)
        leak.check_text(sql_log_text(sql_log), "Django's SQL log")
    assert report.status == RunStatus.FINISHED and report.rows_done == len(emails)
    assert sorted(c.email for c in PlainContact.objects.all()) == sorted(emails)
    assert "keyrotation_reencryptionchunk" in sql_log_text(sql_log)


def test_the_command_with_debug_shows_no_plaintext(keys, sql_log):
    emails = plain_contacts(5)
    from_now(sql_log)
    with assert_no_leak(emails) as leak:
        out, err, code = leak.call_command("reencrypt", "--model", CONTACTS, "--no-progress")
        leak.check_text(sql_log_text(sql_log), "Django's SQL log")
    assert code == 0, out + err
    assert "finished: 5 row(s) re-encrypted" in out
