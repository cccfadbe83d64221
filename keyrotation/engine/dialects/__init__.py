"""The engine's SQL, one module per database behind one small interface (:class:`Dialect`).

Every statement the engine's hot path runs on the rows it re-encrypts goes through a dialect:
claiming a batch, writing it with its guard, counting what is left, and bounding the final
sweep's wait for row locks. The dialect is picked by ``connection.vendor``:

* ``postgresql.py``: ``FOR UPDATE SKIP LOCKED`` claims, one ``UPDATE … FROM unnest(…)`` per
  batch with binary parameters, two batches in flight per worker;
* ``mysql.py``: MySQL 8.0+ and MariaDB 10.6+: ``FOR UPDATE SKIP LOCKED`` claims, one
  ``UPDATE … JOIN (SELECT … UNION ALL …)`` per batch;
* ``sqlite.py``: no row locks (one worker), one ``UPDATE … FROM (VALUES …)`` per batch guarded by
  the old ciphertexts too;
* ``generic.py``: any other vendor; correct (the same guards) but one ``UPDATE`` per row, slow.

A new database is one module: a subclass of :class:`~.base.BaseDialect` that writes a batch
(:meth:`~.base.BaseDialect.write_guarded`) and, where it differs, claims one
(:meth:`~.base.BaseDialect.select_list`, :meth:`~.base.BaseDialect.pk_placeholder`,
:meth:`~.base.BaseDialect.fetch`), plus one line in :data:`BY_VENDOR`. The run's own tables
(runs, chunks, quarantine) and the key census go through the ORM and need no dialect.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from django.db import connections

from ..batch import Row, Write
from ..plan import ModelPlan
from .base import BaseDialect
from .generic import Generic
from .mysql import MySQL
from .postgresql import PostgreSQL
from .sqlite import SQLite

__all__ = [
    "BY_VENDOR",
    "BaseDialect",
    "Dialect",
    "Generic",
    "MySQL",
    "PostgreSQL",
    "SQLite",
    "for_alias",
    "for_connection",
]


class Dialect(Protocol):
    """What the engine asks of a database, on one alias.

    Every method runs on this thread's connection to :attr:`alias`, inside the caller's
    transaction (a batch's claim, write and progress commit together).
    """

    #: The ``DATABASES`` alias.
    alias: str
    #: Two batches in flight per worker are safe and pay (``engine/pipeline.py``).
    pipelines: ClassVar[bool]

    @property
    def vendor(self) -> str:
        """``connection.vendor``, for messages."""

    @property
    def skip_locked(self) -> bool:
        """Claims skip rows others hold locked: several workers and hosts can share a table."""

    def select_batch(
        self, plan: ModelPlan, lo: Any, hi: Any, limit: int, *, lock: bool = True, skip: bool = True
    ) -> list[Row]:
        """Up to ``limit`` pending rows with ``lo < pk <= hi`` in pk order, as
        :func:`~keyrotation.engine.batch.layout` lays them out; locked with ``lock`` (where the
        database locks rows), skipping rows locked by others with ``skip`` (else waiting)."""

    def write_batch(self, plan: ModelPlan, write: Write) -> int:
        """Write a batch in as few statements as the database allows (one, for a set-based
        dialect), each row only while it still holds what the claim read. Returns the rows
        written."""

    def count_pending(self, plan: ModelPlan) -> int:
        """Rows of ``plan`` not on their targets yet."""

    def limit_lock_wait(self) -> None:
        """In a sweep batch's transaction, before a claim that waits for row locks: bound the
        wait where the database can."""


#: ``connection.vendor`` -> its dialect; any other vendor gets :class:`Generic`.
BY_VENDOR: dict[str, type[BaseDialect]] = {
    vendor: cls for cls in (MySQL, PostgreSQL, SQLite) for vendor in cls.vendors
}


def for_connection(connection) -> Dialect:
    """The dialect of a Django connection (by its ``vendor``), on that connection's alias."""
    return BY_VENDOR.get(connection.vendor, Generic)(connection.alias)


def for_alias(alias: str) -> Dialect:
    """The dialect of the database ``alias`` (a ``DATABASES`` key)."""
    return for_connection(connections[alias])
