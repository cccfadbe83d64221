"""The queryset class of models with encrypted fields: pickling and upserts (keyrotation.fields.queryset)."""

from __future__ import annotations

# ruff: noqa: S301  (these tests unpickle only what they pickled themselves)
import pickle

import pytest
from django.core.cache import caches
from django.core.exceptions import FieldError
from django.db import connection

from keyrotation.fields import Sealed
from tests.testapp.models import Account, Person

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(keys):
    Person.objects.create(name="ann", email="ann@example.com", ssn="111-11-1111")
    Person.objects.create(name="bob", email="bob@example.com")
    return Person.objects.order_by("pk")


# -- pickling ----------------------------------------------------------------------------------


def test_a_queryset_pickles_and_unpickles(people):
    loaded = pickle.loads(pickle.dumps(Person.objects.all().order_by("pk")))
    assert [(p.name, p.email, p.ssn) for p in loaded] == [
        ("ann", "ann@example.com", "111-11-1111"),
        ("bob", "bob@example.com", None),
    ]
    # still the encrypted-aware class: lookups go through the blind index, ordering is refused
    assert loaded.filter(email="bob@example.com").get().name == "bob"
    with pytest.raises(FieldError):
        loaded.order_by("email")


def test_a_pickled_queryset_holds_ciphertext_for_values_never_read(people):
    data = pickle.dumps(Person.objects.all().order_by("pk"))
    assert b"ann@example.com" not in data and b"111-11-1111" not in data
    first = pickle.loads(data)[0]
    assert isinstance(first.__dict__["email"], Sealed)
    assert first.email == "ann@example.com"


def test_values_querysets_pickle_and_still_decrypt(people):
    qs = Person.objects.order_by("pk").values_list("email", flat=True)
    fresh = pickle.loads(pickle.dumps(qs))
    assert list(fresh) == ["ann@example.com", "bob@example.com"]
    query_only = Person.objects.order_by("pk").values("name", "email")
    query_only.query = pickle.loads(pickle.dumps(query_only.query))
    assert list(query_only)[1] == {"name": "bob", "email": "bob@example.com"}


def test_related_managers_and_custom_querysets_pickle(people):
    ann = Person.objects.get(name="ann")
    ann.notes.create(body="secret note")
    loaded = pickle.loads(pickle.dumps(ann.notes.all()))
    assert [n.body for n in loaded] == ["secret note"]


def test_the_cache_framework_stores_a_queryset(people, settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    cache = caches["default"]
    cache.set("people", Person.objects.order_by("pk"))
    assert [p.email for p in cache.get("people")] == ["ann@example.com", "bob@example.com"]


# -- upserts -----------------------------------------------------------------------------------


def raw_account(pk: int) -> tuple:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT username, username_key_version, username_bidx, username_bidx_key_version "
            "FROM testapp_account WHERE id = %s",
            [pk],
        )
        return cur.fetchone()


@pytest.mark.skipif(
    not connection.features.supports_update_conflicts_with_target, reason="needs ON CONFLICT (...)"
)
def test_an_upsert_keeps_the_blind_index_and_version_in_step(keys):
    account = Account.objects.create(username="old-name")
    Account.objects.bulk_create(
        [Account(pk=account.pk, username="new-name")],
        update_conflicts=True,
        update_fields=["username"],
        unique_fields=["id"],
    )
    assert Account.objects.get(pk=account.pk).username == "new-name"
    assert Account.objects.filter(username="new-name").get().pk == account.pk
    assert not Account.objects.filter(username="old-name").exists()
    _token, version, index, index_version = raw_account(account.pk)
    assert (version, index_version) == (1, 1) and index is not None


def test_an_upsert_on_an_encrypted_field_names_the_blind_index_to_use(keys):
    with pytest.raises(FieldError, match="use its unique blind index 'username_bidx'"):
        Account.objects.bulk_create(
            [Account(username="x")],
            update_conflicts=True,
            update_fields=["username"],
            unique_fields=["username"],
        )


@pytest.mark.skipif(
    not connection.features.supports_update_conflicts_with_target, reason="needs ON CONFLICT (...)"
)
def test_an_upsert_by_the_unique_blind_index_updates_the_matching_row(keys):
    account = Account.objects.create(username="carol")
    Account.objects.bulk_create(
        [Account(username="Carol")],
        update_conflicts=True,
        update_fields=["username"],
        unique_fields=["username_bidx"],
    )
    assert Account.objects.count() == 1
    assert Account.objects.get(pk=account.pk).username == "Carol"
