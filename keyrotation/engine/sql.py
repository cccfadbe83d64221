"""Set-based batch SQL, one place for every vendor branch.

A batch is one ``SELECT`` (claiming rows) and one ``UPDATE`` (writing them):

* PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` then ``UPDATE … FROM unnest(%s::type[], …)``,
  through a server-side-binding psycopg cursor with binary parameters (bytea travels as raw bytes,
  not hex text).
* SQLite (no row locks, one writer): ``UPDATE … FROM (VALUES …)``; every row's write is guarded by
  its old key versions *and its old ciphertext*, so a value the application rewrote between our
  read and our write — even by a process whose cache still writes the old version — is left alone
  and examined again later.
* Anything else: ``executemany`` with the same guards.

Every write is guarded by the old ``<field>_key_version`` values (DESIGN §6.2); rows whose guard
fails are simply not written and are picked up again by the final sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections

from .plan import ModelPlan

Row = tuple[Any, ...]


def quote(using: str, name: str) -> str:
    return connections[using].ops.quote_name(name)


def skip_locked(using: str) -> bool:
    features = connections[using].features
    return features.has_select_for_update and features.has_select_for_update_skip_locked


def read_columns(plan: ModelPlan) -> list[str]:
    """pk, then (value, version) per encrypted column, then (value, version) per index column,
    then the version column of index sources that are not encrypted columns of this pass."""
    cols = [plan.pk_column]
    for c in plan.enc:
        cols += [c.column, c.version_column]
    for c in plan.idx:
        cols += [c.column, c.version_column]
    for src in extra_sources(plan):
        cols += [src.column, src.version_column]
    return cols


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
    for c in plan.idx:
        parts.append(f"({q(c.version_column)} IS NULL AND {q(c.source.version_column)} IS NOT NULL)")
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
    if lo is not None:
        where.append(f"{pk} > %s")
        params.append(lo)
    if hi is not None:
        where.append(f"{pk} <= %s")
        params.append(hi)
    sql = (
        f"SELECT {', '.join(q(c) for c in read_columns(plan))} FROM {q(plan.table)} "
        f"WHERE {' AND '.join(where)} ORDER BY {pk} LIMIT %s"
    )
    params.append(limit)
    if lock and conn.features.has_select_for_update:
        sql += " FOR UPDATE"
        if skip and skip_locked(using):
            sql += " SKIP LOCKED"
    if conn.vendor == "postgresql":
        with _pg_cursor(conn) as cur:
            cur.execute(sql, params, binary=True)
            return cur.fetchall()
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cur.fetchall()]


def _pg_cursor(conn):
    import psycopg

    conn.ensure_connection()
    return psycopg.Cursor(conn.connection)  # server-side binding: binary parameters work


def write_batch(plan: ModelPlan, using: str, rows: Sequence[Row], guards: Sequence[Row]) -> int:
    """Write new values. ``rows``: (pk, then value/version pairs for enc then idx columns).
    ``guards``: per row, the old versions of every column and the old ciphertexts.
    Returns how many rows were written (guard failures are not)."""
    if not rows:
        return 0
    conn = connections[using]
    if conn.vendor == "postgresql":
        return _write_postgresql(plan, conn, rows, guards)
    if conn.vendor == "sqlite":
        return _write_sqlite(plan, conn, rows, guards)
    return _write_generic(plan, conn, rows, guards)


def _set_columns(plan: ModelPlan) -> list[str]:
    cols = []
    for c in [*plan.enc, *plan.idx]:
        cols += [c.column, c.version_column]
    return cols


def _guard_columns(plan: ModelPlan) -> list[str]:
    """Old versions of every written column, then old ciphertexts of encrypted columns."""
    return [c.version_column for c in [*plan.enc, *plan.idx]] + [c.column for c in plan.enc]


def _write_postgresql(plan, conn, rows, guards) -> int:
    q = conn.ops.quote_name
    pk_type = plan.model._meta.pk.rel_db_type(conn) if plan.model._meta.pk.is_relation else None
    pk_type = pk_type or plan.model._meta.pk.db_type(conn)
    pk_type = {"serial": "integer", "bigserial": "bigint", "smallserial": "smallint"}.get(pk_type, pk_type)
    sets = _set_columns(plan)
    guard_versions = [c.version_column for c in [*plan.enc, *plan.idx]]
    types = [pk_type] + ["bytea", "integer"] * (len(sets) // 2) + ["integer"] * len(guard_versions)
    names = ["pk"] + [f"n{i}" for i in range(len(sets))] + [f"g{i}" for i in range(len(guard_versions))]
    arrays = list(
        zip(
            *[tuple(r) + tuple(g[: len(guard_versions)]) for r, g in zip(rows, guards, strict=True)],
            strict=True,
        )
    )
    # %b: binary arrays. With %s psycopg dumps a list in text format, escaping every bytea
    # element in Python (bench: ~20 % of the engine's client time).
    unnest = ", ".join(f"%b::{t}[]" for t in types)
    assign = ", ".join(f"{q(col)} = v.n{i}" for i, col in enumerate(sets))
    guard = " AND ".join(f"t.{q(col)} IS NOT DISTINCT FROM v.g{i}" for i, col in enumerate(guard_versions))
    sql = (
        f"UPDATE {q(plan.table)} AS t SET {assign} FROM unnest({unnest}) AS v({', '.join(names)}) "
        f"WHERE t.{q(plan.pk_column)} = v.pk AND {guard}"
    )
    with _pg_cursor(conn) as cur:
        cur.execute(sql, [list(a) for a in arrays], binary=True)
        return cur.rowcount


def _write_sqlite(plan, conn, rows, guards) -> int:
    q = conn.ops.quote_name
    sets = _set_columns(plan)
    gcols = _guard_columns(plan)
    width = 1 + len(sets) + len(gcols)
    assign = ", ".join(f"{q(col)} = v.column{i + 2}" for i, col in enumerate(sets))
    guard = " AND ".join(f"t.{q(col)} IS v.column{i + 2 + len(sets)}" for i, col in enumerate(gcols))
    total = 0
    # SQLite allows 32766 bound parameters per statement.
    step = max(1, 32000 // width)
    with conn.cursor() as cur:
        for start in range(0, len(rows), step):
            part = list(zip(rows[start : start + step], guards[start : start + step], strict=True))
            values = ", ".join("(" + ", ".join(["%s"] * width) + ")" for _ in part)
            sql = (
                f"UPDATE {q(plan.table)} AS t SET {assign} FROM (VALUES {values}) AS v "
                f"WHERE t.{q(plan.pk_column)} = v.column1 AND {guard}"
            )
            cur.execute(sql, [x for r, g in part for x in (*r, *g)])
            total += cur.rowcount
    return total


def _write_generic(plan, conn, rows, guards) -> int:  # pragma: no cover - MySQL/Oracle path
    q = conn.ops.quote_name
    sets, gcols = _set_columns(plan), _guard_columns(plan)
    assign = ", ".join(f"{q(c)} = %s" for c in sets)
    guard = " AND ".join(f"({q(c)} = %s OR ({q(c)} IS NULL AND %s IS NULL))" for c in gcols)
    sql = f"UPDATE {q(plan.table)} SET {assign} WHERE {q(plan.pk_column)} = %s AND {guard}"
    params = []
    for r, g in zip(rows, guards, strict=True):
        params.append([*r[1:], r[0], *[x for v in g for x in (v, v)]])
    total = 0
    with conn.cursor() as cur:
        for p in params:
            cur.execute(sql, p)
            total += cur.rowcount
    return total
