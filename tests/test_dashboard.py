"""The status page's figures (keyrotation.dashboard): overall, per-column shares and folding, the
retire-gate line, the rate series, the run history; and the page's ``ago`` filter."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db import connection

from keyrotation import dashboard, engine, keyring, lifecycle
from keyrotation.engine import samples
from keyrotation.models import DataKey, ReencryptionRun, ReencryptionSample
from keyrotation.templatetags.keyrotation_status import ago
from tests.testapp.models import Account, Person

# How many jobs may share a run: SQLite has no SKIP LOCKED.
MAX_WORKERS = 1 if connection.vendor == "sqlite" else dashboard.MAX_WORKERS

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=dt_timezone.utc)


def census_row(
    label, versions, *, active=2, rows=None, keyring_="default", purpose="encrypt", on_active=None
):
    rows = sum(versions.values()) if rows is None else rows
    return {
        "label": label,
        "model": label.rsplit(".", 1)[0],
        "purpose": purpose,
        "keyring": keyring_,
        "active_version": active,
        "versions": {str(v): n for v, n in versions.items()},
        "rows": rows,
        "on_active": versions.get(active, 0) if on_active is None else on_active,
        "databases": ["default"],
    }


def rotate() -> None:
    lifecycle.rotate("default", "encrypt", actor="test")
    lifecycle.rotate("default", "index", actor="test")
    keyring.invalidate()


# -- pure figures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0 s"),
        (45.4, "45 s"),
        (60, "1 min"),
        (200, "3 min 20 s"),
        (7500, "2 h 5 min"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
    ],
)
def test_duration_text(seconds, text):
    assert dashboard.duration_text(seconds) == text


def test_shares_put_the_active_version_first_then_older_newest_first_then_unknown():
    col = dashboard.column_figures(census_row("a.M.f", {1: 10, 2: 70, 3: 15}, active=3, rows=100))
    assert [(s.version, s.rows, s.active) for s in col.shares] == [
        (3, 15, True),
        (2, 70, False),
        (1, 10, False),
        (None, 5, False),
    ]
    assert [s.percent for s in col.shares] == [15.0, 70.0, 10.0, 5.0]
    assert col.field == "f" and col.percent == 15.0
    assert col.text == "a.M.f: v3 (active): 15 rows, v2: 70 rows, v1: 10 rows, no version yet: 5 rows"


def test_percent_rounds_down_so_that_one_row_left_is_not_100():
    col = dashboard.column_figures(census_row("a.M.f", {1: 1, 2: 9999}))
    assert col.percent == 99.9
    assert dashboard.Overall("default", "encrypt", 2, 0, 0).percent == 100.0  # nothing to do


def test_fold_lists_columns_with_rows_and_names_the_empty_ones():
    census = [
        census_row("a.Empty.x", {}),
        census_row("a.M.f", {1: 3, 2: 1}),
        census_row("a.M.g", {}),
        census_row("a.M.h_bidx", {2: 4}, purpose="index"),
    ]
    models = dashboard.fold(census)
    assert [m.model for m in models] == ["a.M", "a.Empty"]  # models with no row last
    full = models[0]
    assert [c.label for c in full.columns] == ["a.M.f", "a.M.h_bidx"]
    assert full.empty_columns == ("a.M.g",)
    assert (full.rows, full.on_active, full.percent) == (8, 5, 62.5)
    assert models[1].columns == () and models[1].empty_columns == ("a.Empty.x",)


def test_overall_sums_every_column_per_keyring_and_purpose():
    census = [
        census_row("a.M.f", {1: 3, 2: 1}),
        census_row("b.N.g", {2: 4}),
        census_row("a.M.f_bidx", {1: 4}, purpose="index"),
        census_row("c.P.q", {1: 2}, active=1, keyring_="hr"),
    ]
    got = {
        (o.keyring, o.purpose): (o.active_version, o.rows, o.on_active, o.percent)
        for o in dashboard.overall(census)
    }
    assert got == {
        ("default", "encrypt"): (2, 8, 5, 62.5),
        ("default", "index"): (2, 4, 0, 0.0),
        ("hr", "encrypt"): (1, 2, 2, 100.0),
    }


def test_bucket_spreads_each_sample_over_the_stretch_since_the_one_before():
    at = [(T0 + timedelta(seconds=s), n) for s, n in ((2, 20), (4, 40), (6, 10), (6, 10))]
    points = samples.bucket(T0, at)
    # Four intervals of 1.5 s: 20 rows over 0-2 s, 40 over 2-4 s, 10 over 4-6 s, 10 at 6 s.
    assert [p.seconds for p in points] == [1.5] * 4
    assert [round(p.rows, 6) for p in points] == [15.0, 25.0, 22.5, 17.5]
    assert points[0].rows_per_second == 10.0
    assert points[-1].at == T0 + timedelta(seconds=6)
    assert samples.bucket(T0, []) == [] and samples.bucket(T0, [(T0, 5)]) == []


def test_bucket_of_a_steady_run_is_flat_whatever_the_jitter():
    times = [2.0 * i + (0.3 if i % 2 else -0.3) for i in range(1, 61)]  # 60 samples, ~2 s apart
    at, prev = [], 0.0
    for t in times:
        at.append((T0 + timedelta(seconds=t), round(10 * (t - prev))))  # 10 rows/s throughout
        prev = t
    points = samples.bucket(T0, at)
    assert len(points) == samples.BUCKETS
    assert round(sum(p.rows for p in points)) == sum(n for _, n in at)
    assert all(9.0 <= p.rows_per_second <= 11.0 for p in points), [p.rows_per_second for p in points]


def test_ago():
    assert ago(T0 - timedelta(seconds=59), T0) == "just now"
    assert ago(T0 - timedelta(minutes=3, seconds=5), T0) == "3\xa0minutes ago"
    assert ago(None) == ""


# -- against the database -----------------------------------------------------------------------


def test_retire_gate_line_follows_the_census(keys, settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0}
    Person.objects.bulk_create(
        Person(name=f"p{i}", email=f"p{i}@example.com", ssn="123-45-6789") for i in range(3)
    )
    rotate()
    v1 = DataKey.objects.get(keyring="default", purpose="encrypt", version=1)
    refused = dashboard.retire_gate(v1)
    assert (refused.allowed, refused.rows, refused.reason) == (False, 6, "referenced")  # email + ssn
    assert refused.line == "v1: 6 rows left — retire refused"
    engine.reencrypt(actor="test")
    allowed = dashboard.retire_gate(v1)
    assert (allowed.allowed, allowed.rows, allowed.line) == (True, 0, "v1: no rows left — can be retired")
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 3600}
    waiting = dashboard.retire_gate(v1)
    assert not waiting.allowed and waiting.reason == "cache" and waiting.rows is None
    assert waiting.line.startswith("v1: retire refused — stopped being active less than CACHE_SECONDS ago")


def test_build_gives_keys_overall_run_rate_and_history(keys, settings, monkeypatch):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0, "ROTATION_PERIOD": "90d"}
    monkeypatch.setattr(samples, "SAMPLE_SECONDS", 0.0)  # a sample with every batch
    Person.objects.bulk_create(Person(name=f"p{i}", email=f"p{i}@example.com") for i in range(30))
    Account.objects.create(username="root")
    rotate()
    first = engine.reencrypt(["testapp.Account"], actor="test")
    report = engine.reencrypt(["testapp.Person"], batch_size=7, actor="ops")
    assert first.status == report.status == "finished"
    run = ReencryptionRun.objects.get(pk=report.run_id)
    # Rows (not values): one sample per batch of 7, and the rest at the chunk's end.
    assert list(ReencryptionSample.objects.filter(run=run).values_list("rows", flat=True)) == [7, 7, 7, 7, 2]

    board = dashboard.build()
    enc = next(o for o in board.overall if (o.keyring, o.purpose) == ("default", "encrypt"))
    assert (enc.active_version, enc.percent) == (2, 100.0) and enc.rows >= 31
    person = next(m for m in board.models if m.model == "testapp.Person")
    email = next(c for c in person.columns if c.label == "testapp.Person.email")
    assert [(s.version, s.rows) for s in email.shares] == [(2, 30)]
    assert "testapp.Person.ssn" in person.empty_columns  # no ssn given: folded away
    assert board.run.run.pk == run.pk and board.run.outcome == "done" and board.run.percent == 100.0
    assert board.run.rate and round(sum(p.rows for p in board.run.rate)) == 30
    assert [(r.id, r.outcome, r.rows_done) for r in board.history] == [(first.run_id, "done", 1)]
    key = next(k for k in board.keys if (k.keyring, k.purpose) == ("default", "encrypt"))
    assert key.active_version == 2 and key.age.period == timedelta(days=90) and key.age.due_at is not None
    assert key.holding == ((2, 31),)
    assert [g.line for g in key.gates] == ["v1: no rows left — can be retired"]

    data = json.loads(json.dumps(board.as_dict()))
    assert set(data) == {"generated_at", "overall", "models", "run", "history", "keys", "columns", "start"}
    assert data["start"] == {  # nothing left to do, and no backend configured
        "can_start": False,
        "backend": None,
        "problem": None,
        "pending": False,
        "open_run": None,
        "max_workers": MAX_WORKERS,
    }
    assert data["run"]["id"] == run.pk and data["run"]["outcome"] == "done" and data["run"]["rate"]
    assert {"at", "seconds", "rows", "rows_per_second"} == set(data["run"]["rate"][0])
    assert data["keys"][0]["retire"][0]["allowed"] is True and data["keys"][0]["age"]["due_at"]
    assert data["history"][0]["duration_seconds"] is not None
    # The census part keeps engine.status()'s shape.
    assert [c["label"] for c in data["columns"]] == [c["label"] for c in engine.status()["columns"]]


def test_samples_are_bounded_by_the_interval(keys, monkeypatch):
    Person.objects.bulk_create(Person(name=f"p{i}", email=f"p{i}@example.com") for i in range(40))
    rotate()
    monkeypatch.setattr(samples, "SAMPLE_SECONDS", 3600.0)  # never due within this test
    report = engine.reencrypt(["testapp.Person"], batch_size=5, actor="test")
    # Eight batches, one chunk: only the chunk's end stores the tally, as one sample.
    assert list(ReencryptionSample.objects.filter(run_id=report.run_id).values_list("rows", flat=True)) == [
        40
    ]


def test_no_run_yet(keys):
    board = dashboard.build()
    assert board.run is None and board.history == ()
    assert [g for k in board.keys for g in k.gates] == []  # no version but the active one
    assert all(not m.columns for m in board.models)
    assert board.as_dict()["run"] is None


def test_start_option_follows_the_rows_the_run_and_the_backend(keys, settings, monkeypatch):
    Person.objects.bulk_create(Person(name=f"p{i}", email=f"p{i}@example.com") for i in range(5))
    assert dashboard.build().start == dashboard.StartOption(
        None, None, pending=False, open_run=None, max_workers=MAX_WORKERS
    )
    rotate()
    assert dashboard.build().start == dashboard.StartOption(
        None, None, pending=True, open_run=None, max_workers=MAX_WORKERS
    )
    settings.KEYROTATION = {**settings.KEYROTATION, "TASK_BACKEND": "django"}
    start = dashboard.build().start
    assert start.possible and start.offered and start.backend_label == "Django tasks"

    run = ReencryptionRun.objects.create(
        status="paused", scope="*", targets={"default/encrypt": 2}, rows_total=5
    )
    start = dashboard.build().start
    assert (start.open_run, start.possible, start.offered) == (run.pk, False, False)
    run.status = "aborted"
    run.save()
    assert dashboard.build().start.possible  # the last run ended: a new one may start

    settings.KEYROTATION = {**settings.KEYROTATION, "TASK_BACKEND": "celery"}
    monkeypatch.setitem(sys.modules, "celery", None)  # not installed
    start = dashboard.build().start
    assert not start.possible and start.offered
    assert (
        start.problem
        == 'KEYROTATION["TASK_BACKEND"] is \'celery\': install celery ("django-keyrotation[celery]")'
    )
    settings.KEYROTATION = {**settings.KEYROTATION, "TASK_BACKEND": "rq"}
    start = dashboard.build().start
    assert start.backend is None and "must be None" in start.problem and not start.possible
