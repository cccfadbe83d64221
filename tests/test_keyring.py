"""Keyrings: caching, lazy unwrapping, reload on an unknown version, state checks."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from keyrotation import crypto, keyring, lifecycle
from keyrotation.exceptions import DecryptionError, KeyStateError, NoActiveKey, UnknownKeyVersion
from keyrotation.kek import context_for
from keyrotation.models import DataKey
from tests.helpers.db import child_env

pytestmark = pytest.mark.django_db
LABEL = "app.Model.field"


def test_encrypt_decrypt_roundtrip(keys):
    token, version = keyring.encrypt("default", LABEL, b"hello")
    assert version == 1 and crypto.token_version(token) == 1
    assert keyring.decrypt("default", LABEL, token) == b"hello"


def test_old_versions_stay_readable_after_rotation(keys):
    old, _ = keyring.encrypt("default", LABEL, b"old")
    lifecycle.rotate("default", "encrypt")
    keyring.invalidate()
    new, version = keyring.encrypt("default", LABEL, b"new")
    assert version == 2
    assert keyring.decrypt("default", LABEL, old) == b"old"
    assert keyring.decrypt("default", LABEL, new) == b"new"


def test_unknown_version_reloads_once_then_raises(keys, django_assert_num_queries):
    keyring.get_keyring("default", "encrypt")
    forged = crypto.encrypt(bytes(32), 99, LABEL, b"x")
    with django_assert_num_queries(1), pytest.raises(UnknownKeyVersion, match="version=99"):
        keyring.decrypt("default", LABEL, forged)


def test_version_written_by_another_process_is_found_without_waiting(keys, settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 3600}
    keyring.encrypt("default", LABEL, b"warm")  # this process caches "v1 active" for an hour
    # Another process adds v2: a DataKey row this process has never listed (the rotation's
    # invalidation runs on commit, and a test never commits).
    lifecycle.rotate("default", "encrypt")
    v2 = DataKey.objects.get(purpose="encrypt", version=2)
    dek = keyring.kek_backend().unwrap(bytes(v2.wrapped_key), context_for("default", "encrypt", 2))
    token = crypto.encrypt(crypto.derive_subkey(dek, "encrypt", LABEL), 2, LABEL, b"from elsewhere")
    assert keyring.get_keyring("default", "encrypt").active_version == 1  # still cached
    assert keyring.decrypt("default", LABEL, token) == b"from elsewhere"
    assert keyring.get_keyring("default", "encrypt").active_version == 2  # reloaded once


def test_cache_lists_keyring_once_per_ttl(keys, django_assert_num_queries):
    keyring.encrypt("default", LABEL, b"x")
    with django_assert_num_queries(0):
        for _ in range(100):
            token, _ = keyring.encrypt("default", LABEL, b"x")
            keyring.decrypt("default", LABEL, token)


def test_retired_and_destroyed_versions_refuse_to_decrypt(keys, settings):
    token, _ = keyring.encrypt("default", LABEL, b"x")
    lifecycle.rotate("default", "encrypt")
    DataKey.objects.filter(version=1, purpose="encrypt").update(state="retired")
    lifecycle.accept_state("default", "encrypt")  # retired with rows left: not a lifecycle edge
    keyring.clear_cache()
    with pytest.raises(KeyStateError, match="key version is retired") as info:
        keyring.decrypt("default", LABEL, token)
    assert "version=1" in str(info.value)


def test_tampered_value_names_field_pk_and_version_only(keys):
    token, _ = keyring.encrypt("default", LABEL, b"canary-plaintext")
    tampered = token[:-1] + bytes([token[-1] ^ 1])
    with pytest.raises(DecryptionError) as info:
        keyring.decrypt("default", LABEL, tampered, pk=42)
    message = str(info.value)
    assert message == "Decryption failed (field=app.Model.field, pk=42, key version=1)"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_malformed_value(keys):
    with pytest.raises(DecryptionError, match="Malformed encrypted value"):
        keyring.decrypt("default", LABEL, b"\x80gAAAAA-not-ours", pk=1)


def test_no_keys_is_a_clear_error(db):
    with pytest.raises(NoActiveKey, match="rotatekeys --init"):
        keyring.encrypt("default", LABEL, b"x")


def test_blind_indexes_cover_every_decryptable_version(keys):
    ring = keyring.get_keyring("default", "index")
    digest, version = ring.index(LABEL, b"alice", 16)
    lifecycle.rotate("default", "index")
    keyring.invalidate()
    both = keyring.get_keyring("default", "index").indexes(LABEL, b"alice", 16)
    assert set(both) == {1, 2} and both[1] == digest and both[2] != digest


def test_repr_never_shows_keys(keys):
    ring = keyring.get_keyring("default", "encrypt")
    subkey = ring.subkey(1, LABEL)
    assert subkey.hex() not in repr(ring) and repr(ring) == "<Keyring default/encrypt: v1=active>"


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_second_process_sees_new_version(settings):
    """A real second process: learns a new active version within CACHE_SECONDS, and decrypts a
    value under a version it has never seen at once (reload on unknown version)."""
    lifecycle.init("default")
    env = child_env(KEYROTATION_TEST_CACHE_SECONDS="2")
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.keyring_child"],
        cwd=Path(__file__).parent.parent,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:

        def ask(line):
            child.stdin.write(line + "\n")
            child.stdin.flush()
            return child.stdout.readline().split()

        assert child.stdout.readline().split() == ["ready", "1"]
        lifecycle.rotate("default", "encrypt")
        start = time.monotonic()
        while ask("active") != ["2"]:
            assert time.monotonic() - start < 2 + 1, "child did not see v2 within CACHE_SECONDS"
            time.sleep(0.1)
        lifecycle.rotate("default", "encrypt")  # v3: the child has never seen it
        keyring.invalidate()
        token, version = keyring.encrypt("default", "a.B.c", b"fresh")
        assert version == 3
        plaintext_hex, elapsed_ms = ask(f"decrypt {token.hex()}")
        assert bytes.fromhex(plaintext_hex) == b"fresh"
        assert float(elapsed_ms) < 1000  # no waiting for the 2 s TTL
    finally:
        child.stdin.close()
        child.wait(10)
        child.stdout.close()


def test_threads_asking_for_one_key_share_a_single_unwrap(keys, monkeypatch):
    """The engine's two lanes start together: one KEK call, the other thread waits for it."""
    import threading

    keyring.clear_cache()
    ring = keyring.get_keyring("default", "encrypt")
    ring.refused()  # the listing's key states are checked first (they unwrap the audit chain key)
    backend = keyring.kek_backend().current  # the configured backend, behind the KEK switch
    real, calls = backend.unwrap, []

    def slow_unwrap(wrapped, context):
        calls.append(threading.current_thread().name)
        time.sleep(0.05)  # long enough for every thread to arrive while the first one is in here
        return real(wrapped, context)

    monkeypatch.setattr(backend, "unwrap", slow_unwrap)
    results, start = [], threading.Barrier(6)

    def use():
        start.wait()
        results.append(ring.subkey(1, "testapp.Person.email"))

    threads = [threading.Thread(target=use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 6 and len(set(results)) == 1
