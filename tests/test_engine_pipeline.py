"""Two batches in flight per worker (engine/pipeline.py), PostgreSQL: same result as one at a
time, commits in order, and nothing commits after a failure."""

from __future__ import annotations

import io
import threading

import pytest
from django.core.management import call_command
from django.db import OperationalError

from keyrotation import engine
from keyrotation.engine import pipeline, runs
from keyrotation.engine.dialects import PostgreSQL
from keyrotation.models import ReencryptionRun
from tests.test_engine import assert_all_on, make_people, raw, rotate_all

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def people(keys):
    return make_people(300)


def moved() -> set:
    return {pk for pk, (_, version) in raw("email").items() if version == 2} | {
        pk for pk, (_, version) in raw("ssn").items() if version == 2
    }


@pytest.fixture
def commits(monkeypatch):
    """(thread name, cursor) of every committed batch, in commit order."""
    seen: list[tuple[str, object]] = []
    persist = runs.persist_batch

    def spy(chunk, cursor, rows, using=None):
        seen.append((threading.current_thread().name, cursor))
        return persist(chunk, cursor, rows, using=using)

    monkeypatch.setattr(runs, "persist_batch", spy)
    return seen


def test_two_lanes_share_the_batches_and_commit_in_order(people, commits):
    rotate_all()
    report = engine.reencrypt(batch_size=25)
    assert report.ok, report.as_dict()
    assert {name for name, _ in commits} == {"MainThread", "keyrotation-lane-1"}
    cursors = [cursor for _, cursor in commits]
    assert cursors == sorted(cursors)  # committed in key order
    assert_all_on(2, people)
    run = ReencryptionRun.objects.get()
    assert runs.progress(run).rows_done == report.rows_done == report.rows_total


def test_without_the_pipeline_one_lane_does_everything(people, commits):
    rotate_all()
    assert engine.reencrypt(batch_size=25, pipeline=False).ok
    assert {name for name, _ in commits} == {"MainThread"}
    assert_all_on(2, people)


def test_the_command_can_keep_one_batch_in_flight(people, commits):
    rotate_all()
    call_command(
        "reencrypt", "--batch-size", "25", "--one-batch-at-a-time", "--no-progress", stdout=io.StringIO()
    )
    assert {name for name, _ in commits} == {"MainThread"}
    assert_all_on(2, people)


def test_a_rate_capped_run_is_not_pipelined(people, monkeypatch):
    rotate_all()
    monkeypatch.setattr(pipeline.Pipeline, "run", lambda self: pytest.fail("pipelined"))
    assert engine.reencrypt(batch_size=25, rate=1_000_000).ok
    assert_all_on(2, people)


def test_a_batch_time_target_still_pipelines_and_resizes(people, monkeypatch):
    rotate_all()
    sizes = []
    select = PostgreSQL.select_batch

    def spy(dialect, plan, lo, hi, limit, **kw):
        sizes.append(limit)
        return select(dialect, plan, lo, hi, limit, **kw)

    monkeypatch.setattr(PostgreSQL, "select_batch", spy)
    runs_ = []
    monkeypatch.setattr(
        pipeline.Pipeline, "run", lambda self, run=pipeline.Pipeline.run: runs_.append(1) or run(self)
    )
    assert engine.reencrypt(batch_size=10, target_batch_ms=10_000).ok
    assert runs_ and max(sizes) > 10  # fast batches grow towards the target
    assert_all_on(2, people)


def test_a_lost_connection_in_a_lane_is_retried_and_nothing_is_lost(people, monkeypatch):
    rotate_all()
    write, calls = PostgreSQL.write_batch, []

    def flaky(dialect, plan, w):
        calls.append(threading.current_thread().name)
        if len(calls) in (3, 6):
            raise OperationalError("server closed the connection unexpectedly")
        return write(dialect, plan, w)

    monkeypatch.setattr(PostgreSQL, "write_batch", flaky)
    report = engine.reencrypt(batch_size=25)
    assert report.ok, report.as_dict()
    assert_all_on(2, people)
    run = ReencryptionRun.objects.get()
    assert runs.progress(run).rows_done == report.rows_done == report.rows_total


def test_an_error_in_one_lane_commits_nothing_after_it(people, monkeypatch):
    """Batch 4 fails; batch 5 (the other lane, already written) rolls back; the committed
    cursor covers exactly batches 0-3, and a rerun finishes the job."""
    rotate_all()
    write, calls = PostgreSQL.write_batch, []

    def broken(dialect, plan, w):
        calls.append(w.pks[0])
        if len(calls) == 5:
            raise RuntimeError("boom")
        return write(dialect, plan, w)

    monkeypatch.setattr(PostgreSQL, "write_batch", broken)
    with pytest.raises(RuntimeError, match="boom"):
        engine.reencrypt(batch_size=25)
    run = ReencryptionRun.objects.get()
    done = runs.progress(run).rows_done
    assert done == len(moved()) > 0
    (chunk,) = run.chunks.filter(rows_done__gt=0)
    assert all(pk <= int(chunk.cursor) for pk in moved())
    monkeypatch.setattr(PostgreSQL, "write_batch", write)
    assert engine.reencrypt().ok
    assert_all_on(2, people)
