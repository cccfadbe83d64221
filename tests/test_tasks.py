"""``keyrotation.tasks`` with real ``manage.py db_worker`` processes (django-tasks-db's database
backend) on the test's database.

Each worker is ``python -m django db_worker`` in its own process group, on the database the test
shares with it (``tests.helpers.shared_db``): a file on SQLite, the test database on a server. The
tasks are enqueued, and their stored rows read, through ``tests.helpers.outage`` subprocesses on
that same database. The 100,000-row trial runs on PostgreSQL only.
"""

from __future__ import annotations

import json
import sys
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Sum

from keyrotation import keyring
from keyrotation.models import ReencryptionChunk, ReencryptionRun
from tests.helpers.db import copy_people, person_write_log
from tests.helpers.shared_db import SharedDatabase, shared_database, wait_for
from tests.helpers.worker_processes import WorkerProcess, worker_processes
from tests.reliability_support import LOG, rotate, versions
from tests.testapp.models import Person

pytest.importorskip("django_tasks_db", reason="django-tasks-db is not installed: pip install -e '.[test]'")

from keyrotation.tasks import start_reencryption  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 3000
POLICY = json.dumps({"default": {"encrypt": "30d", "index": None}})


@pytest.fixture
def shared_db(tmp_path) -> SharedDatabase:
    return shared_database(tmp_path)


@pytest.fixture
def start_workers(shared_db, tmp_path):
    """``start_workers(n, **env)``: n ``db_worker`` processes, each polling for tasks on return."""
    with worker_processes(tmp_path) as spawn:

        def start(n: int, **env: str) -> list[WorkerProcess]:
            new = []
            for _ in range(n):
                worker_id = f"kr-{uuid.uuid4().hex[:8]}"
                argv = [
                    *(sys.executable, "-m", "django", "db_worker", "--worker-id", worker_id),
                    *("--interval", "0.2", "--no-startup-delay", "--no-reload", "-v", "1"),
                ]
                new.append(spawn(worker_id, argv, {**shared_db.env, **env}))
            for w in new:
                assert wait_for(
                    lambda w=w: f"worker_id={w.name}" in w.text() or w.proc.poll() is not None, 60
                )
                assert w.proc.poll() is None, f"worker {w.name} exited:\n{w.text()}"
            return new

        yield start


def task_rows(db: SharedDatabase, ids: list[str]) -> list[dict]:
    rows = {row["id"]: row for row in db.helper("tasks")}
    return [rows[i] for i in ids]


def finished(db: SharedDatabase, ids: list[str], timeout: float = 120) -> list[dict]:
    """The rows of tasks ``ids`` once each has finished (successfully or not)."""
    done = {"SUCCESSFUL", "FAILED"}
    assert wait_for(lambda: {r["status"] for r in task_rows(db, ids)} <= done, timeout, step=0.5)
    return task_rows(db, ids)


def enqueue(db: SharedDatabase, **arguments) -> list[str]:
    return db.helper("enqueue", json.dumps(arguments))


# -- the tests -----------------------------------------------------------------------------------


def test_the_task_rows_hold_no_plaintext_and_no_key(shared_db, start_workers):
    shared_db.helper("seed", "40")
    secrets = [f"o{i}@example.com" for i in range(40)] + [f"{i:09d}" for i in range(40)]
    secrets.append(settings.TEST_MASTER_KEY)

    [task_id] = enqueue(shared_db, workers=1, models=["testapp.Person"], batch_size=10, actor="ops:alice")
    [row] = task_rows(shared_db, [task_id])
    assert (row["status"], row["args"]) == ("READY", [])
    assert row["kwargs"] == {
        "models": ["testapp.Person"],
        "database": None,
        "fleet": 1,
        "batch_size": 10,
        "rate": None,
        "target_batch_ms": None,
        "max_duration": None,
        "on_error": "stop",
        "actor": "ops:alice",
    }

    start_workers(1)
    [row] = finished(shared_db, [task_id])
    [run] = shared_db.helper("runs")
    assert row["status"] == "SUCCESSFUL", row["raw"]
    assert row["return_value"] == {
        "run_id": run["id"],
        "rows_done": 40,
        "rows_failed": 0,
        "status": "finished",
    }
    assert not [s for s in secrets if s in row["raw"]]
    assert shared_db.helper("check", "40")["ok"]


def test_pause_ends_the_tasks_with_the_state_in_their_result(shared_db, start_workers):
    fleet = 2 if shared_db.server else 1  # SQLite has no SKIP LOCKED: one worker
    shared_db.helper("seed", str(ROWS))
    start_workers(fleet)
    ids = enqueue(shared_db, workers=fleet, batch_size=50, rate=100)  # 15 s on two workers, 30 s on one
    assert wait_for(lambda: shared_db.helper("runs")[0]["rows_done"] >= 200, 60, step=0.5)
    [run] = shared_db.helper("runs")
    assert shared_db.helper("pause") == {"id": run["id"], "status": "paused"}

    paused = [row["return_value"] for row in finished(shared_db, ids, timeout=60)]
    assert {r["status"] for r in paused} == {"paused"}, paused
    [run] = shared_db.helper("runs")
    assert run["status"] == "paused" and 0 < run["rows_done"] < ROWS
    assert sum(r["rows_done"] for r in paused) == run["rows_done"]

    assert shared_db.helper("resume") == {"id": run["id"], "status": "running"}
    resumed = [
        row["return_value"] for row in finished(shared_db, enqueue(shared_db, workers=fleet, batch_size=500))
    ]
    assert {r["status"] for r in resumed} == {"finished"}
    assert {r["run_id"] for r in paused + resumed} == {run["id"]}
    assert sum(r["rows_done"] for r in paused + resumed) == ROWS
    check = shared_db.helper("check", str(ROWS))
    assert check["ok"] and check["versions"] == [[2, 2, 2]], check


def test_rotate_if_due_rotates_a_due_key_and_enqueues_the_reencryption(shared_db, start_workers):
    shared_db.helper("seed", "40")  # encrypt and index keys on version 2
    env = {"KEYROTATION_TEST_ROTATION_PERIOD": POLICY}
    start_workers(1, **env)
    rotate_task = json.dumps({"reencrypt_workers": 1, "actor": "scheduler"})
    [idle] = finished(shared_db, [shared_db.helper("enqueue-rotate", rotate_task, env=env)])
    assert idle["return_value"] == {"rotated": [], "skipped": [], "reencryption": []}

    shared_db.helper("age", "31")
    [due] = finished(shared_db, [shared_db.helper("enqueue-rotate", rotate_task, env=env)])
    assert due["status"] == "SUCCESSFUL", due["raw"]
    summary = due["return_value"]
    assert summary["rotated"] == [
        {"keyring": "default", "purpose": "encrypt", "from_version": 2, "to_version": 3}
    ]
    assert shared_db.helper("keys") == [["default", "encrypt", 3], ["default", "index", 2]]
    [moved] = finished(shared_db, summary["reencryption"])  # enqueued by the task, run by the worker
    assert moved["kwargs"]["actor"] == "scheduler" and moved["kwargs"]["fleet"] == 1
    assert (moved["return_value"]["status"], moved["return_value"]["rows_done"]) == ("finished", 40)
    check = shared_db.helper("check", "40")
    assert check["ok"] and check["versions"] == [[3, 3, 2]], check


def test_a_value_that_cannot_be_opened_fails_the_task_naming_the_row_not_the_value(shared_db, start_workers):
    shared_db.helper("seed", "100")
    pk = shared_db.helper("corrupt")
    [worker] = start_workers(1)
    [bad_scope] = enqueue(shared_db, models=["testapp.Nope"])
    [bad_value] = enqueue(shared_db, batch_size=20)
    scope, value = finished(shared_db, [bad_scope, bad_value])
    assert scope["status"] == value["status"] == "FAILED"
    assert "KeyRotationError" in scope["raw"] and "testapp.Nope" in scope["raw"]
    assert "RunFailed" in value["raw"] and f"testapp.Person.email pk={pk} key version=1" in value["raw"]
    assert "@example.com" not in value["raw"] + worker.text()
    [run] = shared_db.helper("runs")
    assert run["status"] == "failed"


# -- 100,000 rows, three workers, one killed -------------------------------------------------------

BIG = 100_000


def rows_done() -> int:
    return ReencryptionChunk.objects.aggregate(n=Sum("rows_done"))["n"] or 0


@pytest.mark.postgres
@pytest.mark.slow
def test_three_workers_finish_100k_rows_when_one_is_killed_mid_run(keys, shared_db, start_workers):
    from django_tasks_db.models import DBTaskResult

    copy_people(BIG)
    rotate()
    started = time.monotonic()
    with person_write_log():
        workers = start_workers(3)
        ids = start_reencryption(3, batch_size=500, rate=2500)  # about 15 s for three workers
        tasks = DBTaskResult.objects.filter(id__in=ids)
        assert wait_for(lambda: set(tasks.values_list("status", flat=True)) == {"RUNNING"}, 60)
        assert wait_for(lambda: rows_done() >= BIG // 4, 120)

        victim = workers[0]
        victim_task = tasks.get(worker_ids__contains=[victim.name])
        running = ReencryptionChunk.objects.filter(status="running")
        held = {int(c.worker.rpartition(":")[2]): c.pk for c in running}
        assert victim.proc.pid in held, (victim.proc.pid, held)
        victim.kill()
        progress_at_kill = rows_done()
        assert 0.2 * BIG <= progress_at_kill <= 0.7 * BIG, progress_at_kill
        victim_committed = ReencryptionChunk.objects.get(pk=held[victim.proc.pid]).rows_done

        survivors = tasks.exclude(pk=victim_task.pk)
        assert wait_for(
            lambda: set(survivors.values_list("status", flat=True)) == {"SUCCESSFUL"}, 300, step=0.5
        ), [(t.status, t.traceback) for t in survivors.all()]
        with connection.cursor() as cur:
            cur.execute("SELECT pk, count(*) FROM person_writes GROUP BY pk HAVING count(*) <> 1")
            twice = cur.fetchall()
            cur.execute("SELECT count(DISTINCT pk) FROM person_writes")
            written = cur.fetchone()[0]

    # django-tasks-db never looks at a task again once claimed: the dead worker's row stays RUNNING.
    victim_task.refresh_from_db()
    assert victim_task.status == "RUNNING" and victim_task.finished_at is None
    results = [t.return_value for t in survivors.all()]
    run = ReencryptionRun.objects.get()
    assert {r["status"] for r in results} == {"finished"} and {r["run_id"] for r in results} == {run.pk}
    assert run.status == "finished"
    assert twice == [] and written == BIG  # every row written once: none lost, none twice
    assert rows_done() == BIG  # the run's progress is the rows moved
    assert sum(r["rows_done"] for r in results) == BIG - victim_committed
    taken_over = ReencryptionChunk.objects.get(pk=held[victim.proc.pid])
    assert taken_over.status == "done" and not taken_over.worker.endswith(f":{victim.proc.pid}")
    assert versions() == {(2, 2, 2)}
    keyring.clear_cache()
    expected = {i: (f"user{i}@example.com", f"{i:09d}") for i in range(1, BIG + 1)}
    assert {p.pk: (p.email, p.ssn) for p in Person.objects.iterator(chunk_size=5000)} == expected
    LOG.add(
        "django tasks: 100,000 rows, 3 db_workers, one SIGKILLed",
        1,
        time.monotonic() - started,
        {"progress at kill": f"{progress_at_kill / BIG:.0%}", "its chunk taken over at": victim_committed},
    )
