"""What the public test suites of four other encrypted-field libraries check, checked on EncryptedField.

One section per peer library: django-cryptography (and its Django 5 forks, whose tests are the
same), django-fernet-fields (and its forks), django-fernet-encrypted-fields and
django-encrypted-model-fields. Each behaviour their tests check is re-expressed here as a test of
``EncryptedField``; the docstring names the peer and the behaviour.

Where keyrotation differs on purpose, the test checks keyrotation's behaviour and its docstring says
``Differs:`` and why. The differences are listed in docs/concepts.md ("Differences from other
encrypted-field libraries"). A few tests check a peer's known behaviour that its own tests do not
cover; their docstrings say so.

Models are in ``tests.peerapp``; what that app cannot declare yet (see its docstring) is built by
the test itself with :func:`temporary_model`.
"""

import datetime as dt
import decimal
import io
import json
import re
import uuid
from contextlib import contextmanager
from unittest import mock

import pytest
from django import forms
from django.conf import settings
from django.core import serializers
from django.core.exceptions import FieldError, ImproperlyConfigured, ValidationError
from django.core.management import call_command
from django.core.validators import MinValueValidator
from django.db import IntegrityError, connection, migrations, models, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState
from django.test import override_settings
from django.test.utils import freeze_time, isolate_apps
from django.utils import timezone
from django.utils.module_loading import import_string

from keyrotation import conf, crypto, engine, keyring
from keyrotation.exceptions import DecryptionError, KeyRotationError
from keyrotation.fields import EncryptedField, KeyVersionField, Sealed
from keyrotation.kek import load_backend
from keyrotation.kek.local import generate_key
from keyrotation.models import DataKey
from tests.fields_support import raw, rotate, write_raw
from tests.peerapp.models import (
    CryptoChar,
    CryptoDates,
    CryptoInteger,
    CryptoNullableInteger,
    CryptoOtherTypes,
    FernetIndexed,
    FernetNullable,
    FernetTypes,
    JazzTypes,
    LanTypes,
    PlainToEncrypted,
)

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc


@contextmanager
def temporary_model(name, **fields):
    """A ``peerapp`` model declared by the test, with its table for the duration of the block.

    For what ``tests/peerapp/models.py`` cannot declare yet. The schema editor needs a
    transactional test on SQLite: mark the test ``django_db(transaction=True)``.
    """
    attrs = {"__module__": __name__, "Meta": type("Meta", (), {"app_label": "peerapp"}), **fields}
    with isolate_apps("tests.peerapp"):
        model = type(name, (models.Model,), attrs)
        with connection.schema_editor() as editor:
            editor.create_model(model)
        try:
            yield model
        finally:
            with connection.schema_editor() as editor:
                editor.delete_model(model)


def reloaded(obj):
    return type(obj).objects.get(pk=obj.pk)


def values_of(obj, names):
    return {name: getattr(obj, name) for name in names}


# == django-cryptography =========================================================================


def test_cryptography_integer_round_trips(keys):
    """django-cryptography: an integer saved and loaded again is the same integer."""
    obj = CryptoInteger.objects.create(field=42)
    assert CryptoInteger.objects.get().field == obj.field == 42


def test_cryptography_char_round_trips(keys):
    """django-cryptography: a string saved and loaded again is the same string."""
    obj = CryptoChar.objects.create(field="Hello, world!")
    assert CryptoChar.objects.get().field == obj.field == "Hello, world!"


def test_cryptography_datetime_and_date_round_trip(keys):
    """django-cryptography: an aware datetime (microseconds included) and a date round-trip."""
    now = timezone.now()
    CryptoDates.objects.create(moment=now, day=now.date())
    loaded = CryptoDates.objects.get()
    assert (loaded.moment, loaded.day) == (now, now.date())


@pytest.mark.django_db(transaction=True)
def test_cryptography_time_round_trips(keys):
    """django-cryptography: a time of day round-trips (a TimeField base field)."""
    with temporary_model("CryptoTime", time=EncryptedField(models.TimeField())) as model:
        now = timezone.now().time()
        model.objects.create(time=now)
        assert model.objects.get().time == now


@pytest.mark.django_db(transaction=True)
def test_cryptography_auto_now_is_set_on_save_and_round_trips(keys):
    """django-cryptography: a base DateTimeField(auto_now=True) is set when the row is saved, and
    the value read back is the one set."""
    stamped = EncryptedField(models.DateTimeField(auto_now=True))
    with temporary_model("CryptoStamped", stamped=stamped) as model:
        before = timezone.now()
        obj = model.objects.create()
        assert obj.stamped is not None and obj.stamped >= before
        assert model.objects.get().stamped == obj.stamped


def test_cryptography_auto_now_field_deconstructs():
    """django-cryptography: its migrations declare encrypted ``DateTimeField(auto_now=True)``
    fields, so ``deconstruct()`` (what makemigrations writes) must work for them."""
    field = EncryptedField(models.DateTimeField(auto_now=True))
    _, path, args, kwargs = field.deconstruct()
    rebuilt = import_string(path)(*args, **kwargs)
    assert rebuilt.base_field.auto_now is True


def test_cryptography_nullable_field_given_no_value_is_null(keys):
    """django-cryptography: a nullable field given no value is saved as NULL and loads as None."""
    obj = CryptoNullableInteger.objects.create()
    assert raw(obj, "field") is None
    assert reloaded(obj).field is None


def test_cryptography_none_round_trips_when_nullable_and_is_refused_otherwise(keys):
    """django-cryptography: None round-trips on a nullable field; saving None in a non-nullable
    one raises IntegrityError."""
    obj = CryptoNullableInteger.objects.create(field=None)
    assert reloaded(obj).field is None
    with pytest.raises(IntegrityError), transaction.atomic():
        CryptoInteger(field=None).save()


def test_cryptography_values_do_not_expire(keys):
    """django-cryptography: ``ttl=`` makes a value older than ``ttl`` read as an ``Expired`` sentinel.

    Differs: EncryptedField has no expiry. ``ttl=`` is refused, ciphertexts carry no timestamp,
    and a value reads the same whatever the clock says; keys are retired through the key
    lifecycle instead.
    """
    with pytest.raises(TypeError, match="ttl"):
        EncryptedField(models.IntegerField(), ttl=60)
    with freeze_time(499162800):
        obj = CryptoInteger.objects.create(field=42)
    with freeze_time(4 * 499162800):
        assert reloaded(obj).field == 42


def test_cryptography_uuid_and_decimal_round_trip(keys):
    """django-cryptography: a UUID and a Decimal round-trip (its third "other type",
    GenericIPAddressField, has the next test)."""
    value = uuid.uuid4()
    CryptoOtherTypes.objects.create(uuid=value, decimal=decimal.Decimal(1.25))
    loaded = CryptoOtherTypes.objects.get()
    assert loaded.uuid == value and loaded.decimal == decimal.Decimal("1.25")


@pytest.mark.django_db(transaction=True)
def test_cryptography_generic_ip_address_round_trips(keys):
    """django-cryptography: an IP address round-trips (a GenericIPAddressField base field)."""
    with temporary_model("CryptoAddress", ip=EncryptedField(models.GenericIPAddressField())) as model:
        model.objects.create(ip="192.168.0.1")
        assert model.objects.get().ip == "192.168.0.1"


def test_cryptography_create_then_change_costs_two_queries(keys, django_assert_num_queries):
    """django-cryptography: creating a row and saving a changed value is one INSERT and one
    UPDATE, and the new value is what loads (counted once the keyring is cached)."""
    CryptoChar.objects.create(field="warm-up")  # lists the keyring and unwraps its key once
    with django_assert_num_queries(2):
        obj = CryptoChar.objects.create(field="Hello, world!")
        obj.field = "Goodbye, world!"
        obj.save()
    assert reloaded(obj).field == "Goodbye, world!"


@pytest.fixture
def crypto_rows(keys):
    return [CryptoNullableInteger.objects.create(field=value) for value in (1, 2, 3, None)]


def test_cryptography_isnull_finds_the_null_row(crypto_rows):
    """django-cryptography: ``field__isnull=True`` finds exactly the row holding None."""
    assert list(CryptoNullableInteger.objects.filter(field__isnull=True)) == crypto_rows[-1:]


def test_cryptography_equality_without_a_blind_index_raises(crypto_rows):
    """django-cryptography: ``field__exact=...`` raises FieldError.

    The same for a field with no ``BlindIndexField``; with one, equality works (see
    ``test_fernet_equality_works_through_a_blind_index``).
    """
    with pytest.raises(FieldError):
        list(CryptoNullableInteger.objects.filter(field__exact=2))


def test_cryptography_a_key_must_be_configured(keys):
    """django-cryptography: the settings always carry a key (by default derived from SECRET_KEY).

    Differs: keyrotation never derives a key from SECRET_KEY. Data keys are wrapped by the master
    key of ``KEYROTATION["KEK"]``, and without that setting a write raises ImproperlyConfigured
    instead of falling back to another secret.
    """
    assert conf.kek()["BACKEND"] == "local"
    with override_settings(KEYROTATION={}), pytest.raises(ImproperlyConfigured, match="KEK"):
        CryptoInteger.objects.create(field=1)


def test_cryptography_description_names_the_base_type():
    """django-cryptography: an encrypted IntegerField describes itself as "Encrypted Integer"
    (the description admindocs shows)."""
    description = str(EncryptedField(models.IntegerField()).description)
    assert "ncrypted" in description and "Integer" in description


@isolate_apps("tests.peerapp")
def test_cryptography_checks_report_the_base_fields_errors():
    """django-cryptography: a base CharField with a bad max_length is reported by the system
    checks, once. (The peer's case, a missing max_length, is no error on Django 5.2 for databases
    with unlimited text columns, SQLite and PostgreSQL among them: a negative one is.)"""

    class BadField(models.Model):  # noqa: DJ008
        field = EncryptedField(models.CharField(max_length=-1))

        class Meta:
            app_label = "peerapp"

    errors = BadField.check()
    assert [e.id for e in errors] == ["fields.E121"]
    assert "max_length" in errors[0].msg


def test_cryptography_relation_base_field_is_refused():
    """django-cryptography: a ForeignKey base field is reported by a system check (encrypted.E002).

    Differs: keyrotation refuses it when the field is declared (TypeError), like every other
    unsupported base field, so the model never imports half-working.
    """
    with pytest.raises(TypeError, match="does not support ForeignKey"):
        EncryptedField(models.ForeignKey("peerapp.CryptoInteger", models.CASCADE))


class EncryptedInteger(EncryptedField):
    """A project's own encrypted field with a fixed base field (the peer tests such a subclass)."""

    def __init__(self, base_field=None, **kwargs):
        super().__init__(base_field if base_field is not None else models.IntegerField(), **kwargs)


def test_cryptography_clone_is_a_new_equal_field():
    """django-cryptography: ``clone()`` gives another field with the same options and a new
    creation counter (Django clones fields for migration states)."""
    field = EncryptedField(models.IntegerField(), verbose_name="number")
    new = field.clone()
    assert new is not field and type(new) is EncryptedField
    assert new.verbose_name == field.verbose_name
    assert new.creation_counter != field.creation_counter


def test_cryptography_subclass_clones():
    """django-cryptography: a subclass of the encrypted field clones to its own class."""
    field = EncryptedInteger()
    new = field.clone()
    assert new is not field and type(new) is EncryptedInteger
    assert new.creation_counter != field.creation_counter


def test_cryptography_deconstruct_rebuilds_the_same_field():
    """django-cryptography: ``deconstruct()`` gives what rebuilds the same type of field, with the
    base field's arguments (max_length) and the field's own options (theirs: ttl; ours: keyring)."""
    field = EncryptedField(models.CharField(max_length=20), keyring="payroll")
    _, path, args, kwargs = field.deconstruct()
    rebuilt = import_string(path)(*args, **kwargs)
    assert type(rebuilt) is EncryptedField
    assert rebuilt.base_field.max_length == 20 and rebuilt.keyring == "payroll"


def test_cryptography_subclass_deconstructs_to_its_own_path():
    """django-cryptography: the field deconstructs to its public path, a subclass to the
    subclass's own path (so migrations keep the subclass)."""
    assert EncryptedField(models.IntegerField()).deconstruct()[1] == "keyrotation.fields.EncryptedField"
    assert EncryptedInteger().deconstruct()[1] == f"{__name__}.EncryptedInteger"


class Migrator:
    """Applies migration operations to the ``peerapp`` tables one by one; unapplies them all."""

    def __init__(self):
        self.state = ProjectState()
        self.applied = []

    def apply(self, *operations):
        for operation in operations:
            after = self.state.clone()
            operation.state_forwards("peerapp", after)
            with connection.schema_editor() as editor:
                operation.database_forwards("peerapp", editor, self.state, after)
            self.applied.append((operation, self.state, after))
            self.state = after

    def unapply_all(self):
        while self.applied:
            operation, before, after = self.applied.pop()
            with connection.schema_editor() as editor:
                operation.database_backwards("peerapp", editor, after, before)
            self.state = before

    def model(self, name):
        return self.state.apps.get_model("peerapp", name)


def add_encrypted_field(model_name, name, field):
    """The operations makemigrations writes to add an encrypted field: the field, its companion."""
    return (
        migrations.AddField(model_name, name, field, preserve_default=False),
        migrations.AddField(model_name, f"{name}_key_version", KeyVersionField()),
    )


def table_names():
    with connection.cursor() as cursor:
        return connection.introspection.table_names(cursor)


@pytest.mark.django_db(transaction=True)
def test_cryptography_migration_adds_an_encrypted_column_and_reverses(keys):
    """django-cryptography: a migration adding an encrypted column (``preserve_default=False``) to
    an existing model applies, and migrating back to zero removes the table."""
    migrator = Migrator()
    try:
        migrator.apply(migrations.CreateModel("Grown", [("id", models.BigAutoField(primary_key=True))]))
        migrator.apply(
            *add_encrypted_field("grown", "field", EncryptedField(models.IntegerField(), blank=True))
        )
        assert "peerapp_grown" in table_names()
        obj = migrator.model("Grown").objects.create(field=3)
        assert migrator.model("Grown").objects.get(pk=obj.pk).field == 3
    finally:
        migrator.unapply_all()
    assert "peerapp_grown" not in table_names()


@pytest.mark.django_db(transaction=True)
def test_cryptography_migration_adds_a_defaulted_encrypted_column_to_existing_rows(keys):
    """django-cryptography: adding an encrypted column with a one-off default
    (``preserve_default=False``) to a table fills the existing rows with the default, encrypted
    and readable. Differs: the version column stays NULL (the census counts the row by its
    ciphertext header, and ``reencrypt`` gives it its own ciphertext and version)."""
    migrator = Migrator()
    try:
        migrator.apply(
            migrations.CreateModel(
                "Grown",
                [("id", models.BigAutoField(primary_key=True)), ("name", models.CharField(max_length=10))],
            )
        )
        old = migrator.model("Grown").objects.create(name="before")
        migrator.apply(
            *add_encrypted_field("grown", "secret", EncryptedField(models.IntegerField(), default=7))
        )
        assert migrator.model("Grown").objects.get(pk=old.pk).secret == 7
        token = raw(old, "secret")
        assert crypto.token_version(token) == 1
        assert raw(old, "secret_key_version") is None
    finally:
        migrator.unapply_all()


def test_cryptography_data_migration_copies_plaintext_into_the_encrypted_column(keys):
    """django-cryptography: a data migration copies a plaintext column into the encrypted one with
    the historical model (``save(update_fields=[...])``), and its reverse copies it back."""
    PlainToEncrypted.objects.create(plain="Hello, world!")
    state = MigrationLoader(connection).project_state(("peerapp", "0001_initial"))
    historical = state.apps.get_model("peerapp", "PlainToEncrypted")
    for row in historical.objects.all():
        row.secret = row.plain
        row.save(update_fields=["secret"])
    obj = PlainToEncrypted.objects.get()
    assert obj.secret == "Hello, world!"
    assert raw(obj, "secret_key_version") == crypto.token_version(raw(obj, "secret"))

    historical.objects.update(plain=None)
    for row in historical.objects.all():
        row.plain = row.secret
        row.save(update_fields=["plain"])
    assert PlainToEncrypted.objects.get().plain == "Hello, world!"


def test_cryptography_makemigrations_detects_no_changes():
    """django-cryptography: once the migrations are written, makemigrations finds no changes."""
    out = io.StringIO()
    call_command("makemigrations", "peerapp", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_cryptography_serializing_writes_plaintext():
    """django-cryptography: serializing gives the plaintext value (dumpdata fixtures hold plaintext,
    see docs/concepts.md), without the companion columns."""
    for obj, value in ((CryptoInteger(field=42), 42), (CryptoChar(field="Hello, world!"), "Hello, world!")):
        (row,) = json.loads(serializers.serialize("json", [obj]))
        assert row == {"model": obj._meta.label_lower, "pk": None, "fields": {"field": value}}


def test_cryptography_deserializing_reads_plaintext():
    """django-cryptography: deserializing plaintext gives an instance holding that value."""
    for label, value in (("peerapp.cryptointeger", 42), ("peerapp.cryptochar", "Hello, world!")):
        data = json.dumps([{"model": label, "pk": None, "fields": {"field": value}}])
        (item,) = serializers.deserialize("json", data)
        assert item.object.field == value


def test_cryptography_clean_refuses_none_on_a_non_nullable_field():
    """django-cryptography: ``clean(None)`` on a non-nullable field raises the "null" error."""
    with pytest.raises(ValidationError) as excinfo:
        EncryptedField(models.IntegerField()).clean(None, None)
    assert excinfo.value.code == "null"
    assert excinfo.value.messages == ["This field cannot be null."]


def test_cryptography_null_and_blank_declared_on_the_base_field():
    """django-cryptography: options are declared on the wrapped field; an
    ``IntegerField(blank=True, null=True)`` base field makes the field nullable and ``clean(None)``
    passes."""
    field = EncryptedField(models.IntegerField(blank=True, null=True))
    field.clean(None, None)
    assert field.null and field.blank


def test_cryptography_base_field_validators_run():
    """django-cryptography: the base field's validators run in ``clean()``."""
    field = EncryptedField(models.IntegerField(validators=[MinValueValidator(1)]))
    assert field.clean(1, None) == 1
    with pytest.raises(ValidationError) as excinfo:
        field.clean(0, None)
    assert excinfo.value.messages == ["Ensure this value is greater than or equal to 1."]


def test_cryptography_formfield_is_the_base_fields():
    """django-cryptography: ``formfield()`` is the base field's form field, with its max_length."""
    form_field = EncryptedField(models.CharField(max_length=27)).formfield()
    assert isinstance(form_field, forms.CharField) and form_field.max_length == 27


class CryptoCharForm(forms.ModelForm):
    class Meta:
        model = CryptoChar
        fields = "__all__"  # noqa: DJ007 - the companion column must stay out of "all fields"


def test_cryptography_model_form_creates(keys):
    """django-cryptography: a ModelForm of all fields validates, cleans to the plaintext, and saves
    a row that loads with the same value."""
    form = CryptoCharForm({"field": "Hello, world!"})
    assert form.is_valid(), form.errors
    assert form.cleaned_data == {"field": "Hello, world!"}
    instance = form.save()
    assert CryptoChar.objects.get().field == instance.field == "Hello, world!"


def test_cryptography_model_form_updates(keys):
    """django-cryptography: a ModelForm bound to an existing row saves the new value."""
    instance = CryptoChar.objects.create(field="Hello, world!")
    form = CryptoCharForm({"field": "Goodbye, world!"}, instance=instance)
    assert form.is_valid(), form.errors
    form.save()
    assert CryptoChar.objects.get().field == "Goodbye, world!"


# == django-fernet-fields ========================================================================

FERNET_VALUES = {
    "text": ("foo", "bar"),
    "char": ("one", "two"),
    "email": ("a@example.com", "b@example.com"),
    "integer": (1, 2),
    "day": (dt.date(2015, 2, 5), dt.date(2015, 2, 8)),
    "moment": (dt.datetime(2015, 2, 5, 15, tzinfo=UTC), dt.datetime(2015, 2, 8, 16, tzinfo=UTC)),
}


def fernet_row(which=0):
    return FernetTypes.objects.create(**{name: values[which] for name, values in FERNET_VALUES.items()})


def test_fernet_keys_come_from_the_master_key_setting(keys):
    """django-fernet-fields: keys come from the FERNET_KEYS setting, else from SECRET_KEY.

    Differs: values are encrypted with data keys that the master key of ``KEYROTATION["KEK"]``
    wraps; SECRET_KEY plays no part. With another master key configured (and not the old one),
    stored values do not open, and nothing falls back to SECRET_KEY.
    """
    obj = fernet_row()
    with override_settings(
        KEYROTATION={**settings.KEYROTATION, "KEK": {"BACKEND": "local", "KEYS": [generate_key()]}}
    ):
        with pytest.raises(KeyRotationError):
            reloaded(obj).text  # noqa: B018
    with override_settings(SECRET_KEY="another secret key"):
        assert reloaded(obj).text == "foo"


def test_fernet_several_keys_decrypt(keys):
    """django-fernet-fields: with several keys, values encrypted under each of them decrypt."""
    first = fernet_row()
    rotate("encrypt")
    second = fernet_row(1)
    assert raw(first, "text_key_version") == 1 and raw(second, "text_key_version") == 2
    assert (reloaded(first).text, reloaded(second).text) == ("foo", "bar")


def test_fernet_each_column_has_its_own_key(keys):
    """django-fernet-fields: ``FERNET_USE_HKDF=False`` lets a raw key encrypt directly.

    Differs: keyrotation always derives a key per column (HKDF of the data key and the column
    label), with no option to turn that off; so a ciphertext copied into another column does not
    open there.
    """
    obj = fernet_row()
    write_raw(obj, "char", raw(obj, "text"))
    with pytest.raises(DecryptionError, match="peerapp.FernetTypes.char"):
        reloaded(obj).char  # noqa: B018


@pytest.mark.parametrize("option", ["primary_key", "db_index", "unique"])
def test_fernet_key_index_and_unique_options_are_refused(option):
    """django-fernet-fields: primary_key, db_index and unique are refused (ImproperlyConfigured).

    Differs only in the exception: TypeError, as for every other misdeclared field; uniqueness is
    what ``BlindIndexField(unique=True)`` gives.
    """
    with pytest.raises(TypeError, match=f"cannot be {option}"):
        EncryptedField(models.IntegerField(), **{option: True})


def test_fernet_integer_validators_do_not_raise():
    """django-fernet-fields: an encrypted integer field's validators can be built (the backend's
    integer range is asked for the integer type, not for the column's binary type)."""
    field = EncryptedField(models.IntegerField())
    assert field.validators == []
    low, high = connection.ops.integer_field_range("IntegerField")
    assert field.clean(high, None) == high
    with pytest.raises(ValidationError):
        field.clean(high + 1, None)


@pytest.mark.parametrize("name", sorted(FERNET_VALUES))
def test_fernet_stored_value_is_encrypted(keys, name):
    """django-fernet-fields: the column holds a ciphertext that opens, with the field's own key,
    to the value written."""
    obj = fernet_row()
    field = FernetTypes._meta.get_field(name)
    token = raw(obj, name)
    assert token[0] == crypto.FORMAT_V1
    assert field.open(Sealed(token, field)) == FERNET_VALUES[name][0]


@pytest.mark.parametrize("name", sorted(FERNET_VALUES))
def test_fernet_insert_and_select(keys, name):
    """django-fernet-fields: a value round-trips through insert and select."""
    fernet_row()
    assert getattr(FernetTypes.objects.get(), name) == FERNET_VALUES[name][0]


@pytest.mark.parametrize("name", sorted(FERNET_VALUES))
def test_fernet_update_and_select(keys, name):
    """django-fernet-fields: a value round-trips through ``QuerySet.update()`` and select."""
    obj = fernet_row()
    FernetTypes.objects.update(**{name: FERNET_VALUES[name][1]})
    assert getattr(FernetTypes.objects.get(), name) == FERNET_VALUES[name][1]
    assert raw(obj, f"{name}_key_version") == crypto.token_version(raw(obj, name))


@pytest.mark.parametrize("name", sorted(FERNET_VALUES))
def test_fernet_every_lookup_but_isnull_raises(keys, name):
    """django-fernet-fields: every lookup Django defines, except isnull, raises FieldError naming
    the field and the lookup (it could only run on ciphertext).

    Equality (exact, in) raises too on a field without a ``BlindIndexField``; its message says to
    add one rather than naming the lookup.
    """
    fernet_row()
    for lookup in sorted(set(models.Field.get_class_lookups()) - {"isnull"}):
        with pytest.raises(FieldError) as excinfo:
            FernetTypes.objects.get(**{f"{name}__{lookup}": FERNET_VALUES[name][0]})
        message = str(excinfo.value)
        assert f"peerapp.FernetTypes.{name}" in message
        if lookup not in ("exact", "in"):
            assert f"'{lookup}'" in message


def test_fernet_equality_works_through_a_blind_index(keys):
    """django-fernet-fields: no lookup but isnull works.

    Differs: with a ``BlindIndexField``, ``exact`` and ``in`` work (through the HMAC); every
    other lookup still raises.
    """
    one = FernetIndexed.objects.create(value="one")
    two = FernetIndexed.objects.create(value="two")
    assert list(FernetIndexed.objects.filter(value="one")) == [one]
    assert set(FernetIndexed.objects.filter(value__in=["one", "two", "six"])) == {one, two}
    with pytest.raises(FieldError, match="'startswith'"):
        FernetIndexed.objects.get(value__startswith="o")


def test_fernet_nullable(keys):
    """django-fernet-fields: a nullable field stores None and loads None."""
    FernetNullable.objects.create(value=None)
    assert FernetNullable.objects.get().value is None


def test_fernet_isnull_false(keys):
    """django-fernet-fields: ``value__isnull=False`` finds the row holding a value."""
    FernetNullable.objects.create(value=None)
    FernetNullable.objects.create(value=3)
    assert FernetNullable.objects.get(value__isnull=False).value == 3


def test_fernet_isnull_true(keys):
    """django-fernet-fields: ``value__isnull=True`` finds the row holding None."""
    FernetNullable.objects.create(value=None)
    FernetNullable.objects.create(value=3)
    assert FernetNullable.objects.get(value__isnull=True).value is None


# == django-fernet-encrypted-fields ==============================================================


def jazz_saved(**values):
    obj = JazzTypes(**values)
    obj.full_clean()
    obj.save()
    return obj


def test_jazz_char_is_encrypted(keys):
    """django-fernet-encrypted-fields: a CharField value passes full_clean, is stored without any
    of its words, and round-trips."""
    plaintext = "Oh hi, test reader!"
    obj = jazz_saved(char=plaintext)
    stored = raw(obj, "char")
    assert plaintext.encode() not in stored and b"test" not in stored
    assert reloaded(obj).char == plaintext


def test_jazz_text_is_encrypted(keys):
    """django-fernet-encrypted-fields: a TextField value is stored without any of its words and
    round-trips."""
    plaintext = "Oh hi, test reader!" * 10
    obj = jazz_saved(text=plaintext)
    assert b"test" not in raw(obj, "text")
    assert reloaded(obj).text == plaintext


def test_jazz_datetime_is_encrypted_and_invalid_text_is_refused(keys):
    """django-fernet-encrypted-fields: an aware datetime is not stored as a date string and
    round-trips; "text" assigned to it is refused with ValidationError.

    Differs: the peer's full_clean() lets "text" through and save() refuses it; here full_clean()
    refuses it already (the base field's to_python), and so does save().
    """
    now = timezone.now()
    obj = jazz_saved(moment=now)
    assert re.match(rb"\d{4}-\d\d-\d\d", raw(obj, "moment")) is None
    assert reloaded(obj).moment == now
    obj.moment = "text"
    with pytest.raises(ValidationError):
        obj.full_clean()
    with pytest.raises(ValidationError):
        obj.save()


def test_jazz_integer_is_encrypted_and_validated(keys):
    """django-fernet-encrypted-fields: an integer is not stored as its digits and round-trips; a
    value past the IntegerField range fails full_clean.

    Differs: "text" fails full_clean with ValidationError (the peer raises TypeError). The range
    is the database connection's, as for a plain IntegerField (the peer's is 32-bit everywhere).
    """
    obj = jazz_saved(integer=42)
    assert raw(obj, "integer") not in (42, "42", b"42")
    assert reloaded(obj).integer == 42
    obj.integer = connection.ops.integer_field_range("IntegerField")[1] + 1
    with pytest.raises(ValidationError):
        obj.full_clean()
    obj.integer = "text"
    with pytest.raises(ValidationError):
        obj.full_clean()


def test_jazz_date_is_encrypted_and_invalid_text_is_refused(keys):
    """django-fernet-encrypted-fields: a date is not stored in ISO form and round-trips; "text" is
    refused with ValidationError.

    Differs: refused by full_clean() already (the peer refuses it only in save()).
    """
    today = timezone.now().date()
    obj = jazz_saved(day=today)
    assert raw(obj, "day") not in (today.isoformat(), today.isoformat().encode())
    assert reloaded(obj).day == today
    obj.day = "text"
    with pytest.raises(ValidationError):
        obj.full_clean()
    with pytest.raises(ValidationError):
        obj.save()


@pytest.mark.django_db(transaction=True)
def test_jazz_float_is_encrypted_and_invalid_text_is_refused(keys):
    """django-fernet-encrypted-fields: a float is not stored as its digits and round-trips exactly;
    "text" is refused.

    Differs: refused with ValidationError by full_clean() and save() (the peer raises ValueError
    in save()).
    """
    floating = EncryptedField(models.FloatField(), null=True, blank=True)
    with temporary_model("JazzFloat", floating=floating) as model:
        obj = model(floating=42.44)
        obj.full_clean()
        obj.save()
        assert raw(obj, "floating") not in (42.44, "42.44", b"42.44")
        assert reloaded(obj).floating == 42.44
        obj.floating = "text"
        with pytest.raises(ValidationError):
            obj.full_clean()
        with pytest.raises(ValidationError):
            obj.save()


def test_jazz_email_is_encrypted_and_validated(keys):
    """django-fernet-encrypted-fields: an e-mail address is stored encrypted and round-trips; an
    invalid one fails full_clean."""
    obj = jazz_saved(email="test@gmail.com")
    assert b"test@gmail.com" not in raw(obj, "email")
    assert reloaded(obj).email == "test@gmail.com"
    obj.email = "text"
    with pytest.raises(ValidationError):
        obj.full_clean()


def test_jazz_boolean_is_encrypted_and_invalid_text_is_refused(keys):
    """django-fernet-encrypted-fields: True is stored as neither a boolean nor "True"/"true"/"1"/1
    and round-trips; "text" is refused with ValidationError.

    Differs: refused by full_clean() already (the peer refuses it only in save()).
    """
    obj = jazz_saved(flag=True)
    stored = raw(obj, "flag")
    assert not isinstance(stored, (bool, int, str)) and stored not in (b"True", b"true", b"1")
    assert reloaded(obj).flag is True
    obj.flag = "text"
    with pytest.raises(ValidationError):
        obj.full_clean()
    with pytest.raises(ValidationError):
        obj.save()


def test_jazz_json_is_encrypted(keys):
    """django-fernet-encrypted-fields: a nested JSON document is stored encrypted and round-trips."""
    document = {"key": "value", "list": ["nested", {"key": "val"}], "nested": {"child": "sibling"}}
    obj = jazz_saved(data=document)
    assert json.dumps(document).encode() not in raw(obj, "data")
    assert reloaded(obj).data == document


def test_jazz_json_keys_are_encrypted_too(keys):
    """django-fernet-encrypted-fields: a JSON document's keys stay readable in the column (each leaf
    is encrypted on its own).

    Differs: the whole document is one ciphertext; no key, structure or leaf type is visible,
    and leaves keep their types (the peer reads every leaf back as a string).
    """
    document = {"key": "value", "another_key": 5}
    obj = jazz_saved(data=document)
    stored = raw(obj, "data")
    assert b"another_key" not in stored and b"key" not in stored
    assert reloaded(obj).data == document


def test_jazz_old_rows_stay_readable_after_a_key_rotation(keys):
    """django-fernet-encrypted-fields: after a new salt is put first, a row written under the old
    one still reads, new rows are written under the new one, and the two ciphertexts differ.
    Here: a new key version."""
    original = JazzTypes.objects.create(text="Oh hi test reader")
    rotate("encrypt")
    newer = JazzTypes.objects.create(text="Oh hi test reader")
    assert raw(original, "text_key_version") == 1 and raw(newer, "text_key_version") == 2
    assert reloaded(original).text == reloaded(newer).text == "Oh hi test reader"
    assert raw(original, "text") != raw(newer, "text")


def test_jazz_changing_secret_key_changes_nothing(keys):
    """django-fernet-encrypted-fields: after SECRET_KEY changes, old rows read only while the old
    key is in SECRET_KEY_FALLBACKS.

    Differs: keys do not depend on SECRET_KEY; changing it (with no fallbacks) leaves every value
    readable.
    """
    original = JazzTypes.objects.create(text="Oh hi test reader")
    with override_settings(SECRET_KEY="newkey", SECRET_KEY_FALLBACKS=[]):
        newer = JazzTypes.objects.create(text="Oh hi test reader")
        assert reloaded(original).text == reloaded(newer).text == "Oh hi test reader"


def test_jazz_a_value_whose_key_is_gone_raises(keys):
    """django-fernet-encrypted-fields: when the key that wrote a row is gone, reading the field
    returns the stored ciphertext.

    Differs: reading raises (here the master key was replaced, so no data key unwraps); a
    ciphertext is never handed back as if it were the value, where a later save() would encrypt
    it again.
    """
    original = JazzTypes.objects.create(text="Oh hi test reader")
    other_master = {**settings.KEYROTATION, "KEK": {"BACKEND": "local", "KEYS": [generate_key()]}}
    with override_settings(KEYROTATION=other_master):
        loaded = reloaded(original)
        with pytest.raises(KeyRotationError) as excinfo:
            loaded.text  # noqa: B018
    assert "reader" not in str(excinfo.value)


def test_jazz_falsy_values_are_encrypted_not_null(keys):
    """django-fernet-encrypted-fields (its known behaviour, not its tests): 0, False, "" and an
    empty document are stored as NULL and read back as None.

    Differs: only None is stored as NULL; every other value is encrypted and reads back equal,
    with its type.
    """
    falsy = {"char": "", "text": "", "integer": 0, "flag": False, "data": {}}
    obj = JazzTypes.objects.create(**falsy)
    loaded = reloaded(obj)
    for name, value in falsy.items():
        assert raw(obj, name) is not None and raw(obj, f"{name}_key_version") == 1
        assert getattr(loaded, name) == value and type(getattr(loaded, name)) is type(value)


# == django-encrypted-model-fields ===============================================================

LAN_FIRST = {
    "char": "This is a test string!",
    "text": "This is a test string2!",
    "day": dt.date(2011, 1, 1),
    "moment": dt.datetime(2011, 1, 1, 1, tzinfo=UTC),
    "flag": True,
    "integer": 123456789,
    "positive": 123456789,
    "small": 123456789,
    "positive_small": 123456789,
    "big": 9223372036854775807,
}
LAN_SECOND = {
    "char": "This is another test string!",
    "text": "This is another test string2!",
    "day": dt.date(2012, 2, 1),
    "moment": dt.datetime(2012, 1, 1, 2, tzinfo=UTC),
    "flag": False,
    "integer": -123456789,
    "positive": 0,
    "small": -123456789,
    "positive_small": 0,
    "big": -9223372036854775806,
}


def test_lanshark_values_round_trip_then_change(keys):
    """django-encrypted-model-fields: text, dates, an aware datetime, booleans and every integer
    type round-trip; changed values (negatives, 0, False) round-trip; saving again unchanged works.

    The datetime reads back as the same instant although TIME_ZONE is not UTC here (the peer
    shifts naive values into TIME_ZONE).
    """
    obj = LanTypes.objects.create(**LAN_FIRST)
    loaded = reloaded(obj)
    assert values_of(loaded, LAN_FIRST) == LAN_FIRST
    for name, value in LAN_SECOND.items():
        setattr(loaded, name, value)
    loaded.save()
    again = reloaded(obj)
    assert values_of(again, LAN_SECOND) == LAN_SECOND
    again.save()
    assert values_of(reloaded(obj), LAN_SECOND) == LAN_SECOND


def test_lanshark_unicode_round_trips(keys):
    """django-encrypted-model-fields: non-ASCII text round-trips."""
    obj = LanTypes.objects.create(char="\xa2\u221e\xa7\xb6\u2022\xaa", text="\xa2\u221e\xa7\xb6\u2022\xa2")
    loaded = reloaded(obj)
    assert (loaded.char, loaded.text) == ("\xa2\u221e\xa7\xb6\u2022\xaa", "\xa2\u221e\xa7\xb6\u2022\xa2")


def test_lanshark_every_column_holds_a_token(keys):
    """django-encrypted-model-fields: read without the field's converters, every encrypted column
    holds a token (theirs start "gAAAAAB").

    Differs: each column holds a binary token that starts with the format byte and names its key
    version, equal to the companion version column; ``values()`` decrypts.
    """
    obj = LanTypes.objects.create(**LAN_FIRST)
    for name in LAN_FIRST:
        token = raw(obj, name)
        assert token[0] == crypto.FORMAT_V1
        assert crypto.token_version(token) == raw(obj, f"{name}_key_version") == 1
    assert LanTypes.objects.values(*LAN_FIRST).get() == LAN_FIRST


def test_lanshark_internal_type_is_binary(keys):
    """django-encrypted-model-fields: every encrypted field reports the internal type TextField.

    Differs: the column is binary (BinaryField: bytea/BLOB) for every type, while the base field
    keeps its own type for validation (integer ranges) and forms.
    """
    for field in LanTypes._meta.concrete_fields:
        if isinstance(field, EncryptedField):
            assert field.get_internal_type() == "BinaryField"
            assert field.base_field.get_internal_type() == type(field.base_field).__name__


@pytest.mark.django_db(transaction=True)
def test_lanshark_auto_now_and_auto_now_add_dates(keys):
    """django-encrypted-model-fields: a date with auto_now and one with auto_now_add are set to
    today on save, and round-trip."""
    day_now = EncryptedField(models.DateField(auto_now=True), null=True)
    day_added = EncryptedField(models.DateField(auto_now_add=True), null=True)
    with temporary_model("LanStamped", day_now=day_now, day_added=day_added) as model:
        obj = model.objects.create()
        today = dt.date.today()
        assert (obj.day_now, obj.day_added) == (today, today)
        loaded = reloaded(obj)
        assert (loaded.day_now, loaded.day_added) == (today, today)


def test_lanshark_auto_date_flags(keys):
    """django-encrypted-model-fields: the auto_now and auto_now_add flags are what was declared, and
    such fields are not editable (ModelForms and the admin leave them out, as for a plain
    auto_now DateField)."""
    day_now = EncryptedField(models.DateField(auto_now=True), null=True)
    day_added = EncryptedField(models.DateField(auto_now_add=True), null=True)
    assert (day_now.base_field.auto_now, day_now.base_field.auto_now_add) == (True, False)
    assert (day_added.base_field.auto_now, day_added.base_field.auto_now_add) == (False, True)
    assert not day_now.editable and not day_added.editable


class LanCharForm(forms.ModelForm):
    class Meta:
        model = LanTypes
        fields = ["char"]


def test_lanshark_max_length_is_validated(keys):
    """django-encrypted-model-fields: a ModelForm refuses a value longer than max_length and accepts
    a shorter one."""
    assert not LanCharForm({"char": "a" * 200}).is_valid()
    assert LanCharForm({"char": "a" * 99}).is_valid()


def test_lanshark_rotating_keys(keys):
    """django-encrypted-model-fields: after a new key is put first, rows written under the old key
    read, and saving a row after reading it re-encrypts it under the new key."""
    obj = LanTypes.objects.create(**LAN_FIRST)
    rotate("encrypt")
    loaded = reloaded(obj)
    assert values_of(loaded, LAN_FIRST) == LAN_FIRST
    loaded.save()
    assert {raw(obj, f"{name}_key_version") for name in LAN_FIRST} == {2}
    assert values_of(reloaded(obj), LAN_FIRST) == LAN_FIRST


@pytest.mark.django_db(transaction=True)
def test_lanshark_saving_without_reading_keeps_the_token(keys):
    """django-encrypted-model-fields: every save() re-encrypts under the first key.

    Differs: a row saved without its encrypted values being read keeps their tokens (no decrypt,
    no re-encrypt); ``reencrypt`` moves every row to the active key.
    """
    obj = LanTypes.objects.create(**LAN_FIRST)
    rotate("encrypt")
    loaded = LanTypes.objects.get(pk=obj.pk)
    loaded.save()
    assert raw(obj, "char_key_version") == 1
    engine.reencrypt(["peerapp.LanTypes"])
    assert {raw(obj, f"{name}_key_version") for name in LAN_FIRST} == {2}
    assert values_of(reloaded(obj), LAN_FIRST) == LAN_FIRST


def test_lanshark_a_value_whose_key_is_gone_raises(keys):
    """django-encrypted-model-fields: with only the old key configured, a row re-encrypted under
    the new key reads as its ciphertext ("gAAAA...").

    Differs: reading raises DecryptionError naming the column, the row and the key version (here
    the new version is gone, as after a destroyed key or a key table restored from an older
    backup).
    """
    obj = LanTypes.objects.create(**LAN_FIRST)
    rotate("encrypt")
    loaded = reloaded(obj)
    assert values_of(loaded, LAN_FIRST) == LAN_FIRST  # read, so save() re-encrypts under v2
    loaded.save()
    DataKey.objects.filter(purpose="encrypt", version=2).update(state="destroyed", wrapped_key=None)
    keyring.invalidate()
    with pytest.raises(DecryptionError) as excinfo:
        LanTypes.objects.only("char").get().char  # noqa: B018
    message = str(excinfo.value)
    assert "peerapp.LanTypes.char" in message and f"pk={obj.pk}" in message and "key version=2" in message
    assert "test string" not in message


def test_lanshark_deferred_fields_load_on_access(keys):
    """django-encrypted-model-fields: ``only()`` loads one encrypted field; the others load, and
    decrypt, when read."""
    obj = LanTypes.objects.create(**LAN_FIRST)
    loaded = LanTypes.objects.only("char").get(pk=obj.pk)
    assert loaded.get_deferred_fields() >= {"text", "moment"}
    assert (loaded.char, loaded.text, loaded.moment) == (
        LAN_FIRST["char"],
        LAN_FIRST["text"],
        LAN_FIRST["moment"],
    )


class LanIntegerForm(forms.ModelForm):
    class Meta:
        model = LanTypes
        fields = ["integer"]


def test_lanshark_integer_validators_survive_a_backend_without_binary_ranges():
    """django-encrypted-model-fields: when the backend's integer_field_range raises for the
    column's type (as MySQL's does for a non-integer type), an integer form still validates and
    the field's validators can be built."""

    def ranges(internal_type):
        if internal_type in ("TextField", "BinaryField"):
            raise KeyError(internal_type)
        return (None, None)

    with mock.patch.object(connection.ops, "integer_field_range", side_effect=ranges):
        assert LanIntegerForm({"integer": 99}).is_valid()
        field = EncryptedField(models.IntegerField())
        assert field.validators == [] and field.base_field.validators == []


def test_lanshark_key_settings_are_validated():
    """django-encrypted-model-fields: the key setting takes one key, a list or a tuple; an empty
    or malformed one raises ImproperlyConfigured. Here: the master keys of ``KEYROTATION["KEK"]``."""
    key1, key2 = generate_key(), generate_key()
    for keys in (key1, [key1, key2], (key1, key2)):
        load_backend({"BACKEND": "local", "KEYS": keys})
    for keys in (None, "", [], (), key1[:5], (key1[:5], key2), [key1[:5], key2[:5]]):
        with pytest.raises(ImproperlyConfigured):
            load_backend({"BACKEND": "local", "KEYS": keys})
