"""Test helpers for projects that use keyrotation: prove that no plaintext leaks.

:func:`assert_no_leak` plants nothing itself: you write *canaries* (unique, recognisable
plaintexts) into encrypted fields inside the block, do whatever your code does, and the check
fails if any canary shows up in a place that must never hold plaintext:

* every log record of every logger at DEBUG, Django's SQL log included (each connection's debug
  cursor is forced on, so SQL and its parameters are logged as with ``DEBUG = True``), with the
  formatted traceback of logged exceptions;
* the stdout and stderr of management commands run with :meth:`LeakCheck.call_command`;
* the message and traceback of exceptions raised inside :meth:`LeakCheck.raises` blocks;
* ``repr()`` and ``str()`` of objects passed to :meth:`LeakCheck.check_objects` (models, querysets,
  :class:`~keyrotation.fields.Sealed` values);
* with :meth:`LeakCheck.check_error_reports` (or ``raises(..., error_reports=True)``), what error
  reports would show of an exception: Django's technical 500 page (HTML and text, as with
  ``DEBUG = True``), the HTML e-mail of ``AdminEmailHandler(include_html=True)``, and the local
  variables of every frame of the exception and of every exception chained to it, suppressed or
  not (what an error tracker that records local variables sends);
* on exit, every row of ``KeyRotationAudit``, ``ReencryptionRun`` and ``QuarantinedValue``;
* any other text you pass to :meth:`LeakCheck.check_text` (a rendered admin page, a log entry).

A canary is looked for as written, JSON-escaped, in ``bytes`` repr form, in hex and HTML-escaped,
so that an escaped copy is caught too. A canary may also be ``bytes`` (a key): it is then looked
for in base64 (standard and URL-safe), hex and repr form, and a key of 16 bytes or more by every
12-byte piece of it too (a report may wrap a long ``bytes`` repr over several lines).

Example (pytest)::

    from keyrotation.testing import assert_no_leak

    def test_no_plaintext_anywhere(db):
        canary = "canary-4c1d@example.com"
        with assert_no_leak([canary]) as leak:
            person = Person.objects.create(email=canary)
            assert Person.objects.get(email=canary) == person
            leak.call_command("rotatekeys")
            leak.call_command("reencrypt")
            leak.check_objects(person, Person.objects.all())
            leak.check_text(client.get(f"/admin/people/person/{person.pk}/change/").content.decode())
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.core import mail, management
from django.db import connections

__all__ = ["Leak", "LeakCheck", "LeakFound", "assert_no_leak", "error_reports", "frame_locals"]


class LeakFound(AssertionError):
    """A canary plaintext was found where it must never be."""


@dataclass(frozen=True)
class Leak:
    """Where a canary was found (``source``), and a short excerpt around it."""

    canary: str  # a text canary as given; a bytes canary is named by its length only
    source: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.source}: {self.canary!r} in …{self.excerpt}…"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._seen: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if id(record) not in self._seen:
            self._seen.add(id(record))
            self.records.append(record)


_PIECE = 12  # bytes: a long bytes repr is wrapped by pprint in pieces of at least 16 bytes


def _variants(canary: str | bytes) -> list[str]:
    if isinstance(canary, str):
        raw = canary.encode("utf-8")
        forms = {canary, json.dumps(canary)[1:-1], repr(raw)[2:-1], raw.hex()}
    else:
        raw = bytes(canary)
        forms = {
            base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode(),
            raw.hex(),
            repr(raw)[2:-1],
        }
        if len(raw) >= 16:
            for at in range(len(raw) - _PIECE + 1):
                piece = raw[at : at + _PIECE]
                forms |= {piece.hex(), repr(piece)[2:-1]}
    forms |= {html.escape(f) for f in forms}
    return [f for f in forms if f]


def _name(canary: str | bytes) -> str:
    return canary if isinstance(canary, str) else f"<{len(canary)} secret bytes>"


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken repr is reported, not raised
        return f"<repr failed: {type(exc).__name__}>"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and every exception chained to it: causes and contexts, suppressed or not."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__]


def frame_locals(exc: BaseException) -> str:
    """The local variables of every frame of ``exc`` and of the exceptions chained to it, one
    ``file:function: name = repr`` line each: what an error tracker that records local variables
    sends (such trackers ignore Django's ``sensitive_variables``), and a little more, since the
    contexts that ``raise ... from None`` suppresses are included too."""
    lines = []
    for current in _chain(exc):
        lines.append(f"-- {type(current).__name__}: {_safe_repr(str(current))}")
        tb = current.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            for name, value in tb.tb_frame.f_locals.items():
                lines.append(f"{code.co_filename}:{code.co_name}: {name} = {_safe_repr(value)}")
            tb = tb.tb_next
    return "\n".join(lines)


def error_reports(exc: BaseException, request: Any = None) -> list[tuple[str, str]]:
    """What Django's error reports show of ``exc``, as (name, text) pairs.

    * the technical 500 page, HTML and text, rendered as with ``DEBUG = True`` (Django then shows
      every local variable, ``sensitive_variables`` or not);
    * the e-mail of ``AdminEmailHandler(include_html=True)``: subject, text body and HTML
      attachment, rendered as with ``DEBUG = False`` and sent through the locmem backend;
    * :func:`frame_locals`.
    """
    name = type(exc).__name__
    reports = []
    # Rendering logs every missing template variable at DEBUG, with the whole context: the same
    # frames again, at a cost. Keep it quiet while rendering.
    template_logger = logging.getLogger("django.template")
    disabled, template_logger.disabled = template_logger.disabled, True
    try:
        reports += _render(exc, request, name)
    finally:
        template_logger.disabled = disabled
    reports.append((f"frame locals of {name}", frame_locals(exc)))
    return reports


def _render(exc: BaseException, request: Any, name: str) -> list[tuple[str, str]]:
    from django.test.utils import override_settings
    from django.utils.log import AdminEmailHandler
    from django.views.debug import ExceptionReporter

    reports = []
    with override_settings(DEBUG=True):
        reporter = ExceptionReporter(request, type(exc), exc, exc.__traceback__)
        reports.append((f"technical 500 page (HTML) of {name}", reporter.get_traceback_html()))
        reports.append((f"technical 500 page (text) of {name}", reporter.get_traceback_text()))
    handler = AdminEmailHandler(
        include_html=True, email_backend="django.core.mail.backends.locmem.EmailBackend"
    )
    record = logging.LogRecord(
        "django.request",
        logging.ERROR,
        __file__,
        0,
        "Internal Server Error: %s",
        ("/",),
        (type(exc), exc, exc.__traceback__),
    )
    if request is not None:
        record.request = request
    outbox = getattr(mail, "outbox", None)
    mail.outbox = []
    try:
        with override_settings(DEBUG=False, ADMINS=[("Admin", "admin@example.org")]):
            handler.emit(record)
        for message in mail.outbox:
            reports.append((f"admin e-mail subject of {name}", message.subject))
            reports.append((f"admin e-mail body of {name}", message.body))
            for content, _mimetype in getattr(message, "alternatives", []):
                reports.append((f"admin e-mail HTML of {name}", content))
        if not mail.outbox:
            raise AssertionError("AdminEmailHandler sent no e-mail")
    finally:
        if outbox is None:
            del mail.outbox
        else:
            mail.outbox = outbox
    return reports


def _render_record(record: logging.LogRecord) -> str:
    parts = []
    try:
        parts.append(record.getMessage())
    except Exception:  # a broken template: look at its parts instead
        parts += [str(record.msg), repr(record.args)]
    if record.exc_info and record.exc_info[0] is not None:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    for extra in ("exc_text", "stack_info", "sql", "params"):
        value = getattr(record, extra, None)
        if value:
            parts.append(value if isinstance(value, str) else repr(value))
    return "\n".join(parts)


class LeakCheck:
    """Collects every text that must not hold plaintext and checks it for canaries.

    Use through :func:`assert_no_leak`; the methods below add sources while the block runs.

    Args:
        canaries: plaintexts (``str``) and keys (``bytes``) that must appear nowhere, each at least
            6 characters or bytes long, so that a match is not a coincidence.
        loggers: logger names set to DEBUG while the check runs (the root logger always is).
        audit: scan the keyrotation audit, run and quarantine tables on exit.
        using: database alias for the audit scan.
    """

    DEFAULT_LOGGERS = ("django", "django.db.backends", "keyrotation")

    def __init__(
        self,
        canaries: Iterable[str | bytes],
        *,
        loggers: Iterable[str] = DEFAULT_LOGGERS,
        audit: bool = True,
        using: str = "default",
    ) -> None:
        self.canaries = [c if isinstance(c, (bytes, bytearray)) else str(c) for c in canaries]
        for c in self.canaries:
            if len(c) < 6:
                raise ValueError(f"canary {_name(c)!r} is too short to be unambiguous (6 minimum)")
        self.logger_names = ("", *loggers)
        self.audit = audit
        self.using = using
        self.sources: list[tuple[str, str]] = []  # (where, text)
        self.exceptions: list[BaseException] = []
        self._handler = _Capture()
        self._saved: list[tuple[logging.Logger, int, bool]] = []
        self._debug_cursors: list[tuple[Any, bool]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for name in self.logger_names:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level, logger.disabled))
            logger.setLevel(logging.DEBUG)
            logger.disabled = False
            logger.addHandler(self._handler)
        for conn in connections.all():
            self._debug_cursors.append((conn, conn.force_debug_cursor))
            conn.force_debug_cursor = True

    def stop(self) -> None:
        for logger, level, disabled in self._saved:
            logger.removeHandler(self._handler)
            logger.setLevel(level)
            logger.disabled = disabled
        self._saved.clear()
        for conn, forced in self._debug_cursors:
            conn.force_debug_cursor = forced
        self._debug_cursors.clear()

    # -- sources -----------------------------------------------------------------------------

    @property
    def records(self) -> list[logging.LogRecord]:
        """Log records captured so far."""
        return list(self._handler.records)

    def check_text(self, text: str | bytes, where: str = "text") -> None:
        """Add a text (an admin page, a LogEntry message, an e-mail body...) to the check."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.sources.append((where, text))

    def check_objects(self, *objects: Any) -> None:
        """Add ``repr()`` and ``str()`` of each object (querysets are evaluated by their repr)."""
        for obj in objects:
            self.check_text(repr(obj), f"repr({type(obj).__name__})")
            self.check_text(str(obj), f"str({type(obj).__name__})")

    def check_exception(self, exc: BaseException) -> None:
        """Add an exception's message, repr and full traceback (causes and contexts included)."""
        self.exceptions.append(exc)
        self.check_text(str(exc), f"message of {type(exc).__name__}")
        self.check_text(repr(exc), f"repr of {type(exc).__name__}")
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.check_text(text, f"traceback of {type(exc).__name__}")

    def check_error_reports(self, exc: BaseException, request: Any = None) -> None:
        """Add what error reports would show of ``exc`` (see :func:`error_reports`).

        The frames of the caller that catches ``exc`` are part of its traceback: keep canaries out
        of that caller's local variables (or behind an object whose ``repr`` hides them).
        """
        self.check_exception(exc)
        for where, text in error_reports(exc, request):
            self.check_text(text, where)

    @contextmanager
    def raises(
        self, *types: type[BaseException], error_reports: bool = False
    ) -> Iterator[list[BaseException]]:
        """Expect one of ``types`` (default any ``Exception``) to be raised; check it and swallow it.

        Yields a list that holds the exception afterwards. Fails if nothing is raised.
        ``error_reports``: check what error reports would show of it too
        (:meth:`check_error_reports`).
        """
        caught: list[BaseException] = []
        expected: tuple[type[BaseException], ...] = types or (Exception,)
        try:
            yield caught
        except expected as exc:
            caught.append(exc)
            if error_reports:
                self.check_error_reports(exc)
            else:
                self.check_exception(exc)
        if not caught:
            raise AssertionError(f"expected {', '.join(t.__name__ for t in types) or 'an exception'}")

    def call_command(self, name: str, *args: Any, **options: Any) -> tuple[str, str, int]:
        """Run a management command capturing stdout and stderr; return (stdout, stderr, exit code).

        A ``CommandError`` or ``SystemExit`` is not raised but checked and turned into the exit code.
        """
        out, err = io.StringIO(), io.StringIO()
        code = 0
        try:
            management.call_command(name, *args, stdout=out, stderr=err, **options)
        except management.CommandError as exc:
            self.check_exception(exc)
            code = exc.returncode
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        self.check_text(out.getvalue(), f"stdout of {name}")
        self.check_text(err.getvalue(), f"stderr of {name}")
        return out.getvalue(), err.getvalue(), code

    def _audit_texts(self) -> Iterator[tuple[str, str]]:
        from .models import KeyRotationAudit, QuarantinedValue, ReencryptionRun

        for model in (KeyRotationAudit, ReencryptionRun, QuarantinedValue):
            for row in model.objects.using(self.using).values():
                yield f"{model.__name__} row {row.get('id')}", json.dumps(row, default=str)

    # -- the check ---------------------------------------------------------------------------

    def leaks(self) -> list[Leak]:
        """Every place a canary was found so far (the audit tables included if enabled)."""
        texts = list(self.sources)
        texts += [(f"log record {r.name}:{r.levelname}", _render_record(r)) for r in self._handler.records]
        if self.audit:
            texts += list(self._audit_texts())
        found = []
        for canary in self.canaries:
            variants = _variants(canary)
            for where, text in texts:  # the first form found in each text is enough
                for variant in variants:
                    at = text.find(variant)
                    if at >= 0:
                        excerpt = text[max(0, at - 40) : at + len(variant) + 40].replace("\n", " ")
                        found.append(Leak(_name(canary), where, excerpt))
                        break
        return found

    def assert_clean(self) -> None:
        """Raise :class:`LeakFound` listing every leak (at most 20)."""
        leaks = self.leaks()
        if leaks:
            lines = "\n".join(f"  {leak}" for leak in leaks[:20])
            raise LeakFound(f"{len(leaks)} leak(s):\n{lines}")


@contextmanager
def assert_no_leak(canaries: Iterable[str | bytes], **kwargs: Any) -> Iterator[LeakCheck]:
    """Capture logs (DEBUG, SQL included), command output, exceptions and reprs while the block
    runs, then fail with :class:`LeakFound` if a canary appears in any of them or in the audit tables.

    Args:
        canaries: the plaintexts that must never appear.
        **kwargs: passed to :class:`LeakCheck` (``loggers``, ``audit``, ``using``).

    Raises:
        LeakFound: naming each source and canary found.
    """
    check = LeakCheck(canaries, **kwargs)
    check.start()
    try:
        yield check
    finally:
        check.stop()
    check.assert_clean()
