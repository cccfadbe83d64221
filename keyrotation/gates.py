"""What ``retire`` and ``destroy`` must prove before they change a key's state.

Retiring a version stops it from decrypting; destroying it erases it for good. Both need the
census to find no row under the version, on every database that holds a registered column. A row
can escape a census, though: a transaction that wrote under the version while it was active (or
while a process's cached keyring still said so) makes the row visible only when it commits, and
that can be long after the version stopped being active. Hence:

* ``retire`` waits ``CACHE_SECONDS`` after the version stopped being active and counts inside its
  own transaction. It stays reversible (``restore``): a row a late transaction commits afterwards
  shows up in ``rotation_status`` and stops ``destroy``.
* ``destroy`` cannot be undone, so it asks for more, in this order: the version retired for at
  least ``DESTROY_GRACE_SECONDS``; no transaction still open, on any counted database, that began
  before the version stopped being usable for writes (its deactivation plus ``CACHE_SECONDS``);
  then a fresh census. Once no such transaction is open, whatever it wrote is committed (or rolled
  back), so the census that follows sees it: each count reads a fresh snapshot (its own
  transaction on every other database; on the keys database, the destroy's transaction under
  Django's default READ COMMITTED).

Open transactions are read from ``pg_stat_activity`` on PostgreSQL, and from
``information_schema.innodb_trx`` on MySQL and MariaDB (which needs the ``PROCESS`` privilege:
without it ``destroy`` refuses, as it does on PostgreSQL when other sessions are hidden from its
role). SQLite and the other backends do not show other sessions' transactions: there the grace
period is the only guard against a transaction that stays open, so keep it above the longest one
your application runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from . import census, conf, databases, registry
from .models import DataKey

MAX_PIDS_SHOWN = 5


@dataclass(frozen=True)
class Refusal:
    """Why a gate refused: ``reason`` (a short code), a one-line ``message`` that says what to do,
    and the evidence for the audit row (JSON scalars only)."""

    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Census:
    """The census of one key version on every database that holds its columns."""

    references: list[census.Reference]
    databases: list[str]
    unreadable: dict[str, str] = field(default_factory=dict)  # alias -> error class name

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ref in self.references:
            out[ref.label] = out.get(ref.label, 0) + ref.rows
        return out

    def details(self) -> dict[str, Any]:
        """The audit evidence: rows per column, and per database when there are several."""
        out: dict[str, Any] = {"census": self.totals(), "databases": self.databases}
        if len(self.databases) > 1:
            by_db: dict[str, dict[str, int]] = {}
            for ref in self.references:
                by_db.setdefault(ref.database, {})[ref.label] = ref.rows
            out["census_by_database"] = by_db
        by_header = {ref.label: ref.by_header for ref in self.references if ref.by_header}
        if by_header:
            out["by_header"] = by_header
        if self.unreadable:
            out["unreadable"] = self.unreadable
        return out

    def refusal(self, next_step: str) -> Refusal | None:
        """None when no row references the version and every database could be read."""
        if self.unreadable:
            names = ", ".join(f"{alias!r} ({error})" for alias, error in self.unreadable.items())
            return Refusal(
                "census_failed",
                f"could not count the rows on database {names}; every database that holds an "
                f"encrypted column must be readable with the model's table: fix it and retry",
                self.details(),
            )
        stale = [ref for ref in self.references if ref.rows]
        if not stale:
            return None
        several = len(self.databases) > 1
        parts = []
        for ref in stale:
            part = f"{ref.rows} row(s) of {ref.label}"
            if several:
                part += f" on database {ref.database!r}"
            if ref.by_header:
                part += f" ({ref.by_header} only by the ciphertext header: `reencrypt --verify` lists them)"
            parts.append(part)
        return Refusal("referenced", f"still referenced by {', '.join(parts)}; {next_step}", self.details())


def _columns_and_databases(key: DataKey) -> tuple[list[registry.Column], dict]:
    cols = list(registry.columns(keyring=key.keyring, purpose=key.purpose))
    return cols, databases.holding_all({col.model for col in cols})


def take_census(key: DataKey, found: tuple[list[registry.Column], dict] | None = None) -> Census:
    """Count the rows under ``key`` on every database that holds one of its columns. A database
    that cannot be read is recorded (the gate then refuses), never skipped."""
    cols, where = found or _columns_and_databases(key)
    refs, unreadable = [], {}
    for col in cols:
        for alias in where[col.model]:
            if alias in unreadable:
                continue
            try:
                # A savepoint (or a transaction of its own): a failed count leaves the caller's
                # transaction usable, so that the refusal can still be recorded.
                with transaction.atomic(using=alias):
                    refs.append(census.count(col, key.version, alias))
            except DatabaseError as exc:
                unreadable[alias] = type(exc).__name__
    aliases = sorted({alias for aliases in where.values() for alias in aliases})
    return Census(refs, aliases, unreadable)


def destroy_grace(key: DataKey, now: datetime) -> Refusal | None:
    """Refuse while ``key`` has been retired for less than ``DESTROY_GRACE_SECONDS``."""
    grace = timedelta(seconds=conf.destroy_grace_seconds())
    retired_at = key.retired_at or now
    if now >= retired_at + grace:
        return None
    until = (retired_at + grace).astimezone(dt_timezone.utc).isoformat(timespec="seconds")
    return Refusal(
        "grace",
        f"retired {(now - retired_at).total_seconds():.0f}s ago; destroying waits "
        f"DESTROY_GRACE_SECONDS ({grace.total_seconds():.0f}s) after retirement: retry after {until}",
        {"retired_at": retired_at.isoformat(), "grace_seconds": grace.total_seconds()},
    )


def writes_stopped_at(key: DataKey, now: datetime) -> datetime:
    """The last instant a process may still have encrypted with ``key``: its deactivation plus
    ``CACHE_SECONDS`` (a process trusts its cached keyring that long). Unknown: ``now``."""
    if key.deactivated_at is None:
        return now
    return key.deactivated_at + timedelta(seconds=conf.cache_seconds())


@dataclass(frozen=True)
class Sessions:
    """Other sessions on one database: transactions older than a cutoff, and sessions whose
    transactions this role may not see (``hidden``: a count, or -1 for "unknown how many")."""

    old: list[int]  # PostgreSQL backend pids, MySQL connection ids
    hidden: int


_SESSIONS_SQL = """
SELECT pid, state IS NULL
FROM pg_stat_activity
WHERE datname = current_database()
  AND pid <> pg_backend_pid()
  -- a session hidden from this role shows neither its type nor its state
  AND (backend_type = 'client backend' OR backend_type IS NULL)
  AND (state IS NULL OR xact_start < clock_timestamp() - make_interval(secs => %s))
ORDER BY xact_start, pid
"""


def postgres_sessions(alias: str, before: datetime, now: datetime) -> Sessions | None:
    """Open transactions on ``alias`` that began before ``before``; None if the backend cannot
    tell (anything but PostgreSQL).

    The age is measured on the database's own clock (``clock_timestamp()`` minus how long ago
    ``before`` was on ours), so a clock difference between this host and the server does not
    shift the cutoff by more than the time this call takes.
    """
    conn = connections[alias]
    if conn.vendor != "postgresql":
        return None
    age = max(0.0, (now - before).total_seconds())
    with conn.cursor() as cursor:
        cursor.execute(_SESSIONS_SQL, [age])
        rows = cursor.fetchall()
    return Sessions(old=[pid for pid, hidden in rows if not hidden], hidden=sum(1 for _, h in rows if h))


# InnoDB's transactions of other connections to this database, older than %s seconds. The table
# is a cache InnoDB refreshes at most every 0.1 s: a transaction that just ended may still be
# listed (a refusal to retry), one that began before the cutoff and is still open always is.
# ``trx_started`` has whole seconds: a transaction that began in the cutoff's second, even just
# after it, counts too (a refusal to retry a second later, never a transaction missed).
# ``trx_started`` is in the server's system time zone whatever the session's (Django sets UTC):
# the age is taken while the session is on SYSTEM time too (see mysql_sessions).
_MYSQL_SESSIONS_SQL = """
SELECT t.trx_mysql_thread_id
FROM information_schema.innodb_trx t
JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id
WHERE t.trx_mysql_thread_id <> CONNECTION_ID()
  AND p.db = DATABASE()
  AND t.trx_started <= NOW(6) - INTERVAL %s MICROSECOND
ORDER BY t.trx_started, t.trx_mysql_thread_id
"""
# MySQL/MariaDB: "Access denied; you need (at least one of) the PROCESS privilege(s)".
_MYSQL_NEEDS_PRIVILEGE = 1227


def mysql_sessions(alias: str, before: datetime, now: datetime) -> Sessions | None:
    """Open InnoDB transactions on ``alias`` (MySQL/MariaDB) that began before ``before``; None
    on any other backend. Without the ``PROCESS`` privilege ``innodb_trx`` cannot be read:
    ``hidden`` is then -1 (how many sessions are hidden is unknown)."""
    conn = connections[alias]
    if conn.vendor != "mysql":
        return None
    age = max(0, int((now - before).total_seconds() * 1_000_000))
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@session.time_zone")
        (zone,) = cursor.fetchone()
        cursor.execute("SET SESSION time_zone = 'SYSTEM'")
        try:
            cursor.execute(_MYSQL_SESSIONS_SQL, [age])
            rows = cursor.fetchall()
        except DatabaseError as exc:
            if getattr(exc, "args", (None,))[0] != _MYSQL_NEEDS_PRIVILEGE:
                raise
            return Sessions(old=[], hidden=-1)
        finally:
            cursor.execute("SET SESSION time_zone = %s", [zone])
    return Sessions(old=[int(thread) for (thread,) in rows], hidden=0)


def database_sessions(alias: str, before: datetime, now: datetime) -> Sessions | None:
    """Open transactions on ``alias`` that began before ``before``, on the backends that can tell
    (PostgreSQL, MySQL/MariaDB); None on the others."""
    if connections[alias].vendor == "mysql":
        return mysql_sessions(alias, before, now)
    return postgres_sessions(alias, before, now)


def _hidden_refusal(alias: str, hidden: int, details: dict[str, Any]) -> Refusal:
    if hidden < 0:
        return Refusal(
            "sessions_hidden",
            f"cannot see the transactions of other sessions on database {alias!r} "
            f"(information_schema.innodb_trx needs the PROCESS privilege): grant PROCESS on *.* to "
            f"the database user that runs rotatekeys, then retry",
            {**details, "hidden_sessions": hidden},
        )
    return Refusal(
        "sessions_hidden",
        f"cannot see the transactions of {hidden} other session(s) on database "
        f"{alias!r}: grant pg_read_all_stats to the role that runs rotatekeys, then retry",
        {**details, "hidden_sessions": hidden},
    )


def open_transactions(key: DataKey, aliases: list[str], now: datetime) -> Refusal | None:
    """Refuse while a transaction that may have written under ``key`` is still open."""
    cutoff = writes_stopped_at(key, now)
    for alias in aliases:
        sessions = database_sessions(alias, cutoff, now)
        if sessions is None:
            continue
        details = {"database": alias, "writes_stopped_at": cutoff.isoformat()}
        if sessions.hidden:
            return _hidden_refusal(alias, sessions.hidden, details)
        if sessions.old:
            pids = ", ".join(str(pid) for pid in sessions.old[:MAX_PIDS_SHOWN])
            more = ", ..." if len(sessions.old) > MAX_PIDS_SHOWN else ""
            ids = "connection ids" if connections[alias].vendor == "mysql" else "pids"
            return Refusal(
                "open_transactions",
                f"{len(sessions.old)} transaction(s) on database {alias!r} began before v{key.version} "
                f"stopped taking writes and are still open ({ids} {pids}{more}); they may hold rows "
                f"under it: wait for them to end (or end them), then retry",
                {**details, "open_transactions": len(sessions.old), "pids": sessions.old[:MAX_PIDS_SHOWN]},
            )
    return None


def retire(key: DataKey) -> tuple[Census | None, Refusal | None]:
    """Everything ``retire`` must prove: the cache window is over, then a census with no row.
    The census is None if the cache window refused."""
    now = timezone.now()
    grace = timedelta(seconds=conf.cache_seconds())
    if key.deactivated_at and now < key.deactivated_at + grace:
        wait = (key.deactivated_at + grace - now).total_seconds()
        return None, Refusal(
            "cache",
            f"stopped being active less than CACHE_SECONDS ago; processes may still write with it "
            f"(retry in {wait:.0f}s, then re-run the census)",
            {"deactivated_at": key.deactivated_at.isoformat(), "cache_seconds": grace.total_seconds()},
        )
    counted = take_census(key)
    return counted, counted.refusal("run `manage.py reencrypt` first")


def destroy(key: DataKey) -> tuple[dict[str, Any], Refusal | None]:
    """Everything ``destroy`` must prove, in order. Returns the evidence (for the audit row) and
    the first refusal, if any."""
    now = timezone.now()
    refusal = destroy_grace(key, now)
    if refusal is not None:
        return refusal.details, refusal
    found = _columns_and_databases(key)
    aliases = sorted({alias for held in found[1].values() for alias in held})
    refusal = open_transactions(key, aliases, now)
    if refusal is not None:
        return refusal.details, refusal
    counted = take_census(key, found)
    evidence = {
        **counted.details(),
        "transactions_checked_on": [a for a in aliases if connections[a].vendor in ("postgresql", "mysql")],
    }
    next_step = (
        f"restore it (`rotatekeys --restore {key.version}`), run `manage.py reencrypt`, then retire it again"
    )
    return evidence, counted.refusal(next_step)
