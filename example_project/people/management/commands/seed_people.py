"""``manage.py seed_people --count N``: create N deterministic sample people.

The same ``--count`` and ``--start`` always produce the same rows (no randomness), so demo output
and benchmarks are reproducible. Rows are inserted with ``bulk_create`` in batches.
"""

import datetime

from django.core.management.base import BaseCommand, CommandError

from people.models import Person

FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
        "Perlman", "Berners-Lee"]
EPOCH = datetime.date(1950, 1, 1)


def person(n: int) -> Person:
    """The n-th sample person (n >= 1); a pure function of n."""
    first, last = FIRST[n % len(FIRST)], LAST[(n // len(FIRST)) % len(LAST)]
    return Person(
        name=f"{first} {last}",
        email=f"person{n:07d}@example.com",
        national_id=f"{(n * 7919) % 10**9:09d}",
        date_of_birth=EPOCH + datetime.timedelta(days=(n * 3571) % 20000),
        notes={"seq": n, "tags": ["sample"]},
    )


class Command(BaseCommand):
    help = "Create N deterministic sample Person rows with bulk_create."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=100, help="rows to create (default 100)")
        parser.add_argument("--start", type=int, default=1,
                            help="sequence number of the first row (default 1)")
        parser.add_argument("--batch-size", type=int, default=1000,
                            help="rows per INSERT (default 1000)")

    def handle(self, *args, count, start, batch_size, **options):
        if count < 0 or start < 1 or batch_size < 1:
            raise CommandError("--count must be >= 0, --start and --batch-size >= 1")
        created = 0
        for offset in range(0, count, batch_size):
            size = min(batch_size, count - offset)
            first = start + offset
            Person.objects.bulk_create([person(n) for n in range(first, first + size)])
            created += size
        self.stdout.write(f"created {created} people (sequence {start}..{start + count - 1})")
