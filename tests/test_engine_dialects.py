"""The engine's dialects: the one picked per database, the row layout they all read, and the
generic dialect (one UPDATE per row) kept correct: guarded writes, no lost update."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.db import connection

from keyrotation import crypto, engine
from keyrotation.engine import dialects
from keyrotation.engine.batch import PK, layout
from keyrotation.engine.transform import BatchTransformer
from tests.test_engine import assert_all_on, make_people, raw, rotate_all
from tests.testapp.models import Person

pytestmark = pytest.mark.django_db(transaction=True)

EXPECTED = {"mysql": dialects.MySQL, "postgresql": dialects.PostgreSQL, "sqlite": dialects.SQLite}


@pytest.fixture
def people(keys):
    return make_people(120)


@pytest.fixture
def generic(monkeypatch):
    """Every database of this run through the generic dialect."""
    monkeypatch.setitem(dialects.BY_VENDOR, connection.vendor, dialects.Generic)
    assert type(dialects.for_alias("default")) is dialects.Generic


def test_for_alias_picks_the_dialect_of_the_vendor():
    dialect = dialects.for_alias("default")
    assert type(dialect) is EXPECTED[connection.vendor]
    assert dialect.alias == "default" and dialect.vendor == connection.vendor
    assert type(dialects.for_connection(connection)) is type(dialect)
    assert dialect.skip_locked is (connection.vendor != "sqlite")
    assert dialect.pipelines is (connection.vendor == "postgresql")


def test_an_unknown_vendor_gets_the_generic_dialect():
    other = SimpleNamespace(vendor="oracle", alias="legacy")
    dialect = dialects.for_connection(other)
    assert type(dialect) is dialects.Generic and dialect.alias == "legacy"
    assert not dialect.pipelines and dialect.guards_tokens


def test_the_layout_names_every_position_it_gives(keys):
    (plan,) = engine.plan.build(["testapp.Person"])
    lay = layout(plan)
    assert lay.columns[PK] == plan.pk_column
    for col, at in [*zip(plan.enc, lay.enc, strict=True), *zip(plan.idx, lay.idx, strict=True)]:
        assert (lay.columns[at.value], lay.columns[at.version]) == (col.column, col.version_column)
    assert len(set(lay.columns)) == len(lay.columns)


def test_a_run_through_the_generic_dialect_moves_every_row(people, generic):
    rotate_all()
    report = engine.reencrypt(batch_size=25)
    assert report.ok and report.rows_done == report.rows_total > 0, report.as_dict()
    assert_all_on(2, people)
    pk, (email, _) = next((pk, v) for pk, v in people.items() if v[0])
    assert Person.objects.get(email=email).pk == pk  # the blind index moved too
    assert engine.pending() == 0


def _claimed_write(rows: int):
    (plan,) = engine.plan.build(["testapp.Person"])
    dialect = dialects.for_alias("default")
    claimed = dialect.select_batch(plan, None, None, rows, lock=False)
    write, failures = BatchTransformer(plan).transform_batch(claimed)
    assert not failures and len(write) == len(claimed) == rows
    return plan, dialect, claimed, write


def test_the_generic_write_leaves_a_row_the_application_rewrote(people, generic):
    rotate_all()
    plan, dialect, claimed, write = _claimed_write(5)
    target = Person.objects.get(pk=claimed[0][PK])
    target.email = "changed@example.com"  # written meanwhile, under the new version
    target.save()
    assert dialect.write_batch(plan, write) == len(claimed) - 1
    assert Person.objects.get(pk=target.pk).email == "changed@example.com"


def test_the_generic_write_leaves_a_row_rewritten_under_the_old_version(people, generic):
    """A process whose keyring cache is stale writes the old version: only the ciphertext guard
    can tell, and the row is left for the sweep."""
    rotate_all()
    plan, dialect, claimed, write = _claimed_write(5)
    tokens = {pk: token for pk, (token, _) in raw("email").items() if token}
    first, other = claimed[0][PK], next(pk for pk in tokens if pk != claimed[0][PK])
    assert crypto.token_version(tokens[other]) == 1
    with connection.cursor() as cur:  # another row's v1 value: same version, new ciphertext
        cur.execute("UPDATE testapp_person SET email = %s WHERE id = %s", [tokens[other], first])
    assert dialect.write_batch(plan, write) == len(claimed) - 1
    assert raw("email")[first] == (tokens[other], 1)
    assert raw("ssn")[first][1] in (1, None)  # nothing of that row was written
