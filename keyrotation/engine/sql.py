"""Set-based batch SQL, one place for every vendor branch.

A batch is one ``SELECT`` (claiming rows) and one ``UPDATE`` (writing them):

* PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` then ``UPDATE … FROM unnest(%s::type[], …)``,
  through a server-side-binding psycopg cursor with binary parameters (bytea travels as raw bytes,
  not hex text).
* SQLite (no row locks, one writer): ``UPDATE … FROM (VALUES …)``; every row's write is guarded by
  its old key versions *and its old ciphertext*, so a value the application rewrote between our
  read and our write — even by a process whose cache still writes the old version — is left alone
  and examined again later.
* Anything else: one ``UPDATE`` per row with the same guards.

Only the columns that change in the batch are written, and their version columns are set to the
target as a constant (no array). Every write is guarded by the old ``<field>_key_version`` values
(DESIGN §6.2); rows whose guard fails are simply not written and are picked up again by the final
sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connections

from ..crypto import FORMAT_V1
from .plan import EncColumn, ModelPlan

if TYPE_CHECKING:
    from .transform import Write

#: New-value markers of a :class:`~keyrotation.engine.transform.Write`: leave the column as it is /
#: set it and its version to NULL.
KEEP, CLEAR = None, b""

Row = tuple[Any, ...]


def quote(using: str, name: str) -> str:
    return connections[using].ops.quote_name(name)


def skip_locked(using: str) -> bool:
    features = connections[using].features
    return features.has_select_for_update and features.has_select_for_update_skip_locked


@dataclass(frozen=True)
class RowLayout:
    """Where each value of a row read with :func:`read_columns` is: the one definition of the
    layout, which the transform and verify read positions from.

    ``enc`` / ``idx`` / ``extra``: the position of each column's value, its version right after
    (``plan.enc``, ``plan.idx`` and :func:`extra_sources` order); ``legacy``: the legacy value of each
    of :func:`legacy_columns`; ``bound``: bound column -> position (the pk's is 0).
    """

    columns: tuple[str, ...]
    enc: tuple[int, ...]
    idx: tuple[int, ...]
    extra: tuple[int, ...]
    legacy: tuple[int, ...]
    bound: dict[str, int]

    def bound_at(self, col: EncColumn) -> int | None:
        """Position of ``col``'s bound value (None: not bound)."""
        return self.bound[col.bound_column] if col.bound_column else None


def layout(plan: ModelPlan) -> RowLayout:
    """pk, then (value, version) per encrypted column, then (value, version) per index column,
    then (value, version) of index sources that are not encrypted columns of this pass, then the
    legacy column of every adopting encrypted column (:func:`legacy_columns` order), then every
    bound column other than the pk (first-use order)."""
    cols = [plan.pk_column]

    def pairs(columns) -> tuple[int, ...]:
        at = []
        for c in columns:
            at.append(len(cols))
            cols.extend([c.column, c.version_column])
        return tuple(at)

    enc, idx, extra = pairs(plan.enc), pairs(plan.idx), pairs(extra_sources(plan))
    legacy = tuple(range(len(cols), len(cols) + len(legacy_columns(plan))))
    cols += [c.legacy_column for c in legacy_columns(plan)]
    bound = {plan.pk_column: 0}
    for c in [*plan.enc, *extra_sources(plan)]:
        if c.bound_column and c.bound_column not in bound:
            bound[c.bound_column] = len(cols)
            cols.append(c.bound_column)
    return RowLayout(tuple(cols), enc, idx, extra, legacy, bound)


def read_columns(plan: ModelPlan) -> list[str]:
    """The columns a batch reads, in :func:`layout` order."""
    return list(layout(plan).columns)


def legacy_columns(plan: ModelPlan):
    """Encrypted columns of ``plan`` that adopt a legacy column (their values end each row)."""
    return [c for c in plan.enc if c.legacy_column]


def extra_sources(plan: ModelPlan):
    enc_labels = {c.label for c in plan.enc}
    seen, out = set(), []
    for c in plan.idx:
        if c.source.label not in enc_labels and c.source.label not in seen:
            seen.add(c.source.label)
            out.append(c.source)
    return out


def _pending_sql(plan: ModelPlan, q) -> tuple[str, list[Any]]:
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


def select_batch(
    plan: ModelPlan, using: str, lo: Any, hi: Any, limit: int, *, lock: bool = True, skip: bool = True
) -> list[Row]:
    """Claim up to ``limit`` pending rows with ``lo < pk <= hi`` (bounds may be None), pk order."""
    conn = connections[using]
    q = conn.ops.quote_name
    pending, params = _pending_sql(plan, q)
    where = [pending]
    pk = q(plan.pk_column)
    # Cursors come back from JSON as int or str: cast to the key's type on PostgreSQL.
    cast = f"::{_pk_type(plan, conn)}" if conn.vendor == "postgresql" else ""
    if lo is not None:
        where.append(f"{pk} > %s{cast}")
        params.append(lo)
    if hi is not None:
        where.append(f"{pk} <= %s{cast}")
        params.append(hi)
    sql = (
        f"SELECT {', '.join(_select_list(plan, conn))} FROM {q(plan.table)} "
        f"WHERE {' AND '.join(where)} ORDER BY {pk} LIMIT %s"
    )
    params.append(limit)
    if lock and conn.features.has_select_for_update:
        sql += " FOR UPDATE"
        if skip and skip_locked(using):
            sql += " SKIP LOCKED"
    if conn.vendor == "postgresql":
        with conn.wrap_database_errors, _pg_cursor(conn) as cur:
            cur.execute(sql, params, binary=True)
            return cur.fetchall()
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cur.fetchall()]


def _select_list(plan: ModelPlan, conn) -> list[str]:
    """The :func:`read_columns`, quoted. On SQLite a legacy column is read as ``+column``: an
    expression has no declared type, so sqlite3 applies none of the converters Django registers
    by type name (``time``, ``date``, ``datetime``, ``bool``). The row then holds the stored value
    itself, which the write's guard binds back (no adapter exists for ``datetime.time``, and a
    converted value need not spell the stored text), and :func:`keyrotation.legacy.from_db`
    applies Django's converters to it."""
    q = conn.ops.quote_name
    legacy = {c.legacy_column for c in legacy_columns(plan)} if conn.vendor == "sqlite" else set()
    return [f"+{q(c)}" if c in legacy else q(c) for c in read_columns(plan)]


def _pg_cursor(conn):
    """A raw psycopg cursor on Django's connection; use it under ``conn.wrap_database_errors`` so
    that its errors are Django's (a lost connection is an ``OperationalError``, retried)."""
    import psycopg

    conn.ensure_connection()
    return psycopg.Cursor(conn.connection)  # server-side binding: binary parameters work


def write_batch(plan: ModelPlan, using: str, write: Write) -> int:
    """Write one batch (see :class:`~keyrotation.engine.transform.Write`) in one statement.
    Returns how many rows were written (rows whose guard fails are not)."""
    if not len(write) or not (write.enc or write.idx or write.legacy):
        return 0
    conn = connections[using]
    if conn.vendor == "postgresql":
        return _write_postgresql(plan, conn, write)
    if conn.vendor == "sqlite":
        return _write_sqlite(plan, conn, write)
    return _write_generic(plan, conn, write)


def _pk_type(plan: ModelPlan, conn) -> str:
    """The SQL type of the primary key, for casts (``serial`` columns are plain integers)."""
    pk = plan.model._meta.pk
    pk_type = pk.target_field.rel_db_type(conn) if pk.is_relation else pk.rel_db_type(conn)
    return {"serial": "integer", "bigserial": "bigint", "smallserial": "smallint"}.get(pk_type, pk_type)


def _assign(col, new: list, value: str, q, length: str = "length") -> list[str]:
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


def _set_and_guard(
    plan, write: Write, arrays, names: list[str], q, length: str, same: str
) -> tuple[str, str]:
    """The SET list and the guard condition of a write whose arrays are ``v.<names[i]>``
    (``arrays`` from :func:`_columns`; ``same``: the SQL null-safe equality operator)."""
    written = [*write.enc, *write.idx]  # their new values are arrays 1..len(written)
    assign = [
        clause
        for i, (col, new) in enumerate(written)
        for clause in _assign(col, new, f"v.{names[1 + i]}", q, length)
    ] + _clear_legacy(plan, q)
    guard = " AND ".join(
        f"t.{q(column)} {same} v.{name}"
        for (role, _, _, column), name in zip(arrays, names, strict=True)
        if role == "guard"
    )
    return ", ".join(assign), guard


def _clear_legacy(plan: ModelPlan, q) -> list[str]:
    """SET clauses that empty the legacy columns of a written row (its value is now in the new column)."""
    return [f"{q(c.legacy_column)} = NULL" for c in legacy_columns(plan)]


def _columns(plan: ModelPlan, write: Write, *, tokens: bool) -> list[tuple[str, str, list, str | None]]:
    """(role, SQL type, values, column) of every array of a write: pk, new values, guards.

    ``tokens``: guard the old ciphertexts too (SQLite, which has no row locks)."""
    out: list[tuple[str, str, list, str | None]] = [("pk", "pk", write.pks, None)]
    for _col, new in [*write.enc, *write.idx]:
        out.append(("new", "bytea", new, None))
    for col, versions in zip(plan.enc, write.enc_versions, strict=True):
        out.append(("guard", "smallint", versions, col.version_column))
    for (col, _), versions in zip(write.idx, write.idx_versions, strict=True):
        out.append(("guard", "smallint", versions, col.version_column))
    if tokens:
        for col, values in zip(plan.enc, write.enc_tokens, strict=True):
            out.append(("guard", "bytea", values, col.column))
    for col, values in zip(legacy_columns(plan), write.legacy, strict=True):
        out.append(("guard", "legacy", values, col.legacy_column))
    return out


def _write_postgresql(plan, conn, write: Write) -> int:
    q = conn.ops.quote_name
    arrays = _columns(plan, write, tokens=False)
    legacy_types = iter(_column_db_type(plan, conn, c.legacy_column) for c in legacy_columns(plan))
    types = {"pk": _pk_type(plan, conn), "bytea": "bytea", "smallint": "smallint"}
    unnest = ", ".join(f"%b::{next(legacy_types) if t == 'legacy' else types[t]}[]" for _, t, _, _ in arrays)
    names = [f"a{i}" for i in range(len(arrays))]
    assign, guard = _set_and_guard(plan, write, arrays, names, q, "octet_length", "IS NOT DISTINCT FROM")
    sql = (
        f"UPDATE {q(plan.table)} AS t SET {assign} FROM unnest({unnest}) AS v({', '.join(names)}) "
        f"WHERE t.{q(plan.pk_column)} = v.a0" + (f" AND {guard}" if guard else "")
    )
    # %b: binary arrays. With %s psycopg dumps a list in text format, escaping every bytea
    # element in Python (bench: ~20 % of the engine's client time).
    with conn.wrap_database_errors, _pg_cursor(conn) as cur:
        cur.execute(sql, [values for _, _, values, _ in arrays], binary=True)
        return cur.rowcount


def _column_db_type(plan: ModelPlan, conn, column: str) -> str:
    field = next(f for f in plan.model._meta.concrete_fields if f.column == column)
    return field.cast_db_type(conn)


def _write_sqlite(plan, conn, write: Write) -> int:
    q = conn.ops.quote_name
    arrays = _columns(plan, write, tokens=True)
    width = len(arrays)
    names = [f"column{i + 1}" for i in range(width)]  # SQLite's names for VALUES columns
    assign, guard = _set_and_guard(plan, write, arrays, names, q, "length", "IS")
    rows = list(zip(*[values for _, _, values, _ in arrays], strict=True))
    total = 0
    # SQLite allows 32766 bound parameters per statement.
    step = max(1, 32000 // width)
    with conn.cursor() as cur:
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            values = ", ".join("(" + ", ".join(["%s"] * width) + ")" for _ in part)
            sql = (
                f"UPDATE {q(plan.table)} AS t SET {assign} FROM (VALUES {values}) AS v "
                f"WHERE t.{q(plan.pk_column)} = v.column1" + (f" AND {guard}" if guard else "")
            )
            cur.execute(sql, [x for row in part for x in row])
            total += cur.rowcount
    return total


def _write_generic(plan, conn, write: Write) -> int:  # pragma: no cover - MySQL/Oracle path
    """One UPDATE per row, setting only the columns that change in that row."""
    q = conn.ops.quote_name
    guards = [
        (values, column) for role, _, values, column in _columns(plan, write, tokens=True) if role == "guard"
    ]
    total = 0
    with conn.cursor() as cur:
        for k, pk in enumerate(write.pks):
            sets, params = [], []
            for col, new in [*write.enc, *write.idx]:
                if new[k] is KEEP:
                    continue
                if new[k] == CLEAR:
                    sets += [f"{q(col.column)} = NULL", f"{q(col.version_column)} = NULL"]
                else:
                    sets += [f"{q(col.column)} = %s", f"{q(col.version_column)} = %s"]
                    params += [new[k], col.target]
            sets += _clear_legacy(plan, q)
            if not sets:
                continue
            where = [f"{q(plan.pk_column)} = %s"]
            params.append(pk)
            for values, column in guards:
                where.append(f"({q(column)} = %s OR ({q(column)} IS NULL AND %s IS NULL))")
                params += [values[k], values[k]]
            cur.execute(f"UPDATE {q(plan.table)} SET {', '.join(sets)} WHERE {' AND '.join(where)}", params)
            total += cur.rowcount
    return total
