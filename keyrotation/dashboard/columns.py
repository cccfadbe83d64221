"""The census as the status page shows it: shares of key versions per column, columns folded
per model, and one overall figure per keyring and purpose. Pure: it reads census rows
(:func:`keyrotation.engine.plan.census_rows`), never the database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _percent(part: int, whole: int) -> float:
    """``part`` of ``whole`` in percent, rounded down to 0.1 (99.96 % is not yet 100 %)."""
    if whole <= 0:
        return 0.0
    return int(1000 * part / whole) / 10


@dataclass(frozen=True)
class Share:
    """The rows of one column under one key version (``version`` None: rows whose version is not
    known yet, a legacy value being adopted or a value with no version column)."""

    version: int | None
    rows: int
    percent: float
    active: bool

    @property
    def name(self) -> str:
        return "no version yet" if self.version is None else f"v{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "rows": self.rows, "percent": self.percent, "active": self.active}


@dataclass(frozen=True)
class ColumnFigures:
    """One encrypted column or blind index: its rows per key version."""

    label: str
    purpose: str
    keyring: str
    active_version: int
    rows: int
    on_active: int
    shares: tuple[Share, ...]
    databases: tuple[str, ...]

    @property
    def field(self) -> str:
        return self.label.rsplit(".", 1)[-1]

    @property
    def percent(self) -> float:
        return _percent(self.on_active, self.rows)

    @property
    def text(self) -> str:
        """The bar in words (its ``title`` and ``aria-label``)."""
        parts = [f"{s.name}{' (active)' if s.active else ''}: {s.rows} rows" for s in self.shares]
        return f"{self.label}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "purpose": self.purpose,
            "keyring": self.keyring,
            "active_version": self.active_version,
            "rows": self.rows,
            "on_active": self.on_active,
            "percent_active": self.percent,
            "versions": [s.as_dict() for s in self.shares],
            "databases": list(self.databases),
        }


@dataclass(frozen=True)
class ModelFigures:
    """The columns of one model that hold rows, and the labels of those that hold none."""

    model: str
    columns: tuple[ColumnFigures, ...]
    empty_columns: tuple[str, ...]

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.columns)

    @property
    def on_active(self) -> int:
        return sum(c.on_active for c in self.columns)

    @property
    def percent(self) -> float:
        return _percent(self.on_active, self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "columns": [c.as_dict() for c in self.columns],
            "empty_columns": list(self.empty_columns),
        }


@dataclass(frozen=True)
class Overall:
    """Rows on the active version against all rows, for one keyring and purpose, summed over
    every column and database that uses it (a row with three encrypted columns counts three)."""

    keyring: str
    purpose: str
    active_version: int
    rows: int
    on_active: int

    @property
    def percent(self) -> float:
        return _percent(self.on_active, self.rows) if self.rows else 100.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "keyring": self.keyring,
            "purpose": self.purpose,
            "active_version": self.active_version,
            "rows": self.rows,
            "on_active": self.on_active,
            "percent": self.percent,
        }


def column_figures(row: dict[str, Any]) -> ColumnFigures:
    """One census row (:func:`~keyrotation.engine.plan.census_rows`) as bar segments, the active
    version first, then older versions newest first, then rows with no version yet."""
    active, rows = row["active_version"], row["rows"]
    versions = sorted(
        ((int(v), n) for v, n in row["versions"].items() if n), key=lambda vn: (vn[0] != active, -vn[0])
    )
    shares = [Share(v, n, _percent(n, rows), v == active) for v, n in versions]
    unknown = rows - sum(n for _, n in versions)
    if unknown > 0:
        shares.append(Share(None, unknown, _percent(unknown, rows), False))
    return ColumnFigures(
        label=row["label"],
        purpose=row["purpose"],
        keyring=row["keyring"],
        active_version=active,
        rows=rows,
        on_active=row["on_active"],
        shares=tuple(shares),
        databases=tuple(row["databases"]),
    )


def fold(census: list[dict[str, Any]]) -> tuple[ModelFigures, ...]:
    """Columns grouped by model, in census order; a column with no row is only named. Models with
    no row at all come last."""
    grouped: dict[str, tuple[list[ColumnFigures], list[str]]] = {}
    for row in census:
        full, empty = grouped.setdefault(row["model"], ([], []))
        if row["rows"]:
            full.append(column_figures(row))
        else:
            empty.append(row["label"])
    models = [ModelFigures(m, tuple(full), tuple(empty)) for m, (full, empty) in grouped.items()]
    return tuple(sorted(models, key=lambda m: not m.columns))


def overall(census: list[dict[str, Any]]) -> tuple[Overall, ...]:
    """One :class:`Overall` per keyring and purpose, sorted by them."""
    sums: dict[tuple[str, str], list[int]] = {}
    for row in census:
        acc = sums.setdefault((row["keyring"], row["purpose"]), [row["active_version"], 0, 0])
        acc[1] += row["rows"]
        acc[2] += row["on_active"]
    return tuple(Overall(k, p, a, rows, on) for (k, p), (a, rows, on) in sorted(sums.items()))
