"""MySQL 8.0+ and MariaDB 10.6+ (InnoDB): claims with ``SELECT … FOR UPDATE SKIP LOCKED``, one
``UPDATE … JOIN`` of the batch's values per batch.

On MariaDB the batch's values are a table value constructor (``WITH v (a0, a1, …) AS (VALUES
(…), (…))``) and the statement is ``UPDATE t STRAIGHT_JOIN (…) AS v ON t.pk = v.a0 SET … WHERE
t.pk IN (<the batch's pks>) AND <guard>``, because of what the bench measured (100k rows, 2,000
per batch): with the derived table first in the join order (what the optimizer picks without
``STRAIGHT_JOIN``), MariaDB cannot update the rows as it finds them and buffers every new value
in an on-disk temporary table first; with the table first, read by its primary key for exactly
the batch's rows, it updates each row in place. Two things would bring the temporary table back,
and are turned off: a batch covering most of a small table makes the optimizer scan the whole
table instead (``FORCE INDEX (PRIMARY)``), and an ``IN`` list of 1,000 values or more becomes
a subquery (``in_predicate_conversion_threshold``, set to 0 for this statement only by ``SET
STATEMENT``). Reading exactly the claimed rows (never a range of primary keys, nor the whole
table) also keeps the write from waiting on a row that another transaction holds locked and the
claim skipped. Values are literals: bytes as hex
(``X'…'``, a binary string, never read as text in the connection's character set; escaping each
byte costs the client more), integers as digits, anything else bound by the driver.

On MySQL the values are a derived table of one ``SELECT`` per row (``SELECT %s AS a0, %s AS a1,
… UNION ALL SELECT %s, %s, …``), MySQL's ``VALUES ROW(…)`` not being MariaDB's ``VALUES (…)``;
binary values are bound with the ``_binary`` introducer.

The claim locks its rows until the batch commits, so, as on PostgreSQL, a write is guarded by the
rows' old key versions (and legacy values) with the null-safe ``<=>``; a row deleted meanwhile
has nothing to join and stays deleted. The count is the rows the join matched and the guard let
through: Django opens MySQL connections with ``CLIENT.FOUND_ROWS`` (matched rows); without that
flag the server counts changed rows, which here are the same rows, since every written row gets
a new ciphertext or version.

No pipelining (:attr:`MySQL.pipelines` is False): two batches in flight per worker, measured on
MariaDB (100k rows, a 2-core machine shared with other work), finished 6 to 14 % sooner (medians
of two series) while each batch held its row locks about twice as long; not worth it, so a
worker writes one batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from ..batch import Row, Write
from ..plan import ModelPlan
from .base import BaseDialect, set_and_guard, write_arrays

#: The final sweep's bound on a wait for row locks (``innodb_lock_wait_timeout``, seconds).
SWEEP_LOCK_WAIT_SECONDS = 10
#: A batch is cut in statements of at most about this many bytes of values (of their SQL, on
#: MariaDB: hex doubles a ciphertext), well under the servers' default ``max_allowed_packet``
#: (16 MiB on MariaDB, 64 MiB on MySQL 8).
MAX_STATEMENT_BYTES = 4 * 1024 * 1024
#: The session variable that holds ``innodb_lock_wait_timeout`` while a sweep claim bounds it.
_SAVED_WAIT = "@keyrotation_lock_wait"


class MySQL(BaseDialect):
    vendors: ClassVar[tuple[str, ...]] = ("mysql",)
    guards_tokens: ClassVar[bool] = False

    def select_batch(
        self, plan: ModelPlan, lo: Any, hi: Any, limit: int, *, lock: bool = True, skip: bool = True
    ) -> list[Row]:
        """The claim of :class:`~.base.BaseDialect`; after a claim that waited for row locks, the
        session's lock wait is what it was before :meth:`limit_lock_wait`."""
        try:
            return super().select_batch(plan, lo, hi, limit, lock=lock, skip=skip)
        finally:
            if lock and not skip:
                with self.connection.cursor() as cur:
                    cur.execute(
                        "SET SESSION innodb_lock_wait_timeout = "
                        f"COALESCE({_SAVED_WAIT}, @@SESSION.innodb_lock_wait_timeout), {_SAVED_WAIT} = NULL"
                    )

    def fetch(self, sql: str, params: list[Any]) -> list[Row]:
        """A claim's rows as the driver returns them: mysqlclient gives binary values as bytes
        already (the base class's copy of every value cost the bench about 4 % of its client time)."""
        with self.connection.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def write_guarded(self, plan: ModelPlan, write: Write) -> int:
        q = self.quote
        arrays = write_arrays(plan, write, tokens=self.guards_tokens)
        names = [f"a{i}" for i in range(len(arrays))]
        clauses, guard = set_and_guard(plan, write, arrays, names, q, "LENGTH", "<=>")
        rows = list(zip(*[a.values for a in arrays], strict=True))
        if self.connection.mysql_is_mariadb:
            statements = self._mariadb_updates(plan, rows, names, clauses, guard)
        else:
            statements = (self._mysql_update(plan, part, names, clauses, guard) for part in _parts(rows))
        total = 0
        with self.driver_cursor() as cur:
            for sql, params in statements:
                cur.execute(sql, params or None)
                total += cur.rowcount
        return total

    def _mariadb_updates(
        self, plan: ModelPlan, rows: list[tuple], names: list[str], clauses: str, guard: str
    ) -> Iterator[tuple[str, list[Any]]]:
        """``UPDATE t … STRAIGHT_JOIN (WITH v (…) AS (VALUES …) SELECT * FROM v) AS v … WHERE
        t.pk IN (…)`` (see the module's docstring), one per :data:`MAX_STATEMENT_BYTES` of
        values, with the parameters of the values that are not literals."""
        q, pk = self.quote, f"t.{self.quote(plan.pk_column)}"
        head = (
            "SET STATEMENT in_predicate_conversion_threshold = 0 FOR "
            f"UPDATE {q(plan.table)} AS t FORCE INDEX (PRIMARY) STRAIGHT_JOIN "
            f"(WITH v ({', '.join(names)}) AS (VALUES "
        )
        middle = f") SELECT * FROM v) AS v ON {pk} = v.a0 SET {clauses} WHERE {pk} IN ("
        end = ")" + (f" AND {guard}" if guard else "")
        values: list[str] = []
        pks: list[str] = []
        params: list[Any] = []
        pk_params: list[Any] = []
        size = 0
        for row in rows:
            row_params: list[Any] = []
            value = "(" + ", ".join([_literal(v, row_params) for v in row]) + ")"
            if values and size + len(value) > MAX_STATEMENT_BYTES:
                yield head + ", ".join(values) + middle + ", ".join(pks) + end, params + pk_params
                values, pks, params, pk_params, size = [], [], [], [], 0
            values.append(value)
            params += row_params
            pks.append(_literal(row[0], pk_params))
            size += len(value)
        yield head + ", ".join(values) + middle + ", ".join(pks) + end, params + pk_params

    def _mysql_update(
        self, plan: ModelPlan, rows: list[tuple], names: list[str], clauses: str, guard: str
    ) -> tuple[str, list[Any]]:
        """``UPDATE t JOIN (SELECT … UNION ALL SELECT …) AS v …``: see the module's docstring."""
        q = self.quote
        selects, params = [], []
        for k, row in enumerate(rows):
            cells = []
            for value, name in zip(row, names, strict=True):
                # Any bytes value (a legacy column's too) is bound as binary, never read as text.
                binary = isinstance(value, (bytes, bytearray, memoryview))
                cell = "NULL" if value is None else ("_binary %s" if binary else "%s")
                if value is not None:
                    params.append(value)
                cells.append(f"{cell} AS {name}" if k == 0 else cell)
            selects.append("SELECT " + ", ".join(cells))
        sql = (
            f"UPDATE {q(plan.table)} AS t JOIN ({' UNION ALL '.join(selects)}) AS v "
            f"ON t.{q(plan.pk_column)} = v.a0 SET {clauses}" + (f" WHERE {guard}" if guard else "")
        )
        return sql, params

    def limit_lock_wait(self) -> None:
        """Bound the sweep claim's wait for row locks (``innodb_lock_wait_timeout`` is a session
        setting, not a transaction's: :meth:`select_batch` puts the previous value back)."""
        with self.connection.cursor() as cur:
            cur.execute(
                f"SET {_SAVED_WAIT} = @@SESSION.innodb_lock_wait_timeout, "
                "SESSION innodb_lock_wait_timeout = %s",
                [SWEEP_LOCK_WAIT_SECONDS],
            )


def _literal(value: Any, params: list[Any]) -> str:
    """The SQL of ``value`` in a MariaDB write: NULL, ``X'<hex>'`` for bytes, digits for an
    integer; anything else is a placeholder, its value appended to ``params``."""
    if value is None:
        return "NULL"
    kind = type(value)
    if kind is bytes:
        return "X'" + value.hex() + "'"
    if kind is int:  # not bool, whose str() is not SQL
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "X'" + bytes(value).hex() + "'"
    params.append(value)
    return "%s"


def _parts(rows: list[tuple]) -> list[list[tuple]]:
    """``rows`` in consecutive parts of at most about :data:`MAX_STATEMENT_BYTES` of values each
    (one part for any ordinary batch)."""
    parts: list[list[tuple]] = [[]]
    size = 0
    for row in rows:
        width = sum(2 * len(v) + 16 if isinstance(v, (bytes, str)) else 24 for v in row)
        if parts[-1] and size + width > MAX_STATEMENT_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(row)
        size += width
    return parts
