"""``manage.py rotatekeys``: every action, JSON output, refusals with non-zero exit."""

import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from keyrotation.models import DataKey, KeyRotationAudit
from tests.helpers.key_age import make_older, set_policy

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command("rotatekeys", *args, stdout=out)
    return out.getvalue()


def test_init_rotate_list_json():
    assert "created default/encrypt v1" in run("--init", "--actor", "carol")
    assert "keys already exist" in run("--init")
    out = run("--purpose", "encrypt")
    assert "new active key default/encrypt v2 (active)" in out and "reencrypt" in out
    listed = json.loads(run("--list", "--json"))["keys"]
    assert {k["keyring"] for k in listed} == {"default", "_audit_chain"}
    assert [(k["purpose"], k["version"], k["state"]) for k in listed if k["keyring"] == "default"] == [
        ("encrypt", 1, "decrypt_only"),
        ("encrypt", 2, "active"),
        ("index", 1, "active"),
    ]
    assert all("wrapped" not in k for k in listed)
    assert KeyRotationAudit.objects.filter(actor="carol").count() == 2


def test_list_never_prints_key_bytes():
    run("--init")
    out = run("--list") + run("--list", "--json")
    for wrapped in DataKey.objects.values_list("wrapped_key", flat=True):
        assert bytes(wrapped).hex() not in out
        assert str(bytes(wrapped)) not in out


def test_rotation_of_both_purposes_by_default():
    run("--init")
    data = json.loads(run("--json"))
    assert sorted((k["purpose"], k["version"]) for k in data["rotated"]) == [("encrypt", 2), ("index", 2)]


def test_rollback_and_refusals():
    run("--init")
    with pytest.raises(CommandError, match="--rollback needs --purpose"):
        run("--rollback")
    with pytest.raises(CommandError, match="no decrypt-only version"):
        run("--rollback", "--purpose", "encrypt")
    run("--purpose", "encrypt")
    assert "default/encrypt v1 (active) is active again" in run("--rollback", "--purpose", "encrypt")


def test_retire_refused_for_active_and_for_recent_keys():
    run("--init")
    with pytest.raises(CommandError, match="from active to retired"):
        run("--retire", "1", "--purpose", "encrypt")
    run("--purpose", "encrypt")
    with pytest.raises(CommandError, match="CACHE_SECONDS"):
        run("--retire", "1", "--purpose", "encrypt")
    with pytest.raises(CommandError, match="only a retired key can be restored"):
        run("--restore", "1", "--purpose", "encrypt")


def test_destroy_only_after_retire(settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0, "DESTROY_GRACE_SECONDS": 0}
    run("--init")
    run("--purpose", "encrypt")
    with pytest.raises(CommandError, match="from decrypt_only to destroyed"):
        run("--destroy", "1", "--purpose", "encrypt")
    assert "retired default/encrypt v1" in run("--retire", "1", "--purpose", "encrypt")
    assert "destroyed default/encrypt v1" in run("--destroy", "1", "--purpose", "encrypt")


def test_rewrap_and_rotate_kek_flag_rules():
    run("--init")
    # nothing to do: every key (the audit chain key too) is wrapped by the current master key
    assert "nothing to re-wrap: all 3 data key(s) are wrapped by local:" in run("--rewrap")
    with pytest.raises(CommandError, match="--rotate-kek goes with --rewrap"):
        run("--rotate-kek")
    with pytest.raises(CommandError, match="rotated by configuration"):
        run("--rewrap", "--rotate-kek")


def test_exit_code_is_non_zero_on_refusal(tmp_path):
    import subprocess
    import sys

    # call_command raises; the real CLI turns that into exit status 1 with the message on stderr.
    proc = subprocess.run(
        [sys.executable, "-m", "django", "rotatekeys", "--rollback", "--settings=tests.settings"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": "."},
    )
    assert proc.returncode == 1
    assert "--rollback needs --purpose" in proc.stderr


def test_help_explains_every_flag():
    from keyrotation.management.commands.rotatekeys import Command

    parser = Command().create_parser("manage.py", "rotatekeys")
    for action in parser._actions:
        if action.option_strings and action.dest not in {"help", "version"}:
            assert action.help, action.option_strings


def test_listing_a_misspelt_keyring_is_an_error_that_names_the_real_ones():
    run("--init")
    with pytest.raises(
        CommandError, match=r"no keyring 'defualt' \(keyrings: .*default.*\); did you mean 'default'\?"
    ):
        run("--keyring", "defualt", "--list")


def test_listing_before_any_key_exists_says_to_init():
    assert "no keys; run `manage.py rotatekeys --init`" in run("--list")


def test_retiring_the_active_version_says_to_rotate_first():
    run("--init")
    with pytest.raises(
        CommandError, match=r"rotate first \(`manage.py rotatekeys --keyring default --purpose encrypt`\)"
    ):
        run("--retire", "1", "--purpose", "encrypt")


def run_code(*args):
    """(exit code, stdout) of rotatekeys; 0 when it returned normally."""
    out = StringIO()
    try:
        call_command("rotatekeys", *args, stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return 0, out.getvalue()


def test_if_due_rotates_only_what_is_due_and_exits_3(settings):
    run("--init")
    set_policy(settings, {"default": {"encrypt": "30d", "index": None}})
    code, out = run_code("--if-due")
    assert code == 0 and re.fullmatch(
        r"nothing due; next: default/encrypt v1 on \d{4}-\d\d-\d\d \d\d:\d\d UTC\n", out
    )
    make_older("default", "encrypt", 31)
    make_older("default", "index", 400)  # no period for index: never due
    code, out = run_code("--if-due", "--dry-run")
    assert code == 0
    assert re.search(r"would rotate default/encrypt v1 \(active 31 days, period 30 days, due \d{4}-", out)
    assert DataKey.objects.filter(keyring="default", purpose="encrypt").count() == 1
    code, out = run_code("--if-due", "--actor", "cron@host1")
    assert code == 3
    assert "rotated default/encrypt v1 (active 31 days, period 30 days, due " in out
    assert ": v2 is active" in out and "run `manage.py reencrypt`" in out
    entry = KeyRotationAudit.objects.get(action="key_rotated")
    assert (entry.actor, entry.to_version, entry.details["reason"]) == ("cron@host1", 2, "rotation_period")
    assert run_code("--if-due")[0] == 0  # the new version is not due


def test_if_due_json(settings):
    run("--init")
    set_policy(settings, 30)
    make_older("default", "index", 31)
    code, out = run_code("--if-due", "--dry-run", "--json")
    data = json.loads(out)
    assert code == 0 and data["dry_run"] is True and data["rotated"] == [] and data["skipped"] == []
    assert [(d["keyring"], d["purpose"], d["version"], d["state"]) for d in data["due"]] == [
        ("default", "index", 1, "overdue")
    ]
    code, out = run_code("--if-due", "--json")
    data = json.loads(out)
    assert code == 3 and data["dry_run"] is False
    [rotated] = data["rotated"]
    assert (rotated["keyring"], rotated["purpose"], rotated["from_version"], rotated["to_version"]) == (
        "default",
        "index",
        1,
        2,
    )
    assert rotated["was"]["period_seconds"] == 30 * 86400 and rotated["was"]["is_due"] is True


def test_if_due_scope_and_refusals(settings):
    run("--init")
    with pytest.raises(
        CommandError, match=r'no rotation period is configured \(KEYROTATION\["ROTATION_PERIOD"\]\)'
    ):
        run("--if-due")
    set_policy(settings, 30)
    make_older("default", "encrypt", 31)
    make_older("default", "index", 31)
    assert run_code("--if-due", "--purpose", "index")[0] == 3
    assert DataKey.objects.filter(keyring="default", purpose="encrypt").count() == 1
    with pytest.raises(CommandError, match="no keyring 'defualt'"):
        run("--if-due", "--keyring", "defualt")
    with pytest.raises(CommandError, match="--dry-run goes with --if-due"):
        run("--dry-run")
    with pytest.raises(CommandError, match="not allowed with argument"):
        run("--if-due", "--retire", "1")
    set_policy(settings, {"default": {"encrypt": "1y"}})
    with pytest.raises(CommandError, match=r'ROTATION_PERIOD"\]\["default"\]\["encrypt"\]: \'1y\' is not'):
        run("--if-due")


def test_if_due_output_never_holds_key_bytes(settings):
    run("--init")
    set_policy(settings, 30)
    make_older("default", "encrypt", 31)
    out = run_code("--if-due", "--dry-run")[1] + run_code("--if-due", "--json")[1]
    out += run_code("--if-due")[1]
    assert "default/encrypt v1" in out
    for wrapped in DataKey.objects.exclude(wrapped_key=None).values_list("wrapped_key", flat=True):
        assert bytes(wrapped).hex() not in out and str(bytes(wrapped)) not in out
