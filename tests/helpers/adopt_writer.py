"""An application writer during adoption: rewrites the email of random PlainContact rows.

Usage: python -m tests.helpers.adopt_writer <seconds> <seed>
Prints one JSON line: {"writes": n, "last": {pk: last email written}}.
"""

import json
import os
import random
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from tests.legacyapp.models import PlainContact  # noqa: E402

seconds, seed = float(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
pks = list(PlainContact.objects.values_list("pk", flat=True))
written = {}
deadline = time.monotonic() + seconds
i = 0
while time.monotonic() < deadline:
    pk = rng.choice(pks)
    contact = PlainContact.objects.get(pk=pk)
    if i % 2:
        contact.email = f"w{i}-{pk}@writer.example"
        contact.save(update_fields=["email"])
    else:  # a full save of a row read through the window
        contact.email = f"w{i}-{pk}@writer.example"
        contact.visits += 1
        contact.save()
    written[pk] = contact.email
    i += 1
print(json.dumps({"writes": i, "last": written}), flush=True)
