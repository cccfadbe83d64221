"""A ``logging.Filter`` that redacts personal data from every log record it sees.

keyrotation itself never logs a plaintext (its own test suite proves it, see
:mod:`keyrotation.testing`). This filter is the second line of defence for everything else that
logs in the same process: application code, third-party libraries, Django's SQL log at DEBUG,
Django's error e-mails. It replaces every match of ``KEYROTATION["REDACT_PATTERNS"]`` (e-mail
addresses, national ids, card numbers and long digit runs by default, see
:func:`keyrotation.conf.redact_patterns`) in:

* the message template and its arguments (strings, and the ``str()`` of any other argument:
  a list of SQL parameters, a dict, an exception);
* the formatted traceback of ``exc_info`` and the ``stack_info``;
* Django's ``sql`` and ``params`` extras on ``django.db.backends`` records;
* the ``request`` extra of ``django.request`` and ``django.security`` records, which
  ``AdminEmailHandler`` renders into the error e-mail: the record gets a scrubbed copy (GET, POST,
  FILES names, cookies, META, path, user), and the request the view is using is left untouched.

Attach it to *handlers* (a filter on a logger does not see records propagated from its
children)::

    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "keyrotation.redaction.RedactingFilter"}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "filters": ["redact"]},
        },
        "root": {"handlers": ["console"], "level": "INFO"},
    }

Its cost is linear in the length of a text, and a text longer than ``max_chars`` (default
:data:`MAX_CHARS`) is cut there with a marker saying how much was left out: the rest is never
scanned, so it is never logged. The filter never drops a record (it always returns ``True``) and
never raises: a record it cannot render is replaced by a fixed text rather than passed on
unredacted.
"""

from __future__ import annotations

import io
import logging
import re
import traceback
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

from django.http import HttpRequest, QueryDict
from django.http.cookie import parse_cookie
from django.utils.datastructures import MultiValueDict
from django.views.debug import SafeExceptionReporterFilter

from . import conf

REPLACEMENT = "[REDACTED]"
MAX_CHARS = 65_536  # per text (message, argument, traceback, SQL, request value)
# Scanned past the cut so that a match straddling it is replaced whole, not left half visible.
_OVERLAP = 1_024


class Redactor:
    """Replaces every match of a set of regular expressions in a text.

    Args:
        patterns: regular expressions (strings or compiled), joined into one alternation.
        replacement: what each match becomes.
        max_chars: texts longer than this are cut after it, with a marker; ``None`` scans all.
    """

    def __init__(
        self, patterns: Iterable[str], replacement: str = REPLACEMENT, max_chars: int | None = MAX_CHARS
    ) -> None:
        sources = [getattr(p, "pattern", p) for p in patterns]
        self.pattern = re.compile("|".join(f"(?:{s})" for s in sources)) if sources else None
        self.replacement = replacement
        self.max_chars = max_chars

    def __call__(self, text: str) -> str:
        if self.pattern is None:
            return text
        if self.max_chars is None or len(text) <= self.max_chars:
            return self.pattern.sub(self.replacement, text)
        return self._cut(text, self.max_chars)

    def _cut(self, text: str, cap: int) -> str:
        assert self.pattern is not None
        window = text[: cap + _OVERLAP]
        out, pos = [], 0
        for match in self.pattern.finditer(window):
            if match.start() >= cap:
                break
            out += [window[pos : match.start()], self.replacement]
            pos = match.end()
        if pos < cap:
            out.append(window[pos:cap])
            pos = cap
        out.append(f"[{len(text) - pos} more characters not logged: over the redaction limit of {cap}]")
        return "".join(out)

    def hits(self, text: str) -> bool:
        """True if ``text`` has a match, or is too long to be passed on whole."""
        if self.pattern is None:
            return False
        if self.max_chars is not None and len(text) > self.max_chars:
            return True
        return self.pattern.search(text) is not None

    def scrub(self, value: str) -> str:
        """Redact ``value`` as it is, and as it reads once percent-decoded (URLs, query strings,
        form bodies: ``jane%40example.com``)."""
        out = self(value)
        if "%" in out or "+" in out:
            decoded = unquote_plus(out)
            if decoded != out and self.hits(decoded):
                return self(decoded)
        return out


class RedactingFilter(logging.Filter):
    """Redact configured patterns from the message, arguments and traceback of each record.

    Args:
        patterns: regular expressions; default ``KEYROTATION["REDACT_PATTERNS"]``, read when the
            first record arrives (so the filter can be built by ``LOGGING`` before settings are
            fully loaded).
        replacement: the text put in place of each match (default ``"[REDACTED]"``).
        name: as for :class:`logging.Filter`.
        max_chars: each text longer than this is cut after it, with a marker saying how many
            characters were left out (default :data:`MAX_CHARS`); ``None`` scans everything.

    Example::

        >>> f = RedactingFilter(patterns=[r"\\d{3}-\\d{2}-\\d{4}"])
        >>> r = logging.LogRecord("app", logging.INFO, __file__, 1, "ssn %s", ("123-45-6789",), None)
        >>> f.filter(r), r.getMessage()
        (True, 'ssn [REDACTED]')
    """

    def __init__(
        self,
        patterns: Iterable[str] | None = None,
        replacement: str = REPLACEMENT,
        name: str = "",
        max_chars: int | None = MAX_CHARS,
    ) -> None:
        super().__init__(name)
        self._patterns = None if patterns is None else tuple(patterns)
        self._replacement = replacement
        self._max_chars = max_chars
        self._redactor: Redactor | None = None

    @property
    def redactor(self) -> Redactor:
        if self._redactor is None:
            patterns = self._patterns if self._patterns is not None else conf.redact_patterns()
            self._redactor = Redactor(patterns, self._replacement, self._max_chars)
        return self._redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if not super().filter(record):
            return False  # pragma: no cover - a named filter for another logger: not ours to touch
        try:
            self._redact(record)
        except Exception:  # never let a record through unredacted, never break logging
            record.msg, record.args = "[log record withheld: redaction failed]", ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            if "request" in record.__dict__:
                record.request = None
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        redact = self.redactor
        args = record.args
        if args:
            values = args.values() if isinstance(args, dict) else args
            if all(isinstance(a, str) or not redact.hits(str(a)) for a in values):
                # Keep the template and the argument types (for %d and friends, and for tools that
                # group records by template); only string arguments change.
                record.msg = redact(record.msg) if isinstance(record.msg, str) else record.msg
                if isinstance(args, dict):
                    record.args = {k: redact(v) if isinstance(v, str) else v for k, v in args.items()}
                else:
                    record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
            else:
                # A non-string argument renders personal data (a list of SQL parameters, a
                # dict...): render the whole message and redact it.
                record.msg, record.args = redact(record.getMessage()), ()
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        elif record.msg is not None:
            text = str(record.msg)
            if redact.hits(text):
                record.msg = redact(text)
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text)
            # The formatter renders exc_text when set; dropping exc_info keeps a handler that
            # re-formats the exception (e.g. for e-mail) from putting the original text back.
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        sql = getattr(record, "sql", None)
        if isinstance(sql, str):
            record.sql = redact(sql)
        params = getattr(record, "params", None)
        if isinstance(params, (list, tuple)):
            record.params = type(params)(redact(p) if isinstance(p, str) else p for p in params)
        elif isinstance(params, dict):
            record.params = {k: redact(v) if isinstance(v, str) else v for k, v in params.items()}
        if "request" in record.__dict__:
            try:
                record.request = scrubbed_request(record.request, redact)
            except Exception:  # noqa: BLE001 - a request that cannot be scrubbed is not passed on
                record.request = None


def scrubbed_request(request: Any, redact: Redactor) -> Any:
    """A copy of ``request`` fit for an error report: every value redacted, the body withheld.

    The copy is an instance of the request's own class, so Django's ``ExceptionReporter`` (and
    ``AdminEmailHandler``) render it as usual. Nothing of ``request`` is changed or read beyond
    what it already holds: POST and FILES appear only if the application parsed them (the copy
    never reads the body stream, which the view may still need). Anything that is neither an
    ``HttpRequest`` nor wraps one as ``_request`` (Django REST framework) is returned as is.
    """
    if not isinstance(request, HttpRequest):
        inner = getattr(request, "_request", None)
        if not isinstance(inner, HttpRequest):
            return request
        request = inner
    held = request.__dict__  # what the request already computed; reading it changes nothing
    meta = {k: _scrub_value(v, redact) for k, v in held.get("META", {}).items()}
    if "GET" in held:
        get = held["GET"]
    else:
        get = QueryDict(held.get("META", {}).get("QUERY_STRING", ""), encoding=request.encoding)
    copy = object.__new__(type(request))
    copy.__dict__.update(held)
    for derived in ("headers", "_cached_user"):  # computed from values scrubbed below
        copy.__dict__.pop(derived, None)
    copy.GET = _scrub_multivalue(get, redact, QueryDict(mutable=True, encoding=request.encoding))
    if "QUERY_STRING" in meta:
        meta["QUERY_STRING"] = copy.GET.urlencode()
    copy.META = meta
    if "COOKIES" in held:
        cookies = held["COOKIES"]
    else:
        cookies = parse_cookie(held.get("META", {}).get("HTTP_COOKIE", ""))
    copy.COOKIES = {k: _scrub_value(v, redact) for k, v in cookies.items()}
    empty_post = QueryDict(mutable=True, encoding=request.encoding)
    copy._post = _scrub_multivalue(held["_post"], redact, empty_post) if "_post" in held else empty_post
    copy._files = (
        _scrub_multivalue(held["_files"], redact, MultiValueDict()) if "_files" in held else MultiValueDict()
    )
    copy._body, copy._stream, copy._read_started = b"", io.BytesIO(), True
    for attr in ("path", "path_info"):
        if isinstance(held.get(attr), str):
            setattr(copy, attr, redact.scrub(held[attr]))
    if "user" in held:
        copy.user = _ScrubbedUser(held["user"], redact)
    return copy


def _scrub_value(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact.scrub(value)
    if isinstance(value, (bytes, bytearray)):
        return redact.scrub(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = str(value)
    return redact.scrub(text) if redact.hits(text) else value


def _scrub_multivalue(source: Any, redact: Redactor, into: Any) -> Any:
    """``into`` (an empty QueryDict or MultiValueDict) filled with the scrubbed lists of ``source``."""
    for key, values in source.lists():
        into.setlist(redact.scrub(str(key)), [_scrub_value(v, redact) for v in values])
    return into


class _ScrubbedUser:
    """Stands in for ``request.user`` in a report: its ``str()`` is redacted (a username is
    often an e-mail address), and it offers nothing else but the two flags reports show."""

    def __init__(self, user: Any, redact: Redactor) -> None:
        self._user, self._redact = user, redact

    def __str__(self) -> str:
        return self._redact(str(self._user))

    @property
    def is_authenticated(self) -> bool:
        return bool(self._user.is_authenticated)

    @property
    def is_anonymous(self) -> bool:
        return bool(self._user.is_anonymous)


class RedactingExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's exception reporter filter, plus ``KEYROTATION["REDACT_PATTERNS"]`` on the POST
    parameters, cookies and META values of every report, with ``DEBUG`` on or off.

    Use it with ``DEFAULT_EXCEPTION_REPORTER_FILTER =
    "keyrotation.redaction.RedactingExceptionReporterFilter"`` for the reports Django builds
    without a log record: the technical 500 page and any code calling ``ExceptionReporter``
    itself. A reporter filter is not asked about the query string (``request.GET``, the URL)
    or the user: for error e-mails, :class:`RedactingFilter` on the ``mail_admins`` handler
    covers those too. Django's own cleansing (``sensitive_post_parameters``, settings whose
    name looks secret) still applies first.
    """

    def _redactor(self) -> Redactor:
        return Redactor(conf.redact_patterns())

    def get_post_parameters(self, request):
        post = super().get_post_parameters(request)
        if request is None or not hasattr(post, "lists"):
            return post
        return _scrub_multivalue(post, self._redactor(), QueryDict(mutable=True))

    def get_safe_request_meta(self, request):
        redact = self._redactor()
        return {k: _scrub_value(v, redact) for k, v in super().get_safe_request_meta(request).items()}

    def get_safe_cookies(self, request):
        redact = self._redactor()
        return {k: _scrub_value(v, redact) for k, v in super().get_safe_cookies(request).items()}
