"""``keyrotation.jobs``: the core every job backend calls (one worker's share of a run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from django.db import InterfaceError, OperationalError, connection, connections

from keyrotation import engine, jobs, signals
from keyrotation.engine import RunFailed
from keyrotation.exceptions import KEKRefused, KEKUnreachable, KeyRotationError
from keyrotation.models import ReencryptionChunk, ReencryptionRun
from tests.helpers.command_line import tamper_one_email
from tests.helpers.db import child_env
from tests.reliability_support import rotate, seed, state, versions

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_job_moves_every_row_and_returns_json(keys):
    rows = seed(300)
    rotate()
    result = jobs.reencrypt(["testapp.Person"], batch_size=50)
    run = ReencryptionRun.objects.get()
    assert result == jobs.JobResult(run_id=run.pk, rows_done=300, rows_failed=0, status="finished")
    assert result.finished
    assert json.loads(json.dumps(result.as_dict())) == {
        "run_id": run.pk,
        "rows_done": 300,
        "rows_failed": 0,
        "status": "finished",
    }
    assert versions() == {(2, 2, 2)} and state() == rows


def test_a_job_with_nothing_pending_records_no_run(keys):
    assert jobs.reencrypt() == jobs.JobResult(run_id=None, rows_done=0, rows_failed=0, status="finished")
    assert not ReencryptionRun.objects.exists()


def _in_thread(fn):
    """Run ``fn`` in a thread; its result, or a failure if it has not returned within a minute
    (a job that waits while paused would never return: this keeps the suite from hanging)."""
    out = {}

    def target():
        try:
            out["result"] = fn()
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the job did not return while its run was paused"
    return out["result"]


def test_a_pause_ends_the_job_and_new_jobs_finish_the_run(keys):
    seed(600)
    rotate()

    def pause_after_first_batch(sender, run_id, **kwargs):
        signals.batch_completed.disconnect(pause_after_first_batch)
        engine.pause(run_id, actor="test")

    signals.batch_completed.connect(pause_after_first_batch)
    try:
        paused = _in_thread(lambda: jobs.reencrypt(batch_size=50, rate=5000))
    finally:
        signals.batch_completed.disconnect(pause_after_first_batch)
    assert paused.status == "paused" and 0 < paused.rows_done < 600
    assert ReencryptionRun.objects.get().status == "paused"
    # A job that joins the paused run ends at once too, having done nothing.
    assert _in_thread(jobs.reencrypt) == jobs.JobResult(paused.run_id, 0, 0, "paused")

    engine.resume(actor="test")
    resumed = jobs.reencrypt()
    assert (resumed.run_id, resumed.status) == (paused.run_id, "finished")
    assert paused.rows_done + resumed.rows_done == 600
    assert versions() == {(2, 2, 2)}


def test_a_value_that_cannot_be_opened_raises_and_is_not_transient(keys):
    seed(50)
    rotate()
    pk = tamper_one_email()
    with pytest.raises(RunFailed, match=rf"testapp\.Person\.email pk={pk} key version=1") as caught:
        jobs.reencrypt()
    assert not jobs.transient(caught.value)
    assert ReencryptionRun.objects.get().status == "failed"


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (OperationalError("server closed the connection unexpectedly"), True),
        (InterfaceError("connection already closed"), True),
        (KEKUnreachable("connection refused"), True),
        (KEKRefused("permission denied"), False),
        (OperationalError(1054, "Unknown column"), False),  # MySQL: an error in the statement
        (RunFailed("cannot decrypt"), False),
        (KeyRotationError("unknown model"), False),
        (ValueError("on_error"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_transient_is_what_waiting_can_mend(exc, transient):
    assert jobs.transient(exc) is transient


@pytest.mark.parametrize(
    ("kwargs", "error", "says"),
    [
        ({"models": "testapp.Person"}, TypeError, "models must be a list"),
        ({"models": [ReencryptionRun]}, TypeError, "models must be a list"),
        ({"database": 1}, TypeError, "database must be a string"),
        ({"fleet": 2.0}, TypeError, "fleet must be an integer"),
        ({"batch_size": True}, TypeError, "batch_size must be an integer"),
        ({"rate": "fast"}, TypeError, "rate must be a number of rows per second"),
        ({"max_duration": [1]}, TypeError, "max_duration must be a number of seconds"),
        ({"plaintext": "x"}, TypeError, "unknown argument"),
        ({"fleet": 0}, ValueError, "fleet must be >= 1"),
        ({"retries": -1}, ValueError, "retries must be >= 0"),
        ({"on_error": "skip"}, ValueError, "on_error must be"),
    ],
)
def test_arguments_are_json_values_of_their_type(kwargs, error, says):
    with pytest.raises(error, match=says):
        jobs.check_arguments(**kwargs)


def test_checked_arguments_survive_a_json_round_trip():
    args = jobs.check_arguments(("testapp.Person",), fleet=1, rate=100, max_duration=60.5, actor="ops")
    assert json.loads(json.dumps(args)) == args
    assert args["models"] == ["testapp.Person"]


def test_a_fleet_needs_row_locks(keys):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite has no SKIP LOCKED; the servers do")
    seed(10)
    rotate()
    with pytest.raises(KeyRotationError, match="2 jobs cannot share a run on database 'default'"):
        jobs.reencrypt(fleet=2)
    assert jobs.reencrypt(fleet=1).finished


@pytest.mark.django_db
def test_a_fleet_is_refused_before_anything_is_queued_where_jobs_cannot_share_a_run():
    if connection.vendor == "sqlite":
        with pytest.raises(
            KeyRotationError,
            match=r"^3 jobs cannot share a run on database 'default': sqlite has no row locks with SKIP "
            r"LOCKED; start one job$",
        ):
            jobs.check_arguments(fleet=3)
    else:
        assert jobs.check_arguments(fleet=3)["fleet"] == 3
    assert jobs.check_arguments(fleet=1)["fleet"] == 1


@pytest.mark.server
def test_a_job_stays_until_the_run_is_done_and_takes_over_a_dead_jobs_chunk(keys):
    """Two jobs of a fleet: A (another process, slow) and B (here, fast). B finishes its chunk
    while A still holds the other one, so B stays; A is then killed mid-chunk, and B takes its
    chunk over and finishes the run."""
    rows = seed(3000)
    rotate()
    slow = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.job", json.dumps({"fleet": 2, "batch_size": 50, "rate": 150})],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert slow.stdout.readline().strip() == b"started"
    run, deadline = None, time.monotonic() + 60
    while run is None or not ReencryptionChunk.objects.filter(run=run, rows_done__gt=0).exists():
        assert slow.poll() is None, slow.stderr.read()
        assert time.monotonic() < deadline, "the slow job never committed a batch"
        time.sleep(0.05)
        run = ReencryptionRun.objects.first()
    mine = {"rows": 0}

    def kill_slow_once_my_chunk_is_done(sender, rows, **kwargs):
        mine["rows"] += rows
        if mine["rows"] >= 1500 and "timer" not in mine:  # B is about to wait for A's chunk
            mine["timer"] = threading.Timer(1.0, os.killpg, (slow.pid, signal.SIGKILL))
            mine["timer"].start()

    signals.batch_completed.connect(kill_slow_once_my_chunk_is_done)
    try:
        result = jobs.reencrypt(fleet=2, batch_size=50)
    finally:
        signals.batch_completed.disconnect(kill_slow_once_my_chunk_is_done)
        if "timer" in mine:
            mine["timer"].join()
        slow.wait(30)
        slow.stdout.close()
        slow.stderr.close()
    assert slow.returncode == -signal.SIGKILL  # A died mid-run, it did not finish its chunk
    assert (result.run_id, result.status) == (run.pk, "finished")
    chunks = list(ReencryptionChunk.objects.filter(run=run))
    assert len(chunks) == 2 and {c.status for c in chunks} == {"done"}
    assert {c.worker.rpartition(":")[2] for c in chunks} == {str(os.getpid())}  # B ended both
    assert sum(c.rows_done for c in chunks) == 3000  # A's committed batches plus B's, once each
    assert result.rows_done < 3000  # A's committed batches were not redone
    assert versions() == {(2, 2, 2)} and state() == rows
