"""Django REST framework: an encrypted field serializes as its base field (against the real DRF)."""

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.validators import RegexValidator
from django.db import models
from django.test.utils import isolate_apps
from rest_framework import generics, serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.test import APIRequestFactory
from rest_framework.validators import UniqueValidator

from keyrotation import crypto
from keyrotation.contrib import rest_framework as keyrotation_drf
from keyrotation.contrib.rest_framework import serializer_field_for
from keyrotation.fields import BlindIndexField, EncryptedField, Sealed
from tests.fields_support import raw
from tests.testapp.models import Account, AllTypes, Note, Person

ROOT = Path(__file__).resolve().parent.parent


def model_serializer(model, fields="__all__"):
    """A plain, unmodified ModelSerializer over ``model``."""
    meta = type("Meta", (), {"model": model, "fields": fields})
    return type(f"{model.__name__}Serializer", (serializers.ModelSerializer,), {"Meta": meta})


def api(model, method, data=None, pk=None):
    """One request through a generic DRF view rendering JSON: (status, decoded body)."""
    base = generics.RetrieveUpdateAPIView if pk is not None else generics.ListCreateAPIView
    view = type(
        "View",
        (base,),
        {
            "queryset": model.objects.all(),
            "serializer_class": model_serializer(model),
            "authentication_classes": (),
            "permission_classes": (),
            "renderer_classes": (JSONRenderer,),
        },
    )
    request = getattr(APIRequestFactory(), method)("/", data, format="json")
    response = view.as_view()(request, **({"pk": pk} if pk is not None else {}))
    response.render()
    return response.status_code, json.loads(response.content)


def drf_message(field_class, code, **params):
    return str(field_class.default_error_messages[code]).format(**params)


def unique_validators(field):
    return [v for v in field.validators if isinstance(v, UniqueValidator)]


def already_exists(model, name):
    field = model._meta.get_field(name)
    return field.error_messages["unique"] % {
        "model_name": model._meta.verbose_name,
        "field_label": field.verbose_name,
    }


# -- the field DRF builds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, field_class, options",
    [
        ("char", serializers.CharField, {"max_length": 200, "allow_null": True, "required": False}),
        ("text", serializers.CharField, {"max_length": None}),
        ("integer", serializers.IntegerField, {}),
        ("big", serializers.IntegerField, {}),
        ("dec", serializers.DecimalField, {"max_digits": 30, "decimal_places": 10}),
        ("day", serializers.DateField, {}),
        ("moment", serializers.DateTimeField, {}),
        ("flag", serializers.BooleanField, {}),
        ("data", serializers.JSONField, {}),
        ("uid", serializers.UUIDField, {}),
    ],
)
def test_each_encrypted_field_is_built_as_its_base_field(name, field_class, options):
    field = model_serializer(AllTypes)().fields[name]
    assert isinstance(field, field_class) and not isinstance(field, serializers.ModelField)
    assert not field.read_only
    for option, value in options.items():
        assert getattr(field, option) == value, option


def test_a_binary_base_field_is_read_only_as_for_a_plain_binaryfield():
    """Django's BinaryField is editable=False, so DRF makes it read-only; the encrypted one too."""
    field = model_serializer(AllTypes)().fields["blob"]
    assert field.read_only and field.model_field is AllTypes._meta.get_field("blob").base_field


def test_email_field_keeps_the_wrappers_null_and_blank():
    field = model_serializer(Person)().fields["email"]
    assert type(field) is serializers.EmailField
    assert (field.max_length, field.allow_null, field.allow_blank, field.required) == (254, True, True, False)


def test_the_serializers_own_mapping_builds_the_base_field():
    class LowercaseEmail(serializers.EmailField):
        pass

    class PersonSerializer(serializers.ModelSerializer):
        serializer_field_mapping = {
            **serializers.ModelSerializer.serializer_field_mapping,
            models.EmailField: LowercaseEmail,
        }

        class Meta:
            model = Person
            fields = ["email"]

    assert type(PersonSerializer().fields["email"]) is LowercaseEmail


# -- values in and out ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_email_is_validated_by_drf_then_stored_encrypted_and_read_back_as_plaintext(keys):
    status, body = api(Person, "post", {"name": "p", "email": "not-an-email"})
    assert status == 400
    assert body == {"email": [drf_message(serializers.EmailField, "invalid")]}
    assert not Person.objects.exists()

    status, body = api(Person, "post", {"name": "p", "email": "alice@example.com"})
    assert status == 201 and body["email"] == "alice@example.com"
    person = Person.objects.get()
    stored = raw(person, "email")
    assert crypto.token_version(stored) == 1 and b"alice" not in stored
    assert raw(person, "email_key_version") == 1

    status, body = api(Person, "get")
    assert status == 200 and body == [
        {"id": person.pk, "name": "p", "email": "alice@example.com", "ssn": None}
    ]
    assert Person.objects.get(email="ALICE@example.com").pk == person.pk


@pytest.mark.parametrize(
    "name, value, field_class, code, params",
    [
        ("char", "x" * 201, serializers.CharField, "max_length", {"max_length": 200}),
        ("integer", "abc", serializers.IntegerField, "invalid", {}),
        ("dec", "1" * 21 + "." + "1" * 10, serializers.DecimalField, "max_digits", {"max_digits": 30}),
        ("day", "2024-13-01", serializers.DateField, "invalid", {"format": "YYYY-MM-DD"}),
        (
            "moment",
            "yesterday",
            serializers.DateTimeField,
            "invalid",
            {"format": "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]"},
        ),
        ("flag", "maybe", serializers.BooleanField, "invalid", {}),
        ("uid", "not-a-uuid", serializers.UUIDField, "invalid", {}),
    ],
)
@pytest.mark.django_db
def test_invalid_values_are_refused_by_the_base_fields_drf_rules(
    keys, name, value, field_class, code, params
):
    serializer = model_serializer(AllTypes)(data={name: value})
    assert not serializer.is_valid()
    (error,) = serializer.errors[name]
    assert error.code == code
    assert str(error) == drf_message(field_class, code, **params)
    assert not AllTypes.objects.exists()


@pytest.mark.django_db
def test_every_type_round_trips_as_drf_renders_its_base_field(keys):
    moment = dt.datetime(2024, 2, 29, 12, 34, 56, tzinfo=dt.timezone.utc)
    uid = uuid.uuid4()
    data = {
        "char": "hello",
        "text": "a longer text",
        "integer": 42,
        "big": 2**40,
        "dec": "12.34",
        "day": "2024-02-29",
        "moment": moment.isoformat(),
        "flag": True,
        "data": {"a": [1, 2, None]},
        "uid": str(uid),
    }
    serializer = model_serializer(AllTypes)(data=data)
    assert serializer.is_valid(), serializer.errors
    obj = serializer.save()
    for name in data:
        assert crypto.token_version(raw(obj, name)) == 1, name

    out = model_serializer(AllTypes)(AllTypes.objects.get(pk=obj.pk)).data
    expected = {
        **data,
        "id": obj.pk,
        "dec": "12.3400000000",
        "moment": serializers.DateTimeField().to_representation(moment),
        "blob": None,
    }
    assert out == expected
    assert json.loads(JSONRenderer().render(out)) == expected


# -- unique blind index ---------------------------------------------------------------------------


@pytest.mark.parametrize("duplicate", ["Bob@X.com", "bob@x.com", " BOB@X.COM", "ＢＯＢ@Ｘ.com"])
@pytest.mark.django_db
def test_a_duplicate_under_a_unique_blind_index_is_a_400_already_exists(keys, duplicate):
    assert api(Account, "post", {"username": "Bob@X.com"})[0] == 201

    status, body = api(Account, "post", {"username": duplicate})
    assert status == 400
    assert body == {"username": [already_exists(Account, "username")]}
    assert "already exists" in body["username"][0]
    assert Account.objects.count() == 1


def test_the_unique_validator_is_drfs_own_over_the_default_manager():
    (validator,) = unique_validators(model_serializer(Account)().fields["username"])
    assert validator.queryset.model is Account and validator.message == already_exists(Account, "username")


@pytest.mark.django_db
def test_update_through_a_serializer(keys):
    alice = Account.objects.create(username="alice")
    Account.objects.create(username="bob")

    status, body = api(Account, "patch", {"username": "carol"}, pk=alice.pk)
    assert (status, body) == (200, {"id": alice.pk, "username": "carol"})
    assert crypto.token_version(raw(alice, "username")) == 1 and b"carol" not in raw(alice, "username")
    assert Account.objects.get(username="carol").pk == alice.pk
    assert not Account.objects.filter(username="alice").exists()

    # its own value, in another case, is not a duplicate of itself
    assert api(Account, "put", {"username": "CAROL"}, pk=alice.pk) == (
        200,
        {"id": alice.pk, "username": "CAROL"},
    )

    status, body = api(Account, "patch", {"username": "Bob"}, pk=alice.pk)
    assert (status, body) == (400, {"username": [already_exists(Account, "username")]})
    assert Account.objects.get(pk=alice.pk).username == "CAROL"

    person = Person.objects.create(name="p", email="p@example.com")
    assert api(Person, "patch", {"email": "nope"}, pk=person.pk)[0] == 400
    assert api(Person, "patch", {"email": "q@example.com"}, pk=person.pk)[0] == 200
    assert Person.objects.get(email="q@example.com").pk == person.pk


# -- companion columns -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_companion_columns_are_never_inputs_nor_bytes_in_output(keys):
    # fields = "__all__": DRF leaves out serialize=False fields, and ignores them as inputs
    serializer = model_serializer(Person)(
        data={"name": "p", "email": "a@example.com", "email_bidx": "AAAA", "email_key_version": 7}
    )
    assert set(serializer.fields) == {"id", "name", "email", "ssn"}
    assert serializer.is_valid(), serializer.errors
    assert set(serializer.validated_data) == {"name", "email"}
    person = serializer.save()
    assert raw(person, "email_key_version") == 1

    for model, obj in ((Person, person), (AllTypes, AllTypes.objects.create(blob=b"\x00\xffsecret"))):
        out = model_serializer(model)(model.objects.get(pk=obj.pk)).data
        assert not any(isinstance(v, (bytes, bytearray, memoryview, Sealed)) for v in out.values())
        assert not any(name.endswith(("_bidx", "_key_version")) for name in out)
        JSONRenderer().render(out)
    assert out["blob"] == "AP9zZWNyZXQ="  # base64, as DRF renders a plain BinaryField

    # named in Meta.fields: a blind index is refused, a version column is a read-only integer
    with pytest.raises(ImproperlyConfigured, match="email_bidx is a blind index"):
        model_serializer(Person, ["email", "email_bidx"])().fields  # noqa: B018
    serializer = model_serializer(Person, ["email", "email_key_version"])(person)
    assert serializer.fields["email_key_version"].read_only
    assert serializer.data == {"email": "a@example.com", "email_key_version": 1}


# -- the wrapper's options ---------------------------------------------------------------------------


@isolate_apps("tests.testapp")
def test_the_wrappers_options_shape_the_field():
    class Options(models.Model):  # noqa: DJ008
        status = EncryptedField(
            models.CharField(max_length=10, choices=[("a", "A"), ("b", "B")]),
            default="a",
            verbose_name="current status",
            help_text="Where it stands.",
        )
        code = EncryptedField(
            models.CharField(max_length=5, validators=[RegexValidator(r"^[A-Z]+$")]), blank=True
        )
        code_bidx = BlindIndexField(source="code", unique=True)
        frozen = EncryptedField(models.DateTimeField(), null=True, editable=False)

        class Meta:
            app_label = "testapp"

    fields = model_serializer(Options)().fields
    status = fields["status"]
    assert type(status) is serializers.ChoiceField and list(status.choices) == ["a", "b"]
    assert (status.required, status.label, status.help_text) == (False, "Current status", "Where it stands.")

    code = fields["code"]
    assert (type(code), code.required, code.allow_blank) == (serializers.CharField, False, True)
    assert [type(v) for v in code.validators if isinstance(v, RegexValidator)] == [RegexValidator]
    (unique,) = unique_validators(code)
    assert unique.queryset.model is Options

    frozen = fields["frozen"]
    assert type(frozen) is serializers.DateTimeField and frozen.read_only

    for name, field in fields.items():
        if name != "id":
            assert repr(serializer_field_for(Options._meta.get_field(name))) == repr(field)


@isolate_apps("tests.testapp")
def test_choices_and_validators_given_on_the_wrapper():
    class WrapperOptions(models.Model):  # noqa: DJ008
        status = EncryptedField(models.CharField(max_length=10), choices=[("a", "A"), ("b", "B")])
        code = EncryptedField(models.CharField(max_length=5), validators=[RegexValidator(r"^[A-Z]+$")])

        class Meta:
            app_label = "testapp"

    fields = model_serializer(WrapperOptions)().fields
    assert type(fields["status"]) is serializers.ChoiceField
    with pytest.raises(serializers.ValidationError):
        fields["code"].run_validators("abc")


# -- by hand, and the hook itself ------------------------------------------------------------------


@pytest.mark.django_db
def test_serializer_field_for_in_a_hand_written_serializer(keys):
    class Signup(serializers.Serializer):
        email = serializer_field_for(Person._meta.get_field("email"), required=True, allow_null=False)
        username = serializer_field_for(Account._meta.get_field("username"))

    Account.objects.create(username="taken")
    serializer = Signup(data={"email": "nope", "username": "TAKEN"})
    assert not serializer.is_valid()
    assert serializer.errors == {
        "email": [drf_message(serializers.EmailField, "invalid")],
        "username": [already_exists(Account, "username")],
    }
    assert Signup(data={"email": "a@example.com", "username": "free"}).is_valid()
    assert not Signup(data={"username": "free"}).is_valid()

    read_only = serializer_field_for(Account._meta.get_field("username"), read_only=True)
    assert read_only.read_only and not unique_validators(read_only)


def test_serializer_field_for_refuses_what_it_cannot_build():
    with pytest.raises(TypeError, match="bound to a model"):
        serializer_field_for(EncryptedField(models.EmailField()))
    with pytest.raises(TypeError, match="is a relation"):
        serializer_field_for(Note._meta.get_field("person"))
    with pytest.raises(ImproperlyConfigured, match="blind index"):
        serializer_field_for(Person._meta.get_field("email_bidx"))
    assert type(serializer_field_for(Person._meta.get_field("name"))) is serializers.CharField


def test_install_is_idempotent_and_keeps_drfs_methods():
    assert keyrotation_drf.install() is False
    for name in ("build_standard_field", "build_field"):
        method = getattr(serializers.ModelSerializer, name)
        assert method._keyrotation
        assert method.__wrapped__.__module__ == "rest_framework.serializers"
        assert not hasattr(method.__wrapped__, "_keyrotation")  # wrapped once


def test_keyrotation_imports_and_works_without_rest_framework():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["rest_framework"] = None  # any import of it raises ImportError
        import django
        django.setup()  # runs KeyRotationConfig.ready()
        from django.core import checks
        from tests.testapp.models import Person
        assert Person._meta.get_field("email").formfield() is not None
        assert not [e for e in checks.run_checks() if e.level >= checks.ERROR]
        assert not [m for m in sys.modules if m.startswith("rest_framework.")]
        try:
            import keyrotation.contrib.rest_framework
        except ImportError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'django-keyrotation[drf]'" in result.stdout
