"""``keyrotation.contrib.celery`` with real Celery worker processes on a real Redis broker.

Each worker is ``celery -A tests.celery_app worker --pool prefork --concurrency 1``, its own
process group, on the test's database: on SQLite a file made for the test (the suite's own
database is in memory), on PostgreSQL the test database. The small tests run on both and drive
that database through ``tests.helpers.outage`` subprocesses; the 100,000-row trial runs on
PostgreSQL only.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Sum

from keyrotation import keyring
from keyrotation.models import ReencryptionChunk, ReencryptionRun
from tests import servers
from tests.helpers.db import copy_people, person_write_log
from tests.helpers.shared_db import SharedDatabase, shared_database, wait_for
from tests.helpers.worker_processes import WorkerProcess, worker_processes
from tests.reliability_support import LOG, rotate, versions
from tests.testapp.models import Person

try:
    import celery  # noqa: F401
    import redis
except ImportError:  # pragma: no cover - the test extra installs both
    if os.environ.get(servers.REQUIRE_REDIS_ENV) == "1":
        raise
    pytest.skip("celery[redis] is not installed: pip install -e '.[test]'", allow_module_level=True)

from keyrotation.contrib.celery import start_reencryption  # noqa: E402

# On SQLite the workers use a file of their own; the marker gives the PostgreSQL runs a test
# database that the workers see (committed, flushed after each test).
pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

ROWS = 3000


# -- the parts: Redis, the database the workers share, the worker processes ---------------------


@pytest.fixture(scope="session")
def celery_app(redis_url):
    from tests.celery_app import app

    return app


@pytest.fixture
def broker(redis_url, celery_app):
    """The Redis client, on an empty database (nothing left by an earlier test)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def shared_db(tmp_path) -> SharedDatabase:
    return shared_database(tmp_path)


@pytest.fixture
def start_workers(shared_db, celery_app, broker, tmp_path):
    """``start_workers(n, **env)``: n worker processes, each ready (answering a ping) on return."""
    with worker_processes(tmp_path) as spawn:

        def start(n: int, **env: str) -> list[WorkerProcess]:
            new = []
            for _ in range(n):
                name = f"kr-{uuid.uuid4().hex[:8]}@test"
                argv = [
                    *(sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker"),
                    *("--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO"),
                    *("--hostname", name, "--without-gossip", "--without-mingle"),
                ]
                new.append(spawn(name, argv, {**shared_db.env, **env}))
            waiting, deadline = {w.name for w in new}, time.monotonic() + 90
            while waiting and time.monotonic() < deadline:
                for reply in celery_app.control.ping(destination=sorted(waiting), timeout=1.0):
                    waiting -= set(reply)
                for w in new:
                    assert w.proc.poll() is None, f"worker {w.name} exited:\n{w.text()}"
            assert not waiting, f"workers not ready: {waiting}"
            return new

        yield start


def results(app, ids: list[str], timeout: float = 120) -> list[dict]:
    return [app.AsyncResult(task_id).get(timeout=timeout) for task_id in ids]


def broker_dump(client) -> bytes:
    """Every value Redis holds (messages, unacknowledged ones, results), concatenated."""
    out = []
    for key in client.keys("*"):
        kind = client.type(key)
        if kind == b"list":
            out += client.lrange(key, 0, -1)
        elif kind == b"hash":
            out += [k + b" " + v for k, v in client.hgetall(key).items()]
        elif kind == b"zset":
            out += client.zrange(key, 0, -1)
        elif kind == b"set":
            out += list(client.smembers(key))
        elif kind == b"string":
            out.append(client.get(key))
        out.append(key)
    return b"\n".join(out)


def _message_bodies(client, queue: str = "celery") -> list[list]:
    """The (args, kwargs, embed) bodies of the messages waiting in ``queue``."""
    return [json.loads(base64.b64decode(json.loads(m)["body"])) for m in client.lrange(queue, 0, -1)]


# -- the tests -----------------------------------------------------------------------------------


def test_the_broker_holds_no_plaintext_and_no_key(shared_db, celery_app, broker, start_workers):
    shared_db.helper("seed", "40")
    secrets = [f"o{i}@example.com".encode() for i in range(40)] + [f"{i:09d}".encode() for i in range(40)]
    secrets += [settings.TEST_MASTER_KEY.encode(), b"\x11" * 32]

    with pytest.raises(TypeError, match="models must be a list"):
        start_reencryption(models=[type(None)])
    with pytest.raises(TypeError, match="rate must be a number of rows per second"):
        start_reencryption(rate="fast")
    assert broker.llen("celery") == 0  # refused before anything was sent

    [task_id] = start_reencryption(1, ["testapp.Person"], batch_size=10, actor="ops:alice")
    [(args, kwargs, _)] = _message_bodies(broker)
    assert args == []
    assert kwargs == {
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
    held = broker_dump(broker)
    assert not [s for s in secrets if s in held]

    start_workers(1)
    [result] = results(celery_app, [task_id])
    [run] = shared_db.helper("runs")
    assert result == {
        **{"run_id": run["id"], "rows_done": 40, "rows_failed": 0},
        **{"status": "finished", "retries": 0},
    }
    held = broker_dump(broker)  # now with the result, and whatever the worker left
    assert b"finished" in held and not [s for s in secrets if s in held]
    assert shared_db.helper("check", "40")["ok"]


def test_pause_ends_the_tasks_and_resumed_tasks_finish(shared_db, celery_app, start_workers):
    fleet = 2 if shared_db.server else 1  # SQLite has no SKIP LOCKED: one worker
    shared_db.helper("seed", str(ROWS))
    start_workers(fleet)
    ids = start_reencryption(fleet, batch_size=50, rate=250)
    assert wait_for(lambda: shared_db.helper("runs")[0]["rows_done"] >= 200, 60)
    [run] = shared_db.helper("runs")
    assert shared_db.helper("pause") == {"id": run["id"], "status": "paused"}

    paused = results(celery_app, ids, timeout=60)  # they end; a CLI process would wait
    assert {r["status"] for r in paused} == {"paused"}
    [run] = shared_db.helper("runs")
    assert run["status"] == "paused"
    assert 0 < run["rows_done"] < ROWS
    assert sum(r["rows_done"] for r in paused) == run["rows_done"]
    assert {c["status"] for c in run["chunks"]} <= {"pending", "done"}  # released, none held

    assert shared_db.helper("resume") == {"id": run["id"], "status": "running"}
    resumed = results(celery_app, start_reencryption(fleet, batch_size=500))
    assert {r["status"] for r in resumed} == {"finished"}
    assert {r["run_id"] for r in paused + resumed} == {run["id"]}
    assert sum(r["rows_done"] for r in paused + resumed) == ROWS
    [run] = shared_db.helper("runs")
    assert (run["status"], run["rows_done"]) == ("finished", ROWS)
    check = shared_db.helper("check", str(ROWS))
    assert check["ok"] and check["versions"] == [[2, 2, 2]], check


def test_a_kek_outage_is_retried_by_celery(shared_db, celery_app, start_workers, openbao_server):
    kek = {
        "BACKEND": "vault",
        "URL": openbao_server.addr,
        "TOKEN": openbao_server.token,
        "KEY_NAME": f"kr-{uuid.uuid4().hex[:8]}",
        "TIMEOUT": 3,
    }
    env = {"KEYROTATION_TEST_KEK": json.dumps(kek)}
    shared_db.helper("seed", "300", env=env)
    openbao_server.stop()  # a fresh worker must unwrap its data keys: it cannot
    try:
        [worker] = start_workers(1, **env)
        [task_id] = start_reencryption(1, batch_size=100)
        task = celery_app.AsyncResult(task_id)
        assert wait_for(lambda: task.state == "RETRY", 60), task.state
    finally:
        openbao_server.start()
    [result] = results(celery_app, [task_id])
    assert result["status"] == "finished" and result["rows_done"] == 300
    assert result["retries"] >= 1
    log = worker.text()
    assert "Retry in" in log and "KEKUnreachable" in log, log
    check = shared_db.helper("check", "300", env=env)
    assert check["ok"] and check["versions"] == [[2, 2, 2]], check


def test_a_bad_scope_or_a_value_that_cannot_be_opened_fails_the_task_at_once(
    shared_db, celery_app, start_workers
):
    shared_db.helper("seed", "100")
    pk = shared_db.helper("corrupt")
    [worker] = start_workers(1)

    [bad_scope] = start_reencryption(models=["testapp.Nope"])
    [bad_value] = start_reencryption(batch_size=20)
    for task_id, error, says in (
        (bad_scope, "KeyRotationError", "testapp.Nope"),
        (bad_value, "RunFailed", f"testapp.Person.email pk={pk} key version=1"),
    ):
        task = celery_app.AsyncResult(task_id)
        task.get(propagate=False, timeout=60)
        assert task.state == "FAILURE"
        assert type(task.result).__name__ == error and says in str(task.result), task.result
        assert task.retries == 0
    assert "Retry in" not in worker.text()
    [run] = shared_db.helper("runs")
    assert run["status"] == "failed"
    assert "@example.com" not in worker.text()  # the failure names the row, never its value


POLICY = json.dumps({"default": {"encrypt": "30d", "index": None}})


def test_rotate_if_due_rotates_a_due_key_once_and_can_start_the_reencryption(
    shared_db, celery_app, broker, start_workers
):
    shared_db.helper("seed", "40")  # encrypt and index keys on version 2
    env = {"KEYROTATION_TEST_ROTATION_PERIOD": POLICY}
    start_workers(1, **env)
    idle = celery_app.send_task("keyrotation.rotate_if_due", kwargs={"reencrypt_workers": 1})
    assert idle.get(timeout=60) == {"rotated": [], "skipped": [], "reencryption": [], "retries": 0}

    shared_db.helper("age", "31")
    due = celery_app.send_task("keyrotation.rotate_if_due", kwargs={"reencrypt_workers": 1, "actor": "beat"})
    summary = due.get(timeout=60)
    assert summary["rotated"] == [
        {"keyring": "default", "purpose": "encrypt", "from_version": 2, "to_version": 3}
    ]
    assert summary["skipped"] == [] and summary["retries"] == 0
    [reencryption] = summary["reencryption"]
    assert shared_db.helper("keys") == [["default", "encrypt", 3], ["default", "index", 2]]
    [moved] = results(celery_app, [reencryption])
    assert (moved["status"], moved["rows_done"]) == ("finished", 40)
    check = shared_db.helper("check", "40")
    assert check["ok"] and check["versions"] == [[3, 3, 2]], check

    again = celery_app.send_task("keyrotation.rotate_if_due", kwargs={"reencrypt_workers": 1})
    assert again.get(timeout=60)["rotated"] == []  # the new version is not due
    assert shared_db.helper("keys") == [["default", "encrypt", 3], ["default", "index", 2]]
    held = broker_dump(broker)
    assert b"o1@example.com" not in held and settings.TEST_MASTER_KEY.encode() not in held


def test_rotate_if_due_refuses_a_bad_argument_without_retrying(shared_db, celery_app, start_workers):
    shared_db.helper("seed", "5")
    start_workers(1)
    task = celery_app.send_task("keyrotation.rotate_if_due", kwargs={"reencrypt_workers": -1})
    task.get(propagate=False, timeout=60)
    assert task.state == "FAILURE" and task.retries == 0
    assert "reencrypt_workers must be an integer >= 0" in str(task.result)


def test_rotate_if_due_retries_a_kek_outage(shared_db, celery_app, start_workers, openbao_server):
    kek = {
        "BACKEND": "vault",
        "URL": openbao_server.addr,
        "TOKEN": openbao_server.token,
        "KEY_NAME": f"kr-{uuid.uuid4().hex[:8]}",
        "TIMEOUT": 3,
    }
    env = {"KEYROTATION_TEST_KEK": json.dumps(kek), "KEYROTATION_TEST_ROTATION_PERIOD": POLICY}
    shared_db.helper("seed", "5", env=env)
    shared_db.helper("age", "31", env=env)
    openbao_server.stop()  # the new version's data key cannot be wrapped
    try:
        [worker] = start_workers(1, **env)
        task = celery_app.send_task("keyrotation.rotate_if_due")
        assert wait_for(lambda: task.state == "RETRY", 60), task.state
        assert shared_db.helper("keys", env=env) == [["default", "encrypt", 2], ["default", "index", 2]]
    finally:
        openbao_server.start()
    summary = task.get(timeout=120)
    assert summary["rotated"] == [
        {"keyring": "default", "purpose": "encrypt", "from_version": 2, "to_version": 3}
    ]
    assert summary["retries"] >= 1 and summary["reencryption"] == []
    assert "Retry in" in worker.text() and "KEKUnreachable" in worker.text()
    assert shared_db.helper("keys", env=env) == [["default", "encrypt", 3], ["default", "index", 2]]


# -- 100,000 rows, three workers, one killed -------------------------------------------------------

BIG = 100_000


def rows_done() -> int:
    return ReencryptionChunk.objects.aggregate(n=Sum("rows_done"))["n"] or 0


@pytest.mark.postgres
@pytest.mark.slow
def test_three_workers_finish_100k_rows_when_one_is_killed_mid_run(
    keys, shared_db, celery_app, start_workers
):
    copy_people(BIG)
    rotate()
    started = time.monotonic()
    with person_write_log():
        workers = start_workers(3)
        ids = start_reencryption(3, batch_size=500, rate=2500)  # about 15 s for three workers
        tasks = [celery_app.AsyncResult(task_id) for task_id in ids]
        assert wait_for(lambda: all(t.state == "STARTED" for t in tasks), 60)
        assert wait_for(lambda: rows_done() >= BIG // 4, 120)

        victim_task = tasks[0]
        victim = next(w for w in workers if w.name == victim_task.info["hostname"])
        victim_pid = victim_task.info["pid"]
        running = ReencryptionChunk.objects.filter(status="running")
        held = {int(c.worker.rpartition(":")[2]): c.pk for c in running}
        assert victim.owns(victim_pid) and victim_pid in held, (victim_pid, held)
        victim.kill()
        progress_at_kill = rows_done()
        assert 0.2 * BIG <= progress_at_kill <= 0.7 * BIG, progress_at_kill
        victim_committed = ReencryptionChunk.objects.get(pk=held[victim_pid]).rows_done

        survivors = results(celery_app, ids[1:], timeout=300)
        assert victim_task.state == "STARTED"  # its message is never acknowledged
        with connection.cursor() as cur:
            cur.execute("SELECT pk, count(*) FROM person_writes GROUP BY pk HAVING count(*) <> 1")
            twice = cur.fetchall()
            cur.execute("SELECT count(DISTINCT pk) FROM person_writes")
            written = cur.fetchone()[0]

    run = ReencryptionRun.objects.get()
    assert {r["status"] for r in survivors} == {"finished"} and {r["run_id"] for r in survivors} == {run.pk}
    assert run.status == "finished"
    assert twice == [] and written == BIG  # every row written once: none lost, none twice
    assert rows_done() == BIG  # the run's progress is the rows moved
    assert sum(r["rows_done"] for r in survivors) == BIG - victim_committed
    taken_over = ReencryptionChunk.objects.get(pk=held[victim_pid])
    assert taken_over.status == "done" and not taken_over.worker.endswith(f":{victim_pid}")
    assert versions() == {(2, 2, 2)}
    keyring.clear_cache()
    expected = {i: (f"user{i}@example.com", f"{i:09d}") for i in range(1, BIG + 1)}
    assert {p.pk: (p.email, p.ssn) for p in Person.objects.iterator(chunk_size=5000)} == expected
    LOG.add(
        "celery: 100,000 rows, 3 workers, one SIGKILLed",
        1,
        time.monotonic() - started,
        {"progress at kill": f"{progress_at_kill / BIG:.0%}", "its chunk taken over at": victim_committed},
    )
