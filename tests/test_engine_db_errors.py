"""A database error in the engine's work shows no value: where it failed and the driver's code, never
the database's message.

The errors are real: a trigger that refuses the update and quotes a column of the row in its
message (PostgreSQL ``RAISE EXCEPTION``, MySQL/MariaDB ``SIGNAL``; SQLite's ``RAISE`` cannot quote
a value, so there its fixed text is the canary), a CHECK constraint whose violation quotes the
whole row (PostgreSQL's ``Failing row contains (…)``), MariaDB's error 1366 quoting the bytes it
refused. The quoted values are the plaintexts of a legacy column being adopted. Each test looks
for them in the report, the command's output, the exception that left the engine (message, repr,
chain, the frames of its traceback and what error reports render of them), the run row, the
audit rows and every log record.
"""

from __future__ import annotations

import json
import sys
import uuid
from contextlib import contextmanager

import pytest
from django.db import connection
from django.urls import reverse

from keyrotation import engine, lifecycle
from keyrotation.engine.retry import RetryPolicy
from keyrotation.engine.runner import Options
from keyrotation.exceptions import EngineDatabaseError, RunFailed
from keyrotation.models import DataKey, ReencryptionRun, RunStatus
from keyrotation.testing import assert_no_leak
from tests.legacyapp.models import PlainContact
from tests.testapp.models import Person

pytestmark = pytest.mark.django_db(transaction=True)

CONTACTS = "legacyapp.PlainContact"
TABLE = PlainContact._meta.db_table


def canary(prefix: str = "canary") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}@example.org"


def plain_contacts(n: int = 6) -> list[str]:
    """``n`` contacts whose email is still plaintext in the legacy column; their emails."""
    emails = [canary() for _ in range(n)]
    PlainContact.objects.bulk_create(PlainContact(email_legacy=e) for e in emails)
    return emails


def max_pk(model) -> int:
    return model.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def expected_code() -> str | None:
    """The code the refusing trigger's error carries on this database (sqlite3 names result codes
    from Python 3.11 on)."""
    return {
        "postgresql": "SQLSTATE P0001",  # raise_exception
        "mysql": "errno 1644",  # ER_SIGNAL_EXCEPTION
        "sqlite": "SQLITE_CONSTRAINT_TRIGGER" if sys.version_info >= (3, 11) else None,
    }[connection.vendor]


def error_and_code(exc: EngineDatabaseError) -> str:
    """How the message names the error's class and code."""
    code = expected_code()
    return f": {exc.error_class}" + (f" ({code})" if code else "") + "; the database's message is withheld"


@contextmanager
def refusing_updates(table: str, column: str, *, after_pk: int = 0):
    """A trigger that refuses every update of a row of ``table`` with a pk above ``after_pk``,
    quoting the row's old ``column`` in its message. Yields the texts that must not leak: the
    message's fixed part (SQLite cannot quote a value; the message itself stands in for it)."""
    fixed = f"refused-{uuid.uuid4().hex[:12]}"
    q = connection.ops.quote_name
    create = {
        "postgresql": [
            f"""CREATE FUNCTION kr_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF OLD.id > {after_pk} THEN RAISE EXCEPTION '{fixed} %', OLD.{q(column)}; END IF;
                RETURN NEW;
            END $$""",
            f"CREATE TRIGGER kr_refuse BEFORE UPDATE ON {q(table)} FOR EACH ROW EXECUTE FUNCTION kr_refuse()",
        ],
        "mysql": [
            f"""CREATE TRIGGER kr_refuse BEFORE UPDATE ON {q(table)} FOR EACH ROW
            BEGIN
                DECLARE msg VARCHAR(255);
                IF OLD.id > {after_pk} THEN
                    SET msg = CONCAT('{fixed} ', OLD.{q(column)});
                    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg;
                END IF;
            END"""
        ],
        "sqlite": [
            f"""CREATE TRIGGER kr_refuse BEFORE UPDATE ON {q(table)} WHEN OLD.id > {after_pk}
            BEGIN SELECT RAISE(ABORT, '{fixed}'); END"""
        ],
    }[connection.vendor]
    drop = {
        "postgresql": [
            f"DROP TRIGGER IF EXISTS kr_refuse ON {q(table)}",
            "DROP FUNCTION IF EXISTS kr_refuse()",
        ],
        "mysql": ["DROP TRIGGER IF EXISTS kr_refuse"],
        "sqlite": ["DROP TRIGGER IF EXISTS kr_refuse"],
    }[connection.vendor]
    with connection.cursor() as cur:
        for sql in create:
            cur.execute(sql)
    try:
        yield [fixed]
    finally:
        with connection.cursor() as cur:
            for sql in drop:
                cur.execute(sql)


def assert_safe(exc: BaseException, leak) -> None:
    """``exc`` left the engine alone: no cause, no context, and nothing in its reports."""
    assert isinstance(exc, EngineDatabaseError), repr(exc)
    assert exc.__cause__ is None and exc.__context__ is None
    leak.check_error_reports(exc)


def run_row() -> ReencryptionRun:
    return ReencryptionRun.objects.order_by("-id").first()


# -- a batch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipeline", "one-batch-at-a-time"])
def test_a_trigger_quoting_a_legacy_plaintext_shows_it_nowhere(keys, caught, pipeline):
    emails = plain_contacts()
    with refusing_updates(TABLE, "email_legacy") as texts:
        with assert_no_leak(emails + texts) as leak:
            report = engine.reencrypt([CONTACTS], batch_size=4, pipeline=pipeline)
            leak.check_text(repr(report.as_dict()), "report")
            leak.check_text(json.dumps(report.as_dict()), "report as JSON")
            (exc,) = caught
            assert_safe(exc, leak)
    assert report.status == RunStatus.FAILED and not report.ok
    (error,) = report.errors
    assert error == str(exc)
    run = run_row()
    assert run.status == RunStatus.FAILED and run.error == error
    assert error.startswith(f"run #{run.pk}: database error in batch of {CONTACTS} ")
    assert "(fields email, email_bidx; pk > " in error
    assert "to default/encrypt v1, default/index v1) on database 'default'" in error
    assert error_and_code(exc) in error and exc.code == expected_code()
    assert (exc.model, exc.fields, exc.databases) == (CONTACTS, ("email", "email_bidx"), ("default",))
    assert PlainContact.objects.filter(email_legacy__isnull=True).count() == 0  # nothing committed


def test_the_command_prints_one_line_and_exits_1(keys):
    emails = plain_contacts()
    with refusing_updates(TABLE, "email_legacy") as texts:
        with assert_no_leak(emails + texts) as leak:
            out, err, code = leak.call_command("reencrypt", "--model", CONTACTS, "--no-progress")
            out_json, _, code_json = leak.call_command("reencrypt", "--model", CONTACTS, "--json")
    assert code == code_json == 1
    assert "Traceback" not in out + err
    (line,) = [line for line in out.splitlines() if line.startswith("error: ")]
    assert f"database error in batch of {CONTACTS}" in line and (expected_code() or "") in line
    (error,) = json.loads(out_json)["errors"]  # the second run: the first one failed
    assert "database error in batch of" in error


def test_an_error_that_outlasts_the_retries_is_reported_the_same_way(db):
    """Whatever leaves the retry loop, retried or not, is the safe error (an unknown table: an
    ``OperationalError`` on SQLite, which is retried; a ``ProgrammingError`` elsewhere, which
    is not)."""
    opts = Options(retry=RetryPolicy(retries=2, first_delay=0.001))
    calls = []

    def query() -> None:
        calls.append(1)
        with connection.cursor() as cur:
            cur.execute("SELECT secret FROM kr_no_such_table")

    with pytest.raises(EngineDatabaseError) as info:
        opts.retrying(opts.step("progress", run=3), query)
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert str(info.value).startswith("run #3: database error in progress on database 'default': ")
    assert "kr_no_such_table" not in str(info.value)
    assert len(calls) == (3 if connection.vendor == "sqlite" else 1)


@pytest.mark.urls("tests.admin_urls")
def test_the_admin_shows_the_safe_text_only(keys, admin_client):
    emails = plain_contacts()
    with refusing_updates(TABLE, "email_legacy") as texts:
        with assert_no_leak(emails + texts) as leak:
            engine.reencrypt([CONTACTS])
            run = run_row()
            for url in (
                reverse("admin:keyrotation_status"),
                reverse("admin:keyrotation_status_json"),
                reverse("admin:keyrotation_reencryptionrun_changelist"),
                reverse("admin:keyrotation_reencryptionrun_change", args=[run.pk]),
                reverse("admin:keyrotation_keyrotationaudit_changelist"),
            ):
                response = admin_client.get(url)
                assert response.status_code == 200, url
                leak.check_text(response.content.decode(), f"admin page {url}")
    status_page = admin_client.get(reverse("admin:keyrotation_status")).content.decode()
    assert f"database error in batch of {CONTACTS}" in status_page


# -- the final sweep ----------------------------------------------------------------------------


def test_an_error_in_the_final_sweep_names_the_sweep(keys, caught):
    """Rows added after the run planned its chunks are only found by the final sweep."""
    plain_contacts(3)
    stopped = engine.reencrypt([CONTACTS], max_duration=0.0001)
    assert stopped.status == RunStatus.INTERRUPTED
    planned = max_pk(PlainContact)
    emails = plain_contacts(3)
    with refusing_updates(TABLE, "email_legacy", after_pk=planned) as texts:
        with assert_no_leak(emails + texts) as leak:
            report = engine.reencrypt([CONTACTS], batch_size=2)
            (exc,) = caught
            assert_safe(exc, leak)
    assert report.joined and report.status == RunStatus.FAILED
    (error,) = report.errors
    assert f"database error in sweep of {CONTACTS} (fields email, email_bidx; every pk; " in error
    assert PlainContact.objects.filter(email_legacy__isnull=True).count() == 3  # the chunk's rows


# -- other databases only -----------------------------------------------------------------------


@pytest.mark.server
def test_a_check_constraint_whose_detail_quotes_the_row_shows_it_nowhere(keys, caught):
    """PostgreSQL's DETAIL of a CHECK violation is the whole new row (MariaDB names the
    constraint only): the name, a plain column, is the canary here."""
    names = [canary("name") for _ in range(5)]
    Person.objects.bulk_create(
        Person(name=n, email=f"{i}.{n}", ssn="123-45-6789") for i, n in enumerate(names)
    )
    lifecycle.rotate("default", "encrypt", actor="test")
    table = connection.ops.quote_name(Person._meta.db_table)
    not_valid = " NOT VALID" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cur:
        cur.execute(f"ALTER TABLE {table} ADD CONSTRAINT kr_refuse CHECK (email_key_version < 2){not_valid}")
    try:
        with assert_no_leak(names) as leak:
            out, err, code = leak.call_command("reencrypt", "--model", "testapp.Person", "--no-progress")
            (exc,) = caught
            assert_safe(exc, leak)
    finally:
        with connection.cursor() as cur:
            cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT kr_refuse")
    assert code == 1 and "Traceback" not in out + err
    assert exc.error_class == "IntegrityError"
    assert exc.code in ("SQLSTATE 23514", "errno 4025", "errno 3819")  # PostgreSQL, MariaDB, MySQL
    assert "Failing row" not in out + err


@pytest.mark.server
def test_a_census_that_fails_opens_no_run(keys):
    """The pending rows are counted before a run is recorded: a column the table lacks (a
    migration not applied) is one error, and no run."""
    plain_contacts(2)
    q = connection.ops.quote_name
    rename = f"ALTER TABLE {q(TABLE)} RENAME COLUMN {q('email_legacy')} TO {q('email_legacy_gone')}"
    back = f"ALTER TABLE {q(TABLE)} RENAME COLUMN {q('email_legacy_gone')} TO {q('email_legacy')}"
    with connection.cursor() as cur:
        cur.execute(rename)
    try:
        with pytest.raises(EngineDatabaseError) as info:
            engine.reencrypt([CONTACTS])
    finally:
        with connection.cursor() as cur:
            cur.execute(back)
    assert str(info.value).startswith("database error in opening the run on database")
    assert info.value.code in ("SQLSTATE 42703", "errno 1054")
    assert not ReencryptionRun.objects.exists()


@pytest.mark.server
def test_workers_report_the_safe_text_only(keys, capfd):
    emails = plain_contacts(40)
    with refusing_updates(TABLE, "email_legacy") as texts:
        with assert_no_leak(emails + texts) as leak:
            report = engine.reencrypt([CONTACTS], workers=2, batch_size=10)
            leak.check_text(repr(report.as_dict()), "report")
            out, err = capfd.readouterr()  # the workers' own output, tracebacks included
            leak.check_text(out + err, "output of the workers")
    assert report.status == RunStatus.FAILED and report.errors
    assert "Traceback" not in err
    for error in report.errors:
        assert f"database error in batch of {CONTACTS}" in error, report.errors
    assert run_row().error in report.errors


@pytest.mark.mysql
def test_mariadb_incorrect_string_value_shows_no_plaintext(keys, caught):
    """Error 1366 quotes the start of the value the column refused, escaped
    (``Incorrect string value: '\\xF0\\x9F\\x98\\x80ca...'``): here a history trigger copies
    each adopted plaintext into a latin1 column, which cannot hold the emoji they start with."""
    emails = [f"\N{GRINNING FACE}{canary()}" for _ in range(4)]
    PlainContact.objects.bulk_create(PlainContact(email_legacy=e) for e in emails)
    quoted = r"\xF0\x9F\x98\x80ca"  # what the server's message shows of each of them
    q = connection.ops.quote_name
    with connection.cursor() as cur:
        cur.execute("CREATE TABLE kr_history (email VARCHAR(254) CHARACTER SET latin1)")
        cur.execute(
            f"CREATE TRIGGER kr_history BEFORE UPDATE ON {q(TABLE)} FOR EACH ROW "
            "INSERT INTO kr_history (email) VALUES (OLD.email_legacy)"
        )
    try:
        with assert_no_leak([*emails, quoted, "Incorrect string value"]) as leak:
            out, err, code = leak.call_command("reencrypt", "--model", CONTACTS, "--no-progress")
            (exc,) = caught
            assert_safe(exc, leak)
    finally:
        with connection.cursor() as cur:
            cur.execute("DROP TRIGGER IF EXISTS kr_history")
            cur.execute("DROP TABLE IF EXISTS kr_history")
    assert code == 1 and exc.code == "errno 1366" and "Traceback" not in out + err
    assert run_row().error == str(exc)


# -- reads outside a run ------------------------------------------------------------------------


@contextmanager
def table_renamed(table: str):
    """``table`` out of reach of every read (renamed) inside the block."""
    q = connection.ops.quote_name
    hidden = f"{table}_hidden"
    with connection.cursor() as cur:
        cur.execute(f"ALTER TABLE {q(table)} RENAME TO {q(hidden)}")
    try:
        yield
    finally:
        with connection.cursor() as cur:
            cur.execute(f"ALTER TABLE {q(hidden)} RENAME TO {q(table)}")


KEYS = DataKey._meta.db_table


@pytest.mark.parametrize(
    ("call", "table", "step"),
    [
        (lambda: engine.dry_run([CONTACTS]), TABLE, "dry run"),
        (lambda: engine.pending([CONTACTS]), TABLE, "counting the pending rows"),
        (lambda: engine.verify([CONTACTS]), TABLE, "verify"),
        (lambda: engine.status(), TABLE, "status"),
        (lambda: engine.reencrypt([CONTACTS]), KEYS, "planning"),  # the active key versions
    ],
    ids=["dry_run", "pending", "verify", "status", "reencrypt"],
)
def test_a_read_outside_a_run_that_fails_names_the_step_and_the_database(keys, call, table, step):
    emails = plain_contacts(2)
    with table_renamed(table), assert_no_leak(emails) as leak, leak.raises(EngineDatabaseError) as raised:
        call()
    (exc,) = raised
    assert_safe(exc, leak)
    assert str(exc).startswith(f"database error in {step} on database 'default': "), str(exc)
    assert table not in str(exc)  # the database's message (naming the table) is withheld
    assert exc.run is None and exc.databases == ("default",)


@pytest.mark.parametrize(
    ("args", "table"),
    [(["--dry-run"], TABLE), (["--verify"], TABLE), ([], KEYS)],
    ids=["dry-run", "verify", "run"],
)
def test_the_command_reports_a_failed_read_in_one_line(keys, args, table):
    plain_contacts(2)
    with table_renamed(table), assert_no_leak([]) as leak:
        out, err, code = leak.call_command("reencrypt", "--model", CONTACTS, *args)
    assert code == 1 and "Traceback" not in out + err
    (error,) = leak.exceptions
    assert str(error).startswith("database error in ") and "\n" not in str(error), str(error)


# -- the error itself ---------------------------------------------------------------------------


def test_the_message_names_where_and_the_code():
    exc = EngineDatabaseError(
        step="batch",
        databases=("default",),
        error_class="IntegrityError",
        code="SQLSTATE 23514",
        run=7,
        model="app.Person",
        fields=("email", "email_bidx"),
        pks="pk > 100 and pk <= 2100",
        versions=("default/encrypt v2", "default/index v2"),
    )
    assert str(exc) == (
        "run #7: database error in batch of app.Person (fields email, email_bidx; "
        "pk > 100 and pk <= 2100; to default/encrypt v2, default/index v2) on database 'default': "
        "IntegrityError (SQLSTATE 23514); the database's message is withheld, as it may quote values"
    )
    assert isinstance(exc, RunFailed)
    bare = EngineDatabaseError(step="chunk claim", databases=("rows", "state"), error_class="InterfaceError")
    assert str(bare) == (
        "database error in chunk claim on databases 'rows', 'state': InterfaceError; "
        "the database's message is withheld, as it may quote values"
    )
