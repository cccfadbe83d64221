"""Rotation policy: the ROTATION_PERIOD setting, key ages against it, and rotating what is due.

The clock is moved by hand: functions take ``now``, and keys are made older by moving their
``activated_at`` back (what a key activated that many days ago looks like). Nothing sleeps.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from keyrotation import audit_chain, conf, lifecycle, policy
from keyrotation.checks import check_settings
from keyrotation.exceptions import ConfigurationError, KeyStateError
from keyrotation.models import DataKey, KeyRotationAudit
from keyrotation.policy import PeriodState
from tests.helpers.db import wait_until_blocked_on_keys
from tests.helpers.key_age import make_older, set_policy

DAY = timedelta(days=1)


def versions(keyring: str = "default", purpose: str = "encrypt") -> dict[int, str]:
    return dict(
        DataKey.objects.filter(keyring=keyring, purpose=purpose)
        .order_by("version")
        .values_list("version", "state")
    )


# -- the setting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {}),
        (365, {("*", "encrypt"): 365 * DAY, ("*", "index"): 365 * DAY}),
        ("90d", {("*", "encrypt"): 90 * DAY, ("*", "index"): 90 * DAY}),
        (timedelta(hours=12), {("*", "encrypt"): timedelta(hours=12), ("*", "index"): timedelta(hours=12)}),
        (
            {"default": {"encrypt": "365d", "index": None}, "*": "90d"},
            {
                ("default", "encrypt"): 365 * DAY,
                ("default", "index"): None,
                ("*", "encrypt"): 90 * DAY,
                ("*", "index"): 90 * DAY,
            },
        ),
        ({"billing": None}, {("billing", "encrypt"): None, ("billing", "index"): None}),
        ({"*": {"index": " 30 d "}}, {("*", "index"): 30 * DAY}),
    ],
)
def test_the_setting_takes_one_period_or_one_per_keyring_and_purpose(settings, value, expected):
    set_policy(settings, value)
    assert conf.rotation_period() == expected
    assert check_settings() == []


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (0, 'KEYROTATION["ROTATION_PERIOD"]: 0 is not a rotation period'),
        ("90", "KEYROTATION[\"ROTATION_PERIOD\"]: '90' is not a rotation period"),
        (True, 'KEYROTATION["ROTATION_PERIOD"]: True is not a rotation period'),
        (1.5, 'KEYROTATION["ROTATION_PERIOD"]: 1.5 is not a rotation period'),
        (36501, 'KEYROTATION["ROTATION_PERIOD"]: 36501 is not a rotation period'),
        (timedelta(0), 'KEYROTATION["ROTATION_PERIOD"]: datetime.timedelta(0) is not a rotation period'),
        ({"default": -3}, 'KEYROTATION["ROTATION_PERIOD"]["default"]: -3 is not a rotation period'),
        (
            {"default": {"encrypt": "1y"}},
            'KEYROTATION["ROTATION_PERIOD"]["default"]["encrypt"]: \'1y\' is not a rotation period',
        ),
        ({"default": {"crypt": 30}}, 'KEYROTATION["ROTATION_PERIOD"]["default"]: \'crypt\' is not a purpose'),
        ({"": 30}, 'KEYROTATION["ROTATION_PERIOD"]: keys must be keyring names or "*", got \'\''),
        ({3: 30}, 'KEYROTATION["ROTATION_PERIOD"]: keys must be keyring names or "*", got 3'),
    ],
)
def test_a_bad_value_is_a_system_check_error_naming_where_it_is(settings, value, where):
    set_policy(settings, value)
    with pytest.raises(ConfigurationError) as caught:
        conf.rotation_period()
    assert str(caught.value).startswith(where)
    messages = check_settings()
    assert [m.id for m in messages] == ["keyrotation.E001"] and messages[0].msg.startswith(where)


def test_a_keyring_entry_wins_over_star_and_a_missing_purpose_falls_back_to_star(settings):
    set_policy(settings, {"default": {"encrypt": 365}, "audit": {"index": None}, "*": 90})
    assert policy.period_for("default", "encrypt") == 365 * DAY
    assert policy.period_for("default", "index") == 90 * DAY
    assert policy.period_for("audit", "index") is None  # None says "never", even with a "*"
    assert policy.period_for("other", "encrypt") == 90 * DAY
    set_policy(settings, {"default": 365})
    assert policy.period_for("other", "encrypt") is None
    assert policy.configured()
    set_policy(settings, {"default": None})
    assert not policy.configured()


# -- ages ----------------------------------------------------------------------------------------


def test_the_state_moves_from_ok_to_due_soon_to_overdue_as_the_clock_moves(keys, settings):
    set_policy(settings, {"default": {"encrypt": 100, "index": None}})
    key = DataKey.objects.get(keyring="default", purpose="encrypt", state="active")
    start = key.activated_at

    def at(offset):
        return policy.key_age(key, now=start + offset)

    assert at(timedelta(0)).state is PeriodState.OK
    assert at(90 * DAY - timedelta(seconds=1)).state is PeriodState.OK
    assert at(90 * DAY).state is PeriodState.DUE_SOON  # the last tenth of the period
    assert at(100 * DAY - timedelta(seconds=1)).state is PeriodState.DUE_SOON
    overdue = at(100 * DAY)
    assert overdue.state is PeriodState.OVERDUE and overdue.is_due
    assert (overdue.age, overdue.period, overdue.due_at) == (100 * DAY, 100 * DAY, start + 100 * DAY)
    index = DataKey.objects.get(keyring="default", purpose="index", state="active")
    never = policy.key_age(index, now=start + 10_000 * DAY)
    assert never.state is PeriodState.NO_POLICY and not never.is_due and never.due_at is None


def test_a_long_period_warns_only_in_its_last_two_weeks(keys, settings):
    set_policy(settings, 365)
    key = DataKey.objects.get(keyring="default", purpose="encrypt", state="active")
    assert policy.key_age(key, now=key.activated_at + 350 * DAY).state is PeriodState.OK
    assert policy.key_age(key, now=key.activated_at + 351 * DAY).state is PeriodState.DUE_SOON


def test_status_lists_each_active_data_key_and_never_the_audit_chain_key(keys, settings):
    set_policy(settings, 30)
    lifecycle.rotate("default", "encrypt")
    lifecycle.init("billing", purposes=("encrypt",))
    assert DataKey.objects.filter(keyring=audit_chain.AUDIT_KEYRING).exists()
    assert [a.name for a in policy.status()] == [
        "billing/encrypt v1",
        "default/encrypt v2",
        "default/index v1",
    ]
    assert [a.name for a in policy.status(keyring="default", purpose="index")] == ["default/index v1"]
    later = timezone.now() + 31 * DAY
    assert len(policy.due(now=later)) == 3
    assert policy.due() == []


def test_a_key_without_activated_at_is_aged_from_its_creation(keys, settings):
    set_policy(settings, 30)
    key = DataKey.objects.get(keyring="default", purpose="encrypt", state="active")
    DataKey.objects.filter(pk=key.pk).update(activated_at=None, created_at=key.created_at - 40 * DAY)
    [age] = policy.due(purpose="encrypt")
    assert age.activated_at == key.created_at - 40 * DAY


def test_as_dict_is_json_of_scalars(keys, settings):
    set_policy(settings, 30)
    make_older("default", "encrypt", 31)
    age = policy.due()[0].as_dict()
    assert set(age) == {
        "keyring",
        "purpose",
        "version",
        "activated_at",
        "age_seconds",
        "period_seconds",
        "due_at",
        "state",
        "is_due",
    }
    assert (age["state"], age["is_due"], age["period_seconds"]) == ("overdue", True, 30 * 86400)
    assert age["age_seconds"] >= 31 * 86400 and isinstance(age["activated_at"], str)


# -- rotating what is due ------------------------------------------------------------------------


def test_nothing_due_changes_nothing_and_audits_nothing(keys, settings):
    set_policy(settings, 30)
    before = KeyRotationAudit.objects.count()
    report = policy.rotate_due(actor="cron")
    assert report.rotated == () and report.skipped == ()
    assert versions() == {1: "active"} and versions(purpose="index") == {1: "active"}
    assert KeyRotationAudit.objects.count() == before


def test_without_a_policy_nothing_is_ever_due(keys, settings):
    make_older("default", "encrypt", 10_000)
    assert policy.due() == []
    assert policy.rotate_due().rotated == ()


def test_exactly_the_due_pairs_rotate_with_an_audit_row_saying_why(keys, settings):
    set_policy(settings, {"default": {"encrypt": "30d", "index": "365d"}})
    make_older("default", "encrypt", 31)
    make_older("default", "index", 31)  # within its own period
    report = policy.rotate_due(actor="cron@host1")
    assert [(r.was.name, r.new_version) for r in report.rotated] == [("default/encrypt v1", 2)]
    assert versions() == {1: "decrypt_only", 2: "active"}
    assert versions(purpose="index") == {1: "active"}
    entry = KeyRotationAudit.objects.get(action="key_rotated")
    assert (entry.actor, entry.keyring, entry.purpose, entry.from_version, entry.to_version) == (
        "cron@host1",
        "default",
        "encrypt",
        1,
        2,
    )
    assert entry.details["reason"] == "rotation_period"
    assert entry.details["period_seconds"] == 30 * 86400 and entry.details["age_seconds"] >= 31 * 86400
    assert audit_chain.verify().ok
    # The new version is young: a second run finds nothing due.
    assert policy.rotate_due().rotated == ()
    assert versions() == {1: "decrypt_only", 2: "active"}


def test_a_fake_clock_makes_keys_due(keys, settings):
    set_policy(settings, 30)
    assert policy.rotate_due(now=timezone.now() + 29 * DAY).rotated == ()
    report = policy.rotate_due(now=timezone.now() + 30 * DAY + timedelta(minutes=1))
    assert sorted(r.was.purpose for r in report.rotated) == ["encrypt", "index"]


def test_scope_by_keyring_and_purpose(keys, settings):
    set_policy(settings, 30)
    lifecycle.init("billing")
    for ring in ("default", "billing"):
        for purpose in ("encrypt", "index"):
            make_older(ring, purpose, 40)
    assert [r.was.name for r in policy.rotate_due(keyring="billing", purpose="index").rotated] == [
        "billing/index v1"
    ]
    assert [a.name for a in policy.due()] == ["billing/encrypt v1", "default/encrypt v1", "default/index v1"]


def test_a_rollback_restarts_the_clock_of_the_version_it_reactivates(keys, settings):
    set_policy(settings, 30)
    make_older("default", "encrypt", 60)
    lifecycle.rotate("default", "encrypt")
    lifecycle.rollback("default", "encrypt")
    [age] = policy.status(purpose="encrypt")
    assert age.version == 1 and age.age < DAY and age.state is PeriodState.OK


def test_a_refused_rotation_raises_and_leaves_the_pair_due(keys, settings):
    set_policy(settings, 30)
    make_older("default", "encrypt", 31)
    DataKey.objects.filter(keyring="default", purpose="encrypt").update(state_mac="0" * 64)
    with pytest.raises(KeyStateError, match="not authenticated"):
        policy.rotate_due(purpose="encrypt")
    assert [a.name for a in policy.due()] == ["default/encrypt v1"]


# -- two processes at once -----------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_two_processes_rotating_what_is_due_at_once_make_one_new_version(settings):
    """Two cron hosts: both read the version as due, both wait for the keyring's lock (held here
    until both are waiting), then one rotates and the other finds a young version."""
    lifecycle.init("default")
    set_policy(settings, {"*": {"encrypt": 30, "index": None}})
    make_older("default", "encrypt", 31)
    reports, errors = [], []
    read = threading.Barrier(3)

    def cron(name):
        try:
            assert [a.name for a in policy.due()] == ["default/encrypt v1"]
            read.wait()
            reports.append(policy.rotate_due(actor=name))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=cron, args=(f"cron@host{i}",)) for i in (1, 2)]
    with transaction.atomic():
        list(DataKey.objects.select_for_update().filter(keyring="default", purpose="encrypt"))
        for thread in threads:
            thread.start()
        read.wait()
        wait_until_blocked_on_keys(2)
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted((len(r.rotated), len(r.skipped)) for r in reports) == [(0, 1), (1, 0)]
    assert versions() == {1: "decrypt_only", 2: "active"}
    assert KeyRotationAudit.objects.filter(action="key_rotated").count() == 1
    assert audit_chain.verify().ok
