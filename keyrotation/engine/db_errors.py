"""What the engine says when the database refuses its work: where, and the driver's error code,
never the database's message.

A database error's message is the server's text, and servers quote values in it. MySQL/MariaDB
error 1366 (``Incorrect string value: '\\xF0\\x9F…' for column …``) quotes the bytes it refused; a
PostgreSQL CHECK or NOT NULL violation's DETAIL quotes the whole row (``Failing row contains
(…)``); a trigger raises whatever text its author wrote, values included. In a batch that adopts
a legacy column those values are plaintexts. So a database error that leaves the engine's work
(a batch's claim and write, the final sweep, a census, a chunk claim, the run's bookkeeping)
leaves it as an :class:`~keyrotation.exceptions.EngineDatabaseError` built from the typed
:class:`Step` the engine was on, the exception's class and the driver's error code
(:func:`error_code`), and nothing else of it: not its message, not its DETAIL, not the statement
or its parameters. The reads outside a run (a plan, ``dry_run``, ``pending``, ``verify``, the
status census) do the same through :func:`reading`, so that a lost database is one line from the
commands, never a traceback.

The original exception is not chained (the new one is raised outside the ``except`` block, so
it is not even a suppressed ``__context__``), and the frames it passed through are cleared
(:func:`keyrotation.tracebacks.forget`): a dialect's frame holds the batch's parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import Error

from .. import databases
from ..exceptions import EngineDatabaseError
from ..tracebacks import forget
from .plan import ModelPlan, registered_databases

T = TypeVar("T")

_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
_SQLITE_NAME = re.compile(r"SQLITE_[A-Z_]+")


@dataclass(frozen=True)
class Step:
    """What the engine is doing, on which databases: all a database error is reported with.

    ``after`` / ``upto``: the primary-key range of a batch (``after < pk <= upto``; None: open).
    ``str()`` is the step as retry log lines name it (``run #3: batch of app.Model``).
    """

    action: str
    databases: tuple[str, ...]
    run: int | None = None
    plan: ModelPlan | None = None
    after: Any = None
    upto: Any = None

    def __str__(self) -> str:
        prefix = f"run #{self.run}: " if self.run is not None else ""
        return prefix + self.action + (f" of {self.plan.label}" if self.plan else "")

    def error(self, exc: BaseException) -> EngineDatabaseError:
        """The safe error that stands for ``exc``, a database error met on this step."""
        plan = self.plan
        return EngineDatabaseError(
            step=self.action,
            databases=self.databases,
            error_class=type(exc).__name__,
            code=error_code(exc),
            run=self.run,
            model=plan.label if plan else None,
            fields=tuple(c.label.rsplit(".", 1)[1] for c in [*plan.enc, *plan.idx]) if plan else (),
            pks=self._pks() if plan else None,
            versions=_versions(plan) if plan else (),
        )

    def _pks(self) -> str:
        bounds = [f"pk > {self.after!r}"] if self.after is not None else []
        bounds += [f"pk <= {self.upto!r}"] if self.upto is not None else []
        return " and ".join(bounds) if bounds else "every pk"


def _versions(plan: ModelPlan) -> tuple[str, ...]:
    """``("default/encrypt v2", "default/index v2")``: the key versions the rows are moved to."""
    out = {f"{c.keyring}/encrypt v{c.target}" for c in plan.enc}
    out |= {f"{c.keyring}/index v{c.target}" for c in plan.idx}
    return tuple(sorted(out))


def error_code(exc: BaseException) -> str | None:
    """The driver's code for a database error, or None where the driver gives none.

    ``SQLSTATE 23514`` (psycopg's ``sqlstate``, psycopg2's ``pgcode``), ``errno 1366``
    (MySQL/MariaDB: the first argument, which Django copies from the driver's exception),
    ``SQLITE_CONSTRAINT_TRIGGER`` (Python 3.11+). Django raises its own exception class with the
    driver's one as ``__cause__``: both are looked at. A code is returned only in its own shape
    (five characters, a number, an ``SQLITE_`` name), so that nothing else of the error can pass.
    """
    for e in (exc, exc.__cause__):
        if e is None:
            continue
        sqlstate = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(sqlstate, str) and _SQLSTATE.fullmatch(sqlstate):
            return f"SQLSTATE {sqlstate}"
        name = getattr(e, "sqlite_errorname", None)
        if isinstance(name, str) and _SQLITE_NAME.fullmatch(name):
            return name
        if e.args and type(e.args[0]) is int:
            return f"errno {e.args[0]}"
    return None


def safely(step: Step, fn: Callable[[], T]) -> T:
    """``fn()``; a database error it raises (Django's ``Error``: ``DatabaseError``,
    ``InterfaceError`` and their subclasses) is raised as :meth:`Step.error` instead.

    Other exceptions pass through untouched (a ``RunFailed`` naming a row, a ``KEKUnavailable``).
    """
    try:
        return fn()
    except Error as exc:
        error = step.error(exc)
        forget(exc)
    raise error  # outside the except block: the database's error is not its __context__


def reading(action: str, database: str | None, fn: Callable[[], T]) -> T:
    """``fn()``, a read outside any run; a database error it raises is raised as
    :meth:`Step.error` of ``action`` on the databases such a read involves: the keys database and
    every database that may hold an encrypted model (or ``database``), as the routers say
    (:func:`keyrotation.databases.may_hold`), since the error does not say which one failed.

    Raises:
        KeyRotationError: ``database`` is not a configured alias.
    """
    aliases = dict.fromkeys([databases.keys_database(), *registered_databases(database)])
    return safely(Step(action, tuple(aliases)), fn)
