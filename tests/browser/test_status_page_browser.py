"""The status page during a real rotation of the example project's people, as a person sees it:
the overall figure rising, the stacked bars moving from v1 to v2, the rate chart, localized
times, the retire gate turning from refused to allowed, and a pause from a phone.

The screenshots in the docs come from this test (``KEYROTATION_UPDATE_SCREENSHOTS=1``).
"""

from __future__ import annotations

import io
import re
import threading
import time

import pytest
from django.core.management import call_command
from django.db import connection

from keyrotation import engine, keyring, lifecycle
from keyrotation.models import ReencryptionRun
from tests.browser.conftest import reading, submit_and_wait
from tests.browser.test_admin_browser import STATUS_PATH, screenshot, version_counts, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.django_db(transaction=True)]

PEOPLE = 600
EMAIL = "people.Person.email"
# en-us DATETIME_FORMAT ("N j, Y, P"): "Dec. 3, 2026, 2:05 p.m.", never an ISO string.
LOCALIZED = re.compile(r"^[A-Z][a-z]+\.? \d{1,2}, \d{4}, (\d{1,2}(:\d\d)? [ap]\.m\.|noon|midnight)$")


def overall_percent(browser) -> float:
    sel = '.kr-overall[data-keyring="default"][data-purpose="encrypt"] .kr-overall-percent'
    return reading(lambda: float(browser.find_element("css selector", sel).text))


def segments(browser, label: str) -> list[tuple[str, float]]:
    """The stacked bar of a column: (class, width in px) per segment, left to right."""

    def read():
        bar = browser.find_element("css selector", f'.kr-column[data-label="{label}"] .kr-bar')
        return [
            (s.get_attribute("class"), s.size["width"]) for s in bar.find_elements("css selector", ".kr-seg")
        ]

    return reading(read)


def gate_line(browser, version: int) -> str:
    sel = f'.kr-key[data-keyring="default"][data-purpose="encrypt"] .kr-gate[data-version="{version}"]'
    return reading(lambda: browser.find_element("css selector", sel).text)


def text_of(browser, element_id: str) -> str:
    return reading(lambda: browser.find_element("id", element_id).text)


def full_page(browser, width: int) -> None:
    """Size the window to the whole page, for a screenshot of all of it."""
    height = reading(lambda: browser.execute_script("return document.documentElement.scrollHeight"))
    browser.set_window_size(width, min(int(height) + 140, 4000))


def theme(browser, name: str) -> None:
    """The admin's own theme switch stores its choice in localStorage."""
    browser.execute_script("localStorage.setItem('theme', arguments[0])", name)
    browser.refresh()
    assert reading(lambda: browser.execute_script("return document.documentElement.dataset.theme")) == name


def test_a_person_watches_the_example_project_rotate(live_server, admin_login, keys, settings):
    # A short cache window: the retire gate may answer as soon as the rows are done.
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 1, "ROTATION_PERIOD": "365d"}
    call_command("seed_people", count=PEOPLE, stdout=io.StringIO())
    lifecycle.rotate("default", "encrypt", actor="ops")
    lifecycle.rotate("default", "index", actor="ops")
    keyring.invalidate()
    reports, errors = [], []

    def reencrypt():
        try:
            reports.append(
                engine.reencrypt(["people.Person"], batch_size=10, rate=25, actor="ops@example.com")
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(exc))
        finally:
            connection.close()

    browser = admin_login()
    browser.get(live_server.url + STATUS_PATH)
    assert overall_percent(browser) == 0.0
    assert gate_line(browser, 1) == f"v1: {PEOPLE * 4:,} rows left — retire refused"
    worker = threading.Thread(target=reencrypt, daemon=True)
    worker.start()
    try:
        wait_for(ReencryptionRun.objects.exists, what="the run to start")

        def moving():
            browser.refresh()
            return 0 < overall_percent(browser) < 100

        wait_for(moving, what="the overall figure to rise above 0")
        first = overall_percent(browser)

        def chart():
            browser.refresh()
            lines = reading(lambda: browser.find_elements("css selector", "#kr-rate-chart svg polyline"))
            return lines and len(reading(lambda: lines[0].get_attribute("points").split())) >= 4

        wait_for(chart, what="the rate chart, four intervals long")
        assert overall_percent(browser) > first  # it rose meanwhile
        assert text_of(browser, "kr-run-status") == "RUNNING"  # text-transform: uppercase
        # The stacked bar holds both versions: active v2 in the success colour first, then v1.
        bar = segments(browser, EMAIL)
        assert [cls.split()[-1] for cls, _ in bar] == ["kr-active", "kr-old-b"][: len(bar)]
        assert len(bar) == 2 and all(width > 0 for _, width in bar)
        counts = version_counts(browser, EMAIL)
        assert set(counts) == {"1", "2"} and sum(counts.values()) == PEOPLE
        title = browser.find_element("css selector", "#kr-rate-chart svg title")
        assert "Rows per second" in title.get_attribute("textContent")
        started = browser.find_element("css selector", "#kr-started time").text
        assert LOCALIZED.match(started), started
        assert re.search(r"\((just now|\d+ \w+ ago)\) by ops@example\.com$", text_of(browser, "kr-started"))
        assert "Rotation due" in reading(lambda: browser.find_element("id", "kr-keys").text)
        assert re.match(r"^v1: [\d,]+ rows left — retire refused$", gate_line(browser, 1))
        assert "about" in text_of(browser, "kr-eta")
        assert (
            browser.find_element("id", "kr-audit-link")
            .get_attribute("href")
            .endswith(f"?run={ReencryptionRun.objects.get().pk}")
        )
        assert "person0000001@example.com" not in browser.page_source
        full_page(browser, 1280)
        screenshot(browser, "rotation-status.png")
        theme(browser, "dark")
        full_page(browser, 1280)
        screenshot(browser, "rotation-status-dark.png")

        # A phone: the pause button is on screen without scrolling sideways, and it works.
        theme(browser, "light")
        browser.set_window_size(390, 844)
        browser.refresh()
        pause = reading(lambda: browser.find_element("id", "kr-pause"))
        width = browser.execute_script("return document.documentElement.clientWidth")
        assert pause.location["x"] + pause.size["width"] <= width
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width + 1
        screenshot(browser, "rotation-status-phone.png")
        submit_and_wait(browser, pause)
        assert text_of(browser, "kr-run-status") == "PAUSED"
        time.sleep(1.0)  # the batch in flight at the click commits
        browser.refresh()
        paused_at = overall_percent(browser)
        time.sleep(1.5)
        browser.refresh()
        assert overall_percent(browser) == paused_at < 100  # nothing moves
        screenshot(browser, "rotation-paused-phone.png")
        theme(browser, "dark")
        browser.set_window_size(1280, 1000)
        full_page(browser, 1280)
        screenshot(browser, "rotation-paused-dark.png")
        theme(browser, "light")

        submit_and_wait(browser, reading(lambda: browser.find_element("id", "kr-resume")))

        def finished():
            browser.refresh()
            return text_of(browser, "kr-run-status") == "DONE"

        wait_for(finished, timeout=90, what="the run to finish")
        assert overall_percent(browser) == 100.0
        assert version_counts(browser, EMAIL) == {"2": PEOPLE}
        assert [cls.split()[-1] for cls, _ in segments(browser, EMAIL)] == ["kr-active"]

        def retirable():
            browser.refresh()
            return gate_line(browser, 1) == "v1: no rows left — can be retired"

        wait_for(retirable, timeout=10, what="the retire gate to allow v1")
        full_page(browser, 1280)
        screenshot(browser, "rotation-done.png")
    finally:
        run = ReencryptionRun.objects.order_by("-id").first()
        if run is not None and run.status in ("running", "paused"):
            engine.abort(run.pk, actor="test-cleanup")
        worker.join(timeout=60)
    assert errors == [] and reports and reports[0].status == "finished"
