"""Every EncryptedField and BlindIndexField registers its column, purpose and version column."""

import pytest

from keyrotation import census, registry
from tests.testapp.models import Person


def test_fields_register_themselves():
    email = registry.get("testapp.Person.email")
    assert email.model is Person and email.purpose == "encrypt"
    assert email.version_attname == "email_key_version" and email.keyring == "default"
    bidx = registry.get("testapp.Person.email_bidx")
    assert bidx.purpose == "index" and bidx.version_attname == "email_bidx_key_version"


def test_columns_by_purpose():
    encrypt = {c.label for c in registry.columns(purpose="encrypt")}
    index = {c.label for c in registry.columns(purpose="index")}
    assert {"testapp.Person.email", "testapp.Person.ssn", "testapp.Note.body"} <= encrypt
    assert {"testapp.Person.email_bidx", "testapp.Account.username_bidx"} <= index
    assert not encrypt & index


def test_historical_and_isolated_models_do_not_register():
    labels = [c.label for c in registry.columns()]
    assert len(labels) == len(set(labels))
    assert all(c.model._meta.apps.__class__.__name__ == "Apps" for c in registry.columns())


@pytest.mark.django_db
def test_census_counts_the_version_columns(keys):
    Person.objects.create(email="a@example.com")
    Person.objects.create(email=None)
    assert census.counts(registry.get("testapp.Person.email")) == {1: 1, None: 1}
    assert census.references("default", "index", 1)["testapp.Person.email_bidx"] == 1
