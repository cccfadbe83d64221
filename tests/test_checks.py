"""System checks."""

import pytest
from django.core import checks
from django.core.management import call_command

from keyrotation import policy
from keyrotation.checks import (
    check_kek_reachable,
    check_keys_initialised,
    check_keys_initialised_for_deploy,
    check_rotation_periods,
    check_settings,
)
from tests.helpers.key_age import make_older, set_policy


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


_KEK = {"BACKEND": "local", "KEYS": ["ERERERERERERERERERERERERERERERERERERERERERE="]}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("METRICS_BEARER_TOKEN", ""),
        ("METRICS_BEARER_TOKEN", 12345),
        ("METRICS_BEARER_TOKEN", " s3cret-metrics-token "),
        ("METRICS_CENSUS_CACHE_SECONDS", -1),
        ("METRICS_CENSUS_CACHE_SECONDS", "300"),
    ],
)
def test_malformed_metrics_settings_never_repeat_the_token(settings, key, value):
    settings.KEYROTATION = {"KEK": _KEK, key: value}
    messages = check_settings()
    assert ids(messages) == ["keyrotation.E001"] and key in messages[0].msg
    assert "s3cret" not in messages[0].msg


def test_unknown_keys_warn(settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECOND": 5}
    messages = check_settings()
    assert ids(messages) == ["keyrotation.W001"] and "CACHE_SECOND" in messages[0].msg


@pytest.mark.django_db
def test_deploy_check_reports_unusable_kek(settings):
    assert check_kek_reachable() == []
    settings.KEYROTATION = {
        "KEK": {"BACKEND": "vault", "URL": "http://127.0.0.1:9", "TOKEN": "t", "TIMEOUT": 1}
    }
    messages = check_kek_reachable()
    assert ids(messages) == ["keyrotation.E002"] and "cannot connect" in messages[0].msg
    assert "'t'" not in messages[0].msg


@pytest.mark.django_db
def test_deploy_check_reports_a_wrong_local_master_key(settings):
    """A wrong master key is valid base64 and loads: only unwrapping a stored key shows it."""
    from keyrotation import keyring, lifecycle
    from keyrotation.kek.local import generate_key

    lifecycle.init("default")
    wrong = generate_key()
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {"BACKEND": "local", "KEYS": [wrong]}}
    keyring.clear_cache()
    messages = check_kek_reachable()
    assert ids(messages) == ["keyrotation.E002"]
    assert "cannot unwrap data key" in messages[0].msg and "not the current KEK" in messages[0].msg
    assert wrong not in messages[0].msg and settings.TEST_MASTER_KEY not in messages[0].msg


@pytest.mark.django_db
def test_deploy_check_unwraps_the_newest_key_of_each_keyring():
    """A newest data key that does not unwrap (copied from another row) is reported by name."""
    from keyrotation import lifecycle
    from keyrotation.models import DataKey

    lifecycle.init("default")
    lifecycle.rotate("default", "encrypt")
    assert check_kek_reachable() == []
    v1 = DataKey.objects.get(keyring="default", purpose="encrypt", version=1)
    DataKey.objects.filter(keyring="default", purpose="encrypt", version=2).update(wrapped_key=v1.wrapped_key)
    messages = check_kek_reachable()
    assert ids(messages) == ["keyrotation.E002"]
    assert "default/encrypt v2" in messages[0].msg
    assert bytes(v1.wrapped_key).hex() not in messages[0].msg


@pytest.mark.vault
@pytest.mark.django_db
def test_deploy_check_on_vault_proves_an_unwrap_not_only_a_read(vault, settings):
    """A token that may read the Transit key but not decrypt with it passed the check, and then
    every read of an encrypted field failed. With no stored key yet, a canary is wrapped and
    unwrapped instead."""
    import uuid

    from keyrotation import keyring, lifecycle
    from keyrotation.kek import load_backend

    name = f"kr-{uuid.uuid4().hex[:8]}"
    root = {"BACKEND": "vault", "URL": vault.addr, "TOKEN": vault.token, "KEY_NAME": name}
    vault.client.sys.create_or_update_policy(
        name=f"read-{name}", policy=f'path "transit/keys/{name}" {{ capabilities = ["read"] }}'
    )
    read_only = vault.client.auth.token.create(policies=[f"read-{name}"], ttl="10m")["auth"]["client_token"]

    def check_with(options):
        settings.KEYROTATION = {**settings.KEYROTATION, "KEK": options}
        keyring.clear_cache()
        return check_kek_reachable()

    messages = check_with(root)
    assert ids(messages) == ["keyrotation.E002"] and "not found" in messages[0].msg
    load_backend(root).ensure_key()
    assert check_with(root) == []  # the canary round-trips
    messages = check_with({**root, "TOKEN": read_only})
    assert ids(messages) == ["keyrotation.E002"] and "permission denied" in messages[0].msg
    assert check_with(root) == []
    lifecycle.init("default")
    assert check_with(root) == []  # now the newest stored keys are unwrapped
    messages = check_with({**root, "TOKEN": read_only})
    assert ids(messages) == ["keyrotation.E002"]
    assert "cannot unwrap data key" in messages[0].msg and "permission denied" in messages[0].msg
    assert read_only not in messages[0].msg and vault.token not in messages[0].msg


def test_checks_are_registered():
    registered = checks.registry.registry.get_checks(include_deployment_checks=True)
    assert check_settings in registered and check_kek_reachable in registered


@pytest.mark.django_db
def test_keys_initialised_check_without_columns_is_quiet(monkeypatch):
    from keyrotation import registry

    monkeypatch.setattr(registry, "_COLUMNS", {})  # the test app now declares encrypted fields
    assert check_keys_initialised(databases=["default"]) == []
    assert check_keys_initialised() == []
    assert check_keys_initialised_for_deploy(databases=["default"]) == []


@pytest.mark.django_db
def test_missing_keys_are_a_warning_for_migrate_and_an_error_for_deploy():
    from keyrotation import lifecycle

    assert ids(check_keys_initialised(databases=["default"])) == ["keyrotation.W003"] * 2
    deploy = check_keys_initialised_for_deploy(databases=["default"])
    assert ids(deploy) == ["keyrotation.E003"] * 2
    assert "rotatekeys --init --keyring default" in deploy[0].hint
    assert check_keys_initialised_for_deploy not in checks.registry.registry.get_checks()
    assert check_keys_initialised_for_deploy in checks.registry.registry.get_checks(
        include_deployment_checks=True
    )
    lifecycle.init("default")
    assert check_keys_initialised(databases=["default"]) == []
    assert check_keys_initialised_for_deploy(databases=["default"]) == []


@pytest.mark.django_db
def test_a_key_past_its_rotation_period_is_a_database_warning(keys, settings):
    make_older("default", "encrypt", 400)
    assert check_rotation_periods(databases=["default"]) == []  # no policy: quiet
    set_policy(settings, {"default": {"encrypt": "365d", "index": None}})
    assert check_rotation_periods() == []  # not a database check run: quiet
    assert check_rotation_periods(databases=["other"]) == []  # the keys are on default
    [warning] = check_rotation_periods(databases=["default"])
    assert warning.id == "keyrotation.W004" and warning.level == checks.WARNING
    assert warning.msg.startswith(
        "data key default/encrypt v1 is past its rotation period: "
        "active 400 days, period 365 days, due since "
    )
    assert warning.hint == "Run `manage.py rotatekeys --if-due`, then `manage.py reencrypt`."
    assert check_rotation_periods in checks.registry.registry.get_checks()
    call_command("check", "--database", "default")  # a warning does not stop `check` (or `migrate`)
    set_policy(settings, {"default": "soon"})
    assert check_rotation_periods(databases=["default"]) == []  # malformed: E001 says so
    set_policy(settings, 365)
    policy.rotate_due()
    assert check_rotation_periods(databases=["default"]) == []  # the new version is young
