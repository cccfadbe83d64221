"""One of several processes that start a re-encryption at the same instant.

Usage: python -m tests.helpers.open_race
Prints "ready" once Django is set up, then calls ``keyrotation.reencrypt`` for a short window and
prints its report as one JSON line.
"""

import json
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

import keyrotation  # noqa: E402

print("ready", flush=True)
report = keyrotation.reencrypt(batch_size=50, rate=200, max_duration=0.5)
print(json.dumps({"run_id": report.run_id, "joined": report.joined, "status": report.status}), flush=True)
