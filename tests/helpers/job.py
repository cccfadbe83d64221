"""One job of a fleet in its own process: ``keyrotation.jobs.reencrypt`` with JSON arguments.

Usage: python -m tests.helpers.job '{"fleet": 2, "rate": 100}'
Prints "started", then the job's result as one JSON line.
"""

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from keyrotation import jobs  # noqa: E402

print("started", flush=True)
print(json.dumps(jobs.reencrypt(**json.loads(sys.argv[1])).as_dict()), flush=True)
