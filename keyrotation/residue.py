"""What a table may still hold on disk after adoption or a rotation, as far as its database reports.

Adopting a legacy column empties it row by row, and re-encrypting replaces every ciphertext, but
neither erases the old bytes: an ``UPDATE`` writes a new row version and leaves the old one
(PostgreSQL's dead tuples, SQLite's freed space), the legacy column's indexes keep an entry per
value, and the write-ahead log keeps both. :func:`report` says, per model with encrypted fields
and per database that holds it, what is left that the database itself can tell: legacy values not
adopted yet, indexes and unique constraints still covering a legacy column, dead row versions and
vacuum times (PostgreSQL statistics), free pages and ``secure_delete`` (SQLite), and the next
step of the clean-up (``docs/adoption.md``, "What stays on disk, and how to remove it").

It reads counts, names and statistics only: never a value.

What a database does *not* report is listed in :data:`LIMITS`: a plain ``VACUUM`` (or
autovacuum) makes PostgreSQL's dead tuples reusable and resets their count without erasing them;
SQLite does not count space freed inside a page; neither sees WAL, replicas or backups.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, replace

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.db import connections, models

from . import databases, legacy, registry
from .exceptions import KeyRotationError

CLEAN = "nothing left that this database reports"

LIMITS = {
    "postgresql": (
        "dead row versions are statistics: an estimate that may lag behind the table by a second "
        "or more; a plain VACUUM or autovacuum resets the count without erasing the freed space, "
        "so 0 is only proof after VACUUM (FULL, ANALYZE), CLUSTER or pg_repack; WAL, replicas and "
        "backups are not inspected"
    ),
    "sqlite": (
        "free pages are counted for the whole database file; space freed inside a page keeps the "
        "old bytes unless secure_delete was on when it was freed, and is not counted; run VACUUM "
        "once after adoption or an emergency rotation; the -wal file and backups are not inspected"
    ),
    "mysql": (
        "InnoDB's storage is not inspected: an UPDATE keeps the old row version in the undo log "
        "until purge removes it, and purged or freed space keeps its bytes until it is reused; "
        "run OPTIMIZE TABLE (it rebuilds the table) once after adoption or an emergency rotation; "
        "the redo and undo logs, the binary log, replicas and backups are not inspected"
    ),
    "other": "this database's storage is not inspected: only legacy values and indexes are reported",
}


@dataclass(frozen=True)
class LegacyColumn:
    """The legacy column of one adopting field."""

    field: str  # label of the EncryptedField that adopts it
    column: str
    present: bool  # False once the column has been dropped from the table
    values: int  # rows still holding a legacy value (0 when the column is gone)


@dataclass(frozen=True)
class LegacyIndex:
    """An index or unique constraint that covers a legacy column (it holds a copy of every value)."""

    name: str | None  # None: a constraint declared inline without a name (SQLite's UNIQUE column)
    columns: tuple[str, ...]
    constraint: bool  # a unique or primary-key constraint: dropped with ALTER TABLE ... DROP CONSTRAINT

    def drop(self, table: str, vendor: str = "") -> str:
        """The statement that drops it on ``vendor``, or what to do when it has no name of its own."""
        if self.name is None:
            columns = ", ".join(self.columns)
            return f"drop the legacy column {columns}: its unnamed unique constraint goes with it"
        if vendor == "mysql":  # a unique key is an index there, dropped as one
            return f"ALTER TABLE {table} DROP INDEX {self.name}"
        if self.constraint:
            return f"ALTER TABLE {table} DROP CONSTRAINT {self.name}"
        return f"DROP INDEX {self.name}"

    def describe(self) -> str:
        kind = "unique constraint" if self.constraint else "index"
        return f"{kind} {self.name or '(unnamed)'} on {', '.join(self.columns)}"


@dataclass(frozen=True)
class PostgresStorage:
    """``pg_stat_user_tables`` for the table: statistics, not a scan."""

    dead_tuples: int
    live_tuples: int
    last_vacuum: dt.datetime | None
    last_autovacuum: dt.datetime | None
    last_analyze: dt.datetime | None
    last_autoanalyze: dt.datetime | None


@dataclass(frozen=True)
class SqliteStorage:
    """``PRAGMA freelist_count``, ``secure_delete`` and ``journal_mode`` of the database file."""

    freelist_pages: int
    secure_delete: bool
    journal_mode: str


@dataclass(frozen=True)
class TableResidue:
    """What one model's table on one database may still hold, and what to do next."""

    model: str
    database: str
    vendor: str
    table: str
    legacy_columns: list[LegacyColumn] = field(default_factory=list)
    legacy_indexes: list[LegacyIndex] = field(default_factory=list)
    postgresql: PostgresStorage | None = None
    sqlite: SqliteStorage | None = None
    next_step: str = CLEAN

    @property
    def clean(self) -> bool:
        return self.next_step == CLEAN

    @property
    def limits(self) -> str:
        return LIMITS.get(self.vendor, LIMITS["other"])

    def as_dict(self) -> dict:
        out = asdict(self)
        out["clean"] = self.clean
        out["limits"] = self.limits
        return out


def encrypted_models(names: list[str] | None = None) -> list[type[models.Model]]:
    """The models with encrypted fields, or the models ``names`` (``app_label.Model``).

    Raises:
        KeyRotationError: a name is not ``app_label.Model``, names no installed model, or a
            model without encrypted fields.
    """
    having = {col.model for col in registry.columns(purpose="encrypt")}
    if not names:
        return sorted(having, key=lambda m: m._meta.label)
    chosen = []
    for name in names:
        try:
            model = apps.get_model(name)
        except (LookupError, ValueError):
            raise KeyRotationError(f"no model {name!r}; expected 'app_label.Model'") from None
        if model not in having:
            raise KeyRotationError(f"{model._meta.label} has no encrypted fields: nothing to report")
        chosen.append(model)
    return chosen


def report(names: list[str] | None = None, database: str | None = None) -> list[TableResidue]:
    """One :class:`TableResidue` per model with encrypted fields (or per model of ``names``) and
    per database that holds it (or on ``database`` only).

    Raises:
        KeyRotationError: an unknown model or alias, or a model without encrypted fields.
    """
    chosen = encrypted_models(names)
    where = databases.holding_all(chosen, only=database)
    return [inspect(model, alias) for model in chosen for alias in where[model]]


def inspect(model: type[models.Model], alias: str) -> TableResidue:
    """The residue of ``model``'s table on database ``alias``."""
    conn = connections[alias]
    table = model._meta.db_table
    with conn.cursor() as cursor:
        present = {c.name for c in conn.introspection.get_table_description(cursor, table)}
        constraints = conn.introspection.get_constraints(cursor, table)
    columns = [_legacy_column(model, f, alias, present) for f in _adopting(model)]
    indexes = _legacy_indexes(constraints, {c.column for c in columns if c.present}, conn.vendor)
    pg = _postgres(conn, table) if conn.vendor == "postgresql" else None
    lite = _sqlite(conn) if conn.vendor == "sqlite" else None
    residue = TableResidue(model._meta.label, alias, conn.vendor, table, columns, indexes, pg, lite)
    return replace(residue, next_step=next_step(residue))


def next_step(r: TableResidue) -> str:
    """The first step of the clean-up that this table still needs, in the documented order."""
    left = sum(c.values for c in r.legacy_columns)
    if left:
        return f"run `manage.py reencrypt --model {r.model}`: {left:,} legacy value(s) not adopted yet"
    if r.legacy_indexes:
        return "; ".join(index.drop(r.table, r.vendor) for index in r.legacy_indexes)
    dropped = [c.column for c in r.legacy_columns if c.present]
    if dropped:
        return f"drop the legacy column(s) {', '.join(dropped)} (remove the field, makemigrations, migrate)"
    if r.postgresql and r.postgresql.dead_tuples:
        return f"VACUUM (FULL, ANALYZE) {r.table}: {r.postgresql.dead_tuples:,} dead row version(s)"
    if r.sqlite and r.sqlite.freelist_pages:
        return f"VACUUM: {r.sqlite.freelist_pages:,} free page(s) in the database file"
    return CLEAN


def _adopting(model: type[models.Model]) -> list[models.Field]:
    out = []
    for col in registry.columns(purpose="encrypt"):
        if col.model is model:
            f = model._meta.get_field(col.field_name)
            if getattr(f, "adopt_from", None):
                out.append(f)
    return out


def _legacy_column(model: type[models.Model], f: models.Field, alias: str, present: set[str]) -> LegacyColumn:
    label = registry.label_for(model, f.name)
    try:
        source = legacy.legacy_field(f)
    except FieldDoesNotExist:  # the system check E103 reports it; nothing to count here
        source = None
    if source is None:
        return LegacyColumn(label, f.adopt_from, False, 0)
    if source.column not in present:
        return LegacyColumn(label, source.column, False, 0)
    rows = model._base_manager.using(alias).filter(**{f"{source.attname}__isnull": False})
    return LegacyColumn(label, source.column, True, rows.count())


def _legacy_indexes(constraints: dict, legacy_columns: set[str], vendor: str) -> list[LegacyIndex]:
    out = []
    for name, info in sorted(constraints.items()):
        holds_values = info.get("index") or info.get("unique") or info.get("primary_key")
        if not holds_values or not legacy_columns & set(info.get("columns") or ()):
            continue
        # Introspection names a constraint-backed index only once, as the constraint; a unique
        # index created with CREATE UNIQUE INDEX (no constraint) is listed with index=True.
        # MySQL lists every unique key with index=True as well.
        keyed = info.get("unique") or info.get("primary_key")
        constraint = bool(keyed and (vendor == "mysql" or not info.get("index")))
        named = None if name.startswith("__unnamed_constraint_") else name  # Django's placeholder
        out.append(LegacyIndex(named, tuple(info["columns"]), constraint))
    return out


def _postgres(conn, table: str) -> PostgresStorage | None:
    with conn.cursor() as cursor:
        # A transaction caches the statistics it first read: start from the current ones.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT n_dead_tup, n_live_tup, last_vacuum, last_autovacuum, last_analyze, last_autoanalyze "
            "FROM pg_stat_user_tables WHERE relid = to_regclass(%s)",
            [conn.ops.quote_name(table)],
        )
        row = cursor.fetchone()
    return PostgresStorage(*row) if row else None


def _sqlite(conn) -> SqliteStorage:
    with conn.cursor() as cursor:
        cursor.execute("PRAGMA freelist_count")
        freelist = cursor.fetchone()[0]
        cursor.execute("PRAGMA secure_delete")
        secure = cursor.fetchone()[0]
        cursor.execute("PRAGMA journal_mode")
        journal = cursor.fetchone()[0]
    return SqliteStorage(int(freelist), bool(secure), str(journal))
