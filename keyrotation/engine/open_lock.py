"""The lock that lets one process at a time open or join a run.

:func:`keyrotation.engine.runs.open_run` looks for an open run of its scope and, finding none,
counts the pending rows and creates one. Row locks cannot serialise that: while no run exists
there is no row to lock, so processes starting at the same instant (``reencrypt`` on several
hosts, a fleet of queued jobs) would each find none and each create a run. Before it looks,
``open_run`` takes this lock, for the rest of its transaction:

* PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key, released at commit or rollback;
* SQLite: a no-op write as the transaction's first statement takes the database's writer lock,
  waiting through the busy timeout (a transaction that reads first and then writes fails at once
  with "database is locked" when another process holds that lock);
* MySQL/MariaDB: ``GET_LOCK`` on a name of the database. It belongs to the session, not to the
  transaction, so it is released right after the transaction ends. Known race: when the caller
  already holds a transaction open around ``open_run``, the lock is released before that outer
  transaction commits, and a process that looks meanwhile does not see the new run yet;
* any other vendor: no lock (the generic dialect makes no promise about concurrent opens).

Lock order: this lock first, then run rows, then the audit chain lock. Nothing else takes it,
so it cannot close a cycle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import OperationalError, connections, transaction

from ..models import ReencryptionRun

_NAME = "keyrotation.engine.open_run"
# Any fixed 64-bit key; the same in every process (derived from the name).
_PG_LOCK_KEY = int.from_bytes(hashlib.sha256(_NAME.encode()).digest()[:8], "big", signed=True)
#: Seconds a MySQL/MariaDB session waits for the lock before giving up (a transient error,
#: retried). Long, as on PostgreSQL, which waits without limit: the holder may be counting the
#: pending rows of a large table, and a holder that dies releases it with its session.
MYSQL_WAIT_SECONDS = 3600


@contextmanager
def opening(using: str) -> Iterator[None]:
    """A transaction on ``using`` in which no other process opens or joins a run."""
    conn = connections[using]
    if conn.vendor == "mysql":
        with _mysql_lock(conn), transaction.atomic(using=using):
            yield
        return
    with transaction.atomic(using=using):
        with conn.cursor() as cur:
            if conn.vendor == "postgresql":
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [_PG_LOCK_KEY])
            elif conn.vendor == "sqlite":
                table = conn.ops.quote_name(ReencryptionRun._meta.db_table)
                cur.execute(f"UPDATE {table} SET id = id WHERE 0")
        yield


@contextmanager
def _mysql_lock(conn) -> Iterator[None]:
    # Lock names are server-wide: the database's name keeps two databases apart (64 characters).
    name = f"{_NAME}:{conn.settings_dict['NAME']}"[:64]
    with conn.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, %s)", [name, MYSQL_WAIT_SECONDS])
        if cur.fetchone()[0] != 1:
            raise OperationalError(f"timed out after {MYSQL_WAIT_SECONDS}s waiting to open a run")
    try:
        yield
    finally:
        if conn.connection is not None and conn.is_usable():  # else the session, and its lock, is gone
            with conn.cursor() as cur:
                cur.execute("SELECT RELEASE_LOCK(%s)", [name])
