"""The admin in a real browser: the status page, and a live rotation paused and resumed from it."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from keyrotation import engine, keyring, lifecycle
from keyrotation.models import ReencryptionRun
from tests.browser.conftest import reading, submit_and_wait
from tests.testapp.models import Person

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "_static" / "screenshots"
STATUS_PATH = "/admin/keyrotation/reencryptionrun/status/"


def screenshot(browser, name: str) -> Path:
    """Save a screenshot for the docs when missing or when KEYROTATION_UPDATE_SCREENSHOTS=1
    (the committed one stays put otherwise, so a test run leaves the tree clean)."""
    target = SCREENSHOTS / name
    if target.exists() and os.environ.get("KEYROTATION_UPDATE_SCREENSHOTS") != "1":
        target = Path(tempfile.mkdtemp(prefix="keyrotation-shot-")) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(target))
    assert target.stat().st_size > 1000
    return target


def people(n: int) -> None:
    Person.objects.bulk_create(
        Person(name=f"p{i}", email=f"p{i}@example.com", ssn=f"{i:03d}-00-0000") for i in range(n)
    )


def rotate_all() -> None:
    lifecycle.rotate("default", "encrypt", actor="test")
    lifecycle.rotate("default", "index", actor="test")
    keyring.invalidate()


def version_counts(browser, label: str) -> dict[str, int]:
    def read():
        row = browser.find_element("css selector", f'tr.kr-column[data-label="{label}"]')
        out = {}
        for span in row.find_elements("css selector", ".kr-version"):
            out[span.get_attribute("data-version")] = int(span.text.split(": ")[1])
        return out

    return reading(read)  # the page refreshes itself while a run is open


def run_status(browser) -> str:
    return reading(lambda: browser.find_element("id", "kr-run-status").text)


def wait_for(predicate, timeout: float = 30.0, every: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_login_and_status_page_shows_the_census(live_server, admin_login, keys):
    people(12)
    Person.objects.create(name="no email")
    browser = admin_login()
    browser.get(f"{live_server.url}/admin/keyrotation/")
    submit_and_wait(browser, browser.find_element("id", "kr-status-link"))
    assert browser.current_url.endswith(STATUS_PATH)
    assert browser.title.startswith("Key rotation status")
    assert version_counts(browser, "testapp.Person.email") == {"1": 12}
    assert version_counts(browser, "testapp.Person.email_bidx") == {"1": 12}
    assert "No re-encryption run yet" in browser.page_source
    assert "p1@example.com" not in browser.page_source
    # The stylesheet is served and applied: the bar of a column fully on v1 is as wide as its box.
    bar = browser.find_element("css selector", 'tr.kr-column[data-label="testapp.Person.email"] .kr-bar')
    seg = bar.find_element("css selector", ".kr-seg")
    assert abs(seg.size["width"] - bar.size["width"]) <= 2
    screenshot(browser, "rotation-status.png")


@pytest.mark.server
def test_live_rotation_advances_pauses_and_resumes(live_server, admin_login, keys):
    people(240)
    rotate_all()
    reports, errors = [], []

    def reencrypt():
        try:
            reports.append(engine.reencrypt(batch_size=8, rate=40, actor="test"))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(exc))
        finally:
            connection.close()

    worker = threading.Thread(target=reencrypt, daemon=True)
    browser = admin_login()
    worker.start()
    try:
        wait_for(ReencryptionRun.objects.exists, what="the run to start")
        browser.get(live_server.url + STATUS_PATH)
        assert 'http-equiv="refresh"' in browser.page_source  # refreshes itself while open
        first = version_counts(browser, "testapp.Person.email").get("2", 0)

        def advanced():
            browser.refresh()
            return version_counts(browser, "testapp.Person.email").get("2", 0) > first

        wait_for(advanced, what="the census to move towards v2")
        assert run_status(browser) == "running"

        submit_and_wait(browser, browser.find_element("id", "kr-pause"))
        assert run_status(browser) == "paused"
        assert "is now paused" in browser.page_source
        time.sleep(1.0)  # the batch in flight at the click commits
        browser.refresh()
        paused_at = version_counts(browser, "testapp.Person.email")
        # Stay clear of the page's own 3 s refresh: a manual refresh that lands on it is aborted.
        time.sleep(1.5)
        browser.refresh()
        assert version_counts(browser, "testapp.Person.email") == paused_at  # nothing moves
        assert paused_at.get("1", 0) > 0
        screenshot(browser, "rotation-paused.png")

        submit_and_wait(browser, browser.find_element("id", "kr-resume"))
        assert run_status(browser) == "running"

        def finished():
            browser.refresh()
            return run_status(browser) == "finished"

        wait_for(finished, timeout=60, what="the run to finish")
        assert version_counts(browser, "testapp.Person.email") == {"2": 240}
        assert 'http-equiv="refresh"' not in browser.page_source  # stops refreshing when done
    finally:
        run = ReencryptionRun.objects.order_by("-id").first()
        if run is not None and run.status in ("running", "paused"):
            engine.abort(run.pk, actor="test-cleanup")
        worker.join(timeout=60)
    assert errors == [] and reports and reports[0].status == "finished"
