"""Seed or check the database a test's subprocesses use (no Django test database there).

Usage: python -m tests.helpers.outage seed <rows>   -> init keys, seed, rotate; prints the new version
       python -m tests.helpers.outage check <rows>  -> prints {"ok": bool, "versions": [...], "bad": [...]}
"""

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.db import connection  # noqa: E402

from keyrotation import lifecycle  # noqa: E402
from tests.testapp.models import Person  # noqa: E402

cmd, rows = sys.argv[1], int(sys.argv[2])
if cmd == "seed":
    lifecycle.init("default")
    Person.objects.bulk_create(
        Person(name=f"p{i}", email=f"o{i}@example.com", ssn=f"{i:09d}") for i in range(rows)
    )
    version = lifecycle.rotate("default", "encrypt").version
    lifecycle.rotate("default", "index")
    print(version)
else:
    bad = [
        p.name
        for p in Person.objects.all()
        if (p.email, p.ssn) != (f"o{p.name[1:]}@example.com", f"{p.name[1:]:0>9}")
    ]
    with connection.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT email_key_version, ssn_key_version, email_bidx_key_version FROM testapp_person"
        )
        versions = sorted(cur.fetchall())
    count = Person.objects.count()
    print(json.dumps({"ok": not bad and count == rows, "versions": versions, "bad": bad[:10], "rows": count}))
