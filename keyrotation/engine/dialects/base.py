"""What every dialect shares: the claim's SQL, the pending condition, and the pieces of a guarded
set-based write (the write's arrays, its SET clauses and its guard).

A dialect subclasses :class:`BaseDialect` and supplies at least :meth:`BaseDialect.write_guarded`;
it overrides the hooks of the claim (:meth:`~BaseDialect.pk_placeholder`,
:meth:`~BaseDialect.select_list`, :meth:`~BaseDialect.fetch`) where its driver or its SQL differ.

A write binds stored values: new ciphertexts and blind indexes, old ciphertexts as guards and, while
a legacy column is adopted, its plaintexts as guards too. So every write runs on
:meth:`BaseDialect.driver_cursor`, never on a cursor of Django's: ``DEBUG = True`` (or anything
that forces Django's debug cursor) puts every parameter of a statement run on Django's cursor in
``connection.queries`` and in the ``django.db.backends`` log.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from django.db import connections

from ...crypto import FORMAT_V1
from ..batch import CLEAR, KEEP, Row, Write, layout, legacy_columns
from ..plan import EncColumn, IdxColumn, ModelPlan


@dataclass(frozen=True)
class Array:
    """One column of a write's input, one value per row.

    ``role``: ``"pk"`` (first), ``"new"`` (a written column's new values, in ``write.enc`` then
    ``write.idx`` order) or ``"guard"`` (a value the row must still hold). ``kind``: ``"pk"``,
    ``"bytea"``, ``"smallint"`` or ``"legacy"`` (the legacy column's own type). ``column``: the
    guarded column.
    """

    role: Literal["pk", "new", "guard"]
    kind: Literal["pk", "bytea", "smallint", "legacy"]
    values: list[Any]
    column: str | None = None


class BaseDialect(ABC):
    """The engine's SQL on one database alias; see :class:`keyrotation.engine.dialects.Dialect`.

    Holds the alias, never a connection: Django's connections belong to a thread, and the
    pipeline's second lane runs in its own.
    """

    #: ``connection.vendor`` values this dialect is picked for.
    vendors: ClassVar[tuple[str, ...]] = ()
    #: Two batches in flight per worker (``engine/pipeline.py``): the database writes one batch
    #: while the client computes the next, each in its own transaction holding its own row locks.
    pipelines: ClassVar[bool] = False
    #: Guard every write by the rows' old ciphertexts as well as their old versions: needed where
    #: a claim locks nothing, so the application may rewrite a row between read and write.
    guards_tokens: ClassVar[bool] = True

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.alias!r}>"

    @property
    def connection(self):
        """This thread's connection to the alias."""
        return connections[self.alias]

    @property
    def vendor(self) -> str:
        return self.connection.vendor

    @property
    def skip_locked(self) -> bool:
        """Whether a claim can skip rows locked by others (``FOR UPDATE SKIP LOCKED``), which
        ``--workers N`` and several hosts need."""
        features = self.connection.features
        return features.has_select_for_update and features.has_select_for_update_skip_locked

    def quote(self, name: str) -> str:
        return self.connection.ops.quote_name(name)

    @contextmanager
    def driver_cursor(self) -> Iterator[Any]:
        """A cursor of the database's driver on this thread's connection, inside the caller's
        transaction, for the statements that bind stored values (every write).

        Django's SQL log (``connection.queries``, the ``django.db.backends`` logger) and whatever
        wraps Django's cursors never see its statements or their parameters. Its errors are
        Django's (``wrap_database_errors``), as the retry loop and
        :mod:`keyrotation.engine.db_errors` expect: a lost connection is an ``OperationalError``.
        Statements take Django's placeholders (``%s``): the backend's own cursor
        (``create_cursor()``) converts them where its driver's differ (SQLite's ``?``) and maps
        the driver's errors as Django does (MySQL's integrity errors).
        """
        conn = self.connection
        conn.ensure_connection()
        conn.validate_thread_sharing()
        conn.validate_no_broken_transaction()
        with conn.wrap_database_errors:
            cur = self._new_driver_cursor()
            try:
                yield cur
            finally:
                cur.close()

    def _new_driver_cursor(self) -> Any:
        """The cursor :meth:`driver_cursor` hands out (the connection is open)."""
        return self.connection.create_cursor()

    # -- claim -----------------------------------------------------------------------------

    def select_batch(
        self, plan: ModelPlan, lo: Any, hi: Any, limit: int, *, lock: bool = True, skip: bool = True
    ) -> list[Row]:
        """Claim up to ``limit`` pending rows with ``lo < pk <= hi`` (bounds may be None), in pk
        order, in :func:`~keyrotation.engine.batch.layout` order. ``lock``: lock them (``FOR
        UPDATE``, where the database has it); ``skip``: skip rows others hold locked (where the
        database can; else wait for them)."""
        q = self.quote
        pending, params = pending_condition(plan, q)
        where = [pending]
        pk, placeholder = q(plan.pk_column), self.pk_placeholder(plan)
        if lo is not None:
            where.append(f"{pk} > {placeholder}")
            params.append(lo)
        if hi is not None:
            where.append(f"{pk} <= {placeholder}")
            params.append(hi)
        sql = (
            f"SELECT {', '.join(self.select_list(plan))} FROM {q(plan.table)} "
            f"WHERE {' AND '.join(where)} ORDER BY {pk} LIMIT %s"
        )
        params.append(limit)
        if lock and self.connection.features.has_select_for_update:
            sql += " FOR UPDATE"
            if skip and self.skip_locked:
                sql += " SKIP LOCKED"
        return self.fetch(sql, params)

    def pk_placeholder(self, plan: ModelPlan) -> str:
        """The SQL of a bound pk cursor (cursors come back from JSON as int or str)."""
        return "%s"

    def select_list(self, plan: ModelPlan) -> list[str]:
        """The layout's columns, quoted, as the claim selects them."""
        return [self.quote(c) for c in layout(plan).columns]

    def fetch(self, sql: str, params: list[Any]) -> list[Row]:
        """Run a claim; rows as tuples with bytes (never memoryview) for binary values."""
        with self.connection.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]

    # -- write -----------------------------------------------------------------------------

    def write_batch(self, plan: ModelPlan, write: Write) -> int:
        """Write one batch with its guards; returns the rows written (a row whose guard fails is
        left alone, and found again by the final sweep)."""
        if write.empty:
            return 0
        return self.write_guarded(plan, write)

    @abstractmethod
    def write_guarded(self, plan: ModelPlan, write: Write) -> int:
        """:meth:`write_batch` of a write with rows and columns: only the columns that change are
        set, their versions to the target as a constant, and each row only while it still holds
        the values the batch read (old versions; old ciphertexts too with :attr:`guards_tokens`;
        legacy values)."""

    # -- counts and sweep ------------------------------------------------------------------

    def count_pending(self, plan: ModelPlan) -> int:
        """Rows of ``plan`` not on their targets yet (the sweep's census)."""
        return plan.pending(using=self.alias)

    def limit_lock_wait(self) -> None:
        """Inside a sweep batch's transaction, before its claim waits for row locks: bound that
        wait where the database can (a lock held for long fails the batch, which is retried).
        By default the claim waits as long as the database lets it."""
        return None


def pending_condition(plan: ModelPlan, q) -> tuple[str, list[Any]]:
    """The SQL condition (and its parameters) of a pending row: what :meth:`ModelPlan.pending_q`
    says, written out for a raw claim."""
    parts, params = [], []
    for c in [*plan.enc, *plan.idx]:
        parts.append(f"({q(c.version_column)} <> %s)")
        params.append(c.target)
    for c in plan.enc:  # a value with no version: a default a migration filled in
        parts.append(f"({q(c.version_column)} IS NULL AND {q(c.column)} IS NOT NULL)")
    for c in plan.enc:  # a value not in its column's format yet (bound after it was written)
        if c.format != FORMAT_V1:
            parts.append(f"({q(c.column)} IS NOT NULL AND substr({q(c.column)}, 1, 1) <> %s)")
            params.append(bytes([c.format]))
    for c in plan.idx:
        src = c.source
        parts.append(
            f"({q(c.version_column)} IS NULL AND "
            f"({q(src.version_column)} IS NOT NULL OR {q(src.column)} IS NOT NULL))"
        )
    for c in legacy_columns(plan):
        parts.append(f"({q(c.legacy_column)} IS NOT NULL)")
    return "(" + " OR ".join(parts) + ")", params


def write_arrays(plan: ModelPlan, write: Write, *, tokens: bool) -> list[Array]:
    """Every array of a write: pk, new values, guards. ``tokens``: guard the old ciphertexts too."""
    out = [Array("pk", "pk", write.pks)]
    for _col, new in [*write.enc, *write.idx]:
        out.append(Array("new", "bytea", new))
    for col, versions in zip(plan.enc, write.enc_versions, strict=True):
        out.append(Array("guard", "smallint", versions, col.version_column))
    for (col, _), versions in zip(write.idx, write.idx_versions, strict=True):
        out.append(Array("guard", "smallint", versions, col.version_column))
    if tokens:
        for col, values in zip(plan.enc, write.enc_tokens, strict=True):
            out.append(Array("guard", "bytea", values, col.column))
    for col, values in zip(legacy_columns(plan), write.legacy, strict=True):
        out.append(Array("guard", "legacy", values, col.legacy_column))
    return out


def assign(col: EncColumn | IdxColumn, new: list, value: str, q, length: str = "length") -> list[str]:
    """SET clauses of one written column and its version; ``value``: the SQL of its new value;
    ``length``: the SQL function giving a bytes value's length (to recognise ``CLEAR``)."""
    column, version, target = q(col.column), q(col.version_column), int(col.target)
    if all(v is not KEEP and v != CLEAR for v in new):  # the usual case: every row gets a value
        return [f"{column} = {value}", f"{version} = {target}"]
    keep, clear = f"{value} IS NULL", f"{length}({value}) = 0"
    return [
        f"{column} = CASE WHEN {keep} THEN t.{column} WHEN {clear} THEN NULL ELSE {value} END",
        f"{version} = CASE WHEN {keep} THEN t.{version} WHEN {clear} THEN NULL ELSE {target} END",
    ]


def set_and_guard(
    plan: ModelPlan, write: Write, arrays: list[Array], names: list[str], q, length: str, same: str
) -> tuple[str, str]:
    """The SET list and the guard condition of a joined write whose input columns are
    ``v.<names[i]>`` (``arrays[i]``); ``same``: the SQL null-safe equality operator."""
    written = [*write.enc, *write.idx]  # their new values are arrays 1..len(written)
    clauses = [
        clause
        for i, (col, new) in enumerate(written)
        for clause in assign(col, new, f"v.{names[1 + i]}", q, length)
    ] + clear_legacy(plan, q)
    guard = " AND ".join(
        f"t.{q(a.column)} {same} v.{name}" for a, name in zip(arrays, names, strict=True) if a.role == "guard"
    )
    return ", ".join(clauses), guard


def clear_legacy(plan: ModelPlan, q) -> list[str]:
    """SET clauses that empty the legacy columns of a written row (its value is now in the new column)."""
    return [f"{q(c.legacy_column)} = NULL" for c in legacy_columns(plan)]
