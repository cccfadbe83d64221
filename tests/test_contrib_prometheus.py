"""keyrotation.contrib.prometheus: the view scraped through Django's test client and read with
prometheus_client's parsers, during real runs; the bearer token; a part that fails; and that the
metrics carry names and counts only (never a value, a key, a primary key or a key id)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection, connections
from django.test import Client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

import keyrotation
from keyrotation import crypto, engine, keyring, lifecycle, registry
from keyrotation.contrib import prometheus
from keyrotation.exceptions import KEKRefused
from keyrotation.kek import context_for, load_kek
from keyrotation.kek.calls import OPERATIONS, REASONS
from keyrotation.metrics import LAST_ENDED, OPEN
from keyrotation.models import DataKey, KeyState, RunStatus
from keyrotation.testing import assert_no_leak
from tests.helpers.key_age import make_older, set_policy
from tests.testapp.models import Person, Secret

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.prometheus_urls")]

URL = "/metrics/keyrotation"
ROOT = Path(__file__).resolve().parent.parent
EMAIL = ("testapp.Person", "email")


@pytest.fixture(autouse=True)
def census_every_scrape(settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "METRICS_CENSUS_CACHE_SECONDS": 0}


class Scrape:
    """One scrape, parsed: every sample with its labels."""

    def __init__(self, text: str, openmetrics: bool = False) -> None:
        self.text = text
        families = parse_openmetrics(text) if openmetrics else parse_text(text)
        self.samples = [s for family in families for s in family.samples]

    def matching(self, name: str, **labels: str) -> list:
        return [
            s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def total(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.matching(name, **labels))

    def one(self, name: str, **labels: str) -> float:
        [sample] = self.matching(name, **labels)
        return sample.value


def scrape(client: Client | None = None, **headers: str) -> Scrape:
    response = (client or Client()).get(URL, **headers)
    assert response.status_code == 200, response.content[:200]
    return Scrape(response.content.decode())


def census_v(s: Scrape, version: int) -> float:
    return s.total("keyrotation_census_rows", model=EMAIL[0], field=EMAIL[1], version=str(version))


def people(n: int, prefix: str = "p") -> None:
    Person.objects.bulk_create(
        Person(name=f"{prefix}{i}", email=f"{prefix}{i}@example.org", ssn=f"{i % 1000:03d}-55-0000")
        for i in range(n)
    )


def rotate_all() -> None:
    keyrotation.rotate(actor="test")
    keyring.invalidate()


def kek_calls(s: Scrape, operation: str) -> float:
    return s.total("keyrotation_kek_calls_total", backend="local", kek="current", operation=operation)


# -- wiring ----------------------------------------------------------------------------------


def test_register_queries_nothing_and_adds_the_collector_once(django_assert_num_queries):
    reg = CollectorRegistry()
    with django_assert_num_queries(0):
        first = prometheus.register(reg)
        assert prometheus.register(reg) is first
    text = generate_latest(reg).decode()  # scraping it queries
    assert 'keyrotation_scrape_collector_success{collector="keys"} 1.0' in text


def test_register_defaults_to_the_global_registry_in_a_fresh_process():
    """As an application does it: ``register()`` in a process of its own, then the global registry
    (what django-prometheus serves) holds the metrics. No table exists there: the database parts
    fail, reported as such, and the scrape still answers."""
    code = (
        "import django; django.setup()\n"
        "from prometheus_client import REGISTRY, generate_latest\n"
        "from keyrotation.contrib import prometheus\n"
        "assert prometheus.register() is prometheus.register(REGISTRY)\n"
        "print(generate_latest(REGISTRY).decode())\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)  # SQLite in memory, never migrated
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "python_gc_objects_collected_total" in out.stdout  # the global registry's own metrics
    assert 'keyrotation_scrape_collector_success{collector="kek"} 1.0' in out.stdout
    assert 'keyrotation_scrape_collector_success{collector="keys"} 0.0' in out.stdout


def test_the_view_speaks_prometheus_text_and_openmetrics(keys):
    client = Client()
    plain = client.get(URL)
    assert plain.status_code == 200
    assert plain["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "no-store" in plain["Cache-Control"]
    assert (
        Scrape(plain.content.decode()).one(
            "keyrotation_active_key_version", keyring="default", purpose="encrypt"
        )
        == 1
    )
    om = client.get(URL, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert om["Content-Type"].startswith("application/openmetrics-text")
    assert om.content.endswith(b"# EOF\n")
    parsed = Scrape(om.content.decode(), openmetrics=True)
    assert parsed.one("keyrotation_active_key_version", keyring="default", purpose="index") == 1
    assert client.post(URL).status_code == 405
    assert client.head(URL).status_code == 200


def test_rotation_period_and_due_time_follow_the_policy(keys, settings):
    """Under ROTATION_PERIOD the active key has a period and a due time (negative once overdue);
    without one, or for the audit chain's key, neither series exists."""
    assert scrape().matching("keyrotation_active_key_due_in_seconds") == []
    set_policy(settings, {"default": {"encrypt": 30, "index": None}, "*": 90})
    make_older("default", "encrypt", 31)
    parsed = scrape()
    where = {"keyring": "default", "purpose": "encrypt"}
    assert parsed.one("keyrotation_active_key_period_seconds", **where) == 30 * 86400
    due_in = parsed.one("keyrotation_active_key_due_in_seconds", **where)
    assert -86400 - 60 < due_in < -86400 + 60  # a day overdue
    assert parsed.one("keyrotation_active_key_age_seconds", **where) >= 31 * 86400
    assert parsed.matching("keyrotation_active_key_due_in_seconds", keyring="default", purpose="index") == []
    assert parsed.matching("keyrotation_active_key_version", keyring="_audit_chain")  # it is there
    assert parsed.matching("keyrotation_active_key_due_in_seconds", keyring="_audit_chain") == []


def test_a_bearer_token_guards_the_view_and_is_never_echoed(keys, settings):
    token = "metrics-token-8c1f0e27b4"
    settings.KEYROTATION = {**settings.KEYROTATION, "METRICS_BEARER_TOKEN": token}
    client = Client()
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": f"Basic {token}"}):
        response = client.get(URL, **headers)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert token.encode() not in response.content and b"keyrotation_" not in response.content
    assert (
        scrape(client, HTTP_AUTHORIZATION=f"Bearer {token}").one(
            "keyrotation_active_key_version", keyring="default", purpose="encrypt"
        )
        == 1
    )
    assert client.get(URL, HTTP_AUTHORIZATION=f"bearer {token}").status_code == 200


def test_a_part_that_fails_says_so_and_the_others_are_served(keys, settings, caplog):
    people(3)
    settings.KEYROTATION = {**settings.KEYROTATION, "METRICS_CENSUS_CACHE_SECONDS": -1}
    s = scrape()
    assert s.one("keyrotation_scrape_collector_success", collector="census") == 0
    assert s.matching("keyrotation_census_rows") == []
    assert s.one("keyrotation_scrape_collector_success", collector="keys") == 1
    assert s.one("keyrotation_active_key_version", keyring="default", purpose="encrypt") == 1
    assert s.one("keyrotation_scrape_collector_duration_seconds", collector="census") >= 0
    [record] = [r for r in caplog.records if r.name == "keyrotation.metrics"]
    assert record.getMessage() == "keyrotation metrics: collecting census failed (ConfigurationError)"


# -- during a run ----------------------------------------------------------------------------


def test_scrapes_between_batches_follow_the_run(keys):
    """On every database (SQLite has one writer): the run scrapes from its own batch callback."""
    people(600)
    before = scrape()
    rotate_all()
    seen: list[Scrape] = []

    def on_batch(payload: dict) -> None:
        if len(seen) < 2 and payload["model"] == "testapp.Person":
            seen.append(scrape())

    report = engine.reencrypt(batch_size=100, on_batch=on_batch)
    assert report.status == RunStatus.FINISHED
    first, second = seen
    assert 0 < census_v(first, 2) < census_v(second, 2) < 600
    assert census_v(first, 1) > census_v(second, 1) > 0
    labels = {"database": "default", "run": OPEN}
    assert (
        0
        < first.one("keyrotation_run_done_rows", **labels)
        < second.one("keyrotation_run_done_rows", **labels)
    )
    assert first.one("keyrotation_run_rows", **labels) == 600
    assert first.one("keyrotation_run_id", **labels) == report.run_id
    assert first.one("keyrotation_run_state", state="running", **labels) == 1
    assert first.total("keyrotation_run_state", **labels) == 1  # one state at a time
    pending = {"model": EMAIL[0], "field": EMAIL[1], "purpose": "encrypt"}
    assert first.one("keyrotation_census_pending_rows", **pending) > second.one(
        "keyrotation_census_pending_rows", **pending
    )
    # The rotation wrapped new keys, the run unwrapped them: this process's KEK counts moved.
    assert kek_calls(first, "wrap") > kek_calls(before, "wrap")
    assert kek_calls(first, "unwrap") > kek_calls(before, "unwrap")

    after = scrape()
    assert after.matching("keyrotation_run_id", run=OPEN) == []
    ended = {"database": "default", "run": LAST_ENDED}
    assert after.one("keyrotation_run_state", state="finished", **ended) == 1
    assert after.one("keyrotation_run_done_rows", **ended) == 600
    assert after.matching("keyrotation_run_eta_seconds", **ended) == []  # only a running run has one
    assert census_v(after, 2) == 600 and census_v(after, 1) == 0
    assert after.one("keyrotation_census_pending_rows", **pending) == 0


@pytest.mark.server
def test_scrapes_during_a_throttled_run_in_another_thread(keys):
    """A real concurrent run (row locks: a database server): ``keyrotation.reencrypt`` throttled in
    a thread while the test scrapes."""
    people(1200)
    before = scrape()
    rotate_all()
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(keyrotation.reencrypt(batch_size=100, rate=300))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(exc))
        finally:
            connection.close()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        labels = {"database": "default", "run": OPEN}

        def wait_for(predicate, what: str) -> Scrape:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                s = scrape()
                if predicate(s):
                    return s
                time.sleep(0.2)
            raise AssertionError(f"timed out waiting for {what}")

        first = wait_for(lambda s: s.total("keyrotation_run_done_rows", **labels) > 0, "the run to start")
        done = first.one("keyrotation_run_done_rows", **labels)
        second = wait_for(
            lambda s: s.total("keyrotation_run_done_rows", **labels) >= done + 200, "the run to advance"
        )
        assert census_v(first, 2) < census_v(second, 2)
        assert first.one("keyrotation_run_state", state="running", **labels) == 1
        assert first.one("keyrotation_run_rows", **labels) == 1200
        assert second.one("keyrotation_run_rows_per_second", **labels) > 0
        assert second.one("keyrotation_run_eta_seconds", **labels) >= 0
        heartbeat = second.one("keyrotation_run_heartbeat_timestamp_seconds", **labels)
        assert heartbeat >= second.one("keyrotation_run_started_timestamp_seconds", **labels)
        assert kek_calls(second, "wrap") > kek_calls(before, "wrap")
        assert kek_calls(second, "unwrap") > kek_calls(before, "unwrap")
    finally:
        worker.join(timeout=120)
    assert not errors and reports and reports[0].status == RunStatus.FINISHED
    after = scrape()
    assert after.one("keyrotation_run_state", state="finished", database="default", run=LAST_ENDED) == 1
    assert census_v(after, 2) == 1200


# -- never leak ------------------------------------------------------------------------------

# label -> what its values may be: names, versions, states; never a value, a pk or a key id.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def allowed_labels() -> dict:
    cols = list(registry.columns())
    keyrings = {c.keyring for c in cols} | set(DataKey.objects.values_list("keyring", flat=True))
    return {
        "database": set(connections.settings).__contains__,
        "model": {c.model_label for c in cols}.__contains__,
        "field": {c.field_name for c in cols}.__contains__,
        "keyring": keyrings.__contains__,
        "purpose": set(crypto.PURPOSES).__contains__,
        "version": lambda v: v.isdigit() and int(v) <= lifecycle.MAX_KEY_VERSION,
        "state": (set(KeyState.values) | set(RunStatus.values)).__contains__,
        "run": {OPEN, LAST_ENDED}.__contains__,
        "backend": lambda v: NAME.fullmatch(v) is not None,  # "local", "vault" or a class path
        "kek": {"current", "previous"}.__contains__,
        "operation": set(OPERATIONS).__contains__,
        "reason": ({r for _, r in REASONS} | {"other"}).__contains__,
        "collector": {"keys", "census", "runs", "kek"}.__contains__,
    }


def test_metrics_hold_names_and_counts_only(keys):
    emails = [f"leak-canary-{i}-7d1e@example.org" for i in range(40)]
    ssns = [f"{i:03d}-83-2719" for i in range(40)]
    secrets = [f"secret-canary-{i}-5b9a" for i in range(5)]
    for email, ssn in zip(emails, ssns, strict=True):
        Person.objects.create(name="leak", email=email, ssn=ssn)
    rows = [Secret.objects.create(value=s) for s in secrets]
    bad = Person.objects.order_by("pk").last()
    with connection.cursor() as cur:  # a value that cannot be opened: quarantined by the run
        cur.execute("SELECT email FROM testapp_person WHERE id = %s", [bad.pk])
        token = bytes(cur.fetchone()[0])
        cur.execute(
            "UPDATE testapp_person SET email = %s WHERE id = %s",
            [token[:-1] + bytes([token[-1] ^ 1]), bad.pk],
        )
    rotate_all()
    stored = list(DataKey.objects.all())
    switch = load_kek()
    data_keys = [
        switch.unwrap(bytes(k.wrapped_key), context_for(k.keyring, k.purpose, k.version), kek_id=k.kek_id)
        for k in stored
    ]
    key_canaries = [
        base64.b64decode(django_settings.TEST_MASTER_KEY),
        *(bytes(k.wrapped_key) for k in stored),
        *data_keys,
    ]
    with assert_no_leak([*emails, *ssns, *secrets, *key_canaries]) as leak:
        with pytest.raises(KEKRefused):  # a KEK error, counted
            tampered = bytes(stored[0].wrapped_key)[:-1] + bytes([bytes(stored[0].wrapped_key)[-1] ^ 1])
            switch.unwrap(tampered, context_for(stored[0].keyring, stored[0].purpose, stored[0].version))
        mid: list[Scrape] = []
        report = engine.reencrypt(
            batch_size=10, on_error="quarantine", on_batch=lambda _: mid.append(scrape()) if not mid else None
        )
        assert report.rows_failed == 1
        client = Client()
        text = client.get(URL).content.decode()
        om = client.get(URL, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0").content.decode()
        for where, page in [("mid-run scrape", mid[0].text), ("scrape", text), ("OpenMetrics scrape", om)]:
            leak.check_text(page, where=where)
    final = Scrape(text)
    assert final.one("keyrotation_run_failed_rows", database="default", run=LAST_ENDED) == 1
    assert final.total("keyrotation_kek_errors_total", reason="refused") >= 1
    allowed = allowed_labels()
    for scraped in (mid[0], final, Scrape(om, openmetrics=True)):
        for sample in scraped.samples:
            for label, value in sample.labels.items():
                assert label in allowed and allowed[label](value), (sample.name, label, value)
    for page in (text, om, mid[0].text):
        for k in stored:
            assert k.kek_id not in page
        for row in rows:
            assert str(row.pk) not in page and row.pk.hex not in page
