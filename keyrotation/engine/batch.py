"""What one batch is, whatever the database: the row layout of its reads and the value of its write.

A batch reads a fixed list of columns per model (:class:`RowLayout`, built once per plan by
:func:`layout`) and writes a :class:`Write`: new values column by column, with the guards that keep
the application's concurrent writes. The dialects (``engine/dialects/``) turn both into SQL; the
transform (``engine/transform.py``) and ``verify`` read rows by the positions the layout gives.
Nothing here runs SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .plan import EncColumn, IdxColumn, ModelPlan

#: New-value markers of a :class:`Write`. ``KEEP`` (None): leave this column and its version as
#: they are. ``CLEAR`` (b""): set this column and its version to NULL (never a real value: a token
#: is at least 33 bytes, a digest at least 4).
KEEP, CLEAR = None, b""

#: One row as read: values in :attr:`RowLayout.columns` order.
Row = tuple[Any, ...]

#: The primary key's position in every row: first, whatever the plan (the cursor of a batch is
#: ``rows[-1][PK]``).
PK = 0


@dataclass(frozen=True)
class Pair:
    """Positions in a row of a column's value and of its key version."""

    value: int
    version: int


@dataclass(frozen=True)
class RowLayout:
    """Where each value of a batch's row is: the one definition of the layout.

    ``columns``: the columns read, in order, the pk first (:data:`PK`). ``enc`` /
    ``idx`` / ``extra``: a :class:`Pair` per encrypted column (``plan.enc`` order), per index
    column (``plan.idx``) and per index source that is not an encrypted column of this pass
    (:func:`extra_sources`). ``legacy``: the legacy value of each of :func:`legacy_columns`.
    ``bound``: bound column -> position (the pk's among them).
    """

    columns: tuple[str, ...]
    enc: tuple[Pair, ...]
    idx: tuple[Pair, ...]
    extra: tuple[Pair, ...]
    legacy: tuple[int, ...]
    bound: Mapping[str, int]

    def bound_at(self, col: EncColumn) -> int | None:
        """Position of ``col``'s bound value (None: not bound)."""
        return self.bound[col.bound_column] if col.bound_column else None


def layout(plan: ModelPlan) -> RowLayout:
    """The layout of ``plan``'s rows: the pk, then (value, version) per encrypted column, per index
    column and per extra index source, then the legacy column of every adopting encrypted column,
    then every bound column other than the pk (first-use order)."""
    cols = [plan.pk_column]

    def pairs(columns) -> tuple[Pair, ...]:
        at = []
        for c in columns:
            at.append(Pair(len(cols), len(cols) + 1))
            cols.extend([c.column, c.version_column])
        return tuple(at)

    enc, idx, extra = pairs(plan.enc), pairs(plan.idx), pairs(extra_sources(plan))
    adopting = legacy_columns(plan)
    legacy = tuple(range(len(cols), len(cols) + len(adopting)))
    cols += [c.legacy_column for c in adopting]
    bound = {plan.pk_column: PK}
    for c in [*plan.enc, *extra_sources(plan)]:
        if c.bound_column and c.bound_column not in bound:
            bound[c.bound_column] = len(cols)
            cols.append(c.bound_column)
    return RowLayout(tuple(cols), enc, idx, extra, legacy, bound)


def legacy_columns(plan: ModelPlan) -> list[EncColumn]:
    """Encrypted columns of ``plan`` that adopt a legacy column."""
    return [c for c in plan.enc if c.legacy_column]


def extra_sources(plan: ModelPlan) -> list[EncColumn]:
    """Sources of ``plan``'s index columns that are not encrypted columns of this pass (read to
    recompute an index, never written)."""
    enc_labels = {c.label for c in plan.enc}
    seen, out = set(), []
    for c in plan.idx:
        if c.source.label not in enc_labels and c.source.label not in seen:
            seen.add(c.source.label)
            out.append(c.source)
    return out


@dataclass
class Write:
    """One batch's writes, column by column, rows in pk order.

    ``enc`` / ``idx``: the columns written in this batch with their new values (``KEEP``,
    ``CLEAR`` or the new bytes; the version column is set to the column's target with them).
    Guards: ``enc_versions`` / ``enc_tokens`` (every encrypted column of the plan),
    ``idx_versions`` (the written index columns), ``legacy`` (every adopting column). A dialect
    with row locks guards by versions (and legacy values); one without guards by the old
    ciphertexts too.
    """

    pks: list[Any]
    enc: list[tuple[EncColumn, list[bytes | None]]] = field(default_factory=list)
    idx: list[tuple[IdxColumn, list[bytes | None]]] = field(default_factory=list)
    enc_versions: list[list[int | None]] = field(default_factory=list)
    enc_tokens: list[list[bytes | None]] = field(default_factory=list)
    idx_versions: list[list[int | None]] = field(default_factory=list)
    legacy: list[list[Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pks)

    def __repr__(self) -> str:  # no value, ever
        return f"<Write {len(self.pks)} rows: {[c.label for c, _ in self.enc + self.idx]}>"

    @property
    def empty(self) -> bool:
        """Nothing to write: no row, or no column to set."""
        return not self.pks or not (self.enc or self.idx or self.legacy)

    def keep(self, rows: list[int]) -> Write:
        """The same write restricted to the row positions ``rows``."""

        def pick(values: list) -> list:
            return [values[k] for k in rows]

        return Write(
            pick(self.pks),
            [(c, pick(v)) for c, v in self.enc],
            [(c, pick(v)) for c, v in self.idx],
            [pick(v) for v in self.enc_versions],
            [pick(v) for v in self.enc_tokens],
            [pick(v) for v in self.idx_versions],
            [pick(v) for v in self.legacy],
        )
