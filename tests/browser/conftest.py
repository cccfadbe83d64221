"""Headless Chromium through Selenium, against pytest-django's live server.

``make test`` installs Debian's ``chromium`` and ``chromium-driver`` when they are missing
(``scripts/runtests.py``). Browser tests skip, saying why, only when those binaries are absent;
a browser that is present but fails to start is an error.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import pytest

# Flags for a quiet, hermetic browser: no sandbox (root in containers), no GPU, no /dev/shm (small in
# containers), no background or component-update traffic, no first-run UI, a fresh profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1000",
)


def _binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def pytest_collection_modifyitems(config, items):
    chromium, driver = _binaries()
    if chromium and driver:
        return
    missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p)
    skip = pytest.mark.skip(
        reason=f"{missing} not installed: `apt-get install chromium chromium-driver` (make test does it)"
    )
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def is_replaced_page(exc: BaseException) -> bool:
    """True for the ways Chromium says an element's page has been replaced (a navigation or the
    status page's own refresh): Selenium's stale-element error, or an inspector error that says the
    node no longer belongs to the document."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    if isinstance(exc, StaleElementReferenceException):
        return True
    return isinstance(exc, WebDriverException) and "does not belong to the document" in str(exc)


def reading(fn, attempts: int = 10):
    """Call ``fn`` (which reads the current page), again if the page was replaced meanwhile."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_replaced_page(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def submit_and_wait(browser, element, timeout: float = 15) -> None:
    """Click ``element`` and return once the page it was on has been replaced."""
    from selenium.webdriver.support.wait import WebDriverWait

    element.click()

    def replaced(_driver) -> bool:
        try:
            element.is_enabled()
        except Exception as exc:
            if is_replaced_page(exc):
                return True
            raise
        return False

    WebDriverWait(browser, timeout).until(replaced)


@pytest.fixture
def browser():
    """A fresh headless Chromium (new profile per test)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _binaries()
    profile = tempfile.mkdtemp(prefix="keyrotation-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # Explicit binary and driver paths: Selenium Manager has nothing to look up.
    drv = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    drv.set_page_load_timeout(30)
    drv.implicitly_wait(5)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def admin_login(live_server, browser, django_user_model):
    """Log ``browser`` in to the admin as a staff superuser through the login form."""

    def login(username="ops", password="correct horse"):  # noqa: S107 - test account
        django_user_model.objects.create_superuser(username, f"{username}@example.com", password)
        browser.get(f"{live_server.url}/admin/login/")
        browser.find_element("name", "username").send_keys(username)
        browser.find_element("name", "password").send_keys(password)
        submit_and_wait(browser, browser.find_element("css selector", "input[type=submit]"))
        assert browser.find_element("id", "user-tools")
        return browser

    return login
