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
    "print(f'{Person.objects.count()} people in the database; the first three:')\n"
    "for p in Person.objects.all()[:3]:\n"
    "    print(f'  #{p.pk} {p.name} <{p.email}> born {p.date_of_birth}')\n"
)

# (what the step shows, manage.py arguments)
STEPS: list[tuple[str, list[str]]] = [
    ("Check the project configuration (Django system checks, including keyrotation's).",
     ["check"]),
    ("Create the SQLite database and its tables.",
     ["migrate", "--verbosity", "1"]),
    ("Create 20 deterministic sample people with bulk_create.",
     ["seed_people", "--count", "20"]),
    ("Read a few of them back.",
     ["shell", "--no-imports", "-c", SHOW_PEOPLE]),
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
    env = dict(os.environ, KEYROTATION_MASTER_KEY=master_key())
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
    print("\nDone. Browse the data with: cd example_project && "
          "KEYROTATION_MASTER_KEY=$(cat .master_key) python manage.py runserver")
    return 0


if __name__ == "__main__":
    sys.exit(main())
