"""System checks."""

import pytest
from django.core import checks

from keyrotation.checks import check_kek_reachable, check_keys_initialised, check_settings


def ids(messages):
    return [m.id for m in messages]


def test_valid_settings_pass():
    assert check_settings() == []


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("nope", "must be a dict"),
        ({}, 'KEYROTATION["KEK"] is not set'),
        ({"KEK": {"KEYS": []}}, '"BACKEND" key'),
        ({"KEK": {"BACKEND": "local", "KEYS": ["bad"]}}, "not valid base64"),
        (
            {
                "KEK": {"BACKEND": "local", "KEYS": ["ERERERERERERERERERERERERERERERERERERERERERE="]},
                "CACHE_SECONDS": -1,
            },
            "CACHE_SECONDS",
        ),
    ],
)
def test_malformed_settings(settings, value, fragment):
    settings.KEYROTATION = value
    messages = check_settings()
    assert ids(messages) == ["keyrotation.E001"] and fragment in messages[0].msg


def test_unknown_keys_warn(settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECOND": 5}
    messages = check_settings()
    assert ids(messages) == ["keyrotation.W001"] and "CACHE_SECOND" in messages[0].msg


def test_deploy_check_reports_unusable_kek(settings):
    assert check_kek_reachable() == []
    settings.KEYROTATION = {
        "KEK": {"BACKEND": "vault", "URL": "http://127.0.0.1:9", "TOKEN": "t", "TIMEOUT": 1}
    }
    messages = check_kek_reachable()
    assert ids(messages) == ["keyrotation.E002"] and "cannot connect" in messages[0].msg
    assert "'t'" not in messages[0].msg


def test_checks_are_registered():
    registered = checks.registry.registry.get_checks(include_deployment_checks=True)
    assert check_settings in registered and check_kek_reachable in registered


@pytest.mark.django_db
def test_keys_initialised_check_without_columns_is_quiet(monkeypatch):
    from keyrotation import registry

    monkeypatch.setattr(registry, "_COLUMNS", {})  # the test app now declares encrypted fields
    assert check_keys_initialised(databases=["default"]) == []
    assert check_keys_initialised() == []
