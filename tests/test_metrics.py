"""keyrotation.metrics: the keys, census and runs an exporter reports, read at the moment asked."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings

from keyrotation import engine, keyring, lifecycle, metrics
from keyrotation.metrics import Census, CensusCache, ColumnRows
from keyrotation.models import DataKey, ReencryptionRun, RunStatus
from tests.testapp.models import Person

pytestmark = pytest.mark.django_db(transaction=True)  # runs commit, as in production


def people(n: int, start: int = 0) -> None:
    Person.objects.bulk_create(
        Person(name=f"m{i}", email=f"m{i}@example.org") for i in range(start, start + n)
    )


def rotate_encrypt() -> None:
    lifecycle.rotate("default", "encrypt", actor="test")
    keyring.invalidate()


def email_rows(census: Census, database: str = "default") -> dict[int, int]:
    return {
        r.version: r.rows
        for r in census.rows
        if (r.database, r.model, r.field) == (database, "testapp.Person", "email")
    }


def test_keys_report_active_versions_their_age_and_states(keys):
    rotate_encrypt()
    active = DataKey.objects.get(keyring="default", purpose="encrypt", state="active")
    snapshot = metrics.keys(now=active.activated_at + timedelta(hours=5))
    mine = {(k.keyring, k.purpose): k for k in snapshot.active if k.keyring == "default"}
    assert mine[("default", "encrypt")].version == 2
    assert mine[("default", "encrypt")].age_seconds == 5 * 3600
    assert mine[("default", "index")].version == 1
    assert snapshot.active_version("default", "encrypt") == 2
    assert snapshot.active_version("nowhere", "encrypt") is None
    assert snapshot.versions[("default", "encrypt", "active")] == 1
    assert snapshot.versions[("default", "encrypt", "decrypt_only")] == 1
    assert ("default", "index", "decrypt_only") not in snapshot.versions


def test_census_counts_per_version_and_pending_against_the_active_version(keys):
    people(7)
    Person.objects.create(name="no email")  # no value: no version, not counted
    rotate_encrypt()
    Person.objects.create(name="new", email="new@example.org")  # written under v2
    census = metrics.count_census()
    assert email_rows(census) == {1: 7, 2: 1}
    pending = census.pending(metrics.keys())
    assert pending[("default", "testapp.Person", "email", "default", "encrypt")] == 7
    assert pending[("default", "testapp.Person", "email_bidx", "default", "index")] == 0
    engine.reencrypt()
    assert email_rows(metrics.count_census()) == {2: 8}


def test_census_cache_reuses_a_count_until_it_is_older_than_max_age():
    clock = [100.0]
    counted = []

    def count() -> Census:
        counted.append(clock[0])
        return Census((ColumnRows("default", "a.B", "c", "default", "encrypt", 1, len(counted)),), clock[0])

    cache = CensusCache(count, clock=lambda: clock[0])
    assert cache.get(60).rows[0].rows == 1
    clock[0] = 159.0
    assert cache.get(60).rows[0].rows == 1  # 59 s old: reused
    clock[0] = 160.0
    assert cache.get(60).rows[0].rows == 2  # 60 s old: counted again
    assert cache.get(0).rows[0].rows == 3  # 0: every time
    cache.clear()
    assert cache.get(60).rows[0].rows == 4
    assert counted == [100.0, 160.0, 160.0, 160.0]


def test_census_follows_the_setting(keys, settings):
    people(3)
    settings.KEYROTATION = {**settings.KEYROTATION, "METRICS_CENSUS_CACHE_SECONDS": 3600}
    metrics._CENSUS.clear()
    assert email_rows(metrics.census()) == {1: 3}
    people(2, start=3)
    assert email_rows(metrics.census()) == {1: 3}  # cached for an hour
    settings.KEYROTATION = {**settings.KEYROTATION, "METRICS_CENSUS_CACHE_SECONDS": 0}
    assert email_rows(metrics.census()) == {1: 5}


def test_runs_are_the_open_one_and_the_last_ended_one_per_database(keys):
    assert metrics.runs() == []
    people(30)
    rotate_encrypt()
    first = engine.reencrypt(batch_size=10)
    assert first.status == RunStatus.FINISHED
    assert engine.reencrypt().nothing_to_do  # a run with nothing to do is not recorded
    [ended] = metrics.runs()
    assert (ended.which, ended.database, ended.overview.run.pk) == ("last_ended", "default", first.run_id)
    assert ended.overview.progress.rows_done == 30

    rotate_encrypt()
    stopped = engine.reencrypt(batch_size=10, max_duration=0.001)  # stops at once: interrupted
    assert stopped.status == RunStatus.INTERRUPTED
    by_which = {s.which: s for s in metrics.runs()}
    assert set(by_which) == {"open", "last_ended"}
    assert by_which["open"].overview.run.pk == stopped.run_id
    assert by_which["open"].overview.progress.rows_done == stopped.rows_done < 30
    assert by_which["last_ended"].overview.run.pk == first.run_id

    engine.abort(stopped.run_id, actor="test")
    [ended] = metrics.runs()
    assert ended.overview.run.pk == stopped.run_id and ended.overview.run.status == RunStatus.ABORTED
    assert ReencryptionRun.objects.count() == 2


@pytest.mark.server
@pytest.mark.django_db(transaction=True, databases=["default", "other", "replica"])
@override_settings(DATABASE_ROUTERS=[])
def test_census_and_runs_are_per_database(keys, person_table_on_other):
    Person.objects.using("other").create(name="there", email="there@example.org")
    people(2)
    rotate_encrypt()
    census = metrics.count_census()
    # "replica" is a second connection to "default": counted once.
    assert {r.database for r in census.rows} == {"default", "other"}
    assert email_rows(census, "default") == {1: 2} and email_rows(census, "other") == {1: 1}
    engine.reencrypt(database="other")
    assert email_rows(metrics.count_census(), "other") == {2: 1}
    [ended] = metrics.runs()
    assert (ended.database, ended.which, ended.overview.progress.rows_done) == ("other", "last_ended", 1)
