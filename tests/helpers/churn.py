"""An application process that updates, inserts and deletes people until told to stop.

Usage: python -m tests.helpers.churn <seconds> <seed> <index> <count>
Touches only the rows whose pk % count == index (and the rows it inserts). Prints one JSON line:
{"ops": n, "rows": {pk: [email, ssn]}, "deleted": [pk, ...]} for every row it touched.
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

seconds, seed, index, count = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
# Seeded rows only (named p<i>): a row another writer inserted meanwhile is that writer's.
seeded = Person.objects.filter(name__startswith="p").values_list("pk", flat=True)
mine = [pk for pk in seeded if pk % count == index]
rows, deleted = {}, []
deadline = time.monotonic() + seconds
i = 0
while time.monotonic() < deadline and mine:
    op = rng.random()
    if op < 0.6:
        pk = rng.choice(mine)
        person = Person.objects.get(pk=pk)
        person.email, person.ssn = f"w{index}-{i}-{pk}@churn.example", f"{i % 1000:03d}-00-{index:04d}"
        person.save()
        rows[pk] = [person.email, person.ssn]
    elif op < 0.8:
        person = Person.objects.create(name="new", email=f"new{index}-{i}@churn.example", ssn="000-11-2222")
        rows[person.pk] = [person.email, person.ssn]  # a row created mid-run, under the new key
    else:
        pk = mine.pop(rng.randrange(len(mine)))
        Person.objects.filter(pk=pk).delete()
        rows.pop(pk, None)
        deleted.append(pk)
    i += 1
print(json.dumps({"ops": i, "rows": rows, "deleted": deleted}), flush=True)
