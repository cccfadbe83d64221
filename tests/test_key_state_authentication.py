"""Authenticated key states: a database writer cannot move keys between states (both backends).

The attack: two raw ``UPDATE``s make a retired v1 active again and v2 decrypt-only, and the
application would encrypt new rows under a key the writer may hold. Each key row's state carries
a MAC under the audit chain key, bound to the audit row of its last change; processes also keep a
high-water mark of the newest state they have used.
"""

import logging
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings

from keyrotation import audit_chain, key_state, keyring, lifecycle
from keyrotation.checks import check_key_states
from keyrotation.exceptions import KEKUnavailable, KeyStateError
from keyrotation.models import DataKey, KeyRotationAudit
from tests.testapp.models import Person

pytestmark = pytest.mark.django_db
LABEL = "testapp.Person.email"
NO_GRACE = override_settings(
    KEYROTATION={
        "KEK": {"BACKEND": "local", "KEYS": ["ERERERERERERERERERERERERERERERERERERERERERE="]},
        "CACHE_SECONDS": 0,
        "DESTROY_GRACE_SECONDS": 0,
    }
)


def sql(statement, params=()):
    tables = {"{keys}": DataKey._meta.db_table, "{audit}": KeyRotationAudit._meta.db_table}
    for placeholder, table in tables.items():
        statement = statement.replace(placeholder, connection.ops.quote_name(table))
    with connection.cursor() as cur:
        cur.execute(statement, params)


def states(purpose="encrypt"):
    return dict(DataKey.objects.filter(keyring="default", purpose=purpose).values_list("version", "state"))


def retired_v1(purpose="encrypt"):
    """v2 active, v1 retired, through the lifecycle."""
    with NO_GRACE:
        lifecycle.init("default", actor="test")
        lifecycle.rotate("default", purpose, actor="test")
        lifecycle.retire("default", purpose, 1, actor="test")
    assert states(purpose) == {1: "retired", 2: "active"}


def set_state(version, state, purpose="encrypt"):
    """What a database writer can do: one raw UPDATE of one key row's state."""
    sql(
        "UPDATE {keys} SET state = %s WHERE keyring = 'default' AND purpose = %s AND version = %s",
        [state, purpose, version],
    )


def downgrade(purpose="encrypt"):
    """The attack: two raw UPDATEs, v2 first (one active key per keyring is a constraint)."""
    set_state(2, "decrypt_only", purpose)
    set_state(1, "active", purpose)


def verify_cmd():
    out, err = StringIO(), StringIO()
    try:
        call_command("audit_verify", stdout=out, stderr=err)
    except SystemExit as exc:
        return exc.code, out.getvalue() + err.getvalue()
    return 0, out.getvalue() + err.getvalue()


# -- the downgrade by SQL is refused ------------------------------------------------------------


def test_a_downgrade_by_sql_is_refused_when_encrypting(caplog):
    retired_v1()
    downgrade()
    keyring.clear_cache()  # a process that starts now: it has seen nothing
    with caplog.at_level(logging.ERROR, logger="keyrotation.keyring"), pytest.raises(KeyStateError) as info:
        keyring.encrypt("default", LABEL, b"new row")
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "key state (active) is not authenticated: its MAC does not match its state (changed outside "
        "keyrotation's lifecycle) [keyring='default' purpose='encrypt' version=1]"
    )
    logged = [r.getMessage() for r in caplog.records]
    assert any("version=1" in line and "not authenticated" in line for line in logged)
    assert any("version=2" in line and "not authenticated" in line for line in logged)
    with pytest.raises(KeyStateError, match="not authenticated"), transaction.atomic():
        Person.objects.create(email="victim@example.com")
    assert Person.objects.count() == 0


def test_a_downgraded_index_key_is_refused_for_new_digests_and_lookups():
    retired_v1("index")
    downgrade("index")
    keyring.clear_cache()
    ring = keyring.get_keyring("default", "index")
    with pytest.raises(KeyStateError, match=r"not authenticated.*purpose='index' version=1"):
        ring.index(LABEL, b"alice", 16)
    assert ring.decryptable_versions() == []  # neither v1 nor v2 is used for lookups


def test_a_downgrade_refuses_reading_under_the_tampered_versions_too():
    with NO_GRACE:
        lifecycle.init("default")
        token, _ = keyring.encrypt("default", LABEL, b"old")
        lifecycle.rotate("default", "encrypt")
    set_state(1, "retired")
    keyring.clear_cache()
    with pytest.raises(KeyStateError, match=r"key state \(retired\) is not authenticated.*version=1"):
        keyring.decrypt("default", LABEL, token)
    assert keyring.encrypt("default", LABEL, b"new")[1] == 2  # v2's state is untouched


def test_a_state_copied_back_with_its_old_mac_is_refused():
    """The writer puts back v1's row exactly as it was when v1 was active (its MAC was valid then)."""
    lifecycle.init("default")
    then = DataKey.objects.values_list("state", "state_audit_id", "state_mac_version", "state_mac").get(
        keyring="default", purpose="encrypt", version=1
    )
    lifecycle.rotate("default", "encrypt")
    set_state(2, "decrypt_only")
    sql(
        "UPDATE {keys} SET state = %s, state_audit_id = %s, state_mac_version = %s, state_mac = %s "
        "WHERE keyring = 'default' AND purpose = 'encrypt' AND version = 1",
        list(then),
    )
    keyring.clear_cache()
    with pytest.raises(KeyStateError, match=r"older than the keyring's latest change .*version=1"):
        keyring.encrypt("default", LABEL, b"x")


def test_a_process_never_encrypts_under_an_older_state_than_it_has_used():
    """The deepest rewind: the newest audit rows deleted too, every key row as it was at init.

    Each row then authenticates; a process that has used v2 still refuses v1 (the audit anchor is
    what tells a freshly started process, see test_audit.py).
    """
    lifecycle.init("default")
    then = DataKey.objects.values_list("state", "state_audit_id", "state_mac_version", "state_mac").get(
        keyring="default", purpose="encrypt", version=1
    )
    lifecycle.rotate("default", "encrypt")
    keyring.invalidate()
    assert keyring.encrypt("default", LABEL, b"seen v2")[1] == 2
    rotated = KeyRotationAudit.objects.get(action="key_rotated").pk
    sql("DELETE FROM {keys} WHERE keyring = 'default' AND purpose = 'encrypt' AND version = 2")
    sql(
        "UPDATE {keys} SET state = %s, state_audit_id = %s, state_mac_version = %s, state_mac = %s "
        "WHERE keyring = 'default' AND purpose = 'encrypt' AND version = 1",
        list(then),
    )
    sql("DELETE FROM {audit} WHERE id >= %s", [rotated])
    assert key_state.problems() == []  # authentic, as far as the database can tell
    keyring.invalidate()  # the next listing, as after CACHE_SECONDS
    with pytest.raises(KeyStateError) as info:
        keyring.encrypt("default", LABEL, b"x")
    assert str(info.value) == (
        f"downgraded key state refused: active version 1 (authenticated by audit row #{then[1]}) is older "
        f"than active version 2 (audit row #{rotated}), which this process has already used "
        "[keyring='default' purpose='encrypt' version=1]"
    )


# -- legitimate transitions ---------------------------------------------------------------------


def test_a_listing_taken_before_a_rotation_is_not_a_downgrade():
    """A thread still holding the previous listing during a rotation (as during any TTL)."""
    lifecycle.init("default")
    before = keyring.get_keyring("default", "encrypt")
    lifecycle.rotate("default", "encrypt")
    keyring.invalidate()
    assert keyring.encrypt("default", LABEL, b"x")[1] == 2
    assert before.encrypt(LABEL, b"late")[1] == 1
    keyring.invalidate()
    assert keyring.encrypt("default", LABEL, b"x")[1] == 2


def test_a_rollback_is_followed_by_a_process_that_has_used_the_newer_version():
    lifecycle.init("default")
    lifecycle.rotate("default", "encrypt")
    lifecycle.rotate("default", "encrypt")
    keyring.invalidate()
    assert keyring.encrypt("default", LABEL, b"x")[1] == 3
    lifecycle.rollback("default", "encrypt")
    keyring.invalidate()
    assert keyring.encrypt("default", LABEL, b"x")[1] == 2


@NO_GRACE
def test_every_lifecycle_operation_leaves_every_state_authenticated(master_key, settings):
    steps = [
        lambda: lifecycle.init("default"),
        lambda: lifecycle.rotate("default", "encrypt"),
        lambda: lifecycle.rollback("default", "encrypt"),
        lambda: lifecycle.rotate("default", "encrypt"),
        lambda: lifecycle.retire("default", "encrypt", 1),
        lambda: lifecycle.restore("default", "encrypt", 1),
        lambda: lifecycle.retire("default", "encrypt", 1),
        lambda: lifecycle.destroy("default", "encrypt", 1),
        lambda: lifecycle.rotate("_audit_chain", "index"),
        lambda: lifecycle.rewrap(),
    ]
    for step in steps:
        step()
        assert key_state.problems() == []
        keyring.invalidate()
        assert (
            keyring.encrypt("default", LABEL, b"x")[1]
            == DataKey.objects.get(keyring="default", purpose="encrypt", state="active").version
        )
    assert verify_cmd()[0] == 0


def test_rotatekeys_rewrap_still_works(settings, master_key):
    lifecycle.init("default")
    token, _ = keyring.encrypt("default", LABEL, b"secret")
    old = settings.KEYROTATION["KEK"]["KEYS"][0]
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {"BACKEND": "local", "KEYS": [master_key, old]}}
    out = StringIO()
    call_command("rotatekeys", "--rewrap", stdout=out)
    assert "re-wrapped 3 data key(s)" in out.getvalue()
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {"BACKEND": "local", "KEYS": [master_key]}}
    keyring.clear_cache()
    assert key_state.problems() == []
    assert keyring.decrypt("default", LABEL, token) == b"secret"
    assert keyring.encrypt("default", LABEL, b"new")[1] == 1


# -- lifecycle, reporting, recovery -------------------------------------------------------------


def test_the_lifecycle_refuses_to_build_on_an_unauthenticated_state_until_accepted():
    retired_v1()
    downgrade()
    with pytest.raises(KeyStateError, match=r"not authenticated.*rotatekeys --accept-state.*version=1"):
        lifecycle.rotate("default", "encrypt")
    with pytest.raises(CommandError, match="--accept-state needs --purpose"):
        call_command("rotatekeys", "--accept-state")
    # The operator puts the states right, then accepts them.
    downgrade_back = (
        "UPDATE {keys} SET state = %s WHERE keyring = 'default' AND purpose = 'encrypt' AND version = %s"
    )
    sql(downgrade_back, ["retired", 1])
    sql(downgrade_back, ["active", 2])
    out = StringIO()
    call_command("rotatekeys", "--accept-state", "--purpose", "encrypt", "--actor", "ops", stdout=out)
    assert "state authenticated: default/encrypt v2 (active)" in out.getvalue()
    entry = KeyRotationAudit.objects.filter(action="key_state_accepted").get()
    assert (entry.actor, entry.details) == ("ops", {"states": {"1": "retired", "2": "active"}})
    assert key_state.problems() == []
    assert lifecycle.rotate("default", "encrypt").version == 3


def test_audit_verify_reports_a_downgrade():
    retired_v1()
    downgrade()
    code, out = verify_cmd()
    assert code == 1
    assert "OK: " in out  # the chain itself is intact ...
    assert (
        "FAILED: key state not authenticated: keyring='default' purpose='encrypt' version=1 (active): "
        "its MAC does not match its state" in out
    )  # ... the key states are not
    assert "version=2 (decrypt_only)" in out


def test_the_system_check_reports_a_downgrade():
    retired_v1()
    assert check_key_states(databases=["default"]) == []
    downgrade()
    errors = check_key_states(databases=["default"])
    assert [e.id for e in errors] == ["keyrotation.E004", "keyrotation.E004"]
    assert "keyring='default' purpose='encrypt' version=1 (active)" in errors[0].msg
    assert "rotatekeys --accept-state --keyring default --purpose encrypt" in errors[0].hint
    assert check_key_states() == []  # database checks run only when asked for a database


def test_the_migration_authenticates_the_states_stored_before_it():
    lifecycle.init("default")
    lifecycle.rotate("default", "encrypt")
    sql("UPDATE {keys} SET state_audit_id = NULL, state_mac_version = NULL, state_mac = ''")
    assert {p.reason for p in key_state.problems()} == {
        "its state carries no MAC (written outside keyrotation's lifecycle)"
    }
    apps = MigrationExecutor(connection).loader.project_state(("keyrotation", "0004_key_state_auth")).apps
    migration = __import__("keyrotation.migrations.0004_key_state_auth", fromlist=["x"])

    class SchemaEditor:
        pass

    SchemaEditor.connection = connection
    migration.authenticate_existing_states(apps, SchemaEditor)
    assert key_state.problems() == []
    accepted = KeyRotationAudit.objects.filter(action="key_state_accepted").order_by("id")
    assert [(e.keyring, e.purpose, e.details["states"]) for e in accepted] == [
        ("_audit_chain", "index", {"1": "active"}),
        ("default", "encrypt", {"1": "decrypt_only", "2": "active"}),
        ("default", "index", {"1": "active"}),
    ]
    assert verify_cmd()[0] == 0


# -- cost ---------------------------------------------------------------------------------------


def test_listing_needs_no_kek_and_using_it_checks_the_states_once(monkeypatch, django_assert_num_queries):
    lifecycle.init("default")
    people = [Person.objects.create(email=f"p{i}@example.com") for i in range(20)]
    keyring.clear_cache()
    audit_chain.clear_cache()
    backend = keyring.kek_backend().current  # the configured backend, behind the KEK switch
    real, calls = backend.unwrap, []

    def unwrap(wrapped, context):
        calls.append(context)
        if fail:
            raise KEKUnavailable("test: KEK down")
        return real(wrapped, context)

    monkeypatch.setattr(backend, "unwrap", unwrap)
    fail = True
    assert keyring.get_keyring("default", "encrypt").active_version == 1  # a planner, a status page
    with pytest.raises(KEKUnavailable):
        keyring.encrypt("default", LABEL, b"x")
    fail = False
    calls.clear()
    with django_assert_num_queries(1):  # the people; the listing is cached
        assert [p.email for p in Person.objects.order_by("pk")] == [p.email for p in people]
    assert len(calls) == 2  # the audit chain key (for the MACs) and v1, once each


def test_threads_starting_on_a_new_listing_unwrap_the_chain_key_once(monkeypatch):
    """A Vault client is not shared between threads: the chain key's unwrap is single-flight too."""
    import threading
    import time

    lifecycle.init("default")
    keyring.clear_cache()
    backend = keyring.kek_backend().current  # the configured backend, behind the KEK switch
    real, calls = backend.unwrap, []

    def slow_unwrap(wrapped, context):
        calls.append(context)
        time.sleep(0.05)  # every thread arrives while the first one is in here
        return real(wrapped, context)

    monkeypatch.setattr(backend, "unwrap", slow_unwrap)
    ring = keyring.get_keyring("default", "encrypt")
    start, results = threading.Barrier(6), []

    def use():
        start.wait()
        results.append(ring.subkey(1, LABEL))

    threads = [threading.Thread(target=use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == [b"keyrotation:_audit_chain:index:1", b"keyrotation:default:encrypt:1"]
    assert len(results) == 6 and len(set(results)) == 1
