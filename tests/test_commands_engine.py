"""``reencrypt`` and ``rotation_status``: output, JSON, exit codes."""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from keyrotation import keyring, lifecycle
from tests.helpers.command_line import tamper_one_email
from tests.helpers.key_age import make_older, set_policy
from tests.testapp.models import Person

pytestmark = pytest.mark.django_db(transaction=True)


def run(name, *args):
    out, err = StringIO(), StringIO()
    code = 0
    try:
        call_command(name, *args, stdout=out, stderr=err)
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def rotated(keys):
    Person.objects.bulk_create(Person(name=f"p{i}", email=f"canary{i}@example.com") for i in range(120))
    lifecycle.rotate("default", "encrypt")
    lifecycle.rotate("default", "index")
    keyring.invalidate()


def test_status_then_reencrypt_then_status(rotated):
    code, out, _ = run("rotation_status", "--fail-if-incomplete")
    assert code == 2
    assert "testapp.Person.email" in out and "v1: 120" in out
    code, out, err = run("reencrypt", "--batch-size", "25")
    assert code == 0, out + err
    assert "finished: 120 row(s) re-encrypted" in out
    assert "progress:" in err  # plain progress lines when not on a terminal
    code, out, _ = run("rotation_status", "--fail-if-incomplete", "--fail-if-version", "1")
    assert code == 0
    assert "100.00%" in out and "finished" in out


def test_json_outputs(rotated):
    code, out, _ = run("reencrypt", "--dry-run", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["rows_pending"] == 120
    code, out, _ = run("reencrypt", "--json")
    report = json.loads(out)
    assert code == 0 and report["status"] == "finished" and report["rows_done"] == 120
    data = json.loads(run("rotation_status", "--json")[1])
    email = next(c for c in data["columns"] if c["label"] == "testapp.Person.email")
    assert email["versions"] == {"2": 120} and email["percent_active"] == 100.0
    assert data["run"]["status"] == "finished" and data["incomplete"] == []
    code, out, _ = run("reencrypt", "--verify", "--json")
    assert code == 0 and json.loads(out)["failure_count"] == 0


def test_fail_if_version_by_purpose(rotated):
    run("reencrypt", "--model", "testapp.Person.email")
    assert run("rotation_status", "--fail-if-version", "1", "--purpose", "encrypt")[0] == 0
    assert run("rotation_status", "--fail-if-version", "1", "--purpose", "index")[0] == 2


def test_verify_exit_code_and_no_plaintext(rotated):
    pk = tamper_one_email()
    code, out, err = run("reencrypt", "--verify")
    assert code == 1
    assert f"testapp.Person.email pk={pk} key version=1: authentication failed" in out
    code, out, err = run("reencrypt")
    assert code == 1 and f"pk={pk}" in out
    assert "canary" not in out + err


def test_pause_resume_abort_commands(rotated):
    with pytest.raises(CommandError, match="no open re-encryption run"):
        run("reencrypt", "--pause")
    code, out, err = run("reencrypt", "--max-duration", "0.0001")
    assert code == 3 and "run `manage.py reencrypt` again" in out
    assert "is now paused" in run("reencrypt", "--pause", "--actor", "ops")[1]
    assert "is now running" in run("reencrypt", "--resume")[1]
    assert "is now aborted" in run("reencrypt", "--abort")[1]


def test_help_explains_every_flag():
    for name in ("reencrypt", "rotation_status"):
        module = __import__(f"keyrotation.management.commands.{name}", fromlist=["Command"])
        parser = module.Command().create_parser("manage.py", name)
        for action in parser._actions:
            if action.option_strings and action.dest not in {"help", "version"}:
                assert action.help, (name, action.option_strings)


# -- operator input: one clear line, nothing run --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "argument --workers: must be a whole number of at least 1, got 0"),
        (["--workers", "two"], "argument --workers: must be a whole number of at least 1, got 'two'"),
        (["--batch-size", "0"], "argument --batch-size: must be a whole number of at least 1, got 0"),
        (["--rate", "0"], "argument --rate: must be a number greater than 0, got 0"),
        (["--rate", "-5"], "argument --rate: must be a number greater than 0, got -5"),
        (["--rate", "nan"], "argument --rate: must be a number greater than 0, got nan"),
        (["--target-batch-ms", "0"], "argument --target-batch-ms: must be a number greater than 0"),
        (["--max-duration", "0"], "argument --max-duration: must be a number greater than 0, got 0"),
        (["--max-duration", "-1"], "argument --max-duration: must be a number greater than 0, got -1"),
        (["--verify", "--dry-run"], "argument --dry-run: not allowed with argument --verify"),
        (["--pause", "--abort"], "argument --abort: not allowed with argument --pause"),
        (["--run", "3"], "--run names the run for --pause, --resume or --abort"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_operator_input_is_one_clear_error_and_runs_nothing(rotated, args, message):
    from keyrotation.models import ReencryptionRun

    with pytest.raises(CommandError) as info:
        call_command("reencrypt", *args, stdout=StringIO(), stderr=StringIO())
    assert message in str(info.value)
    assert ReencryptionRun.objects.count() == 0
    assert Person.objects.filter(email_key_version=1).count() == 120


@pytest.mark.parametrize("flag", ["--pause", "--resume", "--abort"])
def test_an_unknown_run_id_is_one_line(rotated, flag):
    with pytest.raises(CommandError, match=r"no re-encryption run #999 \(see `manage.py rotation_status`\)"):
        call_command("reencrypt", flag, "--run", "999", stdout=StringIO(), stderr=StringIO())


def test_bad_input_on_the_command_line_exits_2_without_a_traceback(rotated):
    import subprocess
    import sys

    # parsing fails before any database access, so the settings' database does not matter
    proc = subprocess.run(
        [sys.executable, "-m", "django", "reencrypt", "--workers", "0", "--settings", "tests.settings"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "argument --workers: must be a whole number of at least 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- a run with nothing to do ---------------------------------------------------------------------


@pytest.mark.urls("tests.admin_urls")
def test_a_run_with_nothing_to_do_records_nothing_and_hides_no_run(rotated, client):
    from django.contrib.auth.models import User
    from django.urls import reverse

    from keyrotation.models import KeyRotationAudit, ReencryptionRun

    code, out, _ = run("reencrypt")
    assert code == 0 and "finished: 120 row(s) re-encrypted" in out
    real = ReencryptionRun.objects.get()
    audit_rows = KeyRotationAudit.objects.count()

    code, out, err = run("reencrypt")
    assert code == 0, out + err
    assert re.fullmatch(
        r"nothing to re-encrypt: every row of the \d+ encrypted models is on default/encrypt v2, "
        r"default/index v2\n",
        out,
    )
    code, out, _ = run("reencrypt", "--model", "testapp.Person")
    assert (
        out
        == "nothing to re-encrypt: every row of testapp.Person is on default/encrypt v2, default/index v2\n"
    )
    assert "progress:" not in err
    code, out, _ = run("reencrypt", "--model", "testapp.Person.email", "--json")
    report = json.loads(out)
    assert code == 0 and report["nothing_to_do"] and report["run_id"] is None and report["rows_done"] == 0
    assert report["status"] == "finished" and report["active_versions"] == {"default/encrypt": 2}
    assert ReencryptionRun.objects.count() == 1
    assert KeyRotationAudit.objects.count() == audit_rows

    status = json.loads(run("rotation_status", "--json")[1])
    assert status["run"]["id"] == real.pk and status["run"]["rows_done"] == 120
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    page = client.get(reverse("admin:keyrotation_status"))
    shown = page.context["run"]
    assert shown.run.pk == real.pk and shown.overview.tally.total == 120


def test_a_finished_run_of_no_row_recorded_earlier_never_hides_the_real_one(rotated):
    from keyrotation.models import ReencryptionRun

    assert run("reencrypt")[0] == 0
    real = ReencryptionRun.objects.get()
    ReencryptionRun.objects.create(status="finished", scope="*", targets=real.targets, rows_total=0)
    assert json.loads(run("rotation_status", "--json")[1])["run"]["id"] == real.pk


# -- progress never above its total -----------------------------------------------------------------


def test_the_tally_grows_its_total_instead_of_passing_it():
    from keyrotation.reporting import Tally

    assert Tally(20_000, 1_500).text() == "1,500/20,000 rows"
    grown = Tally(20_000, 20_001)
    assert grown.text() == "20,001/20,001 rows (+1 written during the run)"
    assert (grown.total, grown.added, grown.left, grown.percent) == (20_001, 1, 0, 100.0)
    assert Tally(0, 0).percent == 100.0 and Tally(0, 0).text() == "0/0 rows"


def test_the_progress_line_never_shows_more_rows_than_its_total():
    from keyrotation.reporting import Progress

    stream = StringIO()
    progress = Progress(2, stream=stream, tty=False, every=0)
    for _ in range(3):
        progress.add(1)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[1].startswith("progress: 2/2 rows (100.0%)")
    assert lines[-1].startswith("progress: 3/3 rows (+1 written during the run) (100.0%)")
    assert not any("3/2" in line for line in lines)


def _stale_writer_after_the_first_batch(pk: int):
    """A process with a stale keyring cache: once the first batch has moved row ``pk`` to the new
    versions, it writes the row back under the old ones (the values it read before the run)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT email, email_key_version, email_bidx, email_bidx_key_version FROM testapp_person "
            "WHERE id = %s",
            [pk],
        )
        old = cur.fetchone()
    fired = []

    def handler(sender, **payload):
        if fired:
            return
        fired.append(payload["rows"])
        with connection.cursor() as cur:
            cur.execute(
                "UPDATE testapp_person SET email = %s, email_key_version = %s, email_bidx = %s, "
                "email_bidx_key_version = %s WHERE id = %s",
                [*old, pk],
            )

    return handler


def test_rows_written_during_the_run_grow_the_total_of_the_progress(rotated):
    from keyrotation import signals

    first = Person.objects.order_by("pk").first()
    handler = _stale_writer_after_the_first_batch(first.pk)
    signals.batch_completed.connect(handler)
    try:
        code, out, err = run("reencrypt", "--model", "testapp.Person", "--batch-size", "25")
    finally:
        signals.batch_completed.disconnect(handler)
    assert code == 0, out + err
    assert "finished: 121 row(s) re-encrypted" in out  # the row written back is moved again
    assert "progress: 121/121 rows (+1 written during the run) (100.0%)" in err
    assert "/120 rows" not in err.splitlines()[-1]
    assert Person.objects.filter(email_key_version=1).count() == 0


def test_status_shows_rows_done_beyond_the_plan_as_a_grown_total(rotated):
    from keyrotation.models import ReencryptionChunk, ReencryptionRun

    assert run("reencrypt")[0] == 0
    real = ReencryptionRun.objects.get()
    ReencryptionChunk.objects.filter(run=real).update(rows_done=0)
    ReencryptionChunk.objects.filter(pk=ReencryptionChunk.objects.filter(run=real).first().pk).update(
        rows_done=125
    )
    data = json.loads(run("rotation_status", "--json")[1])["run"]
    assert (data["rows_done"], data["rows_total"], data["rows_planned"], data["rows_added"]) == (
        125,
        125,
        120,
        5,
    )
    assert "125/125 rows (+5 written during the run)" in run("rotation_status")[1]


def test_status_shows_each_active_keys_age_and_fails_if_due(keys, settings):
    code, out, _ = run("rotation_status", "--fail-if-due")
    assert code == 0 and "active keys (age, rotation period):" in out
    assert re.search(r"default/encrypt v1 +active +\d+ seconds? +period +- +due - +no policy", out)
    set_policy(settings, {"default": {"encrypt": "30d", "index": "365d"}})
    make_older("default", "encrypt", 31)
    make_older("default", "index", 360)
    code, out, _ = run("rotation_status", "--fail-if-due")
    assert code == 2
    assert re.search(
        r"default/encrypt v1 +active +31 days +period +30 days +due \d{4}-\d\d-\d\d \d\d:\d\d UTC +overdue",
        out,
    )
    assert re.search(r"default/index v1 +active +360 days +period +365 days +due \S+ \S+ UTC +due soon", out)
    assert run("rotation_status", "--fail-if-due", "--purpose", "index")[0] == 0
    assert run("rotation_status", "--fail-if-due", "--purpose", "encrypt")[0] == 2
    assert run("rotation_status")[0] == 0  # only --fail-if-due turns a due key into exit 2
    data = json.loads(run("rotation_status", "--json")[1])
    assert data["due"] == ["default/encrypt v1"]
    assert [(a["purpose"], a["state"], a["period_seconds"]) for a in data["key_ages"]] == [
        ("encrypt", "overdue", 30 * 86400),
        ("index", "due_soon", 365 * 86400),
    ]


def test_status_with_a_malformed_rotation_period_is_one_line(keys, settings):
    set_policy(settings, {"default": 0})
    with pytest.raises(CommandError, match=r'ROTATION_PERIOD"\]\["default"\]: 0 is not a rotation period'):
        run("rotation_status")
