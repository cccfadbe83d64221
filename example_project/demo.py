#!/usr/bin/env python3
"""The example project, step by step: ``make demo`` runs this with the project's virtualenv.

Each step is a ``manage.py`` command with a one-line explanation printed before it. To extend the
demo, append to ``STEPS``. The database is recreated on every run (``--keep-db`` keeps it).
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY_FILE = HERE / ".master_key"
DB_FILE = HERE / "db.sqlite3"

SHOW_PEOPLE = (
    "from people.models import Person\n"
    "print(f'{Person.objects.count()} people in the database; the first three, decrypted:')\n"
    "for p in Person.objects.all()[:3]:\n"
    "    print(f'  #{p.pk} {p.name} <{p.email}> born {p.date_of_birth}')\n"
    "p = Person.objects.get(email='person0000042@example.com')\n"
    "print(f'found by email through the blind index: #{p.pk} {p.name}')\n"
    "last4 = p.national_id[-4:]\n"
    "print(f'people whose national id ends in {last4}:', Person.objects.filter(national_id=last4).count())\n"
)
SHOW_RAW = (
    "from django.db import connection\n"
    "with connection.cursor() as cur:\n"
    "    cur.execute('SELECT id, email, email_key_version FROM people_person ORDER BY id LIMIT 2')\n"
    "    for pk, token, version in cur.fetchall():\n"
    "        token = bytes(token)\n"
    "        print(f'  row {pk}: email column = {len(token)} bytes, format 0x{token[0]:02x}, '\n"
    "              f'key version {int.from_bytes(token[1:5], \"big\")} (version column: {version})')\n"
)

# (what the step shows, manage.py arguments)
STEPS: list[tuple[str, list[str]]] = [
    ("Check the project configuration (Django system checks, including keyrotation's).",
     ["check"]),
    ("Create the SQLite database and its tables (the version columns come with the fields).",
     ["migrate", "--verbosity", "1"]),
    ("Create the first data keys: v1 for encryption and v1 for blind indexes, wrapped by the "
     "local master key.",
     ["rotatekeys", "--init", "--actor", "demo"]),
    ("Create 2,000 sample people; every personal field is encrypted on the way in.",
     ["seed_people", "--count", "2000"]),
    ("Read some back (decrypted on access) and search by email and by the last four digits.",
     ["shell", "--no-imports", "-c", SHOW_PEOPLE]),
    ("What the database really holds: ciphertext with the key version in its header.",
     ["shell", "--no-imports", "-c", SHOW_RAW]),
    ("The key census: every row is on v1.",
     ["rotation_status"]),
    ("Rotate: generate v2 of both keys and make it active. Old rows stay readable (v1 is now "
     "decrypt-only); new writes use v2.",
     ["rotatekeys", "--actor", "demo"]),
    ("The census now shows 0 % on the active version.",
     ["rotation_status"]),
    ("Dry run: what re-encryption would do, changing nothing.",
     ["reencrypt", "--dry-run"]),
    ("Re-encrypt every row to v2 in set-based batches (resumable; safe while the app runs).",
     ["reencrypt", "--batch-size", "250", "--actor", "demo"]),
    ("The census: 100 % on v2. `--fail-if-incomplete` would exit 2 otherwise (for cron/alerts).",
     ["rotation_status", "--fail-if-incomplete"]),
    ("Verify: open every value and recompute every blind index.",
     ["reencrypt", "--verify"]),
    ("Search still works on the new index key.",
     ["shell", "--no-imports", "-c", SHOW_PEOPLE]),
    ("Retire v1 of the encryption key: allowed only because the census proves no row uses it.",
     ["rotatekeys", "--retire", "1", "--purpose", "encrypt", "--actor", "demo"]),
    ("Retire v1 of the blind-index key the same way.",
     ["rotatekeys", "--retire", "1", "--purpose", "index", "--actor", "demo"]),
    ("The keys now (never any key bytes).",
     ["rotatekeys", "--list"]),
]


def master_key() -> str:
    """The local master key: from the environment, else example_project/.master_key (created)."""
    if os.environ.get("KEYROTATION_MASTER_KEY"):
        print("Using the master key from KEYROTATION_MASTER_KEY.")
        return os.environ["KEYROTATION_MASTER_KEY"]
    if not KEY_FILE.exists():
        key = base64.b64encode(os.urandom(32)).decode()
        # Created with owner-only permissions: this file is the key to every encrypted row.
        fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        print(f"Generated a new local master key in {KEY_FILE.relative_to(HERE.parent)} "
              "(git-ignored; never commit a master key).")
    else:
        print(f"Using the local master key in {KEY_FILE.relative_to(HERE.parent)}.")
    return KEY_FILE.read_text().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-db", action="store_true", help="do not recreate db.sqlite3")
    args = parser.parse_args()

    print("== keyrotation example project")
    # CACHE_SECONDS=0 lets the demo retire v1 right after re-encrypting; in production wait
    # CACHE_SECONDS after the rotation so that no process still writes with the old key.
    env = dict(os.environ, KEYROTATION_MASTER_KEY=master_key(), KEYROTATION_CACHE_SECONDS="0")
    if DB_FILE.exists() and not args.keep_db:
        DB_FILE.unlink()
        print("Removed the previous example_project/db.sqlite3 (start from scratch).")

    for number, (explanation, arguments) in enumerate(STEPS, start=1):
        shown = " ".join(a if "\n" not in a else "'...'" for a in arguments)
        print(f"\n== step {number}/{len(STEPS)}: {explanation}\n$ python manage.py {shown}",
              flush=True)
        code = subprocess.run(
            [sys.executable, "manage.py", *arguments], cwd=HERE, env=env, check=False
        ).returncode
        if code:
            print(f"step {number} failed (exit {code})", file=sys.stderr)
            return code
    print(
        "\nDone: a full rotation. See it in the admin (key versions, census, audit trail):\n"
        "  cd example_project\n"
        "  export KEYROTATION_MASTER_KEY=$(cat .master_key)\n"
        "  ../.venv/bin/python manage.py createsuperuser\n"
        "  ../.venv/bin/python manage.py runserver\n"
        "then open http://127.0.0.1:8000/admin/keyrotation/ (data keys, audit trail, runs) and\n"
        "http://127.0.0.1:8000/admin/keyrotation/reencryptionrun/status/ (the rotation status page).\n"
        "The same steps, with the checks in between: docs/runbook-routine.md."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
