"""Key lifecycle: the transition table, each operation and its audit row."""

import threading
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import override_settings

from keyrotation import audit_chain, keyring, lifecycle
from keyrotation.exceptions import KeyStateError, NoActiveKey, UnknownKeyVersion
from keyrotation.models import DataKey, KeyRotationAudit
from tests.helpers.db import wait_until_blocked_on_keys

pytestmark = pytest.mark.django_db

NO_GRACE = override_settings(
    KEYROTATION={
        "KEK": {"BACKEND": "local", "KEYS": ["ERERERERERERERERERERERERERERERERERERERERERE="]},
        "CACHE_SECONDS": 0,
        "DESTROY_GRACE_SECONDS": 0,
    }
)


def states(purpose="encrypt"):
    return {k.version: k.state for k in DataKey.objects.filter(keyring="default", purpose=purpose)}


def test_init_creates_v1_of_each_purpose_once(keys):
    assert {(k.purpose, k.version, k.state) for k in keys} == {
        ("encrypt", 1, "active"),
        ("index", 1, "active"),
    }
    assert lifecycle.init("default") == []
    assert KeyRotationAudit.objects.filter(action="key_generated").count() == 2


def test_rotate_demotes_previous_and_audits(keys):
    key = lifecycle.rotate("default", "encrypt", actor="alice")
    assert key.version == 2
    assert states() == {1: "decrypt_only", 2: "active"}
    assert states("index") == {1: "active"}
    entry = KeyRotationAudit.objects.get(action="key_rotated")
    assert (entry.actor, entry.from_version, entry.to_version) == ("alice", 1, 2)


def test_rotate_without_init_is_refused(db):
    with pytest.raises(NoActiveKey, match="rotatekeys --init"):
        lifecycle.rotate("default", "encrypt")


def test_rollback_restores_previous_active(keys):
    lifecycle.rotate("default", "encrypt")
    lifecycle.rotate("default", "encrypt")
    assert lifecycle.rollback("default", "encrypt").version == 2
    assert states() == {1: "decrypt_only", 2: "active", 3: "decrypt_only"}
    assert keyring.get_keyring("default", "encrypt").active_version == 2


def test_rollback_with_nothing_older_is_refused(keys):
    with pytest.raises(KeyStateError, match="no decrypt-only version"):
        lifecycle.rollback("default", "encrypt")


def test_database_enforces_one_active_key(keys):
    with pytest.raises(IntegrityError), transaction.atomic():
        DataKey.objects.create(keyring="default", purpose="encrypt", version=9, state="active", kek_id="x")


def test_retire_refused_within_cache_window(keys):
    lifecycle.rotate("default", "encrypt")
    with pytest.raises(KeyStateError, match="less than CACHE_SECONDS ago"):
        lifecycle.retire("default", "encrypt", 1)


@NO_GRACE
def test_retire_then_destroy(keys):
    lifecycle.rotate("default", "encrypt")
    lifecycle.retire("default", "encrypt", 1, actor="bob")
    assert states()[1] == "retired"
    entry = KeyRotationAudit.objects.get(action="key_retired")
    census = entry.details["census"]  # every registered column of the test app, none referencing v1
    assert set(entry.details) == {"census", "databases"} and census and set(census.values()) == {0}
    assert entry.details["databases"] == ["default"]
    lifecycle.destroy("default", "encrypt", 1)
    key = DataKey.objects.get(keyring="default", purpose="encrypt", version=1)
    assert key.state == "destroyed" and key.wrapped_key is None and key.destroyed_at


@NO_GRACE
def test_restore_a_retired_key(keys):
    lifecycle.rotate("default", "encrypt")
    lifecycle.retire("default", "encrypt", 1)
    lifecycle.restore("default", "encrypt", 1)
    assert states()[1] == "decrypt_only"


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        (lambda: lifecycle.retire("default", "encrypt", 1), "from active to retired"),
        (lambda: lifecycle.destroy("default", "encrypt", 1), "from active to destroyed"),
        (lambda: lifecycle.restore("default", "encrypt", 1), "only a retired key can be restored"),
        (lambda: lifecycle.retire("default", "encrypt", 7), "no such key version"),
    ],
)
def test_illegal_transitions_are_refused_and_change_nothing(keys, operation, message):
    before = KeyRotationAudit.objects.count()
    with pytest.raises((KeyStateError, UnknownKeyVersion), match=message):
        operation()
    assert states() == {1: "active"}
    assert KeyRotationAudit.objects.count() == before


def test_error_names_keyring_purpose_version(keys):
    with pytest.raises(KeyStateError) as info:
        lifecycle.destroy("default", "encrypt", 1)
    assert "keyring='default' purpose='encrypt' version=1" in str(info.value)


def test_every_edge_has_a_reason():
    assert all(reason for reason in lifecycle.TRANSITIONS.values())
    assert ("destroyed", "retired") not in lifecycle.TRANSITIONS


def test_rewrap_under_new_master_key_leaves_keys_usable(keys, master_key, settings):
    from django.db import connection

    from tests.testapp.models import Person

    Person.objects.bulk_create(Person(name=str(i), email=f"u{i}@example.com") for i in range(50))

    def raw_rows():
        with connection.cursor() as cur:
            cur.execute("SELECT id, email, email_key_version, email_bidx FROM testapp_person ORDER BY id")
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in cur.fetchall()]

    before = raw_rows()
    ring = keyring.get_keyring("default", "encrypt")
    token, version = ring.encrypt("a.B.c", b"secret")
    old_ids = set(DataKey.objects.values_list("kek_id", flat=True))
    old_key = settings.KEYROTATION["KEK"]["KEYS"][0]
    settings.KEYROTATION = {
        **settings.KEYROTATION,
        "KEK": {"BACKEND": "local", "KEYS": [master_key, old_key]},
    }
    keyring.clear_cache()
    assert lifecycle.rewrap(actor="ops") == 3  # both data keys and the audit chain key
    new_ids = set(DataKey.objects.values_list("kek_id", flat=True))
    assert new_ids.isdisjoint(old_ids) and len(new_ids) == 1
    # The old master key can now be dropped entirely.
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {"BACKEND": "local", "KEYS": [master_key]}}
    keyring.clear_cache()
    assert keyring.decrypt("default", "a.B.c", token) == b"secret"
    assert KeyRotationAudit.objects.get(action="kek_rewrapped").rows_processed == 3
    assert audit_chain.verify().ok  # the chain key survived the KEK change
    assert raw_rows() == before  # no user row touched
    assert [p.email for p in Person.objects.order_by("pk")] == [f"u{i}@example.com" for i in range(50)]


def test_versions_stop_where_the_version_columns_stop(keys):
    DataKey.objects.filter(purpose="encrypt").update(version=lifecycle.MAX_KEY_VERSION)
    lifecycle.accept_state("default", "encrypt")  # the SQL above is not a lifecycle operation
    with pytest.raises(KeyStateError, match="key versions stop at 32767"):
        lifecycle.rotate("default", "encrypt")


def test_audit_chain_key_is_never_destroyed(keys):
    from keyrotation.audit_chain import AUDIT_KEYRING

    with pytest.raises(KeyStateError, match="never destroyed"):
        lifecycle.destroy(AUDIT_KEYRING, "index", 1)


@pytest.mark.django_db(transaction=True)
def test_key_state_changed_is_sent_after_commit():
    from keyrotation import signals

    seen = []

    def receiver(sender, **kw):
        seen.append((kw["purpose"], kw["version"], kw["from_state"], kw["to_state"]))

    signals.key_state_changed.connect(receiver)
    try:
        lifecycle.init("default", purposes=("encrypt",))
        lifecycle.rotate("default", "encrypt")
        with pytest.raises(NoActiveKey):
            lifecycle.rollback("default", "index")  # refused: nothing sent
    finally:
        signals.key_state_changed.disconnect(receiver)
    assert seen == [
        ("encrypt", 1, None, "active"),
        ("encrypt", 1, "active", "decrypt_only"),
        ("encrypt", 2, None, "active"),
    ]


def test_rotate_if_active_since_rotates_only_a_version_active_since_the_cutoff(keys):
    current = DataKey.objects.get(keyring="default", purpose="encrypt", state="active")
    before = KeyRotationAudit.objects.count()
    too_early = current.activated_at - timedelta(seconds=1)
    assert lifecycle.rotate_if_active_since("default", "encrypt", too_early) is None
    assert states() == {1: "active"} and KeyRotationAudit.objects.count() == before
    key = lifecycle.rotate_if_active_since(
        "default", "encrypt", current.activated_at, actor="cron", details={"reason": "test"}
    )
    assert key.version == 2 and states() == {1: "decrypt_only", 2: "active"}
    entry = KeyRotationAudit.objects.get(action="key_rotated")
    assert (entry.actor, entry.from_version, entry.to_version, entry.details) == (
        "cron",
        1,
        2,
        {"reason": "test"},
    )
    # The new version became active after the cutoff: a second call with it changes nothing.
    assert lifecycle.rotate_if_active_since("default", "encrypt", current.activated_at) is None
    assert lifecycle.rotate_if_active_since("nokeys", "encrypt", current.activated_at) is None


def test_every_activation_sets_activated_at_a_rollback_too(keys):
    v1 = DataKey.objects.get(keyring="default", purpose="encrypt", version=1)
    assert v1.activated_at is not None and lifecycle.active_since(v1) == v1.activated_at
    v2 = lifecycle.rotate("default", "encrypt")
    assert v2.activated_at >= v1.activated_at
    back = lifecycle.rollback("default", "encrypt")
    assert back.version == 1 and back.activated_at >= v2.activated_at
    DataKey.objects.filter(pk=v1.pk).update(activated_at=None)
    assert lifecycle.active_since(DataKey.objects.get(pk=v1.pk)) == v1.created_at


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_two_rotations_at_once_run_one_after_the_other():
    """Two `rotatekeys` at the same instant: both wait for the keyring's lock (held here until
    both wait), then rotate in turn: v3 active, v1 and v2 decrypt-only, two audit rows."""
    lifecycle.init("default")
    errors = []

    def rotate(name):
        try:
            lifecycle.rotate("default", "encrypt", actor=name)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=rotate, args=(f"ops@host{i}",)) for i in (1, 2)]
    with transaction.atomic():
        list(DataKey.objects.select_for_update().filter(keyring="default", purpose="encrypt"))
        for thread in threads:
            thread.start()
        wait_until_blocked_on_keys(2)
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert states() == {1: "decrypt_only", 2: "decrypt_only", 3: "active"}
    assert KeyRotationAudit.objects.filter(action="key_rotated").count() == 2
    assert audit_chain.verify().ok
