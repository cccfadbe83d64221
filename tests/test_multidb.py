"""Several databases: the census, ``reencrypt``, ``rotation_status`` and the retire/destroy gates
cover every alias that holds a registered model, and the engine works on the write database even
when a router sends reads to a replica.

Runs on a database server (PostgreSQL or MySQL/MariaDB): ``tests/settings.py`` then adds
``other`` (a second database on the same server) and ``replica`` (a second connection to the
default database). Routers come from ``tests/routers.py``.
"""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import override_settings

from keyrotation import census, databases, engine, keyring, lifecycle
from keyrotation.exceptions import KeyStateError
from keyrotation.models import DataKey, KeyRotationAudit, ReencryptionRun
from tests.testapp.models import Person

pytestmark = [
    pytest.mark.server,
    pytest.mark.django_db(transaction=True, databases=["default", "other", "replica"]),
]

PERSON_ON_OTHER = override_settings(DATABASE_ROUTERS=["tests.routers.PersonOnOther"])
NO_ROUTER = override_settings(DATABASE_ROUTERS=[])


@pytest.fixture
def no_waits(settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0, "DESTROY_GRACE_SECONDS": 0}


def versions_on(alias: str) -> list[int | None]:
    with connections[alias].cursor() as cur:
        cur.execute("SELECT email_key_version FROM testapp_person ORDER BY id")
        return [v for (v,) in cur.fetchall()]


def rotate_encrypt():
    lifecycle.rotate("default", "encrypt")
    keyring.invalidate()


def command(name: str, *args) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out)
    return out.getvalue()


@PERSON_ON_OTHER
def test_rows_under_v1_on_a_routed_database_block_retire_until_reencrypt_moves_them(
    keys, no_waits, person_table_on_other
):
    assert databases.holding(Person) == ["other"]
    Person.objects.bulk_create(Person(name=f"p{i}", email=f"p{i}@example.com") for i in range(30))
    assert versions_on("other") == [1] * 30
    rotate_encrypt()

    with pytest.raises(KeyStateError, match=r"30 row\(s\) of testapp.Person.email on database 'other'"):
        lifecycle.retire("default", "encrypt", 1)

    report = engine.reencrypt()
    assert report.ok, report.as_dict()
    assert versions_on("other") == [2] * 30
    assert report.rows_done == 30 and set(report.runs) == {"other"}
    assert report.idle == ["default"]  # nothing pending there: no run recorded
    entry = KeyRotationAudit.objects.get(action="key_retire_refused")
    assert entry.details["census_by_database"]["other"]["testapp.Person.email"] == 30
    # The runs are kept with the keys, on the default database; the rows were written on "other".
    assert ReencryptionRun.objects.using("default").get(pk=report.runs["other"]).database == "other"
    lifecycle.retire("default", "encrypt", 1)
    lifecycle.destroy("default", "encrypt", 1)
    assert set(Person.objects.values_list("email", flat=True)) == {f"p{i}@example.com" for i in range(30)}


@PERSON_ON_OTHER
def test_workers_share_the_run_of_another_database(keys, no_waits, person_table_on_other):
    Person.objects.bulk_create(Person(name=f"p{i}", email=f"p{i}@example.com") for i in range(300))
    rotate_encrypt()
    report = engine.reencrypt(["testapp.Person"], workers=2, batch_size=40, chunk_span=50)
    assert report.ok, report.as_dict()
    assert report.rows_done == 300 and list(report.runs) == ["other"]
    assert versions_on("other") == [2] * 300
    run = ReencryptionRun.objects.using("default").get(pk=report.run_id)
    assert run.chunks.count() == 6 and set(run.chunks.values_list("status", flat=True)) == {"done"}


@NO_ROUTER
def test_rows_written_with_using_on_a_second_alias_are_counted_and_moved(
    keys, no_waits, person_table_on_other
):
    Person.objects.using("other").create(name="elsewhere", email="elsewhere@example.com")
    Person.objects.create(name="here", email="here@example.com")
    # "replica" names the same database as "default": counted once.
    assert databases.holding(Person) == ["default", "other"]
    rotate_encrypt()
    assert census.references("default", "encrypt", 1)["testapp.Person.email"] == 2

    with pytest.raises(KeyStateError, match=r"1 row\(s\) of testapp.Person.email on database 'other'"):
        lifecycle.retire("default", "encrypt", 1)

    out = command("reencrypt", "--database", "other", "--no-progress")
    assert re.match(r"run #\d+ finished: 1 row\(s\) re-encrypted", out)
    assert versions_on("other") == [2] and versions_on("default") == [1]
    out = command("reencrypt", "--no-progress")  # every database; only "default" has work left
    assert re.match(r"run #\d+ on default finished: 1 row\(s\) re-encrypted", out)
    assert out.endswith("\nnothing to re-encrypt on other\n")
    assert versions_on("default") == [2]
    lifecycle.retire("default", "encrypt", 1)
    assert Person.objects.using("other").get().email == "elsewhere@example.com"


@NO_ROUTER
def test_destroy_recounts_every_database(keys, no_waits, person_table_on_other):
    token, version = keyring.encrypt("default", "testapp.Person.email", b"restored@example.com")
    assert version == 1
    rotate_encrypt()
    lifecycle.retire("default", "encrypt", 1)
    # After the retirement, a row under v1 reaches the second database (restored from a backup).
    with connections["other"].cursor() as cur:
        cur.execute(
            "INSERT INTO testapp_person (name, email, email_key_version) VALUES (%s, %s, 1)",
            ["restored", token],
        )
    with pytest.raises(KeyStateError, match=r"1 row\(s\) of testapp.Person.email on database 'other'"):
        lifecycle.destroy("default", "encrypt", 1)
    assert DataKey.objects.get(keyring="default", purpose="encrypt", version=1).wrapped_key is not None


def test_rotation_status_counts_every_database_and_takes_a_database_option(
    keys, no_waits, person_table_on_other
):
    with NO_ROUTER:
        Person.objects.using("other").create(name="a", email="a@example.com")
        Person.objects.create(name="b", email="b@example.com")
        status = json.loads(command("rotation_status", "--json"))
        email = next(c for c in status["columns"] if c["label"] == "testapp.Person.email")
        assert email["versions"] == {"1": 2} and email["databases"] == ["default", "other"]
        only = json.loads(command("rotation_status", "--json", "--database", "other"))
        email = next(c for c in only["columns"] if c["label"] == "testapp.Person.email")
        assert email["versions"] == {"1": 1} and email["databases"] == ["other"]
        with pytest.raises(CommandError, match="no database alias 'nowhere'"):
            command("rotation_status", "--database", "nowhere")


@PERSON_ON_OTHER
def test_a_database_the_census_cannot_read_refuses_retire(keys, no_waits):
    with connections["other"].cursor() as cur:  # a table by that name, but not the model's
        cur.execute("CREATE TABLE testapp_person (id bigint PRIMARY KEY)")
    try:
        rotate_encrypt()
        # an unknown column: ProgrammingError on PostgreSQL, OperationalError (1054) on MySQL
        unreadable = r"could not count the rows on database 'other' \((Programming|Operational)Error\)"
        with pytest.raises(KeyStateError, match=unreadable):
            lifecycle.retire("default", "encrypt", 1)
        entry = KeyRotationAudit.objects.get(action="key_retire_refused")
        assert entry.details["reason"] == "census_failed"
        assert entry.details["unreadable"] in ({"other": "ProgrammingError"}, {"other": "OperationalError"})
    finally:
        with connections["other"].cursor() as cur:
            cur.execute("DROP TABLE testapp_person")


@pytest.mark.parametrize("router", ["MirrorReplica", "StaleReplica"])
def test_a_router_that_reads_from_a_replica_does_not_break_the_engine(keys, no_waits, router):
    Person.objects.bulk_create(Person(name=f"p{i}", email=f"p{i}@example.com") for i in range(50))
    with override_settings(DATABASE_ROUTERS=[f"tests.routers.{router}"]):
        rotate_encrypt()
        lifecycle.rotate("default", "index")
        report = engine.reencrypt(batch_size=20)
        assert report.ok, report.as_dict()
        assert report.rows_done == 50 and set(report.runs) == {"default"}
        assert engine.status()["run"]["status"] == "finished"
        assert engine.verify()["failure_count"] == 0
        assert command("reencrypt", "--no-progress").startswith("nothing to re-encrypt: every row of")
        lifecycle.retire("default", "encrypt", 1)
        lifecycle.retire("default", "index", 1)
        lifecycle.destroy("default", "encrypt", 1)
    assert versions_on("default") == [2] * 50
