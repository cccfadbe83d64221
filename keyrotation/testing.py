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
* on exit, every row of ``KeyRotationAudit``, ``ReencryptionRun`` and ``QuarantinedValue``;
* any other text you pass to :meth:`LeakCheck.check_text` (a rendered admin page, a log entry).

A canary is looked for as written, JSON-escaped, in ``bytes`` repr form and in hex, so that an
escaped copy is caught too.

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

import io
import json
import logging
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.core import management
from django.db import connections

__all__ = ["Leak", "LeakCheck", "LeakFound", "assert_no_leak"]


class LeakFound(AssertionError):
    """A canary plaintext was found where it must never be."""


@dataclass(frozen=True)
class Leak:
    """Where a canary was found (``source``), and a short excerpt around it."""

    canary: str
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


def _variants(canary: str) -> list[str]:
    raw = canary.encode("utf-8")
    forms = {canary, json.dumps(canary)[1:-1], repr(raw)[2:-1], raw.hex()}
    return [f for f in forms if f]


def _render(record: logging.LogRecord) -> str:
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
        canaries: plaintexts that must appear nowhere (each at least 6 characters, so that a match
            is not a coincidence).
        loggers: logger names set to DEBUG while the check runs (the root logger always is).
        audit: scan the keyrotation audit, run and quarantine tables on exit.
        using: database alias for the audit scan.
    """

    DEFAULT_LOGGERS = ("django", "django.db.backends", "keyrotation")

    def __init__(
        self,
        canaries: Iterable[str],
        *,
        loggers: Iterable[str] = DEFAULT_LOGGERS,
        audit: bool = True,
        using: str = "default",
    ) -> None:
        self.canaries = [str(c) for c in canaries]
        for c in self.canaries:
            if len(c) < 6:
                raise ValueError(f"canary {c!r} is too short to be unambiguous (6 characters minimum)")
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

    @contextmanager
    def raises(self, *types: type[BaseException]) -> Iterator[list[BaseException]]:
        """Expect one of ``types`` (default any ``Exception``) to be raised; check it and swallow it.

        Yields a list that holds the exception afterwards. Fails if nothing is raised.
        """
        caught: list[BaseException] = []
        expected: tuple[type[BaseException], ...] = types or (Exception,)
        try:
            yield caught
        except expected as exc:
            caught.append(exc)
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
        texts += [(f"log record {r.name}:{r.levelname}", _render(r)) for r in self._handler.records]
        if self.audit:
            texts += list(self._audit_texts())
        found = []
        for canary in self.canaries:
            for variant in _variants(canary):
                for where, text in texts:
                    at = text.find(variant)
                    if at >= 0:
                        excerpt = text[max(0, at - 40) : at + len(variant) + 40].replace("\n", " ")
                        found.append(Leak(canary, where, excerpt))
        return found

    def assert_clean(self) -> None:
        """Raise :class:`LeakFound` listing every leak (at most 20)."""
        leaks = self.leaks()
        if leaks:
            lines = "\n".join(f"  {leak}" for leak in leaks[:20])
            raise LeakFound(f"{len(leaks)} plaintext leak(s):\n{lines}")


@contextmanager
def assert_no_leak(canaries: Iterable[str], **kwargs: Any) -> Iterator[LeakCheck]:
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
