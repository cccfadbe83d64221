"""Adoption: legacy columns written by other libraries (their committed vectors) or holding
plaintext, taken over in place by ``EncryptedField(adopt_from=...)`` and ``reencrypt``."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection, models

from keyrotation import codecs, engine, legacy
from keyrotation.exceptions import DecryptionError
from tests.fields_support import identical
from tests.helpers.db import child_env
from tests.legacyapp import models as lm

pytestmark = pytest.mark.django_db(transaction=True)

VECTORS = Path(__file__).parent / "legacy" / "vectors"
LIBRARIES = {
    "django-cryptography": lm.CryptoPerson,
    "django-fernet-fields": lm.FernetPerson,
    "django-encrypted-model-fields": lm.LansharkPerson,
    "django-fernet-encrypted-fields": lm.JazzbandPerson,
}
COPIES = 25  # each vector row is loaded this many times: several batches per run


def load(library: str) -> dict:
    return json.loads((VECTORS / f"{library}-{connection.vendor}.json").read_text())


def stored(value):
    if value is None:
        return None
    return base64.b64decode(value["b64"]) if "b64" in value else value["text"]


def original(value):
    if isinstance(value, dict):
        if "datetime" in value:
            return dt.datetime.fromisoformat(value["datetime"])
        return dt.date.fromisoformat(value["date"])
    return value


def seed(library: str) -> tuple[type, list[str], dict[int, dict]]:
    """Legacy rows exactly as the library stored them; returns the values expected after adoption."""
    vec, model = load(library), LIBRARIES[library]
    cols = vec["columns"]
    objs, expected = [], []
    for _ in range(COPIES):
        for row in vec["rows"]:
            objs.append(model(**{f"{c}_legacy": stored(row["stored"][c]) for c in cols}))
            # A value the library stored as NULL (jazzband's falsy values) is gone: None.
            expected.append(
                {c: original(row["original"][c]) if row["stored"][c] is not None else None for c in cols}
            )
    created = model.objects.bulk_create(objs)
    return model, cols, {o.pk: e for o, e in zip(created, expected, strict=True)}


def values(model, cols, exclude=None) -> dict[int, dict]:
    qs = model.objects.exclude(pk=exclude).order_by("pk")
    return {o.pk: {c: getattr(o, c) for c in cols} for o in qs}


def legacy_left(model, cols) -> int:
    return sum(model.objects.filter(**{f"{c}_legacy__isnull": False}).count() for c in cols)


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_real_library_data_is_adopted_in_place(keys, library):
    model, cols, expected = seed(library)
    label = model._meta.label
    # During the window every row reads through its legacy column.
    assert values(model, cols) == expected
    census = {c["label"]: c for c in engine.status()["columns"]}
    with_legacy = sum(1 for e in expected.values() if e["name"] is not None)
    assert census[f"{label}.name"]["legacy_rows"] == with_legacy
    assert census[f"{label}.name"]["percent_active"] == 0.0
    assert engine.verify([label])["failure_count"] > 0  # not adopted yet

    report = engine.reencrypt([label], batch_size=17)
    assert report.ok, report.as_dict()
    with_any = sum(1 for e in expected.values() if any(v is not None for v in e.values()))
    assert report.rows_done == report.rows_total == with_any < len(expected)

    assert legacy_left(model, cols) == 0
    assert values(model, cols) == expected
    census = {c["label"]: c for c in engine.status()["columns"] if c["model"] == label}
    for c in census.values():
        assert c["percent_active"] == 100.0, c
        assert c["legacy_rows"] in (0, None), c
    assert engine.verify([label])["failure_count"] == 0
    call_command("reencrypt", "--verify", "--model", label)  # exits 0 (would SystemExit(1))
    name = next(e["name"] for e in expected.values() if e["name"])
    assert model.objects.filter(name=name).count() == COPIES  # blind index filled in the same pass


@pytest.mark.parametrize(
    "library", ["django-cryptography", "django-fernet-fields", "django-fernet-encrypted-fields"]
)
def test_tampered_legacy_value_stops_then_is_quarantined(keys, library):
    model, cols, expected = seed(library)
    label = model._meta.label
    victim = next(pk for pk, e in expected.items() if e["name"])
    obj = model.objects.get(pk=victim)
    token = bytes(obj.name_legacy) if isinstance(obj.name_legacy, (bytes, memoryview)) else obj.name_legacy
    if isinstance(token, bytes) and token[:1] == b"\x80":  # django-cryptography: flip a MAC bit
        bad = token[:-1] + bytes([token[-1] ^ 1])
    else:  # a Fernet token (ASCII): change a character of the MAC part
        text = token.decode() if isinstance(token, bytes) else token
        swapped = text[:-5] + ("A" if text[-5] != "A" else "B") + text[-4:]
        bad = swapped.encode() if isinstance(token, bytes) else swapped
    model.objects.filter(pk=victim).update(name_legacy=bad)

    with pytest.raises(DecryptionError) as info:
        model.objects.get(pk=victim).name  # noqa: B018 - the read itself must fail
    assert f"{label}.name" in str(info.value) and f"pk={victim}" in str(info.value)
    assert "gAAAA" not in str(info.value)

    report = engine.reencrypt([label], batch_size=10)
    assert not report.ok and report.status == "failed"
    assert f"{label}.name pk={victim}" in " ".join(report.errors)
    row = model.objects.filter(pk=victim).values_list("name_legacy", "name_key_version").get()
    assert (bytes(row[0]) if isinstance(row[0], memoryview) else row[0]) == bad and row[1] is None

    report = engine.reencrypt([label], batch_size=10, on_error="quarantine")
    assert report.rows_failed == 1
    assert f"{label}.name pk={victim}" in report.quarantined[0]
    assert "legacy value does not decode" in report.quarantined[0]
    # The failing row is left whole (every column of it), every other row is adopted.
    assert legacy_left(model, cols) == sum(
        1 for c in cols if model.objects.filter(pk=victim, **{f"{c}_legacy__isnull": False}).exists()
    )
    assert model.objects.filter(pk=victim, name_key_version=None).exists()
    got = values(model, cols, exclude=victim)
    del expected[victim]
    assert got == expected


def test_window_semantics_on_every_write_path(keys):
    C = lm.PlainContact
    a, b, c, d, e = C.objects.bulk_create(C(email_legacy=f"u{i}@old.example") for i in range(5))
    # Read through the window; values() sees only adopted rows.
    assert C.objects.get(pk=a.pk).email == "u0@old.example"
    assert C.objects.filter(pk=a.pk).values_list("email", flat=True).get() is None
    # A save that does not write the field leaves the legacy copy alone.
    obj = C.objects.get(pk=a.pk)
    obj.visits = 3
    obj.save(update_fields=["visits"])
    assert C.objects.filter(pk=a.pk, email_legacy="u0@old.example").exists()
    obj = C.objects.get(pk=a.pk)
    obj.visits = 4
    obj.save()  # never read, so not written: still legacy
    assert C.objects.filter(pk=a.pk, email_legacy="u0@old.example", email_key_version=None).exists()
    # save(): a read value is written encrypted and the legacy copy goes.
    obj = C.objects.get(pk=a.pk)
    assert obj.email == "u0@old.example"
    obj.save()
    assert C.objects.filter(pk=a.pk, email_legacy=None, email_key_version=1).exists()
    # save(update_fields=[field]), update(), bulk_update(), assignment of None.
    obj = C.objects.get(pk=b.pk)
    obj.email = "new-b@example.com"
    obj.save(update_fields=["email"])
    C.objects.filter(pk=c.pk).update(email="new-c@example.com")
    objs = [C.objects.get(pk=d.pk)]
    objs[0].email = "new-d@example.com"
    C.objects.bulk_update(objs, ["email"])
    obj = C.objects.get(pk=e.pk)
    obj.email = None
    obj.save()
    new = C.objects.create(email="fresh@example.com", email_legacy="stale@example.com")
    assert C.objects.filter(email_legacy__isnull=False).count() == 0
    got = {o.pk: o.email for o in C.objects.all()}
    assert got == {
        a.pk: "u0@old.example",
        b.pk: "new-b@example.com",
        c.pk: "new-c@example.com",
        d.pk: "new-d@example.com",
        e.pk: None,
        new.pk: "fresh@example.com",
    }
    assert C.objects.get(email="new-c@example.com").pk == c.pk
    assert engine.verify(["legacyapp.PlainContact"])["failure_count"] == 0


MORE_COLUMNS = ["ratio", "clock", "span", "ip"]
MORE_ROWS = [
    (1.5, dt.time(13, 4, 5, 120), dt.timedelta(days=1, microseconds=5), "2001:db8::1"),
    (0.0, dt.time(0, 0), dt.timedelta(0), "192.0.2.1"),
    (float("inf"), dt.time(23, 59, 59, 999999), dt.timedelta(microseconds=-1), "::ffff:192.0.2.1"),
    (float("-inf"), None, dt.timedelta(days=-3650, seconds=1), None),
    (5e-324, dt.time(12, 0), None, "::1"),
    (None, None, None, None),
]
# A MySQL DOUBLE holds no infinity (nor NaN): the driver refuses to send one.
MYSQL_MORE_ROWS = [
    (1e308 if row[0] in (float("inf"), float("-inf")) else row[0], *row[1:]) for row in MORE_ROWS
]


def test_plain_float_time_duration_and_ip_columns_are_adopted(keys):
    M = lm.PlainMoreTypes
    rows = list(MYSQL_MORE_ROWS if connection.vendor == "mysql" else MORE_ROWS)
    if connection.vendor == "postgresql":  # a SQLite REAL column keeps neither NaN (NULL) nor -0.0
        rows += [(float("nan"), None, None, None), (-0.0, None, None, None)]
    objs = M.objects.bulk_create(
        M(**{f"{c}_legacy": v for c, v in zip(MORE_COLUMNS, row, strict=True)}) for row in rows
    )
    expected = {o.pk: row for o, row in zip(objs, rows, strict=True)}
    if connection.vendor == "postgresql":  # the ORM sends -0.0 as a numeric literal, which has no -0
        with connection.cursor() as cursor:
            table = M._meta.db_table
            cursor.execute(f"UPDATE {table} SET ratio_legacy = '-0'::float8 WHERE id = %s", [objs[-1].pk])

    def current():
        return {o.pk: tuple(getattr(o, c) for c in MORE_COLUMNS) for o in M.objects.order_by("pk")}

    def same(got):
        return got.keys() == expected.keys() and all(
            identical(a, b) for pk in got for a, b in zip(got[pk], expected[pk], strict=True)
        )

    assert same(current())  # the window reads through the plain columns
    report = engine.reencrypt(["legacyapp.PlainMoreTypes"], batch_size=4)
    assert report.ok, report.as_dict()
    assert report.rows_done == sum(1 for row in rows if any(v is not None for v in row))
    for c in MORE_COLUMNS:
        assert not M.objects.filter(**{f"{c}_legacy__isnull": False}).exists()
    assert same(current())
    assert engine.verify(["legacyapp.PlainMoreTypes"])["failure_count"] == 0
    assert M.objects.get(ratio=1.5).pk == objs[0].pk
    assert M.objects.get(ip="2001:DB8:0::1").pk == objs[0].pk
    assert M.objects.get(ip="::FFFF:C000:201").pk == objs[2].pk


def test_a_time_stored_in_another_spelling_is_adopted(keys):
    obj = lm.PlainMoreTypes.objects.create()
    with connection.cursor() as cursor:  # as raw SQL or another tool may have written it
        cursor.execute(
            f"UPDATE {lm.PlainMoreTypes._meta.db_table} SET clock_legacy = '7:05' WHERE id = %s", [obj.pk]
        )
    report = engine.reencrypt(["legacyapp.PlainMoreTypes"])
    assert report.ok and report.rows_done == 1, report.as_dict()
    obj = lm.PlainMoreTypes.objects.get(pk=obj.pk)
    assert (obj.clock, obj.clock_legacy) == (dt.time(7, 5), None)


def test_backend_adapted_plaintexts_of_the_new_types(keys):
    """django-fernet-fields and django-encrypted-model-fields encrypt ``get_db_prep_save()``,
    whose form depends on the backend: integer microseconds for durations on SQLite/MySQL."""
    key = Fernet.generate_key()
    decoder = legacy.EncryptedModelFields(keys=key)
    cases = [
        (models.FloatField(), -0.0, b"-0.0"),
        (models.FloatField(), float("-inf"), b"-inf"),
        (models.FloatField(), 0.1, b"0.1"),
        (models.TimeField(), dt.time(13, 4, 5, 120), b"13:04:05.000120"),
        (models.DurationField(), dt.timedelta(days=1, microseconds=5), b"86400000005"),
        (models.DurationField(), dt.timedelta(microseconds=-1), b"-1"),
        (models.DurationField(), dt.timedelta(days=-2, hours=3), b"-162000000000"),
        (models.GenericIPAddressField(), "::ffff:192.0.2.1", b"::ffff:192.0.2.1"),
        (models.GenericIPAddressField(), "2001:DB8::1", b"2001:db8::1"),
        (models.GenericIPAddressField(unpack_ipv4=True), "::ffff:192.0.2.1", b"192.0.2.1"),
    ]
    for field, value, canonical in cases:
        token = Fernet(key).encrypt(str(field.get_db_prep_save(value, connection)).encode())
        decoded = decoder.decode(token.decode(), field)
        assert identical(decoded, field.to_python(value)), (type(field).__name__, value)
        assert codecs.encode(field, decoded) == canonical
    assert legacy.from_text("90", models.DurationField()) == dt.timedelta(microseconds=90)
    assert legacy.from_text("1 day, 0:00:01", models.DurationField()) == dt.timedelta(days=1, seconds=1)
    assert legacy.from_text("-1 day, 23:59:59", models.DurationField()) == dt.timedelta(seconds=-1)


def test_plaintext_decoder_and_restricted_unpickler():
    assert legacy.Plaintext().decode("7", lm.CryptoPerson._meta.get_field("number").base_field) == 7
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with pytest.raises(legacy.LegacyDecodeError, match="forbidden type builtins.print"):
        legacy.restricted_loads(pickle.dumps(Evil()))
    value = {"d": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), "x": [1, 2.5, "s", None, True]}
    assert legacy.restricted_loads(pickle.dumps(value)) == value


@pytest.mark.server
def test_plaintext_encrypted_in_place_under_a_concurrent_writer(keys):
    C = lm.PlainContact
    rows = C.objects.bulk_create(C(email_legacy=f"user{i}@example.com") for i in range(4000))
    emails = {o.pk: o.email_legacy for o in rows}
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.adopt_writer", "6", "11"],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the writer is busy before the run starts
        report = engine.reencrypt(["legacyapp.PlainContact"], batch_size=50, rate=1500)
        out, _ = writer.communicate(timeout=60)
    finally:
        writer.kill()
    assert report.ok, report.as_dict()
    result = json.loads(out)
    assert result["writes"] > 50
    expected = {**emails, **{int(pk): email for pk, email in result["last"].items()}}
    assert C.objects.filter(email_legacy__isnull=False).count() == 0
    assert set(C.objects.values_list("email_key_version", flat=True)) == {1}
    assert {o.pk: o.email for o in C.objects.all()} == expected
    assert engine.verify(["legacyapp.PlainContact"])["failure_count"] == 0
