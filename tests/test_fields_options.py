"""Field options mean the same on the base field and on ``EncryptedField`` (keyrotation.fields.options)."""

from __future__ import annotations

import datetime as dt

import pytest
from django import forms
from django.core.exceptions import ValidationError
from django.db import connection, models
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.questioner import NonInteractiveMigrationQuestioner
from django.db.migrations.state import ProjectState
from django.test.utils import isolate_apps
from django.utils import timezone

from keyrotation.fields import EncryptedField
from tests.testapp.models import Profile


def raw(pk: int, column: str) -> bytes | None:
    with connection.cursor() as cur:
        cur.execute(f"SELECT {column} FROM testapp_profile WHERE id = %s", [pk])
        value = cur.fetchone()[0]
    return bytes(value) if value is not None else None


# -- null / blank / default / editable from either side ------------------------------------------


def test_null_and_blank_given_on_the_base_field_apply_to_the_column():
    age = Profile._meta.get_field("age")
    assert (age.null, age.blank) == (True, True)
    assert (age.base_field.null, age.base_field.blank) == (True, True)


def test_blank_on_the_base_and_null_on_the_wrapper_combine(keys):
    nickname = Profile._meta.get_field("nickname")
    assert (nickname.null, nickname.blank) == (True, True)
    profile = Profile(nickname="")
    profile.full_clean()  # an empty value is allowed, as for a plain CharField(blank=True)
    profile.save()
    assert Profile.objects.get(pk=profile.pk).nickname == ""


def test_a_model_form_accepts_an_empty_blank_field(keys):
    form_class = forms.modelform_factory(Profile, fields=["nickname", "age", "tier"])
    form = form_class(data={"nickname": "", "age": "", "tier": "basic"})
    assert form.is_valid(), form.errors
    saved = form.save()
    # As for a plain CharField(null=True, blank=True), the form stores an empty value as None.
    assert (saved.nickname, saved.age) == (None, None)


def test_a_not_null_char_field_defaults_to_the_empty_string_like_the_plain_field(keys):
    # A plain CharField() without default gives new instances "" (not None)
    assert Profile(tier="basic").color == "r"
    assert EncryptedField(models.CharField(max_length=5)).get_default() == ""
    assert EncryptedField(models.IntegerField(null=True)).get_default() is None


def test_default_given_on_the_base_field_is_the_default(keys):
    field = EncryptedField(models.CharField(max_length=5, default="x"))
    assert field.has_default() and field.get_default() == "x"


# -- auto_now / auto_now_add ------------------------------------------------------------------


def test_auto_now_add_and_auto_now_are_applied_on_save(keys):
    before = timezone.now()
    profile = Profile.objects.create()
    after = timezone.now()
    assert before <= profile.created <= after
    assert before <= profile.updated <= after
    assert profile.born == timezone.localdate() or profile.born == dt.date.today()
    loaded = Profile.objects.get(pk=profile.pk)
    assert loaded.created == profile.created
    first_created, first_updated = loaded.created, loaded.updated
    loaded.nickname = "later"
    loaded.save()
    again = Profile.objects.get(pk=profile.pk)
    assert again.created == first_created  # auto_now_add: only on insert
    assert again.updated > first_updated  # auto_now: on every save
    assert raw(profile.pk, "created") is not None and b"T" not in raw(profile.pk, "created")[:5]


def test_auto_now_fields_are_not_editable_and_blank():
    created = Profile._meta.get_field("created")
    assert (created.editable, created.blank) == (False, True)
    assert "created" not in forms.modelform_factory(Profile, fields="__all__")().fields


def test_an_auto_now_field_clones_and_deconstructs():
    created = Profile._meta.get_field("created")
    clone = created.clone()
    assert clone.base_field.auto_now_add is True
    name, path, args, kwargs = created.deconstruct()
    assert path == "keyrotation.fields.EncryptedField"
    assert kwargs["base_field"].auto_now_add is True


# -- choices and validators from either side --------------------------------------------------------


def test_choices_on_the_wrapper_are_validated_and_displayed(keys):
    profile = Profile(tier="gold")
    with pytest.raises(ValidationError) as info:
        profile.full_clean()
    assert info.value.error_dict["tier"][0].code == "invalid_choice"
    profile.tier = "pro"
    profile.full_clean()
    assert profile.get_tier_display() == "Professional"
    profile.save()
    assert Profile.objects.get(pk=profile.pk).get_tier_display() == "Professional"


def test_choices_on_the_base_field_give_get_display_and_a_choice_form_field(keys):
    profile = Profile.objects.create(color="g")
    assert Profile.objects.get(pk=profile.pk).get_color_display() == "Green"
    form_field = Profile._meta.get_field("color").formfield()
    assert isinstance(form_field, forms.TypedChoiceField)
    assert ("g", "Green") in list(form_field.choices)


def test_validators_from_both_sides_run_in_full_clean_and_forms(keys):
    profile = Profile(code="abc")
    with pytest.raises(ValidationError) as info:
        profile.full_clean()
    assert {e.code for e in info.value.error_dict["code"]} == {"upper", "alnum"}
    profile.code = "AB-C"
    with pytest.raises(ValidationError) as info:
        profile.full_clean()
    assert {e.code for e in info.value.error_dict["code"]} == {"alnum"}
    form = forms.modelform_factory(Profile, fields=["code", "tier"])(data={"code": "ab-c", "tier": "basic"})
    assert not form.is_valid()
    assert len(form.errors["code"]) == 2


def test_verbose_name_and_help_text_reach_the_form():
    form_field = Profile._meta.get_field("code").formfield()
    assert form_field.label == "Customer code"
    assert form_field.help_text == "Upper case letters and digits."


def test_the_base_fields_own_validation_error_comes_through(keys):
    profile = Profile(email="not-an-email")
    with pytest.raises(ValidationError) as info:
        profile.full_clean()
    assert info.value.error_dict["email"][0].code == "invalid"


# -- conflicts ----------------------------------------------------------------------------------


@isolate_apps("tests.testapp")
def test_an_option_given_on_both_sides_with_different_values_is_refused_naming_the_field():
    with pytest.raises(TypeError) as info:

        class Clash(models.Model):  # noqa: DJ008
            tier = EncryptedField(models.CharField(max_length=5, default="a"), default="b")

            class Meta:
                app_label = "testapp"

    message = str(info.value)
    assert "testapp.Clash.tier" in message
    assert "default='b'" in message and "default='a'" in message


@isolate_apps("tests.testapp")
def test_the_same_option_given_on_both_sides_is_accepted():
    class Same(models.Model):  # noqa: DJ008
        tier = EncryptedField(models.CharField(max_length=5, null=True), null=True)

        class Meta:
            app_label = "testapp"

    assert Same._meta.get_field("tier").null is True


@pytest.mark.parametrize(
    "make",
    [
        lambda: EncryptedField(models.CharField(max_length=5, unique=True)),
        lambda: EncryptedField(models.CharField(max_length=5), db_index=True),
        lambda: EncryptedField(models.CharField(max_length=5, db_default="x")),
        lambda: EncryptedField(models.CharField(max_length=5), db_default="x"),
    ],
    ids=["unique", "db_index", "db_default-base", "db_default-wrapper"],
)
def test_options_a_ciphertext_cannot_have_are_refused(make):
    with pytest.raises(TypeError, match="EncryptedField cannot be"):
        make()


# -- migrations --------------------------------------------------------------------------------


def test_every_option_and_type_round_trips_through_deconstruct_and_clone():
    from django.apps import apps

    fields = [
        f
        for model in apps.get_app_config("testapp").get_models()
        for f in model._meta.get_fields()
        if isinstance(f, EncryptedField)
    ]
    assert len(fields) > 30
    deep = MigrationAutodetector(ProjectState(), ProjectState()).deep_deconstruct
    for field in fields:
        assert deep(field.clone()) == deep(field), field.name  # what the autodetector compares
        name, path, args, kwargs = field.deconstruct()
        rebuilt = EncryptedField(*args, **kwargs)
        assert rebuilt.deconstruct()[3].keys() == kwargs.keys(), field.name
        for option in ("null", "blank", "choices", "editable", "help_text", "default"):
            assert getattr(rebuilt, option) == getattr(field, option), (field.name, option)
            assert getattr(rebuilt.base_field, option) == getattr(field.base_field, option)
        assert rebuilt.base_field._validators == field.base_field._validators


def test_migrations_of_the_test_apps_are_complete(db):
    loader = MigrationLoader(connection)
    autodetector = MigrationAutodetector(
        loader.project_state(),
        ProjectState.from_apps(__import__("django.apps").apps.apps),
        NonInteractiveMigrationQuestioner(specified_apps={"testapp", "migrapp"}, dry_run=True),
    )
    changes = autodetector.changes(graph=loader.graph)
    ours = {app: [m.operations for m in ms] for app, ms in changes.items() if app in {"testapp", "migrapp"}}
    assert ours == {}
