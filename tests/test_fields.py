"""EncryptedField / BlindIndexField: storage, every write path, decryption errors, migrations, forms."""

import datetime as dt
import io
import json

import pytest
from django import forms
from django.core import checks, serializers
from django.core.exceptions import FieldError, ValidationError
from django.core.management import call_command
from django.db import models, transaction
from django.test.utils import isolate_apps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyrotation import crypto
from keyrotation.exceptions import DecryptionError
from keyrotation.fields import BlindIndexField, EncryptedField, KeyVersionField, Sealed
from tests.fields_support import (
    FALSY,
    MORE_FALSY,
    MORE_STRATEGIES,
    STRATEGIES,
    assert_consistent,
    identical,
    raw,
    rotate,
    write_raw,
)
from tests.testapp.models import AllTypes, MoreTypes, Note, Person

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_round_trip_through_the_database(keys, name, data):
    value = data.draw(STRATEGIES[name])
    obj = AllTypes.objects.create(**{name: value})
    loaded = getattr(AllTypes.objects.get(pk=obj.pk), name)
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.timezone.utc)
    assert loaded == value and type(loaded) is type(value)
    stored = raw(obj, name)
    if value is None:
        assert stored is None
    else:
        assert raw(obj, f"{name}_key_version") == crypto.token_version(stored) == 1


EVERY_FIELD = [(AllTypes, n) for n in sorted(STRATEGIES)] + [(MoreTypes, n) for n in sorted(MORE_STRATEGIES)]
EVERY_FALSY = [(AllTypes, n, FALSY[n]) for n in sorted(FALSY)] + [
    (MoreTypes, n, MORE_FALSY[n]) for n in sorted(MORE_FALSY)
]


@pytest.mark.parametrize(("model", "name"), EVERY_FIELD, ids=lambda v: getattr(v, "__name__", v))
def test_none_is_null_and_never_encrypted(keys, model, name):
    obj = model.objects.create()
    assert raw(obj, name) is None and raw(obj, f"{name}_key_version") is None
    assert getattr(model.objects.get(pk=obj.pk), name) is None


@pytest.mark.parametrize(
    ("model", "name", "value"), EVERY_FALSY, ids=lambda v: getattr(v, "__name__", str(v))
)
def test_falsy_values_are_encrypted_not_null(keys, model, name, value):
    obj = model.objects.create(**{name: value})
    assert raw(obj, name) is not None and raw(obj, f"{name}_key_version") == 1
    assert identical(getattr(model.objects.get(pk=obj.pk), name), value)


@pytest.mark.parametrize("name", sorted(MORE_STRATEGIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_more_types_round_trip_through_the_database(keys, name, data):
    value = data.draw(MORE_STRATEGIES[name])
    obj = MoreTypes.objects.create(**{name: value})
    loaded = getattr(MoreTypes.objects.get(pk=obj.pk), name)
    assert identical(loaded, MoreTypes._meta.get_field(name).base_field.to_python(value))
    assert raw(obj, f"{name}_key_version") == crypto.token_version(raw(obj, name)) == 1


def test_special_floats_survive_the_database(keys):
    specials = [-0.0, float("inf"), float("-inf"), float("nan"), 5e-324, 1.7976931348623157e308]
    objs = MoreTypes.objects.bulk_create(MoreTypes(ratio=v) for v in specials)
    for obj, value in zip(objs, specials, strict=True):
        assert identical(MoreTypes.objects.get(pk=obj.pk).ratio, value)
        assert_consistent(obj, "ratio", "ratio_bidx")


def test_aware_time_is_refused_on_save(keys):
    with pytest.raises(ValueError, match="timezone-aware times"), transaction.atomic():
        MoreTypes.objects.create(clock=dt.time(12, tzinfo=dt.timezone.utc))
    assert not MoreTypes.objects.exists()


def test_subclass_validation_still_applies(keys):
    values = {
        "positive": -1,
        "positive_small": -1,
        "slug": "not a slug",
        "url": "nope",
        "email": "x",
        "ip": "1.2.3",
    }
    others = [f.name for f in MoreTypes._meta.fields if f.name not in values]
    with pytest.raises(ValidationError) as info:
        MoreTypes(**values).full_clean(exclude=others)
    assert set(info.value.message_dict) == set(values)
    valid = {"positive": 1, "positive_small": 0, "slug": "a-slug", "url": "https://example.com", "ip": "::1"}
    MoreTypes(**valid, email="a@example.com").full_clean(exclude=others)


def test_slugfield_with_its_default_db_index_is_accepted():
    EncryptedField(models.SlugField(), null=True)


def test_decimal_keeps_its_exponent(keys):
    import decimal

    obj = AllTypes.objects.create(dec=decimal.Decimal("1.50"))
    assert str(AllTypes.objects.get(pk=obj.pk).dec) == "1.50"


def test_raw_column_never_contains_the_plaintext(keys):
    secret = "very-secret-plaintext@example.com"
    p = Person.objects.create(email=secret, ssn="123-45-6789")
    for column in ("email", "ssn", "email_bidx"):
        stored = raw(p, column)
        assert secret.encode() not in stored and b"123-45-6789" not in stored
        assert b"very-secret" not in stored


# -- every write path keeps version columns and the blind index right -------------------------


def test_save(keys):
    p = Person(name="a", email="a@example.com")
    p.save()
    assert assert_consistent(p, "email", "email_bidx") == 1
    rotate("encrypt")
    rotate("index")
    p.email = "b@example.com"
    p.save()
    assert assert_consistent(p, "email", "email_bidx") == 2
    assert raw(p, "email_bidx_key_version") == 2


def test_save_with_update_fields_adds_the_companions(keys):
    p = Person.objects.create(email="a@example.com")
    rotate("encrypt")
    rotate("index")
    p.email = "b@example.com"
    p.save(update_fields=["email"])
    assert assert_consistent(p, "email", "email_bidx") == 2
    assert raw(p, "email_bidx_key_version") == 2
    assert Person.objects.get(email="b@example.com") == p


def test_create_and_null(keys):
    p = Person.objects.create(email=None)
    assert_consistent(p, "email", "email_bidx")
    assert raw(p, "email_bidx") is None


def test_bulk_create(keys):
    people = Person.objects.bulk_create([Person(email=f"u{i}@example.com") for i in range(5)] + [Person()])
    for p in Person.objects.all():
        assert_consistent(p, "email", "email_bidx")
    assert len(people) == 6


def test_bulk_update(keys):
    people = Person.objects.bulk_create([Person(email=f"u{i}@example.com") for i in range(4)])
    people = list(Person.objects.order_by("pk"))
    rotate("encrypt")
    rotate("index")
    for i, p in enumerate(people):
        p.email = f"new{i}@example.com" if i else None
    assert Person.objects.bulk_update(people, ["email"]) == 4
    assert people[1].email == "new1@example.com"  # the instances keep their plaintext
    for i, p in enumerate(people):
        assert assert_consistent(p, "email", "email_bidx") == (2 if i else None)
    assert Person.objects.get(email="new3@example.com").pk == people[3].pk


def test_queryset_update(keys):
    a = Person.objects.create(email="a@example.com")
    rotate("encrypt")
    rotate("index")
    assert Person.objects.filter(pk=a.pk).update(email="c@example.com") == 1
    assert assert_consistent(a, "email", "email_bidx") == 2
    assert Person.objects.get(email="c@example.com").pk == a.pk
    Person.objects.update(email=None)
    assert_consistent(a, "email", "email_bidx")


def test_related_manager_update(keys):
    p = Person.objects.create(email="a@example.com")
    n = Note.objects.create(person=p, body="x")
    p.notes.update(body="y")
    assert_consistent(n, "body")
    assert Note.objects.get(pk=n.pk).body == "y"


def test_update_from_an_expression_is_refused(keys):
    with pytest.raises(FieldError, match="expression"):
        Person.objects.update(email=models.F("name"))


def test_plaintext_through_a_plain_queryset_is_refused(keys):
    Person.objects.create(email="a@example.com")
    with pytest.raises(FieldError, match="plaintext reached the database"):
        Person._base_manager.update(email="b@example.com")


def test_loaddata_round_trip_uses_plaintext(keys, tmp_path):
    p = Person.objects.create(name="x", email="a@example.com", ssn="123")
    out = io.StringIO()
    call_command("dumpdata", "testapp.person", stdout=out)
    dumped = json.loads(out.getvalue())
    assert dumped[0]["fields"] == {"name": "x", "email": "a@example.com", "ssn": "123"}
    Person.objects.all().delete()
    rotate("encrypt")
    fixture = tmp_path / "people.json"
    fixture.write_text(out.getvalue())
    call_command("loaddata", str(fixture), verbosity=0)
    loaded = Person.objects.get(email="a@example.com")
    assert loaded.pk == p.pk and loaded.ssn == "123"
    assert assert_consistent(loaded, "email", "email_bidx") == 2


def test_serializers_use_the_base_field(keys):
    obj = AllTypes.objects.create(blob=b"\x00\x01", day=dt.date(2024, 5, 6), data={"a": []})
    (row,) = json.loads(serializers.serialize("json", [AllTypes.objects.get(pk=obj.pk)]))
    assert row["fields"]["blob"] == "AAE=" and row["fields"]["day"] == "2024-05-06"
    assert row["fields"]["data"] == {"a": []}
    assert not any(k.endswith("_key_version") or k.endswith("_bidx") for k in row["fields"])


# -- reading ------------------------------------------------------------------------------------


def test_decryption_is_lazy_and_untouched_values_keep_their_token(keys):
    p = Person.objects.create(email="a@example.com")
    token = raw(p, "email")
    loaded = Person.objects.get(pk=p.pk)
    assert isinstance(loaded.__dict__["email"], Sealed)
    assert "a@example.com" not in repr(loaded.__dict__["email"])
    loaded.name = "renamed"
    loaded.save()
    assert raw(p, "email") == token


def test_tampered_ciphertext_raises_a_typed_error_naming_where(keys):
    p = Person.objects.create(email="secret@example.com")
    token = bytearray(raw(p, "email"))
    token[-1] ^= 0x01
    write_raw(p, "email", bytes(token))
    loaded = Person.objects.get(pk=p.pk)
    with pytest.raises(DecryptionError) as excinfo:
        loaded.email  # noqa: B018
    message = str(excinfo.value)
    assert "testapp.Person.email" in message and f"pk={p.pk}" in message and "key version=1" in message
    assert "secret" not in message and token.hex() not in message
    assert excinfo.value.pk == p.pk and excinfo.value.version == 1
    with pytest.raises(DecryptionError, match="testapp.Person.email.*key version=1"):
        list(Person.objects.values_list("email", flat=True))


def test_ciphertext_copied_to_another_column_does_not_open(keys):
    p = Person.objects.create(email="a@example.com", ssn="1")
    write_raw(p, "ssn", raw(p, "email"))
    with pytest.raises(DecryptionError, match="testapp.Person.ssn"):
        Person.objects.get(pk=p.pk).ssn  # noqa: B018


def test_values_and_values_list_return_plaintext(keys):
    p = Person.objects.create(name="n", email="a@example.com")
    assert list(Person.objects.values("email", "name")) == [{"email": "a@example.com", "name": "n"}]
    assert list(Person.objects.values_list("pk", "email")) == [(p.pk, "a@example.com")]
    (row,) = Person.objects.values_list("email", named=True)
    assert row.email == "a@example.com"
    assert list(p.notes.values_list("body", flat=True)) == []


def test_old_versions_stay_readable_after_rotation(keys):
    p = Person.objects.create(email="a@example.com")
    rotate("encrypt")
    q = Person.objects.create(email="b@example.com")
    assert raw(p, "email_key_version") == 1 and raw(q, "email_key_version") == 2
    assert {x.email for x in Person.objects.all()} == {"a@example.com", "b@example.com"}


# -- declaration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        EncryptedField(models.EmailField(max_length=100), keyring="other", null=True),
        EncryptedField(models.DecimalField(max_digits=5, decimal_places=2)),
        EncryptedField(models.FloatField(), null=True),
        EncryptedField(models.GenericIPAddressField(protocol="IPv6"), null=True),
        EncryptedField(models.GenericIPAddressField(unpack_ipv4=True), null=True),
        EncryptedField(models.DurationField(), null=True),
        EncryptedField(models.TimeField(), null=True),
        EncryptedField(models.PositiveSmallIntegerField(), null=True),
        BlindIndexField(source="email", bytes=8, keyring="idx", unique=True),
        BlindIndexField(source="email", normalize=str.lower),
        KeyVersionField(db_index=True),
    ],
)
def test_deconstruct_round_trip(field):
    name, path, args, kwargs = field.deconstruct()
    module, cls_name = path.rsplit(".", 1)
    assert module == "keyrotation.fields"
    clone = getattr(__import__(module, fromlist=[cls_name]), cls_name)(*args, **kwargs)

    def comparable(kw):  # field instances compare by creation order: compare their deconstruction
        return {k: v.deconstruct()[1:] if isinstance(v, models.Field) else v for k, v in kw.items()}

    _, clone_path, clone_args, clone_kwargs = clone.deconstruct()
    assert (clone_path, clone_args, comparable(clone_kwargs)) == (path, args, comparable(kwargs))


def test_makemigrations_is_clean():
    call_command("makemigrations", "testapp", "--check", "--dry-run", verbosity=0)


def test_companion_columns_exist():
    names = {f.name for f in Person._meta.get_fields()}
    assert {"email_key_version", "email_bidx_key_version", "ssn_key_version"} <= names
    companion = Person._meta.get_field("email_key_version")
    assert companion.null and not companion.editable and not companion.db_index


@pytest.mark.parametrize(
    ("base", "kwargs", "match"),
    [
        (models.FileField(), {}, "does not support FileField"),
        (models.BigAutoField(), {}, "does not support BigAutoField"),
        (models.CharField(max_length=5, unique=True), {}, "cannot be unique"),
        (models.CharField(max_length=5, db_index=True), {}, "cannot be db_index"),
        (models.CharField(max_length=5), {"primary_key": True}, "cannot be primary_key"),
        ("not a field", {}, "must be a field instance"),
    ],
)
def test_misdeclared_encrypted_field(base, kwargs, match):
    with pytest.raises(TypeError, match=match):
        EncryptedField(base, **kwargs)


@isolate_apps("tests.testapp")
def test_system_checks_for_misdeclared_fields():
    class Bad(models.Model):  # noqa: DJ008
        name = models.CharField(max_length=5)
        secret = EncryptedField(models.CharField(max_length=5))
        name_bidx = BlindIndexField(source="name")
        gone_bidx = BlindIndexField(source="missing")

        class Meta:
            app_label = "testapp"
            ordering = ["-secret"]

    ids = [e.id for e in Bad.check() if e.level >= checks.ERROR]
    assert ids.count("keyrotation.E102") == 2 and "keyrotation.E101" in ids


def test_abstract_inheritance_adds_one_companion():
    with isolate_apps("tests.testapp"):

        class Base(models.Model):
            secret = EncryptedField(models.CharField(max_length=5))

            class Meta:
                abstract = True
                app_label = "testapp"

        class Child(Base):  # noqa: DJ008
            class Meta:
                app_label = "testapp"

        names = [f.name for f in Child._meta.local_fields]
        assert names.count("secret_key_version") == 1


# -- forms -------------------------------------------------------------------------------------


class PersonForm(forms.ModelForm):
    class Meta:
        model = Person
        fields = ["name", "email", "ssn"]


def test_modelform_validates_with_the_base_field(keys):
    assert isinstance(PersonForm().fields["email"], forms.EmailField)
    bad = PersonForm(data={"name": "x", "email": "not-an-email", "ssn": "123456789012"})
    assert not bad.is_valid()
    assert set(bad.errors) == {"email", "ssn"}  # EmailValidator, max_length=11
    good = PersonForm(data={"name": "x", "email": "a@example.com", "ssn": "1"})
    assert good.is_valid(), good.errors
    p = good.save()
    assert_consistent(p, "email", "email_bidx")
    edit = PersonForm(instance=Person.objects.get(pk=p.pk))
    assert edit.initial["email"] == "a@example.com"


def test_integers_on_every_write_path(keys):
    """psycopg 3 adapts integers by internal type: integers must never reach the base field's
    get_db_prep_value while the column reports BinaryField (runs on PostgreSQL in the PG suite)."""
    a = AllTypes.objects.create(integer=0, big=2**63 - 1)
    AllTypes.objects.bulk_create([AllTypes(integer=-1, big=-(2**63))])
    AllTypes.objects.filter(pk=a.pk).update(integer=7, big=0)
    a.integer = 8
    AllTypes.objects.bulk_update([a], ["integer"])
    a.save(update_fields=["integer"])
    assert sorted(AllTypes.objects.values_list("integer", "big")) == [(-1, -(2**63)), (8, 0)]
    for obj in AllTypes.objects.all():
        assert_consistent(obj, "integer")
        assert_consistent(obj, "big")


class MoreTypesForm(forms.ModelForm):
    class Meta:
        model = MoreTypes
        fields = ["ratio", "clock", "span", "ip", "ip_unpacked", "positive"]


def test_modelform_of_the_new_types(keys):
    form = MoreTypesForm()
    assert isinstance(form.fields["ratio"], forms.FloatField)
    assert isinstance(form.fields["clock"], forms.TimeField)
    assert isinstance(form.fields["span"], forms.DurationField)
    assert isinstance(form.fields["ip"], forms.GenericIPAddressField)
    bad = MoreTypesForm(
        data={
            "ratio": "x",
            "clock": "25:00",
            "span": "x",
            "ip": "1.2.3",
            "ip_unpacked": "::1",
            "positive": "-1",
        }
    )
    assert set(bad.errors) == {"ratio", "clock", "span", "ip", "positive"}
    data = {
        "ratio": "1.25",
        "clock": "13:04:05.000120",
        "span": "1 02:03:04.000005",
        "ip": "2001:DB8::1",
        "ip_unpacked": "::ffff:192.0.2.1",
        "positive": "7",
    }
    good = MoreTypesForm(data=data)
    assert good.is_valid(), good.errors
    obj = MoreTypes.objects.get(pk=good.save().pk)
    assert (obj.ratio, obj.clock, obj.span, obj.ip, obj.ip_unpacked, obj.positive) == (
        1.25,
        dt.time(13, 4, 5, 120),
        dt.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=5),
        "2001:db8::1",
        "192.0.2.1",
        7,
    )


def test_new_types_on_every_write_path(keys):
    a = MoreTypes.objects.create(ratio=1.5, ip="192.0.2.1", span=dt.timedelta(seconds=1))
    MoreTypes.objects.bulk_create([MoreTypes(ratio=-0.0, ip="2001:db8::2", span=dt.timedelta(0))])
    MoreTypes.objects.filter(pk=a.pk).update(ratio=float("inf"), ip="::FFFF:192.0.2.9", span="-1 00:00:00")
    a = MoreTypes.objects.get(pk=a.pk)
    assert (a.ratio, a.ip, a.span) == (float("inf"), "::ffff:192.0.2.9", dt.timedelta(days=-1))
    a.ratio = 2.5
    MoreTypes.objects.bulk_update([a], ["ratio"])
    a.ip = "2001:DB8::3"
    a.save(update_fields=["ip"])
    got = sorted((o.ratio, o.ip, o.span) for o in MoreTypes.objects.all())
    assert got == [(-0.0, "2001:db8::2", dt.timedelta(0)), (2.5, "2001:db8::3", dt.timedelta(days=-1))]
    for obj in MoreTypes.objects.all():
        assert_consistent(obj, "ratio", "ratio_bidx")
        assert_consistent(obj, "ip", "ip_bidx")
        assert_consistent(obj, "span", "span_bidx")
