"""The engine under real concurrency on PostgreSQL and MySQL/MariaDB: several workers, application writers in
other processes, and a worker killed with SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection

from keyrotation import engine, keyring, lifecycle
from keyrotation.models import ReencryptionChunk, ReencryptionRun
from tests.helpers.db import child_env, mysql_connection, person_write_log
from tests.testapp.models import Person

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]


def seed(n: int) -> dict[int, str]:
    people = Person.objects.bulk_create(
        Person(name=f"p{i}", email=f"user{i}@example.com", ssn=f"{i:09d}") for i in range(n)
    )
    return {p.pk: p.email for p in people}


def rotate():
    lifecycle.rotate("default", "encrypt")
    lifecycle.rotate("default", "index")
    keyring.invalidate()


def versions() -> set:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT email_key_version, ssn_key_version, email_bidx_key_version FROM testapp_person"
        )
        return set(cur.fetchall())


@pytest.fixture
def write_log():
    with person_write_log():
        yield


def test_two_worker_processes_never_write_a_row_twice(keys, write_log):
    emails = seed(3000)
    rotate()
    report = engine.reencrypt(workers=2, batch_size=100, chunk_span=250)
    assert report.ok, report.as_dict()
    with connection.cursor() as cur:
        cur.execute("SELECT pk, count(*) FROM person_writes GROUP BY pk HAVING count(*) <> 1")
        assert list(cur.fetchall()) == []
        cur.execute("SELECT count(DISTINCT pk) FROM person_writes")
        assert cur.fetchone()[0] == len(emails)
    workers = set(ReencryptionChunk.objects.values_list("worker", flat=True))
    assert len(workers) == 2  # both processes really took chunks
    assert versions() == {(2, 2, 2)}
    keyring.clear_cache()
    assert {p.pk: p.email for p in Person.objects.all()} == emails


def test_concurrent_writer_loses_no_update(keys):
    emails = seed(4000)
    rotate()
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.writer", "6", "7"],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the writer is busy before the run starts
        report = engine.reencrypt(batch_size=50, rate=1500)
        out, _ = writer.communicate(timeout=60)
    finally:
        writer.kill()
    assert report.ok, report.as_dict()
    result = json.loads(out)
    assert result["writes"] > 50
    expected = {**emails, **{int(pk): email for pk, email in result["last"].items()}}
    # Rows the writer touched after the sweep are on v2 as well: the writer's cache knows v2.
    assert versions() == {(2, 2, 2)}
    keyring.clear_cache()
    assert {p.pk: p.email for p in Person.objects.all()} == expected
    assert Person.objects.get(email=next(iter(result["last"].values()))).pk


def test_sigkill_mid_run_then_rerun_finishes(keys):
    emails = seed(6000)
    rotate()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "django",
            "reencrypt",
            "--batch-size",
            "25",
            "--rate",
            "2000",
            "--no-progress",
        ],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = sum(c.rows_done for c in ReencryptionChunk.objects.all())
        if done >= 500:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()
    run = ReencryptionRun.objects.get()
    assert run.status == "running"  # nobody had the chance to say otherwise
    committed = sum(c.rows_done for c in ReencryptionChunk.objects.all())
    assert 0 < committed < len(emails)
    on_new = Person.objects.filter(email_key_version=2).count()
    assert on_new == committed  # progress and data committed together
    report = engine.reencrypt(batch_size=500)  # the dead worker's chunk is reclaimed at once
    assert report.ok and report.joined and report.run_id == run.pk
    assert report.rows_done == len(emails) - committed
    assert versions() == {(2, 2, 2)}
    keyring.clear_cache()
    assert {p.pk: p.email for p in Person.objects.all()} == emails


def _terminate_my_session() -> int:
    """End this thread's database session from another connection, as a server restart or a
    network cut would; returns its id."""
    if connection.vendor == "mysql":
        pid = connection.connection.thread_id()
        other = mysql_connection()
        try:
            other.cursor().execute(f"KILL CONNECTION {int(pid)}")
        finally:
            other.close()
        return pid
    import psycopg

    sd = connection.settings_dict
    pid = connection.connection.info.backend_pid
    with psycopg.connect(
        host=sd["HOST"], port=sd["PORT"], user=sd["USER"], dbname=sd["NAME"], autocommit=True
    ) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    return pid


def test_lost_database_connection_is_retried(keys, caplog):
    emails = seed(600)
    rotate()
    killed = []

    def kill_my_backend(batch):
        if not killed:
            killed.append(_terminate_my_session())

    with caplog.at_level("WARNING", logger="keyrotation.engine"):
        report = engine.reencrypt(batch_size=100, on_batch=kill_my_backend)
    assert killed and report.ok, report.as_dict()
    # Logged by the serial path ("retry 1/8") or by the pipeline, which then retries one batch
    # at a time (tests/test_engine_pipeline.py shows that path in detail).
    assert any(
        "retry 1/" in r.getMessage() or "retrying one batch at a time" in r.getMessage()
        for r in caplog.records
    )
    assert versions() == {(2, 2, 2)}
    keyring.clear_cache()
    assert {p.pk: p.email for p in Person.objects.all()} == emails


def test_two_workers_share_a_table_smaller_than_a_default_chunk(keys):
    """4,000 rows are one pk range of the default span (50,000): with --workers 2 the plan cuts
    them in two, and each worker process re-encrypts one half."""
    from io import StringIO

    from django.core.management import call_command

    seed(4000)
    rotate()
    out = StringIO()
    # --rate keeps each chunk busy for a second or more, so neither worker can finish its own
    # chunk and take the other's before the second process has started.
    call_command(
        "reencrypt",
        "--model",
        "testapp.Person",
        "--workers",
        "2",
        "--batch-size",
        "500",
        "--rate",
        "1500",
        "--json",
        stdout=out,
        stderr=StringIO(),
    )
    report = json.loads(out.getvalue())
    assert report["status"] == "finished" and report["rows_done"] == 4000, report
    assert report["notes"] == []
    chunks = list(ReencryptionChunk.objects.values_list("worker", "rows_done"))
    assert len(chunks) == 2
    assert len({worker for worker, done in chunks if done}) == 2  # both processes did work
    assert sum(done for _, done in chunks) == 4000
    assert versions() == {(2, 2, 2)}


def test_more_workers_than_a_small_table_has_batches_says_so_in_one_line(keys):
    from io import StringIO

    from django.core.management import call_command

    seed(300)
    rotate()
    out = StringIO()
    call_command(
        "reencrypt",
        "--model",
        "testapp.Person",
        "--workers",
        "2",
        "--batch-size",
        "500",
        stdout=out,
        stderr=StringIO(),
    )
    assert ReencryptionChunk.objects.count() == 1
    run_id = ReencryptionRun.objects.get().pk
    assert (
        f"run #{run_id} on default: 300 row(s) in 1 chunk(s) (a chunk is at least one batch of "
        "500 rows); --workers 2 uses 1 worker(s)"
    ) in out.getvalue().splitlines()
