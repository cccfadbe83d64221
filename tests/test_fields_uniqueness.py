"""Unique blind indexes in ``validate_unique()`` (keyrotation.fields.uniqueness)."""

from __future__ import annotations

import pytest
from django import forms
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from tests.testapp.models import Account, Profile

pytestmark = pytest.mark.django_db

AccountForm = forms.modelform_factory(Account, fields=["username"])


def test_full_clean_reports_a_duplicate_on_the_source_field(keys):
    Account.objects.create(username="alice")
    duplicate = Account(username="alice")
    with pytest.raises(ValidationError) as info:
        duplicate.full_clean()
    errors = info.value.error_dict
    assert list(errors) == ["username"]
    assert errors["username"][0].code == "unique"
    assert "already exists" in errors["username"][0].messages[0]


def test_the_check_normalises_like_the_index(keys):
    Account.objects.create(username="alice")
    with pytest.raises(ValidationError):
        Account(username=" ALICE").full_clean()
    # and the database agrees: the same value is a constraint violation
    with pytest.raises(IntegrityError), transaction.atomic():
        Account.objects.create(username=" ALICE")


def test_a_row_is_not_a_duplicate_of_itself(keys):
    account = Account.objects.create(username="alice")
    account.full_clean()
    loaded = Account.objects.get(pk=account.pk)
    loaded.username = "Alice"  # the same normalised value, same row
    loaded.full_clean()


def test_a_value_under_an_older_index_version_is_still_a_duplicate(keys):
    from keyrotation import keyring, lifecycle

    Account.objects.create(username="alice")
    lifecycle.rotate("default", "index")
    keyring.invalidate()
    with pytest.raises(ValidationError):
        Account(username="alice").full_clean()


def test_a_model_form_shows_already_exists_on_the_field(keys):
    Account.objects.create(username="alice")
    form = AccountForm(data={"username": "Alice"})
    assert not form.is_valid()
    assert form.errors == {"username": ["Account with this Username already exists."]}
    assert AccountForm(data={"username": "bob"}).is_valid()


def test_excluding_the_source_skips_the_check(keys):
    Account.objects.create(username="alice")
    Account(username="alice").full_clean(exclude=["username"])


def test_no_value_no_check(keys):
    Profile.objects.create(email=None)
    Profile(email=None).full_clean()


def test_an_invalid_value_is_reported_by_the_field_not_the_uniqueness_check(keys):
    with pytest.raises(ValidationError) as info:
        Profile(email="not an email").full_clean()
    assert [e.code for e in info.value.error_dict["email"]] == ["invalid"]


@pytest.mark.urls("tests.uniqueness_urls")
def test_the_admin_answers_a_duplicate_with_a_form_error(keys, admin_client):
    Account.objects.create(username="alice")
    response = admin_client.post("/admin/testapp/account/add/", {"username": "ALICE"})
    assert response.status_code == 200
    assert "Account with this Username already exists." in response.content.decode()
    assert Account.objects.count() == 1
    response = admin_client.post("/admin/testapp/account/add/", {"username": "bob"})
    assert response.status_code == 302
    assert Account.objects.filter(username="bob").exists()
