"""Seed, check or steer the database a test's subprocesses use (no Django test database there).

Usage: python -m tests.helpers.outage seed <rows>   -> init keys, seed, rotate; prints the new version
       python -m tests.helpers.outage check <rows>  -> prints {"ok": bool, "versions": [...], "bad": [...]}
       python -m tests.helpers.outage runs          -> prints [{"id", "status", "rows_total", "rows_done",
                                                       "chunks": [{"worker", "status", "rows_done"}]}]
       python -m tests.helpers.outage pause|resume  -> keyrotation.pause() / resume(); prints the run's status
       python -m tests.helpers.outage corrupt       -> one stored email no longer opens; prints its pk
       python -m tests.helpers.outage age <days>    -> the active encrypt key of "default" is that much older
       python -m tests.helpers.outage keys          -> prints [["default", purpose, active version], ...]
       python -m tests.helpers.outage tasks         -> prints the django-tasks-db rows: [{"id", "status",
                                                       "args", "kwargs", "return_value", "raw"}]
       python -m tests.helpers.outage enqueue '<json>'
                                  -> keyrotation.tasks.start_reencryption(**json); prints the task ids
       python -m tests.helpers.outage enqueue-rotate '<json>'
                                  -> keyrotation.tasks.rotate_if_due.enqueue(**json); prints its id
"""

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.db import connection  # noqa: E402

import keyrotation  # noqa: E402
from keyrotation import lifecycle  # noqa: E402
from keyrotation.models import ReencryptionRun  # noqa: E402
from tests.testapp.models import Person  # noqa: E402


def seed(rows: int) -> None:
    lifecycle.init("default")
    Person.objects.bulk_create(
        Person(name=f"p{i}", email=f"o{i}@example.com", ssn=f"{i:09d}") for i in range(rows)
    )
    version = lifecycle.rotate("default", "encrypt").version
    lifecycle.rotate("default", "index")
    print(version)


def check(rows: int) -> None:
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


def runs() -> None:
    out = [
        {
            "id": run.pk,
            "status": run.status,
            "rows_total": run.rows_total,
            "rows_done": sum(c.rows_done for c in run.chunks.all()),
            "chunks": [
                {"worker": c.worker, "status": c.status, "rows_done": c.rows_done}
                for c in run.chunks.order_by("id")
            ],
        }
        for run in ReencryptionRun.objects.order_by("id")
    ]
    print(json.dumps(out))


def corrupt() -> None:
    from tests.helpers.command_line import tamper_one_email

    print(tamper_one_email())


def control(action: str) -> None:
    run = getattr(keyrotation, action)(actor="test")
    print(json.dumps({"id": run.pk, "status": run.status}))


def age(days: int) -> None:
    from tests.helpers.key_age import make_older

    make_older("default", "encrypt", days)
    print("null")


def keys() -> None:
    from keyrotation.models import DataKey

    active = DataKey.objects.filter(keyring="default", state="active").order_by("purpose")
    print(json.dumps([[k.keyring, k.purpose, k.version] for k in active]))


def tasks() -> None:
    from django_tasks_db.models import DBTaskResult

    out = []
    for row in DBTaskResult.objects.order_by("enqueued_at", "id"):
        fields = {f.attname: getattr(row, f.attname) for f in DBTaskResult._meta.concrete_fields}
        out.append(
            {
                "id": str(row.id),
                "status": row.status,
                "args": row.args_kwargs["args"],
                "kwargs": row.args_kwargs["kwargs"],
                "return_value": row.return_value,
                "worker_ids": row.worker_ids,
                "raw": repr(fields),
            }
        )
    print(json.dumps(out))


def enqueue(kind: str, arguments: str) -> None:
    from keyrotation import tasks as background_tasks

    if kind == "enqueue":
        print(json.dumps(background_tasks.start_reencryption(**json.loads(arguments))))
    else:
        print(json.dumps(str(background_tasks.rotate_if_due.enqueue(**json.loads(arguments)).id)))


cmd = sys.argv[1]
if cmd in ("seed", "check", "age"):
    {"seed": seed, "check": check, "age": age}[cmd](int(sys.argv[2]))
elif cmd in ("enqueue", "enqueue-rotate"):
    enqueue(cmd, sys.argv[2])
elif cmd in ("pause", "resume"):
    control(cmd)
else:
    {"runs": runs, "corrupt": corrupt, "keys": keys, "tasks": tasks}[cmd]()
