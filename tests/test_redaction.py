"""``keyrotation.redaction``: linear time on any input, a cap on what is scanned, and error
e-mails (``AdminEmailHandler``) without the personal data of the request."""

from __future__ import annotations

import base64
import logging
import os
import sys
import time
from logging.config import dictConfig

import pytest
from django.test import Client
from django.views.debug import ExceptionReporter

from keyrotation import conf
from keyrotation.redaction import MAX_CHARS, RedactingExceptionReporterFilter, RedactingFilter, Redactor

# -- linear time ---------------------------------------------------------------------------------

N = 100_000
BUDGET = 3.0  # seconds for 4 * N characters; linear runs take ~0.05-0.4 s here, quadratic ones minutes


def _base64(n: int) -> str:
    return base64.b64encode(os.urandom(n * 3 // 4 + 3)).decode()[:n]


def _repeat(unit: str):
    return lambda n: (unit * (n // len(unit) + 1))[:n]


INPUTS = {
    "base64": _base64,
    "one long word": _repeat("a"),
    "at signs": _repeat("a@"),
    "local parts at their limit, domains without a dot": _repeat("x" * 64 + "@" + "y" * 63 + " "),
    "one domain of many labels": lambda n: "a@" + _repeat("b.")(n - 2),
    "digits": _repeat("1"),
    "digit groups": _repeat("1234-"),
    "card-like groups": _repeat("1234 "),
}


def _best_time(redact: Redactor, text: str) -> float:
    """CPU seconds (other processes on a shared machine do not count), best of three; stops
    early once over the budget."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        redact(text)
        best = min(best, time.process_time() - started)
        if best > BUDGET:
            break
    return best


@pytest.mark.parametrize("kind", list(INPUTS))
def test_default_patterns_take_linear_time(kind):
    """100 KB of base64 took 18 s inside a logging call: each start position scanned to the end."""
    redact = Redactor(conf.DEFAULT_REDACT_PATTERNS, max_chars=None)  # no cap: the patterns alone
    small = _best_time(redact, INPUTS[kind](N))
    assert small < BUDGET, f"{kind}: {small:.2f}s for {N} characters"
    large = _best_time(redact, INPUTS[kind](4 * N))
    assert large < BUDGET, f"{kind}: {large:.2f}s for {4 * N} characters"
    # Linear: about 4x. The floor keeps a few milliseconds of noise from looking like a trend.
    assert large / max(small, 0.01) < 8, f"{kind}: {small:.4f}s -> {large:.4f}s for 4x the input"


def test_a_megabyte_of_base64_in_a_log_call_is_cut_and_marked():
    blob = _base64(1_000_000)
    record = logging.LogRecord("app", logging.ERROR, __file__, 1, "upload %s", (blob,), None)
    started = time.process_time()
    assert RedactingFilter().filter(record) is True
    assert time.process_time() - started < BUDGET
    message = record.getMessage()
    assert len(message) < MAX_CHARS + 200
    marker = f"[{1_000_000 - MAX_CHARS} more characters not logged: over the redaction limit of {MAX_CHARS}]"
    assert message.endswith(marker)


def test_a_match_across_the_cut_is_redacted_whole():
    text = "x " * 30 + "john.doe@example.com" + " tail" * 100
    out = Redactor(conf.DEFAULT_REDACT_PATTERNS, max_chars=70)(text)
    assert "john" not in out and "example" not in out
    assert out.startswith("x " * 30 + "[REDACTED][") and "not logged" in out


def test_unbounded_patterns_are_cut_at_the_limit_too():
    """A quadratic pattern of the application's own costs at most the cap squared."""
    redact = Redactor([r"[a-z]+@[a-z]+\.[a-z]+"], max_chars=10_000)
    started = time.process_time()
    out = redact("a" * 200_000)  # scanned whole: about a minute
    assert time.process_time() - started < BUDGET
    assert out.startswith("a" * 10_000 + "[190000 more characters not logged")


# -- error e-mails ----------------------------------------------------------------------------------

PII = {
    "posted e-mail": "john.doe@example.com",
    "posted SSN": "123-45-6789",
    "query string": "query.person",
    "cookie": "cookie.person",
    "referer": "referer.person",
    "header": "header.person",
}


# The LOGGING of docs/security.md, without the console. Configuring the "django" logger matters:
# otherwise Django's default mail_admins handler, which has no filter, stays attached to it.
DOCUMENTED_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact": {"()": "keyrotation.redaction.RedactingFilter"},
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
    },
    "handlers": {
        "mail_admins": {
            "class": "django.utils.log.AdminEmailHandler",
            "include_html": True,
            "filters": ["require_debug_false", "redact"],
        },
    },
    "loggers": {"django": {"handlers": ["mail_admins"], "level": "INFO", "propagate": False}},
}


@pytest.fixture
def mail_admins_with_redaction(settings):
    settings.ROOT_URLCONF = "tests.redaction_urls"
    settings.ADMINS = [("Ops", "ops@example.org")]
    loggers = [logging.getLogger(name) for name in ("django", "django.request")]
    saved = [(lg.level, lg.handlers[:], lg.propagate) for lg in loggers]
    dictConfig(DOCUMENTED_LOGGING)
    yield
    for lg, (level, handlers, propagate) in zip(loggers, saved, strict=True):
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate = propagate


@pytest.mark.django_db
@pytest.mark.parametrize("view", ["read", "unread"])
def test_error_mail_carries_no_personal_data_and_the_500_page_still_renders(
    mail_admins_with_redaction, mailoutbox, view
):
    client = Client(raise_request_exception=False)
    client.cookies["last_login"] = "cookie.person@example.com"
    response = client.post(
        f"/{view}/?ref=query.person%40example.com",
        {"email": PII["posted e-mail"], "ssn": PII["posted SSN"]},
        HTTP_REFERER="https://shop.example/?u=referer.person%40example.com",
        HTTP_X_CONTACT="header.person@example.com",
    )
    # The view's request was not touched: the 500 page still reads what was posted (and, for
    # the view that never parsed the form, the body stream was not consumed by the filter).
    assert response.status_code == 500
    assert response.content == b"server error for john.doe@example.com"
    (mail,) = mailoutbox
    html = mail.alternatives[0][0]
    for part in (mail.subject, mail.body, html):
        leaked = [what for what, value in PII.items() if value in part]
        assert not leaked, leaked
    assert "[REDACTED]" in mail.body and f"/{view}/" in mail.body  # still a useful report


def _raise():
    raise ValueError("boom")


def test_reporter_filter_redacts_post_cookies_and_meta_with_debug_on(settings, rf):
    settings.DEBUG = True  # Django's own filter cleanses nothing then
    domain = "@example.com"  # the page shows this function's source: no literal address in it
    request = rf.post("/x/", {"email": PII["posted e-mail"]}, HTTP_X_CONTACT=PII["header"] + domain)
    request.COOKIES["last_login"] = PII["cookie"] + domain
    request.exception_reporter_filter = RedactingExceptionReporterFilter()
    try:
        _raise()
    except ValueError:
        html = ExceptionReporter(request, *sys.exc_info()).get_traceback_html()
    for what in ("posted e-mail", "cookie", "header"):
        assert PII[what] not in html, what
    assert "[REDACTED]" in html
    assert request.POST["email"] == PII["posted e-mail"]  # the request itself is unchanged
