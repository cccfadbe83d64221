"""Run management commands as ``manage.py`` does, one after the other, in one process.

Usage: ``python -m tests.helpers.command_line STEPS.json RESULTS.json`` with the settings and the
database in the environment. ``STEPS.json`` is a list of steps, each ``{"argv": [...]}`` (a
command line, run through ``execute_from_command_line`` exactly as ``manage.py`` runs it) or
``{"setup": NAME}`` (one of the state changes below). ``RESULTS.json`` gets, per step, the exit
status (``"traceback"`` when an exception escaped: the command line would have printed one),
stdout and stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback


def _seed() -> None:
    from keyrotation import keyring, lifecycle
    from tests.testapp.models import Person

    Person.objects.bulk_create(Person(name=f"p{i}", email=f"p{i}@example.com") for i in range(50))
    lifecycle.rotate("default", "encrypt")
    lifecycle.rotate("default", "index")
    keyring.invalidate()


def tamper_one_email() -> object:
    """Flip the last byte of one stored email: that value no longer authenticates. Returns its pk."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT id, email FROM testapp_person ORDER BY id LIMIT 1")
        pk, token = cur.fetchone()
        token = bytes(token)
        cur.execute(
            "UPDATE testapp_person SET email = %s WHERE id = %s", [token[:-1] + bytes([token[-1] ^ 1]), pk]
        )
    return pk


#: The message of the trigger below: the database's text, which no command prints.
REFUSAL = "refused by the trigger kr_refuse"


def refuse_updates() -> None:
    """A trigger that makes every update of a person fail (a database error in the engine's batch)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "CREATE TRIGGER kr_refuse BEFORE UPDATE ON testapp_person "
            f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
        )


def allow_updates() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("DROP TRIGGER kr_refuse")


def _policy() -> None:
    """A 30-day period for encrypt keys (none for index), and an encrypt key 31 days old."""
    from django.conf import settings
    from django.test import override_settings

    from tests.helpers.key_age import make_older

    period = {"default": {"encrypt": 30, "index": None}}
    override_settings(KEYROTATION={**settings.KEYROTATION, "ROTATION_PERIOD": period}).enable()
    make_older("default", "encrypt", 31)


SETUPS = {
    "seed": _seed,
    "tamper": tamper_one_email,
    "refuse": refuse_updates,
    "allow": allow_updates,
    "policy": _policy,
}


def run(argv: list[str]) -> dict:
    from django.core.management import execute_from_command_line

    out, err = io.StringIO(), io.StringIO()
    code: int | str = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            execute_from_command_line(["manage.py", *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - what the command line would print as a traceback
            code = "traceback"
            err.write(traceback.format_exc())
    return {"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(steps_path: str, results_path: str) -> None:
    import django

    django.setup()
    with open(steps_path, encoding="utf-8") as f:
        steps = json.load(f)
    results = []
    for step in steps:
        if "setup" in step:
            SETUPS[step["setup"]]()
            results.append({"setup": step["setup"]})
        else:
            results.append(run(step["argv"]))
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
