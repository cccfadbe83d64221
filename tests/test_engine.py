"""The re-encryption engine on SQLite (single worker, optimistic guards) and PostgreSQL."""

from __future__ import annotations

import pytest
from django.db import connection

from keyrotation import crypto, engine, keyring, lifecycle
from keyrotation.engine import runs
from keyrotation.exceptions import KeyRotationError, KeyStateError
from keyrotation.models import KeyRotationAudit, QuarantinedValue, ReencryptionRun
from tests.testapp.models import Person

pytestmark = pytest.mark.django_db(transaction=True)


def make_people(n: int) -> dict[int, tuple]:
    people = Person.objects.bulk_create(
        Person(
            name=f"p{i}",
            email=None if i % 17 == 0 else f"user{i}@example.com",
            ssn=f"{i:03d}-00-{i:04d}" if i % 3 else None,
        )
        for i in range(n)
    )
    return {p.pk: (p.email, p.ssn) for p in people}


def raw(column: str) -> dict:
    with connection.cursor() as cur:
        cur.execute(f"SELECT id, {column}, {column}_key_version FROM testapp_person ORDER BY id")
        return {pk: (bytes(v) if v is not None else None, ver) for pk, v, ver in cur.fetchall()}


def corrupt(pk: int, column: str = "email") -> None:
    token = raw(column)[pk][0]
    bad = token[:-1] + bytes([token[-1] ^ 1])
    with connection.cursor() as cur:
        cur.execute(f"UPDATE testapp_person SET {column} = %s WHERE id = %s", [bad, pk])


def rotate_all():
    lifecycle.rotate("default", "encrypt")
    lifecycle.rotate("default", "index")
    keyring.invalidate()


def assert_all_on(version: int, expected: dict) -> None:
    for column in ("email", "ssn"):
        for pk, (token, ver) in raw(column).items():
            if token is None:
                assert ver is None
            else:
                assert ver == version == crypto.token_version(token), (column, pk)
    keyring.clear_cache()
    got = {p.pk: (p.email, p.ssn) for p in Person.objects.all()}
    assert got == expected


@pytest.fixture
def people(keys):
    return make_people(230)


def test_full_rotation_moves_every_row_and_keeps_values(people):
    rotate_all()
    before = engine.status()["columns"]
    assert all(c["percent_active"] == 0 or c["rows"] == 0 for c in before)
    report = engine.reencrypt(batch_size=40)
    assert report.ok, report.as_dict()
    with_values = sum(1 for email, ssn in people.values() if email or ssn)
    assert report.rows_done == report.rows_total == with_values < len(people)
    assert_all_on(2, people)
    # Search still works after the index key moved.
    pk, (email, _) = next((pk, v) for pk, v in people.items() if v[0])
    assert Person.objects.get(email=email).pk == pk
    assert all(c["percent_active"] == 100.0 for c in engine.status()["columns"])
    actions = list(KeyRotationAudit.objects.order_by("id").values_list("action", flat=True))
    assert actions[-2:] == ["run_started", "run_finished"]


def test_rows_with_mixed_versions(keys):
    first = make_people(50)
    lifecycle.rotate("default", "encrypt")
    keyring.invalidate()
    second = make_people(50)  # written under v2 by the application
    lifecycle.rotate("default", "encrypt")
    keyring.invalidate()
    versions = {v for _, v in raw("email").values() if v}
    assert versions == {1, 2}
    report = engine.reencrypt(batch_size=7)
    assert report.ok
    assert_all_on(3, {**first, **second})


@pytest.mark.parametrize("purpose", ["encrypt", "index"])
def test_one_purpose_rotated_writes_only_its_columns(people, purpose):
    """The other purpose's columns are not in the UPDATE: their bytes stay exactly as they were."""
    untouched = ("email_bidx",) if purpose == "encrypt" else ("email", "ssn")
    before = {c: raw(c) for c in untouched}
    lifecycle.rotate("default", purpose)
    keyring.invalidate()
    report = engine.reencrypt(batch_size=40)
    assert report.ok, report.as_dict()
    assert report.rows_done == sum(
        1 for email, ssn in people.values() if (email or ssn if purpose == "encrypt" else email)
    )
    assert {c: raw(c) for c in untouched} == before
    moved = ("email", "ssn") if purpose == "encrypt" else ("email_bidx",)
    assert {ver for c in moved for token, ver in raw(c).values() if token is not None} == {2}
    assert engine.verify()["failure_count"] == 0
    pk, (email, _) = next((pk, v) for pk, v in people.items() if v[0])
    assert Person.objects.get(email=email).pk == pk


def test_a_version_recorded_for_no_value_is_cleared(people):
    """A NULL value whose version column says otherwise (written outside the ORM) ends consistent."""
    pk = next(pk for pk, v in people.items() if v[1] is None and v[0])
    with connection.cursor() as cur:
        cur.execute("UPDATE testapp_person SET ssn_key_version = 1 WHERE id = %s", [pk])
    rotate_all()
    report = engine.reencrypt(batch_size=40)
    assert report.ok, report.as_dict()
    assert raw("ssn")[pk] == (None, None)
    assert_all_on(2, people)


def test_nothing_to_do_finishes_at_once(people):
    report = engine.reencrypt()
    assert report.ok and report.rows_done == 0


def test_dry_run_changes_nothing(people):
    rotate_all()
    email, ssn = raw("email"), raw("ssn")
    audit_rows = KeyRotationAudit.objects.count()
    plan = engine.dry_run()
    assert plan["rows_pending"] == sum(1 for email, ssn in people.values() if email or ssn)
    (person,) = [m for m in plan["models"] if m["model"] == "testapp.Person"]
    assert person["sample_rows"] > 0 and person["sample_failures"] == 0
    assert "default/encrypt/v1" in plan["kek_unwraps"]
    assert raw("email") == email and raw("ssn") == ssn
    assert not ReencryptionRun.objects.exists()
    assert KeyRotationAudit.objects.count() == audit_rows


def test_verify_passes_then_names_a_corrupted_row(people):
    assert engine.verify()["failure_count"] == 0
    pk = next(pk for pk, v in people.items() if v[0])
    corrupt(pk)
    result = engine.verify()
    assert result["failure_count"] == 1
    (failure,) = result["failures"]
    assert f"testapp.Person.email pk={pk}" in failure and "key version=1" in failure
    assert people[pk][0] not in failure


def test_verify_catches_a_stale_blind_index(people):
    pk = next(pk for pk, v in people.items() if v[0])
    other = next(p for p, v in people.items() if v[0] and p != pk)
    idx = raw("email_bidx")
    with connection.cursor() as cur:
        cur.execute("UPDATE testapp_person SET email_bidx = %s WHERE id = %s", [idx[other][0], pk])
    (failure,) = engine.verify()["failures"]
    assert "testapp.Person.email_bidx" in failure and "does not match" in failure


def test_decrypt_failure_stops_the_run_and_overwrites_nothing(people):
    pk = sorted(pk for pk, v in people.items() if v[0])[5]
    corrupt(pk)
    rotate_all()
    bad = raw("email")[pk]
    report = engine.reencrypt(batch_size=1000)
    assert report.status == "failed" and not report.ok
    (error,) = report.errors
    assert f"testapp.Person.email pk={pk} key version=1" in error
    assert raw("email")[pk] == bad
    # The batch holding the bad row was rolled back whole: nothing half-written.
    assert {v for _, v in raw("email").values() if v} == {1}
    run = ReencryptionRun.objects.get()
    assert run.status == "failed" and str(pk) in run.error
    assert KeyRotationAudit.objects.filter(action="run_failed", status="failed").exists()


def test_quarantine_goes_on_and_blocks_retirement(people, settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0}
    pk = sorted(pk for pk, v in people.items() if v[0])[3]
    corrupt(pk)
    rotate_all()
    report = engine.reencrypt(batch_size=25, on_error="quarantine")
    assert report.status == "finished" and report.rows_failed == 1 and not report.ok
    q = QuarantinedValue.objects.get()
    assert (q.label, q.pk_value, q.key_version) == ("testapp.Person.email", str(pk), 1)
    assert people[pk][0] not in str(q)
    with pytest.raises(KeyStateError, match=r"1 row\(s\) of testapp.Person.email"):
        lifecycle.retire("default", "encrypt", 1)


def test_retire_refused_with_one_stale_row_then_accepted(people, settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0}
    rotate_all()
    assert engine.reencrypt().ok
    # One row written back under v1 (as a process with a stale cache would).
    pk = next(pk for pk, v in people.items() if v[0])
    keyring.clear_cache()
    ring = keyring.get_keyring("default", "encrypt")
    old = crypto.encrypt(ring.subkey(1, "testapp.Person.email"), 1, "testapp.Person.email", b"x@y.z")
    with connection.cursor() as cur:
        cur.execute("UPDATE testapp_person SET email = %s, email_key_version = 1 WHERE id = %s", [old, pk])
    with pytest.raises(KeyStateError, match=r"1 row\(s\) of testapp.Person.email"):
        lifecycle.retire("default", "encrypt", 1)
    refusal = KeyRotationAudit.objects.get(action="key_retire_refused")
    assert refusal.details["census"]["testapp.Person.email"] == 1
    assert engine.reencrypt().ok
    lifecycle.retire("default", "encrypt", 1)
    lifecycle.retire("default", "index", 1)
    retired = KeyRotationAudit.objects.filter(action="key_retired")
    assert {r.details["census"].get("testapp.Person.email", 0) for r in retired} == {0}


def test_interrupted_run_resumes_where_it_stopped(people):
    rotate_all()
    batches = []

    def stop_after_three(batch):
        batches.append(batch["rows"])
        if len(batches) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.reencrypt(batch_size=20, on_batch=stop_after_three)
    done = sum(1 for _, v in raw("email").values() if v == 2)
    assert 0 < done < len(people)
    run = ReencryptionRun.objects.get()
    assert runs.progress(run).rows_done == 60
    report = engine.reencrypt(batch_size=20, stale_after=0)
    assert report.joined and report.run_id == run.pk and report.ok
    assert report.rows_done == sum(1 for email, ssn in people.values() if email or ssn) - 60
    assert_all_on(2, people)


def test_max_duration_stops_cleanly_and_the_rerun_finishes(people):
    rotate_all()
    report = engine.reencrypt(batch_size=10, max_duration=0.0001)
    assert report.status == "interrupted"
    report = engine.reencrypt(batch_size=10)
    assert report.ok and report.joined
    assert_all_on(2, people)


def test_pause_waits_and_abort_stops(people):
    rotate_all()
    seen = []

    def pause_once(batch):
        seen.append(batch)
        if len(seen) == 1:
            engine.pause(actor="admin")

    report = engine.reencrypt(batch_size=10, on_batch=pause_once, max_duration=1.5)
    assert len(seen) == 1  # no batch ran while paused
    assert report.status == "paused"
    assert ReencryptionRun.objects.get().status == "paused"
    engine.resume(actor="admin")
    engine.abort(actor="admin")
    assert engine.reencrypt(batch_size=10).status in ("finished",)  # a new run starts
    with pytest.raises(KeyRotationError, match="no open re-encryption run"):
        engine.pause()
    actions = set(KeyRotationAudit.objects.values_list("action", flat=True))
    assert {"run_paused", "run_running", "run_aborted"} <= actions


def test_new_rotation_supersedes_an_open_run(people):
    rotate_all()
    with pytest.raises(KeyboardInterrupt):
        engine.reencrypt(batch_size=10, on_batch=lambda b: (_ for _ in ()).throw(KeyboardInterrupt))
    rotate_all()
    report = engine.reencrypt(batch_size=50, stale_after=0)
    assert report.ok and not report.joined
    assert list(ReencryptionRun.objects.order_by("id").values_list("status", flat=True)) == [
        "superseded",
        "finished",
    ]
    assert_all_on(3, people)


def test_scope_by_model_and_field(people):
    rotate_all()
    report = engine.reencrypt(["testapp.Person.ssn"])
    assert report.ok
    assert {v for _, v in raw("ssn").values() if v} == {2}
    assert {v for _, v in raw("email").values() if v} == {1}
    with pytest.raises(KeyRotationError, match="no encrypted or indexed column matches nope.Nope"):
        engine.reencrypt(["nope.Nope"])


def test_workers_need_row_locks(people):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only: PostgreSQL and MySQL/MariaDB have SKIP LOCKED")
    with pytest.raises(KeyRotationError, match="needs row locks with SKIP LOCKED"):
        engine.reencrypt(workers=2)


def test_sqlite_guard_keeps_a_concurrent_write(people):
    """The optimistic guard: a row rewritten between our read and our write is left alone."""
    from keyrotation.engine import dialects

    rotate_all()
    (plan,) = engine.plan.build(["testapp.Person"])
    dialect = dialects.for_alias("default")
    rows = dialect.select_batch(plan, None, None, 5, lock=False)
    from keyrotation.engine.transform import BatchTransformer

    write, failures = BatchTransformer(plan).transform_batch(rows)
    assert not failures and len(write) == len(rows)
    target = Person.objects.get(pk=rows[0][0])
    target.email = "changed@example.com"  # the application writes meanwhile (under v2 now)
    target.save()
    written = dialect.write_batch(plan, write)
    assert written == len(rows) - 1
    keyring.clear_cache()
    assert Person.objects.get(pk=target.pk).email == "changed@example.com"


def test_status_of_a_run_keeps_its_json_keys(people):
    """The ``run`` part of ``engine.status()`` (``rotation_status --json``, the admin's JSON) is a
    contract: its keys, and the counts derived from the chunks."""
    rotate_all()
    report = engine.reencrypt(batch_size=40)
    run = engine.status()["run"]
    assert set(run) == {
        "id", "status", "scope", "database", "targets", "actor", "started_at", "heartbeat_at",
        "finished_at", "rows_total", "rows_planned", "rows_added", "rows_done", "rows_failed",
        "chunks", "chunks_done", "rows_per_second", "eta_seconds", "error",
    }  # fmt: skip
    assert run["id"] == report.run_id and run["status"] == "finished" and run["eta_seconds"] is None
    assert run["rows_done"] == run["rows_total"] == run["rows_planned"] == report.rows_done
    assert run["chunks"] == run["chunks_done"] >= 1 and run["rows_added"] == 0


def test_signals_carry_counts_not_values(people):
    from keyrotation import signals

    batches, finished = [], []

    def on_batch(sender, **kw):
        batches.append(kw)

    def on_finish(sender, **kw):
        finished.append(kw)

    signals.batch_completed.connect(on_batch)
    signals.run_finished.connect(on_finish)
    try:
        rotate_all()
        report = engine.reencrypt(batch_size=50)
    finally:
        signals.batch_completed.disconnect(on_batch)
        signals.run_finished.disconnect(on_finish)
    assert sum(b["rows"] for b in batches) == report.rows_done
    assert {b["model"] for b in batches} == {"testapp.Person"}
    assert finished == [
        {
            "signal": signals.run_finished,
            "run_id": report.run_id,
            "status": "finished",
            "rows_done": report.rows_done,
            "rows_failed": 0,
        }
    ]
    text = repr(batches) + repr(finished)
    assert "example.com" not in text


def test_adaptive_batch_size_and_rate_limit():
    from keyrotation.engine.throttle import Throttle

    slept = []
    now = [0.0]
    t = Throttle(1000, rate=500, target_ms=100, clock=lambda: now[0], sleep=slept.append)
    t.after_batch(1000, 0.4)  # 400 ms for 1000 rows: shrink towards 100 ms
    assert t.batch_size == 500
    assert slept and abs(slept[-1] - 1.6) < 1e-9  # 1000 rows at 500/s = 2 s; 0.4 s spent
    t.after_batch(500, 0.01)
    assert t.batch_size == 1000  # grows at most x2


def test_uuid_primary_keys(keys):
    from tests.testapp.models import Secret

    values = {s.pk: s.value for s in Secret.objects.bulk_create(Secret(value=f"s{i}") for i in range(120))}
    rotate_all()
    batches = []

    def stop_after_two(batch):
        batches.append(batch)
        if len(batches) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.reencrypt(["testapp.Secret"], batch_size=25, on_batch=stop_after_two)
    report = engine.reencrypt(["testapp.Secret"], batch_size=25, stale_after=0)
    assert report.ok and report.joined and report.rows_done == 70
    keyring.clear_cache()
    assert {s.pk: s.value for s in Secret.objects.all()} == values
    assert set(Secret.objects.values_list("value_key_version", "value_bidx_key_version").distinct()) == {
        (2, 2)
    }
    assert Secret.objects.get(value="s7").value == "s7"
    assert engine.verify(["testapp.Secret"])["failure_count"] == 0


def test_rate_sleep_never_runs_past_the_deadline():
    from keyrotation.engine.throttle import Throttle

    slept = []
    t = Throttle(2000, rate=500, clock=lambda: 10.0, sleep=slept.append, deadline=11.0)
    t.after_batch(2000, 0.1)  # 4 s of rate budget, but only 1 s left before the deadline
    assert slept == [1.0]


@pytest.mark.parametrize(
    ("lo", "hi", "rows", "workers", "batch", "width"),
    [
        (1, 20_000, 20_000, 1, 2000, 50_000),  # one worker: the default span
        (1, 20_000, 20_000, 2, 2000, 10_000),  # two workers: two halves
        (1, 20_000, 20_000, 8, 2000, 2500),  # eight workers: eight chunks of 2,500 rows
        (1, 3000, 3000, 8, 2000, 1500),  # only two batches' worth: two chunks
        (1, 1500, 1500, 2, 2000, 50_000),  # not even one batch: one chunk
        (1, 400_000, 400_000, 2, 2000, 50_000),  # already more chunks than workers
    ],
)
def test_chunks_are_cut_for_the_workers_while_each_holds_more_than_a_batch(
    lo, hi, rows, workers, batch, width
):
    from keyrotation.engine.runs import chunk_width

    assert chunk_width(lo, hi, rows, 50_000, workers, batch) == width
