"""The admin in a real browser: the status page, and a live rotation paused and resumed from it."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from keyrotation import keyring, lifecycle
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
    """The counts beside a column's stacked bar: ``{"1": rows, "2": rows}``."""

    def read():
        row = browser.find_element("css selector", f'.kr-column[data-label="{label}"]')
        out = {}
        for span in row.find_elements("css selector", ".kr-version"):
            out[span.get_attribute("data-version")] = int(
                span.find_element("tag name", "b").text.replace(",", "")
            )
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
    bar = browser.find_element("css selector", '.kr-column[data-label="testapp.Person.email"] .kr-bar')
    seg = bar.find_element("css selector", ".kr-seg")
    assert abs(seg.size["width"] - bar.size["width"]) <= 2
