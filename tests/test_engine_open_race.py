"""Several processes start ``reencrypt`` at the same instant: exactly one run is opened, and every
other process joins it (PostgreSQL, MySQL/MariaDB and SQLite)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest
from django.db import connection

from keyrotation.models import ReencryptionRun
from tests.helpers.db import child_env, mysql_connection
from tests.reliability_support import rotate, seed

PROCESSES = 4


def _start(env: dict) -> list[subprocess.Popen]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.open_race"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    return procs


def _reports(procs) -> list[tuple[dict, str]]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        out.append((json.loads(stdout.strip().splitlines()[-1]), stderr))
    return out


def _check_one_run(reports) -> None:
    runs = list(ReencryptionRun.objects.values_list("pk", flat=True))
    assert len(runs) == 1, (runs, reports)
    assert {r["run_id"] for r, _ in reports} == set(runs)
    assert sorted(r["joined"] for r, _ in reports) == [False] + [True] * (PROCESSES - 1)


def _waiting_backends() -> int:
    with connection.cursor() as cur:
        if connection.vendor == "mysql":
            cur.execute(
                "SELECT count(*) FROM information_schema.processlist "
                "WHERE state LIKE %s OR state LIKE %s",
                ["Waiting for table metadata lock%", "User lock%"],
            )
        else:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
        return cur.fetchone()[0]


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_processes_starting_together_open_one_run(keys):
    """The children are held where the engine counts the pending rows (a lock on the table, taken
    by another session), so they all reach ``open_run`` before any of them has created a run: the
    worst case of starting "at the same instant"."""
    seed(200)
    rotate()
    holder = _table_lock()
    try:
        procs = _start(child_env())
        deadline = time.monotonic() + 30
        while _waiting_backends() < PROCESSES and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _waiting_backends() == PROCESSES
    finally:
        holder.close()
    _check_one_run(_reports(procs))


def _table_lock():
    """Another session holding a lock that stops every read of the person table until closed."""
    sd = connection.settings_dict
    if connection.vendor == "mysql":
        other = mysql_connection()
        other.cursor().execute("LOCK TABLES testapp_person WRITE")
        return other
    import psycopg

    other = psycopg.connect(
        host=sd["HOST"], port=sd["PORT"], user=sd["USER"], password=sd["PASSWORD"], dbname=sd["NAME"]
    )
    other.execute("LOCK TABLE testapp_person IN ACCESS EXCLUSIVE MODE")
    return other


@pytest.fixture
def sqlite_file(tmp_path):
    """A migrated SQLite file with 200 people on rotated keys, and the env of a process using it."""
    path = tmp_path / "db.sqlite3"
    env = child_env(KEYROTATION_TEST_SQLITE=str(path))
    env.pop("DATABASE_URL", None)
    for args in (["django", "migrate", "-v0"], ["tests.helpers.outage", "seed", "200"]):
        subprocess.run([sys.executable, "-m", *args], env=env, check=True, capture_output=True)
    return path, env


def test_processes_starting_together_open_one_run_on_sqlite(sqlite_file):
    """SQLite: the children are held by another connection's write lock while they plan."""
    path, env = sqlite_file
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        procs = _start(env)
        time.sleep(1.0)  # every child is past "ready" and inside reencrypt()
    finally:
        holder.execute("COMMIT")
        holder.close()
    reports = _reports(procs)
    with sqlite3.connect(path) as db:
        runs = [pk for (pk,) in db.execute("SELECT id FROM keyrotation_reencryptionrun")]
    assert len(runs) == 1, (runs, reports)
    assert {r["run_id"] for r, _ in reports} == set(runs)
    assert sorted(r["joined"] for r, _ in reports) == [False] + [True] * (PROCESSES - 1)
    # Serialised by a lock, not mended by retrying a "database is locked" error. (The batches
    # that follow may still meet one on a loaded machine: four processes write one file.)
    assert not any("opening the run failed" in stderr for _, stderr in reports), reports
