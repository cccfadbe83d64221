"""``retire`` and ``destroy`` against late writers.

A row can reach the database after the census that allowed a retirement: a transaction that wrote
it under the old version commits later. These tests open such transactions for real, on a second
connection (a thread with its own Django connection, or psycopg directly), and check that
``destroy`` recounts, waits out its grace period and any older transaction, and that the census
reads the version in the ciphertext header as well as the version column.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from keyrotation import engine, lifecycle
from keyrotation.exceptions import KeyStateError
from keyrotation.models import DataKey, KeyRotationAudit
from tests.testapp.models import Person

postgres_only = pytest.mark.postgres


@pytest.fixture
def no_waits(settings):
    """No cache window and no destroy grace: each test waits only for what it is about."""
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0, "DESTROY_GRACE_SECONDS": 0}


def key(version: int = 1, purpose: str = "encrypt") -> DataKey:
    return DataKey.objects.get(keyring="default", purpose=purpose, version=version)


def refusals(action: str) -> list[KeyRotationAudit]:
    return list(KeyRotationAudit.objects.filter(action=action, status="refused").order_by("id"))


class _Rollback(Exception):
    pass


class LateWriter:
    """A thread with its own database connection that saves a person under the active key
    version, then keeps its transaction open until told to commit or roll back."""

    def __init__(self, email: str) -> None:
        self.email = email
        self.pk: int | None = None
        self.error: BaseException | None = None
        self._written = threading.Event()
        self._go = threading.Event()
        self._commit = False
        self._thread = threading.Thread(target=self._run, name="late-writer", daemon=True)

    def _run(self) -> None:
        try:
            with transaction.atomic():
                self.pk = Person.objects.create(name="late", email=self.email).pk
                self._written.set()
                self._go.wait(60)
                if not self._commit:
                    raise _Rollback
        except _Rollback:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc
        finally:
            self._written.set()
            connection.close()

    def __enter__(self) -> LateWriter:
        self._thread.start()
        assert self._written.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def end(self, *, commit: bool) -> None:
        self._commit = commit
        self._go.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self.end(commit=False)


def second_connection():
    """A psycopg connection to the test database, outside Django."""
    import psycopg

    sd = connection.settings_dict
    return psycopg.connect(
        dbname=sd["NAME"], user=sd["USER"], password=sd["PASSWORD"], host=sd["HOST"], port=sd["PORT"]
    )


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_a_row_a_late_transaction_commits_after_retire_stops_destroy(keys, no_waits):
    with LateWriter("late@example.com") as writer:
        lifecycle.rotate("default", "encrypt")
        # The census cannot see a row that is not committed yet: retiring succeeds.
        lifecycle.retire("default", "encrypt", 1)
        writer.end(commit=True)
    assert Person.objects.filter(pk=writer.pk, email_key_version=1).exists()

    referenced = r"still referenced by 1 row\(s\) of testapp.Person.email"
    with pytest.raises(KeyStateError, match=referenced) as info:
        lifecycle.destroy("default", "encrypt", 1)
    assert "rotatekeys --restore 1" in str(info.value)
    assert key().state == "retired" and key().wrapped_key is not None
    (entry,) = refusals("key_destroy_refused")
    assert entry.details["reason"] == "referenced"
    assert entry.details["census"]["testapp.Person.email"] == 1

    # What the message says to do recovers the row, and then destroy goes through.
    lifecycle.restore("default", "encrypt", 1)
    assert engine.reencrypt().ok
    lifecycle.retire("default", "encrypt", 1)
    lifecycle.destroy("default", "encrypt", 1)
    assert key().state == "destroyed"
    assert Person.objects.get(pk=writer.pk).email == "late@example.com"


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_destroy_is_refused_while_a_transaction_older_than_the_deactivation_is_open(keys, no_waits):
    with LateWriter("pending@example.com") as writer:
        lifecycle.rotate("default", "encrypt")
        lifecycle.retire("default", "encrypt", 1)
        with pytest.raises(KeyStateError, match="began before v1 stopped taking writes") as info:
            lifecycle.destroy("default", "encrypt", 1)
        assert "wait for them to end" in str(info.value)
        (entry,) = refusals("key_destroy_refused")
        assert entry.details["reason"] == "open_transactions" and entry.details["open_transactions"] == 1
        writer.end(commit=False)
    lifecycle.destroy("default", "encrypt", 1)
    assert key().state == "destroyed"


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_an_idle_transaction_on_a_plain_connection_holds_destroy_back_until_it_ends(keys, no_waits):
    with second_connection() as other:
        other.execute("SELECT 1")  # opens a transaction and leaves it open, idle
        pid = other.info.backend_pid
        lifecycle.rotate("default", "encrypt")
        lifecycle.retire("default", "encrypt", 1)
        with pytest.raises(KeyStateError, match=f"pids {pid}"):
            lifecycle.destroy("default", "encrypt", 1)
        other.rollback()
        time.sleep(0.05)
        other.execute("SELECT 1")  # a transaction that began after v1 stopped taking writes
        lifecycle.destroy("default", "encrypt", 1)
        other.rollback()
    assert key().state == "destroyed"


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_destroy_is_refused_when_other_sessions_are_hidden_from_its_role(keys, no_waits):
    role = "test_kr_gate_operator"
    with connection.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {role}")
        cur.execute(f"CREATE ROLE {role}")
        cur.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        cur.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    lifecycle.rotate("default", "encrypt")
    lifecycle.retire("default", "encrypt", 1)
    try:
        with second_connection():  # another role's session, which ours may not look into
            with connection.cursor() as cur:
                cur.execute(f"SET ROLE {role}")
            with pytest.raises(KeyStateError, match="grant pg_read_all_stats"):
                lifecycle.destroy("default", "encrypt", 1)
            with connection.cursor() as cur:
                cur.execute("RESET ROLE")
                cur.execute(f"GRANT pg_read_all_stats TO {role}")
                cur.execute(f"SET ROLE {role}")
            lifecycle.destroy("default", "encrypt", 1)
    finally:
        with connection.cursor() as cur:
            cur.execute("RESET ROLE")
            cur.execute(f"DROP OWNED BY {role}")
            cur.execute(f"DROP ROLE {role}")
    assert refusals("key_destroy_refused")[0].details["reason"] == "sessions_hidden"
    assert key().state == "destroyed"


def mysql_connection(user: str | None = None, password: str | None = None):
    """A mysqlclient connection to the test database, outside Django (autocommit off)."""
    import MySQLdb

    sd = connection.settings_dict
    return MySQLdb.connect(
        host=sd["HOST"],
        port=int(sd["PORT"]),
        user=user or sd["USER"],
        password=sd["PASSWORD"] if password is None else password,
        database=sd["NAME"],
    )


@pytest.mark.mysql
@pytest.mark.django_db(transaction=True)
def test_an_idle_innodb_transaction_holds_destroy_back_until_it_ends(keys, no_waits):
    other = mysql_connection()
    try:
        cur = other.cursor()
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")  # open, idle, listed by innodb_trx
        thread = other.thread_id()
        time.sleep(1.1)  # innodb_trx counts whole seconds
        lifecycle.rotate("default", "encrypt")
        lifecycle.retire("default", "encrypt", 1)
        with pytest.raises(KeyStateError, match=f"still open \\(connection ids {thread}\\)"):
            lifecycle.destroy("default", "encrypt", 1)
        other.rollback()
        time.sleep(0.2)  # innodb_trx is a cache that InnoDB refreshes at most every 0.1 s
        lifecycle.destroy("default", "encrypt", 1)
    finally:
        other.close()
    assert key().state == "destroyed"
    (entry,) = refusals("key_destroy_refused")
    assert entry.details["reason"] == "open_transactions" and entry.details["pids"] == [thread]


@pytest.mark.mysql
@pytest.mark.django_db(transaction=True)
def test_destroy_is_refused_when_innodb_trx_is_hidden_from_its_user(keys, no_waits):
    """Without the PROCESS privilege innodb_trx cannot be read: destroy refuses, saying what to grant."""
    user, password = "test_kr_gate_operator", "operator-pw"
    original = connection.settings_dict
    with connection.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS '{user}'@'%%'")
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY '{password}'")
        cur.execute(f"GRANT ALL PRIVILEGES ON `{original['NAME']}`.* TO '{user}'@'%%'")
    lifecycle.rotate("default", "encrypt")
    lifecycle.retire("default", "encrypt", 1)
    try:
        connection.close()
        connection.settings_dict = {**original, "USER": user, "PASSWORD": password}
        with pytest.raises(KeyStateError, match=r"needs the PROCESS privilege\): grant PROCESS on \*\.\*"):
            lifecycle.destroy("default", "encrypt", 1)
        assert key().state == "retired"
    finally:
        connection.close()
        connection.settings_dict = original
        with connection.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%%'")
    (entry,) = refusals("key_destroy_refused")
    assert entry.details["reason"] == "sessions_hidden" and entry.details["hidden_sessions"] == -1


@pytest.mark.django_db
def test_destroy_is_refused_within_the_grace_period_after_retirement(keys, settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0}  # grace: the default day
    lifecycle.rotate("default", "encrypt")
    lifecycle.retire("default", "encrypt", 1)
    with pytest.raises(KeyStateError, match=r"DESTROY_GRACE_SECONDS \(86400s\).*retry after 20") as info:
        lifecycle.destroy("default", "encrypt", 1)
    assert "\n" not in str(info.value)
    assert key().state == "retired" and key().wrapped_key is not None
    (entry,) = refusals("key_destroy_refused")
    assert entry.details["reason"] == "grace" and entry.details["grace_seconds"] == 86400

    settings.KEYROTATION = {**settings.KEYROTATION, "DESTROY_GRACE_SECONDS": 0}
    lifecycle.destroy("default", "encrypt", 1)
    assert key().state == "destroyed"


@pytest.mark.django_db
def test_a_version_column_that_lies_does_not_hide_a_row_from_the_retire_census(keys, no_waits):
    person = Person.objects.create(name="liar", email="liar@example.com")
    lifecycle.rotate("default", "encrypt")
    # The version column says v2, the ciphertext header (what decryption uses) says v1.
    Person.objects.filter(pk=person.pk).update(email_key_version=2)

    by_header = r"1 row\(s\) of testapp.Person.email \(1 only by the ciphertext header"
    with pytest.raises(KeyStateError, match=by_header):
        lifecycle.retire("default", "encrypt", 1)
    assert key().state == "decrypt_only"
    (entry,) = refusals("key_retire_refused")
    assert entry.details["by_header"] == {"testapp.Person.email": 1}

    report = engine.verify(["testapp.Person"])
    assert report["header_versions"]["testapp.Person.email"] == {"1": 1}
    assert any("header names version 1" in failure for failure in report["failures"])
    assert Person.objects.get(pk=person.pk).email == "liar@example.com"  # still readable: v1 is not retired

    # The remedy the docs give: no version, so that reencrypt goes by the header.
    Person.objects.filter(pk=person.pk).update(email_key_version=None)
    assert engine.reencrypt().ok
    lifecycle.retire("default", "encrypt", 1)
    assert Person.objects.get(pk=person.pk).email == "liar@example.com"


@pytest.mark.django_db
def test_a_refused_retire_is_audited_whatever_the_reason(keys):
    lifecycle.rotate("default", "encrypt")
    with pytest.raises(KeyStateError, match="less than CACHE_SECONDS ago"):
        lifecycle.retire("default", "encrypt", 1)
    (entry,) = refusals("key_retire_refused")
    assert entry.details["reason"] == "cache"
