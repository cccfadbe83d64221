"""An application writer in its own process: updates random rows until told to stop.

Usage: python -m tests.helpers.writer <seconds> <seed>
Prints one JSON line: {pk: last email written} for every row it updated.
"""

import json
import os
import random
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from tests.testapp.models import Person  # noqa: E402

seconds, seed = float(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
pks = list(Person.objects.values_list("pk", flat=True))
written = {}
deadline = time.monotonic() + seconds
i = 0
while time.monotonic() < deadline:
    pk = rng.choice(pks)
    email = f"w{i}-{pk}@writer.example"
    person = Person.objects.get(pk=pk)
    person.email = email
    person.save(update_fields=["email"])
    written[pk] = email
    i += 1
print(json.dumps({"writes": i, "last": written}), flush=True)
