"""SQLite: no row locks and one writer, so one worker; ``UPDATE … FROM (VALUES …)`` per batch.

Nothing is locked between the claim and the write, so every row's write is guarded by its old key
versions *and its old ciphertexts*: a value the application rewrote in between — even by a process
whose keyring cache still writes the old version — is left alone and examined again later.
"""

from __future__ import annotations

from typing import ClassVar

from ..batch import Write, layout, legacy_columns
from ..plan import ModelPlan
from .base import BaseDialect, set_and_guard, write_arrays

#: SQLite allows 32766 bound parameters per statement; a batch wider than this is cut in parts.
MAX_PARAMETERS = 32000


class SQLite(BaseDialect):
    vendors: ClassVar[tuple[str, ...]] = ("sqlite",)

    def select_list(self, plan: ModelPlan) -> list[str]:
        """A legacy column is read as ``+column``: an expression has no declared type, so sqlite3
        applies none of the converters Django registers by type name (``time``, ``date``,
        ``datetime``, ``bool``). The row then holds the stored value itself, which the write's
        guard binds back (no adapter exists for ``datetime.time``, and a converted value need not
        spell the stored text), and :func:`keyrotation.legacy.from_db` applies Django's
        converters to it."""
        q = self.quote
        legacy = {c.legacy_column for c in legacy_columns(plan)}
        return [f"+{q(c)}" if c in legacy else q(c) for c in layout(plan).columns]

    def write_guarded(self, plan: ModelPlan, write: Write) -> int:
        q = self.quote
        arrays = write_arrays(plan, write, tokens=self.guards_tokens)
        width = len(arrays)
        names = [f"column{i + 1}" for i in range(width)]  # SQLite's names for VALUES columns
        clauses, guard = set_and_guard(plan, write, arrays, names, q, "length", "IS")
        rows = list(zip(*[a.values for a in arrays], strict=True))
        total = 0
        step = max(1, MAX_PARAMETERS // width)
        with self.driver_cursor() as cur:
            for start in range(0, len(rows), step):
                part = rows[start : start + step]
                values = ", ".join("(" + ", ".join(["%s"] * width) + ")" for _ in part)
                sql = (
                    f"UPDATE {q(plan.table)} AS t SET {clauses} FROM (VALUES {values}) AS v "
                    f"WHERE t.{q(plan.pk_column)} = v.column1" + (f" AND {guard}" if guard else "")
                )
                cur.execute(sql, [x for row in part for x in row])
                total += cur.rowcount
        return total
