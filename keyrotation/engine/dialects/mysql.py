"""MySQL 8.0+ and MariaDB 10.6+ (InnoDB): claims with ``SELECT … FOR UPDATE SKIP LOCKED``, one
``UPDATE … JOIN (SELECT … UNION ALL SELECT …)`` per batch.

The batch's input is a derived table of one ``SELECT`` per row (``SELECT %s AS a0, %s AS a1, …
UNION ALL SELECT %s, %s, …``): the one row constructor both servers accept (MySQL's ``VALUES
ROW(…)`` is not MariaDB's ``VALUES (…)``). Binary values are bound with the ``_binary``
introducer, so that a ciphertext is never read as text in the connection's character set.

The claim locks its rows until the batch commits, so, as on PostgreSQL, a write is guarded by the
rows' old key versions (and legacy values) with the null-safe ``<=>``; a row deleted meanwhile
has nothing to join and stays deleted. The count is the rows the join matched and the guard let
through: Django opens MySQL connections with ``CLIENT.FOUND_ROWS`` (matched rows); without that
flag the server counts changed rows, which here are the same rows, since every written row gets
a new ciphertext or version.

No pipelining yet (:attr:`MySQL.pipelines` is False): two batches in flight per worker have not
been measured on InnoDB, so a worker writes one batch at a time.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..batch import Row, Write
from ..plan import ModelPlan
from .base import BaseDialect, set_and_guard, write_arrays

#: The final sweep's bound on a wait for row locks (``innodb_lock_wait_timeout``, seconds).
SWEEP_LOCK_WAIT_SECONDS = 10
#: A batch is cut in statements of at most about this many bytes of values, well under the
#: servers' default ``max_allowed_packet`` (16 MiB on MariaDB, 64 MiB on MySQL 8).
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

    def write_guarded(self, plan: ModelPlan, write: Write) -> int:
        q = self.quote
        arrays = write_arrays(plan, write, tokens=self.guards_tokens)
        names = [f"a{i}" for i in range(len(arrays))]
        clauses, guard = set_and_guard(plan, write, arrays, names, q, "LENGTH", "<=>")
        binary = [a.kind == "bytea" for a in arrays]
        rows = list(zip(*[a.values for a in arrays], strict=True))
        total = 0
        with self.driver_cursor() as cur:
            for part in _parts(rows):
                selects, params = [], []
                for k, row in enumerate(part):
                    cells = []
                    for value, is_binary, name in zip(row, binary, names, strict=True):
                        # A legacy column's bytes too: any bytes value is never read as text.
                        binary_value = is_binary or isinstance(value, (bytes, bytearray, memoryview))
                        cell = "NULL" if value is None else ("_binary %s" if binary_value else "%s")
                        if value is not None:
                            params.append(value)
                        cells.append(f"{cell} AS {name}" if k == 0 else cell)
                    selects.append("SELECT " + ", ".join(cells))
                sql = (
                    f"UPDATE {q(plan.table)} AS t JOIN ({' UNION ALL '.join(selects)}) AS v "
                    f"ON t.{q(plan.pk_column)} = v.a0 SET {clauses}" + (f" WHERE {guard}" if guard else "")
                )
                cur.execute(sql, params)
                total += cur.rowcount
        return total

    def limit_lock_wait(self) -> None:
        """Bound the sweep claim's wait for row locks (``innodb_lock_wait_timeout`` is a session
        setting, not a transaction's: :meth:`select_batch` puts the previous value back)."""
        with self.connection.cursor() as cur:
            cur.execute(
                f"SET {_SAVED_WAIT} = @@SESSION.innodb_lock_wait_timeout, "
                "SESSION innodb_lock_wait_timeout = %s",
                [SWEEP_LOCK_WAIT_SECONDS],
            )


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
