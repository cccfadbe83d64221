"""Crash and resume on PostgreSQL and MySQL/MariaDB: ``reencrypt`` killed with SIGKILL at random
moments, inside a batch transaction (between claim and write) and during the final sweep; the rerun
must finish with every row decrypting to its original value on the active version.

``KEYROTATION_TRIALS`` (default 20) sets the number of random-kill trials.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import psycopg
import pytest
from django.db import connection

from keyrotation import engine
from keyrotation.models import ReencryptionChunk, ReencryptionRun
from tests.helpers.db import child_env, mysql_connection
from tests.reliability_support import LOG, TRIALS, kill_group, manage, rotate, seed, state, versions, wait_for

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]
ROWS = 1200


def _committed() -> int:
    return sum(ReencryptionChunk.objects.values_list("rows_done", flat=True))


def _run_for(target: int):
    return ReencryptionRun.objects.filter(targets__contains={"testapp.Person.email": target}).first()


def _committed_for(target: int) -> int:
    run = _run_for(target)
    return sum(ReencryptionChunk.objects.filter(run=run).values_list("rows_done", flat=True)) if run else 0


def _psycopg():
    sd = connection.settings_dict
    return psycopg.connect(
        host=sd["HOST"], port=sd["PORT"], user=sd["USER"], dbname=sd["NAME"], autocommit=True
    )


def _finish_and_check(original, target):
    """Rerun in this process until done; every row decrypts to its original value on ``target``."""
    report = engine.reencrypt(batch_size=200)
    assert report.ok, report.as_dict()
    assert versions() == {(target, target, target)}
    assert state() == original
    assert engine.verify()["failure_count"] == 0
    return report


def test_sigkill_at_random_moments_then_rerun(keys):
    rng = random.Random(int(time.time()))
    original = seed(ROWS)
    outcomes = Counter()
    started = time.monotonic()
    for trial in range(TRIALS):
        target = rotate()
        workers = 2 if trial % 3 == 2 else 1
        proc = manage(
            "reencrypt",
            "--batch-size",
            str(rng.choice([10, 25, 60])),
            "--rate",
            "1500",
            "--workers",
            str(workers),
            "--no-progress",
            env=child_env(),
        )
        # Kill once a random share of the rows is committed (0: as soon as the run exists).
        threshold = rng.randint(0, ROWS)
        wait_for(
            lambda p=proc, t=target, th=threshold: (
                p.poll() is not None or (_run_for(t) and _committed_for(t) >= th)
            ),
            30,
            step=0.005,
        )
        time.sleep(rng.uniform(0, 0.05))
        kill_group(proc)
        run = _run_for(target)
        # One statement, one snapshot: a COMMIT the killed process sent just before it died may
        # still land while we look, and must then be seen in both counts or in neither.
        with connection.cursor() as cur:
            cur.execute(
                "SELECT (SELECT count(*) FROM testapp_person WHERE email_key_version = %s), "
                f"(SELECT COALESCE(SUM(rows_done), 0) FROM {ReencryptionChunk._meta.db_table} "
                "WHERE run_id = %s)",
                [target, run.pk if run else None],
            )
            rows_on_target, committed = cur.fetchone()
        if run is not None:
            # progress and data are committed together: the counters never disagree with the rows
            assert rows_on_target == committed, (trial, rows_on_target, committed)
        outcome = (
            "before the run" if rows_on_target == 0 else "finished" if rows_on_target == ROWS else "mid-run"
        )
        outcomes[f"{outcome}, {workers} worker(s)"] += 1
        _finish_and_check(original, target)
    LOG.add("crash: SIGKILL at a random moment", TRIALS, time.monotonic() - started, outcomes)
    assert outcomes  # at least one trial ran


@pytest.fixture
def slow_engine_update():
    """A trigger that sleeps in the engine's UPDATE: the batch transaction is held open after it
    claimed (locked) its rows and before its write completes. On PostgreSQL, every UPDATE made by
    a session named ``victim`` sleeps; on MySQL (no session names, and a sleep that a dead client
    does not cut short), the UPDATE that moves the lowest pk to a new key version sleeps once."""
    if connection.vendor == "mysql":
        yield "mysql"
        with connection.cursor() as cur:
            cur.execute("DROP TRIGGER IF EXISTS victim_sleep")
        return
    with connection.cursor() as cur:
        cur.execute(
            "CREATE FUNCTION victim_sleep() RETURNS trigger AS $$ BEGIN "
            "IF current_setting('application_name') = 'victim' THEN PERFORM pg_sleep(30); END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cur.execute(
            "CREATE TRIGGER victim_sleep BEFORE UPDATE ON testapp_person "
            "FOR EACH ROW EXECUTE FUNCTION victim_sleep()"
        )
    yield "postgresql"
    with connection.cursor() as cur:
        cur.execute("DROP TRIGGER victim_sleep ON testapp_person")
        cur.execute("DROP FUNCTION victim_sleep()")


def _mysql_sleep_on(pk: int) -> None:
    with connection.cursor() as cur:
        cur.execute(
            "CREATE TRIGGER victim_sleep BEFORE UPDATE ON testapp_person FOR EACH ROW "
            f"IF NEW.id = {int(pk)} AND NOT (NEW.email_key_version <=> OLD.email_key_version) "
            "THEN DO SLEEP(3); END IF"
        )


def _mysql_others(other) -> list[tuple]:
    """Sessions on the test database other than this test's two: (id, state, query)."""
    connection.ensure_connection()
    ours = (connection.connection.thread_id(), other.thread_id())
    cur = other.cursor()
    cur.execute(
        "SELECT ID, STATE, INFO FROM information_schema.PROCESSLIST WHERE DB = %s AND ID NOT IN (%s, %s)",
        [connection.settings_dict["NAME"], *ours],
    )
    return list(cur.fetchall())


def _mysql_sleeping(other) -> bool:
    return any(state == "User sleep" for _, state, _ in _mysql_others(other))


def _victim_backend(other, wait_event: str):
    rows = other.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'victim' AND wait_event = %s",
        [wait_event],
    ).fetchall()
    return rows[0][0] if rows else None


def test_sigkill_between_claim_and_write(keys, slow_engine_update):
    started = time.monotonic()
    original = seed(400)
    target = rotate()
    if slow_engine_update == "mysql":
        _sigkill_between_claim_and_write_mysql(min(original))
    else:
        _sigkill_between_claim_and_write_postgresql()
    assert _committed() == 0
    _finish_and_check(original, target)
    LOG.add("crash: SIGKILL inside a batch transaction (1 and 2 workers)", 2, time.monotonic() - started)


def _sigkill_between_claim_and_write_postgresql() -> None:
    env = child_env(PGAPPNAME="victim", PGOPTIONS="-c client_connection_check_interval=100")
    with _psycopg() as other:
        for workers in (1, 2):
            args = ("--batch-size", "50", "--workers", str(workers), "--no-progress")
            proc = manage("reencrypt", *args, env=env)
            try:
                assert wait_for(lambda: _victim_backend(other, "PgSleep"), 30), "the engine never wrote"
                before = _raw_rows(other)
                kill_group(proc)
                # the server notices the dead client and rolls the batch back
                assert wait_for(lambda: not _victim_backend(other, "PgSleep"), 15)
            finally:
                kill_group(proc)
            assert _raw_rows(other) == before  # nothing of the killed batch was written


def _sigkill_between_claim_and_write_mysql(first_pk: int) -> None:
    _mysql_sleep_on(first_pk)
    other = mysql_connection()
    try:
        for workers in (1, 2):
            args = ("--batch-size", "50", "--workers", str(workers), "--no-progress")
            proc = manage("reencrypt", *args, env=child_env())
            try:
                assert wait_for(lambda: _mysql_sleeping(other), 30), "the engine never wrote"
                before = _raw_rows_dbapi(other)
                kill_group(proc)
                # the statement ends, the server finds the client gone and rolls the batch back
                assert wait_for(lambda: not _mysql_others(other), 20), _mysql_others(other)
            finally:
                kill_group(proc)
            assert _raw_rows_dbapi(other) == before  # nothing of the killed batch was written
    finally:
        other.close()


def _raw_rows_dbapi(conn) -> list[tuple]:
    cur = conn.cursor()
    cur.execute("SELECT id, email, email_key_version, ssn, email_bidx FROM testapp_person ORDER BY id")
    return list(cur.fetchall())


def _raw_rows(conn) -> list[tuple]:
    sql = "SELECT id, email, email_key_version, ssn, email_bidx FROM testapp_person ORDER BY id"
    return conn.execute(sql).fetchall()


def test_sigkill_during_the_final_sweep(keys):
    """Rows locked by the application are skipped by the chunk pass and left to the sweep, which
    waits for their locks: the run is killed while the sweep waits."""
    started = time.monotonic()
    original = seed(600)
    target = rotate()
    pks = sorted(original)
    locked = pks[::50]
    if connection.vendor == "mysql":
        _sigkill_while_the_sweep_waits_mysql(locked)
    else:
        _sigkill_while_the_sweep_waits_postgresql(locked)
    with connection.cursor() as cur:
        cur.execute("SELECT id FROM testapp_person WHERE email_key_version <> %s", [target])
        assert sorted(r[0] for r in cur.fetchall()) == locked  # exactly the rows the sweep had left
    assert ReencryptionRun.objects.get().status == "running"
    report = _finish_and_check(original, target)
    assert report.joined and report.rows_done == len(locked)
    LOG.add("crash: SIGKILL during the final sweep", 1, time.monotonic() - started)


def _sigkill_while_the_sweep_waits_postgresql(locked: list[int]) -> None:
    with _psycopg() as app:
        app.autocommit = False
        app.execute("SELECT id FROM testapp_person WHERE id = ANY(%s) FOR UPDATE", [locked])
        proc = manage("reencrypt", "--batch-size", "40", "--no-progress", env=child_env(PGAPPNAME="victim"))
        try:
            with _psycopg() as other:
                # the chunk pass is over and the sweep waits on the application's row lock
                assert wait_for(
                    lambda: other.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE application_name = 'victim' "
                        "AND wait_event_type = 'Lock'"
                    ).fetchone(),
                    30,
                )
                assert ReencryptionChunk.objects.exclude(status="done").count() == 0
        finally:
            kill_group(proc)
        app.rollback()


def _sigkill_while_the_sweep_waits_mysql(locked: list[int]) -> None:
    app = mysql_connection()
    try:
        app.autocommit(False)
        marks = ", ".join(["%s"] * len(locked))
        app.cursor().execute(f"SELECT id FROM testapp_person WHERE id IN ({marks}) FOR UPDATE", locked)
        proc = manage("reencrypt", "--batch-size", "40", "--no-progress", env=child_env())
        try:
            other = mysql_connection()
            try:
                # the chunk pass is over and the sweep waits on the application's row lock: a
                # claim without SKIP LOCKED that has run for a second or more
                def waiting():
                    cur = other.cursor()
                    cur.execute(
                        "SELECT 1 FROM information_schema.PROCESSLIST "
                        "WHERE INFO LIKE %s AND TIME >= 1 AND ID <> %s",
                        ["SELECT%FOR UPDATE", app.thread_id()],
                    )
                    return cur.fetchone()

                assert wait_for(waiting, 30), kill_group(proc)
                assert ReencryptionChunk.objects.exclude(status="done").count() == 0
            finally:
                other.close()
        finally:
            kill_group(proc)
        app.rollback()
    finally:
        app.close()
