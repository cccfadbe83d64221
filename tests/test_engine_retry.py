"""What the engine retries. A KEK that answered and refused (wrong master key, invalid token,
denied policy, unknown key) fails the run at once with its reason; a KEK that cannot answer right
now (OpenBao stopped: connection refused) is waited for with back-off."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import OperationalError

from keyrotation import engine, keyring, lifecycle
from keyrotation.exceptions import KEKRefused
from keyrotation.kek.local import generate_key
from tests.reliability_support import rotate, seed

pytestmark = pytest.mark.django_db(transaction=True)  # retries close the connection


def _retries(caplog) -> list[str]:
    """The engine's own retry log lines: one per retried attempt."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("keyrotation.engine") and "retry" in r.getMessage()
    ]


def _rows_to_move(settings, kek: dict) -> None:
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": kek}
    keyring.clear_cache()
    lifecycle.init("default")
    seed(20)
    rotate()


def _reencrypt_with(settings, kek: dict, caplog) -> tuple[KEKRefused, float]:
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": kek}
    keyring.clear_cache()  # a fresh process: every data key must come through this KEK
    started = time.monotonic()
    with caplog.at_level("WARNING", "keyrotation.engine"), pytest.raises(KEKRefused) as info:
        engine.reencrypt(["testapp.Person"])
    return info.value, time.monotonic() - started


def test_wrong_local_master_key_fails_at_once(settings, caplog):
    _rows_to_move(settings, settings.KEYROTATION["KEK"])
    error, seconds = _reencrypt_with(settings, {"BACKEND": "local", "KEYS": [generate_key()]}, caplog)
    assert "not the current KEK" in str(error)
    assert _retries(caplog) == []  # exactly one attempt
    assert seconds < 5, seconds  # 8 retries took 93 s


@pytest.fixture
def vault_kek(vault):
    name = f"kr-{uuid.uuid4().hex[:8]}"
    return {"BACKEND": "vault", "URL": vault.addr, "TOKEN": vault.token, "KEY_NAME": name, "TIMEOUT": 3}


def _read_only_token(vault, key_name: str) -> str:
    policy = f"read-only-{key_name}"
    hcl = f'path "transit/keys/{key_name}" {{ capabilities = ["read"] }}'
    vault.client.sys.create_or_update_policy(name=policy, policy=hcl)
    return vault.client.auth.token.create(policies=[policy], ttl="10m")["auth"]["client_token"]


@pytest.mark.vault
@pytest.mark.parametrize(
    ("case", "reason", "calls"),
    [
        ("invalid token", "permission denied", 1),  # reading the key's configuration
        ("denied policy", "permission denied", 2),  # the read is allowed, the unwrap is not
        # another key name: its kek id shows the data keys are not this key's, no Transit call
        ("unknown key", "not the current KEK", 0),
    ],
)
def test_permanent_vault_failure_fails_at_once(vault, vault_kek, settings, caplog, case, reason, calls):
    _rows_to_move(settings, vault_kek)
    broken = {
        "invalid token": {**vault_kek, "TOKEN": "not-a-token"},
        "denied policy": {**vault_kek, "TOKEN": _read_only_token(vault, vault_kek["KEY_NAME"])},
        "unknown key": {**vault_kek, "KEY_NAME": vault_kek["KEY_NAME"] + "-missing"},
    }[case]
    error, seconds = _reencrypt_with(settings, broken, caplog)
    assert reason in str(error)
    assert _retries(caplog) == []  # exactly one attempt...
    assert keyring.kek_backend().requests == calls  # ...of exactly this many Transit calls
    assert seconds < 5, seconds
    assert broken["TOKEN"] not in str(error)


@pytest.mark.vault
def test_stopped_openbao_is_still_waited_for(openbao_server, settings, caplog):
    kek = {
        "BACKEND": "vault",
        "URL": openbao_server.addr,
        "TOKEN": openbao_server.token,
        "KEY_NAME": f"kr-{uuid.uuid4().hex[:8]}",
        "TIMEOUT": 3,
    }
    _rows_to_move(settings, kek)
    keyring.clear_cache()
    openbao_server.stop()
    back = threading.Timer(2.0, openbao_server.start)
    back.start()
    try:
        with caplog.at_level("WARNING", "keyrotation.engine"):
            report = engine.reencrypt(["testapp.Person"])
    finally:
        back.join()
        openbao_server.start()
    assert report.status == "finished", report
    retries = _retries(caplog)
    assert retries and all("KEKUnreachable" in line for line in retries), retries


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError(2006, "MySQL server has gone away"), True),
        (OperationalError(2013, "Lost connection to server during query"), True),
        (OperationalError("server closed the connection unexpectedly"), True),  # psycopg
        (OperationalError(1366, "Incorrect string value"), False),
        (OperationalError(1054, "Unknown column"), False),
        (OperationalError(1644, "a trigger's SIGNAL"), False),
    ],
)
def test_a_mysql_error_about_the_statement_is_not_retried(error, transient):
    from keyrotation.engine.retry import is_transient

    assert is_transient(error) is transient
