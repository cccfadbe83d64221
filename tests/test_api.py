"""The public API re-exported from ``keyrotation``: a rotation from code in two calls."""

from __future__ import annotations

import inspect
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

import keyrotation
from keyrotation.exceptions import NoActiveKey
from tests.testapp.models import Person


def test_importing_keyrotation_needs_no_configured_django():
    code = "import keyrotation; print(sorted(keyrotation.__all__)); print(keyrotation.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "'reencrypt'" in done.stdout and "'rotate'" in done.stdout


def test_every_exported_name_is_documented_and_callable():
    from keyrotation import api

    defined = {
        name
        for name, value in vars(api).items()
        if inspect.isfunction(value) and value.__module__ == api.__name__ and not name.startswith("_")
    }
    assert defined == set(api.__all__) == set(keyrotation.API_NAMES)
    assert set(keyrotation.__all__) == {"__version__", *api.__all__}
    for name in api.__all__:
        assert callable(getattr(keyrotation, name)) and getattr(keyrotation, name).__doc__
    assert set(api.__all__) <= set(dir(keyrotation))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'rotat'"):
        keyrotation.rotat  # noqa: B018


@pytest.mark.django_db(transaction=True)
def test_a_rotation_from_code_is_two_calls():
    keyrotation.init()
    people = {
        p.pk: p.email
        for p in Person.objects.bulk_create(
            Person(name=f"p{i}", email=f"u{i}@example.com") for i in range(30)
        )
    }

    new = keyrotation.rotate()
    report = keyrotation.reencrypt()

    assert sorted((k.purpose, k.version) for k in new) == [("encrypt", 2), ("index", 2)]
    assert report.status == "finished" and report.rows_done == 30
    columns = {c["label"]: c for c in keyrotation.status()["columns"]}
    assert columns["testapp.Person.email"]["active_version"] == 2
    assert columns["testapp.Person.email"]["percent_active"] == 100.0
    assert keyrotation.verify(["testapp.Person"])["failures"] == []
    assert {p.pk: p.email for p in Person.objects.all()} == people
    assert Person.objects.filter(email="u7@example.com").count() == 1  # the blind index moved too


@pytest.mark.django_db(transaction=True)
def test_rotate_one_purpose_and_the_errors():
    with pytest.raises(NoActiveKey, match="rotatekeys --init"):
        keyrotation.rotate()
    keyrotation.init()
    assert [(k.purpose, k.version) for k in keyrotation.rotate(purpose="index")] == [("index", 2)]
    assert {(k.purpose, k.version, k.state) for k in keyrotation.keys(purpose="encrypt")} == {
        ("encrypt", 1, "active")
    }
    with pytest.raises(ValueError, match="purpose must be one of encrypt, index"):
        keyrotation.rotate(purpose="indx")
    assert keyrotation.init() == []  # the keyring exists: nothing created


@pytest.mark.django_db(transaction=True)
def test_rotating_what_the_policy_says_is_due(settings):
    keyrotation.init()
    settings.KEYROTATION = {**settings.KEYROTATION, "ROTATION_PERIOD": {"default": {"encrypt": 90}}}
    assert keyrotation.due_keys() == []
    later = timezone.now() + timedelta(days=91)
    assert [a.name for a in keyrotation.due_keys(now=later)] == ["default/encrypt v1"]
    assert keyrotation.rotate_if_due(purpose="index", now=later).rotated == ()
    report = keyrotation.rotate_if_due(actor="cron", now=later)
    assert [(r.was.name, r.new_version) for r in report.rotated] == [("default/encrypt v1", 2)]
    with pytest.raises(ValueError, match="purpose must be one of encrypt, index"):
        keyrotation.due_keys(purpose="indx")
    with pytest.raises(ValueError, match="purpose must be one of encrypt, index"):
        keyrotation.rotate_if_due(purpose="indx")
