"""The MySQL/MariaDB dialect on a real server: one statement per batch, guards that leave a row
the application rewrote and a deleted row alone, and the sweep's bounded lock wait."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection, transaction

from keyrotation import engine
from keyrotation.engine import dialects
from keyrotation.engine.batch import PK
from keyrotation.engine.dialects import mysql
from keyrotation.engine.transform import BatchTransformer
from tests.helpers.db import mysql_connection
from tests.test_engine import assert_all_on, make_people, raw, rotate_all
from tests.testapp.models import Account, Person

pytestmark = [pytest.mark.mysql, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def people(keys):
    return make_people(120)


def _updates() -> int:
    """UPDATE statements this session ran so far, as the server counts them (the engine writes on
    the driver's cursor, which Django's execute wrappers do not see)."""
    with connection.cursor() as cur:
        cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Com_update', 'Com_update_multi')")
        return sum(int(value) for _name, value in cur.fetchall())


@contextmanager
def updates() -> Iterator[list[int]]:
    """``[n]``: the UPDATE statements run inside the block."""
    seen = [0]
    before = _updates()
    yield seen
    seen[0] = _updates() - before


def _claimed_write(rows: int):
    (plan,) = engine.plan.build(["testapp.Person"])
    dialect = dialects.for_alias("default")
    assert type(dialect) is dialects.MySQL
    claimed = dialect.select_batch(plan, None, None, rows, lock=False)
    write, failures = BatchTransformer(plan).transform_batch(claimed)
    assert not failures and len(write) == len(claimed) == rows
    return plan, dialect, claimed, write


def test_a_batch_is_written_in_one_statement(people):
    rotate_all()
    plan, dialect, claimed, write = _claimed_write(100)
    with updates() as seen:
        assert dialect.write_batch(plan, write) == 100
    assert seen == [1]
    written = {pk for pk, (token, version) in raw("email").items() if version == 2}
    assert written == {row[PK] for row in claimed if people[row[PK]][0] is not None}


def test_a_run_moves_every_row_and_its_blind_index(people):
    rotate_all()
    report = engine.reencrypt(batch_size=25)
    assert report.ok and report.rows_done == report.rows_total > 0, report.as_dict()
    assert_all_on(2, people)
    pk, (email, _) = next((pk, v) for pk, v in people.items() if v[0])
    assert Person.objects.get(email=email).pk == pk
    assert engine.pending() == 0


def test_the_write_leaves_a_row_the_application_rewrote(people):
    rotate_all()
    plan, dialect, claimed, write = _claimed_write(5)
    target = Person.objects.get(pk=claimed[0][PK])
    target.email = "changed@example.com"  # written meanwhile, under the new version
    target.save()
    assert dialect.write_batch(plan, write) == len(claimed) - 1
    assert Person.objects.get(pk=target.pk).email == "changed@example.com"


def test_the_write_leaves_a_deleted_row_deleted(people):
    rotate_all()
    plan, dialect, claimed, write = _claimed_write(5)
    gone = claimed[1][PK]
    Person.objects.filter(pk=gone).delete()
    assert dialect.write_batch(plan, write) == len(claimed) - 1
    assert not Person.objects.filter(pk=gone).exists()
    assert Person.objects.count() == len(people) - 1


def test_the_write_touches_only_the_claimed_rows_not_their_pk_range(people):
    """A row between the batch's first and last pk that the application holds locked (the claim
    skipped it) does not make the write wait: the write reads the claimed rows by their pks."""
    rotate_all()
    (plan,) = engine.plan.build(["testapp.Person"])
    dialect = dialects.for_alias("default")
    pks = sorted(people)
    held = pks[3]
    app = mysql_connection()
    try:
        app.autocommit(False)
        app.cursor().execute("SELECT id FROM testapp_person WHERE id = %s FOR UPDATE", [held])
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute("SET SESSION innodb_lock_wait_timeout = 2")
            claimed = dialect.select_batch(plan, None, None, 10, lock=True, skip=True)
            assert held not in {row[PK] for row in claimed} and claimed[-1][PK] > held
            write, failures = BatchTransformer(plan).transform_batch(claimed)
            assert not failures
            assert dialect.write_batch(plan, write) == len(claimed)  # no lock wait timeout (1205)
        app.rollback()
    finally:
        app.close()
        with connection.cursor() as cur:
            cur.execute("SET SESSION innodb_lock_wait_timeout = DEFAULT")


def test_a_mariadb_write_builds_no_on_disk_temporary_table(keys):
    """A batch whose every row gets new values is updated as the join finds its rows (the table
    first, by pk), not buffered in an on-disk temporary table first: what the bench measured as
    the write's largest cost on MariaDB."""
    if not connection.mysql_is_mariadb:
        pytest.skip("MariaDB's statement (MySQL gets the UNION ALL derived table)")
    Account.objects.bulk_create(Account(username=f"user{i}") for i in range(120))
    rotate_all()
    (plan,) = engine.plan.build(["testapp.Account"])
    dialect = dialects.for_alias("default")
    write, failures = BatchTransformer(plan).transform_batch(dialect.select_batch(plan, None, None, 100))
    assert not failures and len(write) == 100

    def disk_tables() -> int:
        with connection.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Created_tmp_disk_tables'")
            return int(cur.fetchone()[1])

    before = disk_tables()
    assert dialect.write_batch(plan, write) == 100
    assert disk_tables() == before


def test_a_batch_too_large_for_one_packet_is_cut_in_statements(people, monkeypatch):
    rotate_all()
    plan, dialect, claimed, write = _claimed_write(60)
    monkeypatch.setattr(mysql, "MAX_STATEMENT_BYTES", 2000)
    with updates() as seen:
        assert dialect.write_batch(plan, write) == 60
    assert seen[0] > 1
    versions = {pk: version for pk, (token, version) in raw("email").items() if token}
    assert all(versions[row[PK]] == 2 for row in claimed if row[PK] in versions)


def _lock_wait() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT @@SESSION.innodb_lock_wait_timeout")
        return int(cur.fetchone()[0])


def test_the_sweep_claim_bounds_its_lock_wait_and_then_restores_it(people):
    (plan,) = engine.plan.build(["testapp.Person"])
    dialect = dialects.for_alias("default")
    before = _lock_wait()
    assert before != mysql.SWEEP_LOCK_WAIT_SECONDS
    dialect.limit_lock_wait()
    assert _lock_wait() == mysql.SWEEP_LOCK_WAIT_SECONDS
    dialect.select_batch(plan, None, None, 10, lock=True, skip=False)
    assert _lock_wait() == before
    dialect.select_batch(plan, None, None, 10, lock=True, skip=False)  # without a bound: unchanged
    assert _lock_wait() == before


def test_two_workers_run_on_mysql(people):
    rotate_all()
    report = engine.reencrypt(batch_size=10, workers=2, chunk_span=40)
    assert report.ok and report.rows_done == report.rows_total > 0, report.as_dict()
    assert_all_on(2, people)
