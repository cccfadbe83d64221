"""Outages mid-run: PostgreSQL restarted, OpenBao stopped, OpenBao sealed. The run backs off,
says so on stderr, and finishes (or exits non-zero with every row intact, and a rerun finishes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid

import hvac
import psycopg
import pytest
from django.db import connection

from keyrotation import engine, keyring, lifecycle
from tests.helpers.db import child_env
from tests.reliability_support import LOG, finish, manage, rotate, seed, state, versions, wait_for

ROWS = 3000


def _run_reencrypt(env, *extra):
    return manage("reencrypt", "--batch-size", "50", "--no-progress", *extra, env=env)


# -- PostgreSQL restarted -------------------------------------------------------------------------


@pytest.fixture
def private_db(postgres_server):
    """A migrated database on the private cluster, and the env of a process that uses it."""
    name = f"outage_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{postgres_server.port}/{name}",
        "PYTHONPATH": os.getcwd(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], env=env, check=True)
    yield env
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _helper(env, *args) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.outage", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _rows_done(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return conn.execute(
                "SELECT coalesce(sum(rows_done), 0) FROM keyrotation_reencryptionchunk"
            ).fetchone()[0]
    except psycopg.OperationalError:
        return 0


def test_postgres_restarted_mid_run(postgres_server, private_db):
    started = time.monotonic()
    target = int(_helper(private_db, "seed", str(ROWS)))
    proc = _run_reencrypt(private_db, "--rate", "1000")
    url = private_db["DATABASE_URL"]
    assert wait_for(lambda: _rows_done(url) >= 300, 30)
    postgres_server.restart()
    out, err = finish(proc)
    assert "retry" in err and "OperationalError" in err, err  # it backed off and said so
    first_exit = proc.returncode
    if first_exit != 0:  # out of retries: state intact, a rerun finishes
        out, err = finish(_run_reencrypt(private_db))
    assert "finished" in out, out + err
    result = json.loads(_helper(private_db, "check", str(ROWS)))
    assert result["ok"] and result["versions"] == [[target, target, target]], result
    LOG.add("outage: PostgreSQL restarted mid-run", 1, time.monotonic() - started, {"first exit": first_exit})


def _one_line(out: str, err: str) -> str:
    """The one line a command printed for a lost database: nothing on stdout, no traceback, one
    ``CommandError`` line on stderr (besides the engine's retry log lines)."""
    assert "Traceback" not in out + err, out + err
    assert out == "", out
    (line,) = [line for line in err.splitlines() if line.startswith("CommandError: ")]
    return line


def test_postgres_stopped_for_good_mid_run(postgres_server, private_db):
    """The database goes away and stays away past every retry: ``reencrypt`` says so in one line
    naming the run, the database and the error's class, exits 1, and a rerun finishes once the
    database is back. ``--dry-run``, ``--verify`` and ``rotation_status`` meanwhile: one line each."""
    started = time.monotonic()
    target = int(_helper(private_db, "seed", str(ROWS)))
    proc = _run_reencrypt(private_db, "--rate", "1000")
    url = private_db["DATABASE_URL"]
    assert wait_for(lambda: _rows_done(url) >= 300, 30)
    postgres_server.stop()
    try:
        out, err = finish(proc, timeout=240)  # every retry, with back-off: about a minute and a half
        assert proc.returncode == 1, out + err
        assert "retry 8/8" in err, err
        line = _one_line(out, err)
        assert re.fullmatch(
            r"CommandError: run #\d+: database error in .+ on database 'default': OperationalError"
            r"( \(.+\))?; the database's message is withheld, as it may quote values",
            line,
        ), line
        for args, step in (
            (("reencrypt", "--dry-run"), "dry run"),
            (("reencrypt", "--verify"), "verify"),
            (("rotation_status",), "status"),
        ):
            reader = manage(*args, env=private_db)
            out, err = finish(reader)
            assert reader.returncode == 1, out + err
            line = _one_line(out, err)
            assert line.startswith(f"CommandError: database error in {step} on database 'default': "), line
            assert "OperationalError" in line, line
    finally:
        postgres_server.start()
    out, err = finish(_run_reencrypt(private_db))
    assert "finished" in out, out + err
    result = json.loads(_helper(private_db, "check", str(ROWS)))
    assert result["ok"] and result["versions"] == [[target, target, target]], result
    LOG.add("outage: PostgreSQL stopped past the retries", 1, time.monotonic() - started, {})


# -- OpenBao stopped or sealed --------------------------------------------------------------------


@pytest.fixture
def bao_kek(openbao_server, settings):
    options = {
        "BACKEND": "vault",
        "URL": openbao_server.addr,
        "TOKEN": openbao_server.token,
        "KEY_NAME": f"kr-{uuid.uuid4().hex[:8]}",
        "TIMEOUT": 3,
    }
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": options}
    keyring.clear_cache()
    lifecycle.init("default")
    return options


def _vault_outage(openbao_server, kek, break_it, mend_it):
    original = seed(ROWS)
    target = rotate()
    env = child_env(KEYROTATION_TEST_KEK=json.dumps(kek))
    break_it()
    proc = _run_reencrypt(env)  # a fresh process: it must unwrap both versions through the KEK
    try:
        time.sleep(4)
        assert proc.poll() is None  # still backing off, not failed
    finally:
        mend_it()
    out, err = finish(proc)
    assert "retry" in err and "KEKUnreachable" in err, err  # transient: retried
    first_exit = proc.returncode
    if first_exit != 0:
        assert versions() <= {(1, 1, 1), (target, target, target)}
        out, err = finish(_run_reencrypt(env))
    assert "finished" in out, out + err
    assert versions() == {(target, target, target)}
    assert state() == original
    assert engine.verify()["failure_count"] == 0
    return {"first exit": first_exit}


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_openbao_stopped_mid_run(openbao_server, bao_kek):
    started = time.monotonic()
    outcome = _vault_outage(openbao_server, bao_kek, openbao_server.stop, openbao_server.start)
    LOG.add("outage: OpenBao stopped then started", 1, time.monotonic() - started, outcome)


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_openbao_sealed_mid_run(openbao_server, bao_kek):
    started = time.monotonic()
    client = hvac.Client(url=openbao_server.addr, token=openbao_server.token)
    try:
        outcome = _vault_outage(openbao_server, bao_kek, client.sys.seal, openbao_server.restart)
    finally:
        client.adapter.close()
    LOG.add("outage: OpenBao sealed then unsealed", 1, time.monotonic() - started, outcome)


@pytest.mark.django_db
def test_kek_outage_in_process_reports_the_backend_not_the_data(openbao_server, bao_kek, caplog):
    """In this process: a value under a version not unwrapped yet cannot be read while OpenBao is
    down; the error is KEKUnreachable (transient) naming the backend, and nothing is written."""
    from keyrotation.exceptions import KEKUnreachable
    from tests.testapp.models import Person

    person = Person.objects.create(name="x", email="kek@example.com")
    keyring.clear_cache()
    with connection.cursor() as cur:
        cur.execute("SELECT email FROM testapp_person WHERE id = %s", [person.pk])
        before = bytes(cur.fetchone()[0])
    openbao_server.stop()
    try:
        with pytest.raises(KEKUnreachable, match="vault transit key") as info:
            Person.objects.get(pk=person.pk).email  # noqa: B018
        assert "kek@example.com" not in str(info.value)
    finally:
        openbao_server.start()
    with connection.cursor() as cur:
        cur.execute("SELECT email FROM testapp_person WHERE id = %s", [person.pk])
        assert bytes(cur.fetchone()[0]) == before
    keyring.clear_cache()
    assert Person.objects.get(pk=person.pk).email == "kek@example.com"
