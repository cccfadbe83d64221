"""The status page's **Start re-encryption** button in Chromium, with a real Celery worker process
on a throwaway Redis (the harness of ``tests/test_contrib_celery.py``): the click queues the job,
the worker opens the run, and the page shows its progress bar move and reach 100 %.

PostgreSQL only: the worker shares the test database with the live server.
"""

from __future__ import annotations

import re

import pytest
from django.db import connection

from keyrotation.models import ReencryptionRun
from tests.browser.conftest import reading, submit_and_wait
from tests.browser.test_admin_browser import STATUS_PATH, people, rotate_all, version_counts, wait_for
from tests.test_contrib_celery import broker, celery_app, shared_db, start_workers  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.browser,
    pytest.mark.server,
    pytest.mark.celery,
    pytest.mark.django_db(transaction=True),
]

ROWS = 3000
RATE = "600"  # rows per second: about five seconds of work, a few refreshes of the page


def bar_percent(browser) -> float:
    return reading(lambda: float(browser.find_element("id", "kr-run-bar").get_attribute("aria-valuenow")))


def test_start_in_the_browser_runs_on_a_celery_worker(
    live_server, admin_login, keys, settings, redis_url, request
):
    if connection.vendor == "sqlite":
        pytest.skip("the worker process must share the database with the live server: a server database")
    # The harness of tests.test_contrib_celery; redis_url (session) first puts the broker in the
    # environment that the shared database hands to the worker processes.
    spawn = request.getfixturevalue("start_workers")
    settings.KEYROTATION = {**settings.KEYROTATION, "TASK_BACKEND": "celery"}
    people(ROWS)
    rotate_all()
    spawn(1)

    browser = admin_login()
    browser.get(live_server.url + STATUS_PATH)
    assert "No re-encryption run yet" not in browser.page_source
    workers = browser.find_element("id", "id_workers")
    assert workers.get_attribute("value") == "1"
    browser.find_element("id", "id_rate").send_keys(RATE)
    submit_and_wait(browser, browser.find_element("id", "kr-start-button"))

    message = reading(lambda: browser.find_element("css selector", ".messagelist .success").text)
    assert re.fullmatch(r"Queued 1 re-encryption job on Celery \(ids [0-9a-f-]{36}\)\.", message), message

    seen: list[float] = []

    def moving():
        browser.refresh()
        if not browser.find_elements("id", "kr-run-bar"):
            return False
        seen.append(bar_percent(browser))
        return 0 < seen[-1] < 100

    wait_for(moving, timeout=60, every=0.3, what="the progress bar to move")

    def done():
        browser.refresh()
        return reading(lambda: browser.find_element("id", "kr-run-status").text) == "DONE"

    wait_for(done, timeout=90, what="the run to finish")
    assert bar_percent(browser) == 100.0
    assert version_counts(browser, "testapp.Person.email") == {"2": ROWS}
    [run] = ReencryptionRun.objects.all()
    assert (run.status, run.actor) == ("finished", "admin:ops")
    # Nothing left to do: no form and no hint.
    assert not browser.find_elements("id", "kr-start-form") and not browser.find_elements(
        "id", "kr-start-hint"
    )
