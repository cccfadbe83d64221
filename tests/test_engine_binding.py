"""The engine on bound fields (``bind_to``): re-encryption keeps values bound, binds values written
before ``bind_to`` was set, and ``verify`` finds a value moved to another row."""

from __future__ import annotations

import pytest
from django.db import connection

from keyrotation import crypto, engine, keyring, lifecycle
from tests.testapp.models import BoundPerson

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = ("ssn", "notes", "badge")
LABEL = "testapp.BoundPerson"


def make_crowd(n: int) -> dict:
    people = BoundPerson.objects.bulk_create(
        BoundPerson(
            code=f"c{i:03d}",
            ssn=f"{i:03d}-00-{i:04d}" if i % 4 else None,
            notes=f"notes of {i}" if i % 5 else None,
            badge=f"B{i}",
        )
        for i in range(n)
    )
    return {p.pk: (p.ssn, p.notes, p.badge) for p in people}


def stored() -> dict:
    """{pk: {field: (token, version)}} read with SQL."""
    to_pk = BoundPerson._meta.pk.to_python
    columns = ", ".join(f"{f}, {f}_key_version" for f in FIELDS)
    with connection.cursor() as cur:
        cur.execute(f"SELECT id, {columns} FROM testapp_boundperson")
        rows = cur.fetchall()
    out = {}
    for row in rows:
        values = [bytes(v) if isinstance(v, memoryview) else v for v in row[1:]]
        out[to_pk(row[0])] = {f: (values[2 * i], values[2 * i + 1]) for i, f in enumerate(FIELDS)}
    return out


def write(pk, values: dict) -> None:
    sets = ", ".join(f"{c} = %s" for c in values)
    db_pk = BoundPerson._meta.pk.get_db_prep_value(pk, connection)
    with connection.cursor() as cur:
        cur.execute(f"UPDATE testapp_boundperson SET {sets} WHERE id = %s", [*values.values(), db_pk])


def names(pk, text: str) -> bool:
    return str(pk) in text or pk.hex in text


def rotate_all():
    lifecycle.rotate("default", "encrypt")
    lifecycle.rotate("default", "index")
    keyring.invalidate()


def assert_bound(expected: dict, version: int) -> None:
    for pk, columns in stored().items():
        for field, (token, ver) in columns.items():
            if token is None:
                assert ver is None, (pk, field)
            else:
                assert crypto.token_header(token) == (crypto.FORMAT_V2, version) and ver == version, (
                    pk,
                    field,
                )
    keyring.clear_cache()
    assert {p.pk: (p.ssn, p.notes, p.badge) for p in BoundPerson.objects.all()} == expected


def unbind_everything() -> int:
    """Rewrite every value as format 0x01 under its version: the table as it is right after
    ``bind_to`` was added to fields that already held values. Returns the rows with a value."""
    ring = keyring.get_keyring("default", "encrypt")
    rows = 0
    for pk, obj in {p.pk: p for p in BoundPerson.objects.all()}.items():
        values = {}
        for field in FIELDS:
            plaintext = getattr(obj, field)
            if plaintext is not None:
                label = BoundPerson._meta.get_field(field).label
                values[field] = ring.cipher(1, label).encrypt(plaintext.encode())
        write(pk, values)
        rows += 1
    return rows


@pytest.fixture
def crowd(keys):
    return make_crowd(60)


def test_reencrypt_keeps_bound_values_bound_on_the_new_key(crowd):
    rotate_all()
    report = engine.reencrypt([LABEL], batch_size=17)
    assert report.ok and report.rows_done == len(crowd), report.as_dict()
    assert_bound(crowd, 2)
    pk, (ssn, _, _) = next((pk, v) for pk, v in crowd.items() if v[0])
    assert BoundPerson.objects.get(ssn=ssn).pk == pk  # the blind index moved too
    assert engine.verify([LABEL])["failure_count"] == 0


def test_values_written_before_bind_to_are_pending_until_reencrypt_binds_them(crowd):
    rows = unbind_everything()
    assert {p.pk: (p.ssn, p.notes, p.badge) for p in BoundPerson.objects.all()} == crowd  # readable
    assert engine.pending([LABEL]) == rows  # on the active version, but not in the field's format
    census = {c["label"]: c for c in engine.status()["columns"]}
    ssn = census[f"{LABEL}.ssn"]
    assert ssn["unbound_rows"] == ssn["rows"] > 0 and ssn["percent_active"] == 0
    assert census["testapp.Person.email"]["unbound_rows"] is None
    checked = engine.verify([LABEL])
    assert checked["failure_count"] == sum(v is not None for values in crowd.values() for v in values)
    assert all("value not bound to its row (format 0x01)" in f for f in checked["failures"])

    report = engine.reencrypt([LABEL], batch_size=13)
    assert report.ok and report.rows_done == rows, report.as_dict()
    assert_bound(crowd, 1)  # bound, still on version 1: no new key was needed
    assert engine.pending([LABEL]) == 0
    census = {c["label"]: c for c in engine.status()["columns"]}
    assert census[f"{LABEL}.ssn"]["unbound_rows"] == 0
    assert census[f"{LABEL}.ssn"]["percent_active"] == 100.0
    assert engine.verify([LABEL])["failure_count"] == 0


def test_verify_and_reencrypt_report_a_value_moved_to_another_row(crowd):
    alice, bob = [pk for pk, v in crowd.items() if v[0] and v[1]][:2]
    columns = ["ssn", "ssn_key_version", "ssn_bidx", "ssn_bidx_key_version", "notes", "notes_key_version"]
    q = ", ".join(columns)
    db_bob = BoundPerson._meta.pk.get_db_prep_value(bob, connection)
    with connection.cursor() as cur:
        cur.execute(f"SELECT {q} FROM testapp_boundperson WHERE id = %s", [db_bob])
        moved = dict(zip(columns, cur.fetchone(), strict=True))
    write(alice, moved)

    result = engine.verify([LABEL])
    assert result["failure_count"] == 2, result
    for field in ("ssn", "notes"):  # the pk as the database returns it (hex on SQLite)
        (failure,) = [f for f in result["failures"] if f.startswith(f"{LABEL}.{field} ")]
        assert names(alice, failure) and failure.endswith("key version=1: authentication failed")
    assert not any(crowd[bob][0] in f or crowd[bob][1] in f for f in result["failures"])

    rotate_all()
    before = stored()[alice]
    report = engine.reencrypt([LABEL], batch_size=100)
    assert not report.ok and any(names(alice, e) for e in report.errors), report.as_dict()
    assert stored()[alice] == before  # nothing written over it


def test_an_index_only_pass_opens_its_bound_source(crowd):
    lifecycle.rotate("default", "index")
    keyring.invalidate()
    report = engine.reencrypt([f"{LABEL}.ssn_bidx"], batch_size=25)
    assert report.ok, report.as_dict()
    assert all(v["ssn"][1] in (None, 1) for v in stored().values())  # the values were not rewritten
    pk, (ssn, _, _) = next((pk, v) for pk, v in crowd.items() if v[0])
    assert BoundPerson.objects.get(ssn=ssn).pk == pk
    assert engine.verify([LABEL])["failure_count"] == 0


def test_dry_run_counts_values_not_bound_yet(crowd):
    rows = unbind_everything()
    plan = engine.dry_run([LABEL])
    (model,) = plan["models"]
    assert model["rows_pending"] == rows and model["sample_failures"] == 0
    assert stored() and all(
        t is None or t[0] == crypto.FORMAT_V1 for v in stored().values() for t, _ in v.values()
    )


def test_adopting_a_legacy_column_into_a_bound_field_binds_each_row(keys):
    people = BoundPerson.objects.bulk_create(BoundPerson(code=f"a{i}") for i in range(5))
    for i, p in enumerate(people):
        BoundPerson.objects.filter(pk=p.pk).update(pin_legacy=1000 + i)  # plaintext, as before adoption
    assert [p.pin for p in BoundPerson.objects.order_by("code")] == [1000, 1001, 1002, 1003, 1004]
    report = engine.reencrypt([LABEL], batch_size=2)
    assert report.ok and report.rows_done == 5, report.as_dict()
    pin = BoundPerson._meta.get_field("pin")
    ring = keyring.get_keyring("default", "encrypt")
    for p in BoundPerson.objects.order_by("code"):
        token = bytes(p.__dict__["pin"].token)
        assert p.pin_legacy is None and token[0] == crypto.FORMAT_V2
        assert crypto.decrypt_bound(ring.subkey(1, pin.label), pin.label, str(p.pk).encode(), token)
    keyring.clear_cache()
    assert [p.pin for p in BoundPerson.objects.order_by("code")] == [1000, 1001, 1002, 1003, 1004]
    assert engine.verify([LABEL])["failure_count"] == 0
