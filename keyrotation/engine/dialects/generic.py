"""Any other database: the claim of :class:`~.base.BaseDialect` and **one ``UPDATE`` per row**.

Correct everywhere Django runs (the same guards as the set-based dialects: old versions, old
ciphertexts, legacy values), but slow: a batch of N rows is N round trips to write, so expect
the speed of a per-row ``save()`` loop, an order of magnitude below a set-based dialect. A
database the engine is meant to move many rows on deserves its own dialect module.
"""

from __future__ import annotations

from ..batch import CLEAR, KEEP, Write
from ..plan import ModelPlan
from .base import BaseDialect, clear_legacy, write_arrays


class Generic(BaseDialect):
    def write_guarded(self, plan: ModelPlan, write: Write) -> int:
        """One UPDATE per row, setting only the columns that change in that row."""
        q = self.quote
        guards = [a for a in write_arrays(plan, write, tokens=self.guards_tokens) if a.role == "guard"]
        total = 0
        with self.driver_cursor() as cur:
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
                sets += clear_legacy(plan, q)
                if not sets:
                    continue
                where = [f"{q(plan.pk_column)} = %s"]
                params.append(pk)
                for guard in guards:
                    where.append(f"({q(guard.column)} = %s OR ({q(guard.column)} IS NULL AND %s IS NULL))")
                    params += [guard.values[k], guard.values[k]]
                sql = f"UPDATE {q(plan.table)} SET {', '.join(sets)} WHERE {' AND '.join(where)}"
                cur.execute(sql, params)
                total += cur.rowcount
        return total
