"""Helpers for tests that start other processes against the test database."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection


def child_env(**extra: str) -> dict:
    """Environment for a subprocess that must use this test's database."""
    env = {**os.environ, **extra}
    if connection.vendor == "postgresql":
        sd = connection.settings_dict
        env["DATABASE_URL"] = (
            f"postgres://{sd['USER']}:{sd['PASSWORD']}@{sd['HOST']}:{sd['PORT']}/{sd['NAME']}"
        )
    elif connection.vendor == "mysql":
        sd = connection.settings_dict
        env["DATABASE_URL"] = f"mysql://{sd['USER']}:{sd['PASSWORD']}@{sd['HOST']}:{sd['PORT']}/{sd['NAME']}"
    env["PYTHONPATH"] = os.getcwd()
    env.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    return env


def mysql_connection():
    """A MySQLdb connection to this test's MySQL/MariaDB database, outside Django (autocommit)."""
    import MySQLdb

    sd = connection.settings_dict
    return MySQLdb.connect(
        host=sd["HOST"],
        port=int(sd["PORT"]),
        user=sd["USER"],
        password=sd["PASSWORD"],
        database=sd["NAME"],
        autocommit=True,
    )


def wait_until_blocked_on_keys(count: int) -> None:
    """Wait (polling, up to 30 s) until ``count`` other sessions wait for row locks on the keys
    (``keyrotation_datakey``; PostgreSQL or MySQL/MariaDB)."""
    if connection.vendor == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
    else:  # MariaDB lists only this session in INNODB_TRX here: look for the statements instead
        sql = (
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
            "AND INFO LIKE '%FROM `keyrotation_datakey`%FOR UPDATE%'"
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # Inside a transaction PostgreSQL shows the activity as of its first look.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(sql)
            if cursor.fetchone()[0] >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"{count} sessions never waited for the keyring's lock")


@contextmanager
def person_write_log() -> Iterator[None]:
    """A trigger that logs every UPDATE of a person row into ``person_writes (pk)``, by whatever
    process: counts the writes per row (PostgreSQL, MySQL/MariaDB). A write rolled back is not
    logged: the log row rolls back with it."""
    mysql = connection.vendor == "mysql"
    with connection.cursor() as cur:
        cur.execute("CREATE TABLE person_writes (pk bigint NOT NULL)")
        if mysql:
            cur.execute(
                "CREATE TRIGGER person_write AFTER UPDATE ON testapp_person "
                "FOR EACH ROW INSERT INTO person_writes VALUES (NEW.id)"
            )
        else:
            cur.execute(
                "CREATE FUNCTION log_person_write() RETURNS trigger AS $$ BEGIN "
                "INSERT INTO person_writes VALUES (NEW.id); RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            cur.execute(
                "CREATE TRIGGER person_write AFTER UPDATE ON testapp_person "
                "FOR EACH ROW EXECUTE FUNCTION log_person_write()"
            )
    try:
        yield
    finally:
        with connection.cursor() as cur:
            if mysql:
                cur.execute("DROP TRIGGER person_write")
            else:
                cur.execute("DROP TRIGGER person_write ON testapp_person")
                cur.execute("DROP FUNCTION log_person_write()")
            cur.execute("DROP TABLE person_writes")


def copy_people(n: int) -> None:
    """COPY ``n`` people (``user<i>@example.com``, SSN ``<i>`` on nine digits), each value sealed
    by its field under the active keys: as the ORM would store them, in seconds (PostgreSQL)."""
    from tests.testapp.models import Person

    email, ssn, bidx = (Person._meta.get_field(name) for name in ("email", "ssn", "email_bidx"))
    rows = []  # sealed before the COPY starts: loading a keyring queries the connection the COPY holds
    for i in range(1, n + 1):
        address = f"user{i}@example.com"
        sealed_email, sealed_ssn = email.seal_value(address), ssn.seal_value(f"{i:09d}")
        digest, digest_version = bidx.index_value(address)
        rows.append(
            (
                *(i, f"p{i}", sealed_email.token, sealed_email.version),
                *(digest, digest_version, sealed_ssn.token, sealed_ssn.version),
            )
        )
    columns = "id, name, email, email_key_version, email_bidx, email_bidx_key_version, ssn, ssn_key_version"
    with connection.cursor() as cur:
        with cur.cursor.copy(f"COPY testapp_person ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute("SELECT setval(pg_get_serial_sequence('testapp_person', 'id'), %s)", [n])
