"""Values bound to their row: ``EncryptedField(bind_to=...)`` writes format 0x02 on every write path,
reads open with the row's bound value, and a value moved to another row fails to open there."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.core import checks
from django.core.exceptions import FieldError
from django.core.management import call_command
from django.db import connection, models, transaction
from django.test.utils import isolate_apps

from keyrotation import crypto, engine, keyring
from keyrotation.exceptions import DecryptionError
from keyrotation.fields import BlindIndexField, EncryptedField, Sealed
from keyrotation.fields.encrypted import BoundEncryptedAttribute, EncryptedAttribute
from tests.fields_support import rotate
from tests.testapp.models import BoundPerson, Person

pytestmark = pytest.mark.django_db

SSN = BoundPerson._meta.get_field("ssn")


# -- helpers: raw column access by primary key ---------------------------------------------------


def _where(instance) -> tuple[str, list]:
    pk = instance._meta.pk
    return f"{connection.ops.quote_name(pk.column)} = %s", [pk.get_db_prep_value(instance.pk, connection)]


def raw(instance, column):
    q = connection.ops.quote_name
    where, params = _where(instance)
    with connection.cursor() as cur:
        cur.execute(f"SELECT {q(column)} FROM {q(instance._meta.db_table)} WHERE {where}", params)
        (value,) = cur.fetchone()
    return bytes(value) if isinstance(value, memoryview) else value


def write_raw(instance, values: dict):
    q = connection.ops.quote_name
    where, params = _where(instance)
    sets = ", ".join(f"{q(c)} = %s" for c in values)
    with connection.cursor() as cur:
        cur.execute(
            f"UPDATE {q(instance._meta.db_table)} SET {sets} WHERE {where}", [*values.values(), *params]
        )


def move(columns, source, target):
    """Copy ``columns`` (value, version, blind index...) of ``source``'s row onto ``target``'s, as a
    database writer could."""
    write_raw(target, {c: raw(source, c) for c in columns})


def opens_on(instance, field, plaintext: bytes) -> bool:
    """The stored value is format 0x02 and opens with ``instance``'s bound value (checked with the
    crypto core, not the field)."""
    token = raw(instance, field.column)
    ring = keyring.get_keyring("default", "encrypt")
    subkey = ring.subkey(crypto.token_version(token), field.label)
    bound = field.bound_field.value_to_string(instance).encode()
    assert field.bound_field.get_internal_type() != "UUIDField" or len(bound) == 36
    return (
        token[0] == crypto.FORMAT_V2 and crypto.decrypt_bound(subkey, field.label, bound, token) == plaintext
    )


@pytest.fixture
def pair(keys):
    alice = BoundPerson.objects.create(code="alice", ssn="111-11-1111", notes="alice notes", badge="A-1")
    bob = BoundPerson.objects.create(code="bob", ssn="222-22-2222", notes="bob notes", badge="B-2")
    return alice, bob


def _expect_unreadable(instance, field: str):
    with pytest.raises(DecryptionError) as info:
        getattr(BoundPerson.objects.get(pk=instance.pk), field)
    message = str(info.value)
    assert f"testapp.BoundPerson.{field}" in message and f"pk={instance.pk!r}" in message
    assert "key version=1" in message
    assert not any(secret in message for secret in ("111-", "222-", "alice notes", "bob notes", "A-1", "B-2"))
    return info.value


# -- the stored format --------------------------------------------------------------------------


def test_a_bound_value_is_format_0x02_sealed_with_its_rows_bound_value(pair):
    alice, _ = pair
    assert opens_on(alice, SSN, b"111-11-1111")
    assert opens_on(alice, BoundPerson._meta.get_field("badge"), b"A-1")  # bound to "code"
    assert raw(alice, "ssn_key_version") == crypto.token_version(raw(alice, "ssn")) == 1
    fresh = BoundPerson.objects.get(pk=alice.pk)
    assert (fresh.ssn, fresh.notes, fresh.badge) == ("111-11-1111", "alice notes", "A-1")
    assert BoundPerson.objects.get(ssn="111-11-1111") == alice  # the blind index still finds it


def test_only_bound_fields_get_the_bound_descriptor():
    # The read path of every other field is the unbound one, unchanged.
    assert type(BoundPerson.__dict__["ssn"]) is BoundEncryptedAttribute
    assert type(Person.__dict__["ssn"]) is EncryptedAttribute


# -- moving a value to another row --------------------------------------------------------------


def test_a_value_moved_to_another_row_with_its_index_and_version_fails_to_open(pair):
    alice, bob = pair
    move(["ssn", "ssn_key_version", "ssn_bidx", "ssn_bidx_key_version"], bob, alice)
    move(["notes", "notes_key_version"], bob, alice)  # a field without a blind index
    move(["badge", "badge_key_version"], bob, alice)  # bound to "code", not the pk
    for field in ("ssn", "notes", "badge"):
        error = _expect_unreadable(alice, field)
        assert error.label == f"testapp.BoundPerson.{field}" and error.pk == alice.pk and error.version == 1
    assert BoundPerson.objects.get(pk=bob.pk).ssn == "222-22-2222"  # the source row is untouched


def test_the_same_move_on_an_unbound_field_goes_unnoticed(keys):
    # The reason to bind: without it the AAD names the column only, so Alice reads Bob's value and
    # reencrypt --verify finds nothing wrong (Person.ssn has no blind index to disagree).
    alice = Person.objects.create(name="alice", ssn="111-11-1111")
    bob = Person.objects.create(name="bob", ssn="222-22-2222")
    move(["ssn", "ssn_key_version"], bob, alice)
    assert Person.objects.get(pk=alice.pk).ssn == "222-22-2222"
    assert engine.verify(["testapp.Person"])["failure_count"] == 0


def test_saving_a_moved_value_never_read_refuses_to_write_it(pair):
    alice, bob = pair
    loaded = BoundPerson.objects.get(pk=alice.pk)
    move(["notes", "notes_key_version"], bob, alice)
    stale = BoundPerson.objects.get(pk=alice.pk)  # holds Bob's notes, sealed to Bob's id
    with pytest.raises(DecryptionError, match="testapp.BoundPerson.notes"), transaction.atomic():
        stale.save()
    assert raw(alice, "notes") == raw(bob, "notes")  # nothing written
    loaded.save()  # the copy loaded before the move still holds Alice's own value
    assert BoundPerson.objects.get(pk=alice.pk).notes == "alice notes"


# -- write paths --------------------------------------------------------------------------------


def _assert_bound(*people, ssn=None):
    for p in people:
        fresh = BoundPerson.objects.get(pk=p.pk)
        assert raw(p, "ssn")[0] == raw(p, "badge")[0] == crypto.FORMAT_V2
        assert opens_on(p, SSN, (ssn or p.ssn).encode())
        assert (fresh.ssn, fresh.badge) == (ssn or p.ssn, p.badge)
        assert raw(p, "ssn_key_version") == crypto.token_version(raw(p, "ssn"))


def test_save_and_create_seal_each_row_with_its_own_bound_value(keys):
    a = BoundPerson.objects.create(code="a", ssn="1", badge="x")
    b = BoundPerson(code="b", ssn="2", badge="y")
    b.save()
    b.ssn = "3"
    b.save(update_fields=["ssn"])
    _assert_bound(a, b)
    assert raw(a, "ssn") != raw(b, "ssn")


def test_bulk_create_and_bulk_update_seal_each_row_with_its_own_bound_value(keys):
    objs = BoundPerson.objects.bulk_create(
        [BoundPerson(code=f"c{i}", ssn=f"00{i}", badge=f"b{i}") for i in range(3)]
    )
    _assert_bound(*objs)
    for i, obj in enumerate(objs):
        obj.ssn, obj.badge = f"9{i}", f"z{i}"
    assert BoundPerson.objects.bulk_update(objs, ["ssn", "badge"]) == 3
    _assert_bound(*objs)


def conflicts_on(*fields: str) -> dict:
    """``unique_fields`` of an upsert where the backend takes them; MySQL/MariaDB take none (a
    conflict there is on any unique key)."""
    return (
        {"unique_fields": list(fields)} if connection.features.supports_update_conflicts_with_target else {}
    )


def test_an_upsert_on_the_bound_field_seals_with_the_existing_rows_value(keys):
    first = BoundPerson.objects.create(code="u", ssn="old", badge="b")
    again = BoundPerson(id=first.pk, code="u", ssn="new", badge="b")
    if not connection.features.supports_update_conflicts_with_target:
        # The bound field is the primary key, which an upsert may not update: refused, with advice.
        with pytest.raises(FieldError, match=r"'ssn' without unique_fields.*save\(\) or bulk_update\(\)\.$"):
            BoundPerson.objects.bulk_create([again], update_conflicts=True, update_fields=["ssn", "code"])
        assert BoundPerson.objects.get(pk=first.pk).ssn == "old"
        return
    BoundPerson.objects.bulk_create(
        [again], update_conflicts=True, unique_fields=["id"], update_fields=["ssn", "badge", "code"]
    )
    assert BoundPerson.objects.count() == 1
    _assert_bound(first, ssn="new")


def test_loaddata_seals_with_the_fixtures_bound_values(keys, tmp_path):
    p = BoundPerson.objects.create(code="l", ssn="555", badge="q")
    out = io.StringIO()
    call_command("dumpdata", "testapp.boundperson", stdout=out)
    assert json.loads(out.getvalue())[0]["fields"]["ssn"] == "555"
    BoundPerson.objects.all().delete()
    rotate("encrypt")
    fixture = tmp_path / "bound.json"
    fixture.write_text(out.getvalue())
    call_command("loaddata", str(fixture), verbosity=0)
    _assert_bound(p)
    assert raw(p, "ssn_key_version") == 2


def test_update_sets_null_but_refuses_a_value_with_advice(pair):
    assert BoundPerson.objects.filter(code="alice").update(notes=None) == 1
    assert raw(pair[0], "notes") is None and raw(pair[0], "notes_key_version") is None
    with pytest.raises(FieldError, match="bound to each row's 'id'.*Use bulk_update"):
        BoundPerson.objects.update(ssn="333-33-3333")
    assert BoundPerson.objects.get(pk=pair[1].pk).ssn == "222-22-2222"


def test_writes_that_would_change_a_bound_field_are_refused(pair):
    alice, _ = pair
    with pytest.raises(FieldError, match="'badge' are bound to it"):
        BoundPerson.objects.filter(pk=alice.pk).update(code="other")
    alice.code = "other"
    with pytest.raises(FieldError, match="'badge' are bound to it"):
        BoundPerson.objects.bulk_update([alice], ["code"])
    assert BoundPerson.objects.get(pk=alice.pk).code == "alice"


def test_upserts_that_would_leave_a_value_on_another_row_are_refused(pair):
    alice, _ = pair
    twin = BoundPerson(code="alice", ssn="999", badge="A-1")  # another id, the same code
    targeted = connection.features.supports_update_conflicts_with_target
    advice = "Add 'id' to unique_fields" if targeted else r"without unique_fields.*save\(\) or bulk_update"
    with pytest.raises(FieldError, match=advice):
        BoundPerson.objects.bulk_create(
            [twin], update_conflicts=True, update_fields=["ssn"], **conflicts_on("code")
        )
    with pytest.raises(FieldError, match="Cannot upsert 'code' without 'badge'"):
        BoundPerson.objects.bulk_create(
            [BoundPerson(id=alice.pk, code="new")],
            update_conflicts=True,
            update_fields=["code"],
            **conflicts_on("id"),
        )
    if not targeted:
        # Without unique_fields, badge may be upserted only with the field it is bound to.
        with pytest.raises(FieldError, match=r"or add 'code' to update_fields\)\.$"):
            BoundPerson.objects.bulk_create([twin], update_conflicts=True, update_fields=["badge"])
    # conflicting on the bound field of badge itself (or writing it too) is fine
    BoundPerson.objects.bulk_create(
        [twin],
        update_conflicts=True,
        update_fields=["badge"] if targeted else ["badge", "code"],
        **conflicts_on("code"),
    )
    assert BoundPerson.objects.get(pk=alice.pk).badge == "A-1"


def test_saving_a_changed_bound_field_seals_its_values_again(pair):
    alice, _ = pair
    obj = BoundPerson.objects.get(pk=alice.pk)
    assert obj.badge == "A-1"  # read: the plaintext is at hand
    obj.code = "alice-2"
    obj.save(update_fields=["code"])  # badge is written too, sealed to the new code
    assert BoundPerson.objects.get(pk=alice.pk).badge == "A-1"
    assert opens_on(obj, BoundPerson._meta.get_field("badge"), b"A-1")
    untouched = BoundPerson.objects.get(pk=alice.pk)
    untouched.code = "alice-3"
    with pytest.raises(DecryptionError, match="testapp.BoundPerson.badge"), transaction.atomic():
        untouched.save(update_fields=["code"])  # its badge was sealed to "alice-2"
    assert BoundPerson.objects.get(pk=alice.pk).code == "alice-2"


def test_a_copy_under_a_new_primary_key_is_sealed_to_it(pair):
    alice, _ = pair
    copy = BoundPerson.objects.get(pk=alice.pk)
    copy.ssn, copy.notes, copy.badge = copy.ssn, copy.notes, copy.badge  # read before the key changes
    copy.pk, copy.code = uuid.uuid4(), "copy"
    copy.save(force_insert=True)
    fresh = BoundPerson.objects.get(pk=copy.pk)
    assert (fresh.ssn, fresh.notes, fresh.badge) == ("111-11-1111", "alice notes", "A-1")
    assert opens_on(copy, SSN, b"111-11-1111")


def test_a_row_without_its_bound_value_is_refused_before_the_insert(keys):
    with pytest.raises(ValueError, match="bound to 'code', which has no value"), transaction.atomic():
        BoundPerson(code=None, badge="b").save()
    assert not BoundPerson.objects.exists()


# -- reads ------------------------------------------------------------------------------------


def test_deferred_fields_and_refresh_open_with_the_bound_value(pair):
    alice, _ = pair
    assert BoundPerson.objects.only("badge").get(pk=alice.pk).badge == "A-1"  # loads code first
    assert BoundPerson.objects.defer("ssn").get(pk=alice.pk).ssn == "111-11-1111"
    obj = BoundPerson.objects.get(pk=alice.pk)
    obj.refresh_from_db(fields=["notes"])
    assert obj.notes == "alice notes"


def test_values_open_bound_fields_beside_their_bound_field(pair):
    rows = BoundPerson.objects.order_by("code")
    assert list(rows.values("id", "ssn", "badge", "code"))[0] == {
        "id": pair[0].pk,
        "ssn": "111-11-1111",
        "badge": "A-1",
        "code": "alice",
    }
    assert list(rows.values())[1]["notes"] == "bob notes"
    assert list(rows.values_list("ssn", "pk")) == [("111-11-1111", pair[0].pk), ("222-22-2222", pair[1].pk)]
    named = rows.values_list("code", "badge", named=True)[0]
    assert (named.code, named.badge) == ("alice", "A-1")


@pytest.mark.parametrize(
    ("call", "partner"),
    [
        (lambda qs: qs.values("ssn"), "id"),
        (lambda qs: qs.values_list("ssn", flat=True), "id"),
        (lambda qs: qs.values_list("badge", "id"), "code"),
    ],
)
def test_values_without_the_bound_field_are_refused_with_advice(pair, call, partner):
    with pytest.raises(FieldError, match=f"bound to '{partner}' \\(bind_to\\): select '{partner}' too"):
        call(BoundPerson.objects.all())


def test_open_is_refused_and_open_bound_opens_with_the_given_bound_value(pair):
    alice, bob = pair
    sealed = Sealed(raw(alice, "ssn"), SSN)
    with pytest.raises(FieldError, match="open_bound"):
        SSN.open(sealed)
    assert SSN.open_bound(sealed, alice.pk) == "111-11-1111"
    with pytest.raises(DecryptionError):
        SSN.open_bound(sealed, bob.pk, pk=bob.pk)


# -- values written before bind_to was set ------------------------------------------------------


def test_format_0x01_values_stay_readable_and_a_save_binds_them(pair):
    alice, _ = pair
    token, version = keyring.encrypt("default", SSN.label, b"111-11-1111")  # as written without bind_to
    write_raw(alice, {"ssn": token, "ssn_key_version": version})
    obj = BoundPerson.objects.get(pk=alice.pk)
    assert obj.ssn == "111-11-1111"
    BoundPerson.objects.get(pk=alice.pk).save()  # never read: opened, then sealed again as 0x02
    assert opens_on(alice, SSN, b"111-11-1111")


# -- declaration --------------------------------------------------------------------------------


def test_bind_to_deconstructs_and_must_be_a_name():
    name, path, args, kwargs = SSN.deconstruct()
    assert kwargs["bind_to"] == "id"
    assert EncryptedField(**kwargs).bind_to == "id"
    with pytest.raises(TypeError, match="bind_to must be the name"):
        EncryptedField(models.CharField(max_length=5), bind_to="")


@isolate_apps("tests.testapp")
def test_the_check_refuses_an_auto_increment_primary_key_and_says_why():
    class AutoKey(models.Model):  # noqa: DJ008
        secret = EncryptedField(models.CharField(max_length=5), bind_to="id")

        class Meta:
            app_label = "testapp"

    (error,) = [e for e in AutoKey.check() if e.level >= checks.ERROR]
    assert error.id == "keyrotation.E121"
    assert "assigns during the INSERT" in error.msg and "not known yet" in error.msg
    assert "UUIDField(primary_key=True, default=uuid.uuid4)" in error.hint


@isolate_apps("tests.testapp")
def test_the_check_refuses_every_other_unusable_bound_field():
    class Parent(models.Model):  # noqa: DJ008
        class Meta:
            app_label = "testapp"

    class Other(models.Model):  # noqa: DJ008
        key = models.UUIDField(unique=True, default=uuid.uuid4)
        maybe = models.IntegerField(null=True, unique=True)
        shared = models.CharField(max_length=5)
        parent = models.OneToOneField(Parent, on_delete=models.CASCADE)
        plain = EncryptedField(models.CharField(max_length=5))
        plain_bidx = BlindIndexField(source="plain", unique=True)
        missing = EncryptedField(models.CharField(max_length=5), bind_to="nothing")
        nullable = EncryptedField(models.CharField(max_length=5), bind_to="maybe")
        encrypted = EncryptedField(models.CharField(max_length=5), bind_to="plain")
        digest = EncryptedField(models.CharField(max_length=5), bind_to="plain_bidx")
        relation = EncryptedField(models.CharField(max_length=5), bind_to="parent")
        not_unique = EncryptedField(models.CharField(max_length=5), bind_to="shared")
        fine = EncryptedField(models.CharField(max_length=5), bind_to="key")

        class Meta:
            app_label = "testapp"

    found = {e.obj.name: e.id for e in Other.check() if e.level >= checks.ERROR}
    assert found == {
        "missing": "keyrotation.E122",
        "nullable": "keyrotation.E123",
        "encrypted": "keyrotation.E124",
        "digest": "keyrotation.E124",
        "relation": "keyrotation.E125",
        "not_unique": "keyrotation.E126",
    }
