"""``verify``: open every stored value and recompute every blind index, changing nothing."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import connections

from .. import crypto, databases, keyring
from ..exceptions import KeyRotationError
from ..tracebacks import forgets_locals
from . import plan as _plan
from .batch import PK, Row, extra_sources, layout, legacy_columns
from .db_errors import reading
from .transform import Rings, RowFailure, RowFailureError, open_value


def verify(
    models: list[str] | None = None, *, batch_size: int = 2000, database: str | None = None, limit: int = 100
) -> dict:
    """Open every stored value and recompute every blind index; report what does not match.

    A row that still holds a legacy value (``EncryptedField(adopt_from=...)``) is reported as not
    adopted. A field with ``bind_to`` opens each value with its row's bound value, so a value moved
    from another row is reported (as an authentication failure: nothing can tell it apart from
    tampering), and so is a value still in format 0x01 there (not bound yet: written before
    ``bind_to`` was set, or put back from an old copy).
    ``header_versions`` counts, per encrypted column, the values by the key version their
    ciphertext header names, whatever their version column says (a mismatch is also a failure).

    Reads in primary-key batches without locks, on every database that holds each model (or on
    ``database`` only; failures then start with ``[alias]`` when there are several); changes
    nothing. Failures name label, pk and version only.

    Raises:
        EngineDatabaseError: a database refused a read (or is out of reach).
    """
    keyring.invalidate()
    return reading("verify", database, lambda: _verify(models, batch_size, database, limit))


@forgets_locals  # ``rows`` may hold legacy plaintexts, a check the opened values
def _verify(models: list[str] | None, batch_size: int, database: str | None, limit: int) -> dict:
    failures: list[str] = []
    checked = 0
    headers: dict[str, dict[str, int]] = {}
    plans = _plan.build(models)
    where = databases.holding_all([p.model for p in plans], only=database)
    several = len({alias for aliases in where.values() for alias in aliases}) > 1
    for p in plans:
        for alias in where[p.model]:
            verifier = _Verifier(p, headers, alias)
            cursor = None
            while True:
                rows = _verify_batch(p, alias, cursor, batch_size)
                if not rows:
                    break
                for row in rows:
                    checked += 1
                    found = verifier.check(row)
                    failures.extend(f"[{alias}] {f}" if several else f for f in found)
                cursor = rows[-1][PK]
    return {
        "rows_checked": checked,
        "failures": failures[:limit],
        "failure_count": len(failures),
        "header_versions": headers,
    }


def _verify_batch(p: _plan.ModelPlan, using: str, cursor, batch_size: int) -> list[Row]:
    """Rows after ``cursor`` in pk order, pending or not, in the layout's order; no lock."""
    conn = connections[using]
    q = conn.ops.quote_name
    cols = layout(p).columns
    where, params = "", []
    if cursor is not None:
        where, params = f"WHERE {q(p.pk_column)} > %s", [cursor]
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {', '.join(q(c) for c in cols)} FROM {q(p.table)} {where} "
            f"ORDER BY {q(p.pk_column)} LIMIT %s",
            [*params, batch_size],
        )
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in cur.fetchall()]


class _Verifier:
    def __init__(self, p, headers: dict[str, dict[str, int]], using: str = "default"):
        self.plan = p
        self.extra = extra_sources(p)
        self.layout = layout(p)
        self.connection = connections[using]
        self.rings = Rings()
        self.index_rings = Rings("index")
        self.headers = headers

    def _count_header(self, label: str, token) -> None:
        try:
            version = str(crypto.token_version(bytes(token)))
        except crypto.InvalidToken:
            version = "malformed"
        per_version = self.headers.setdefault(label, {})
        per_version[version] = per_version.get(version, 0) + 1

    def check(self, row) -> list[str]:
        p, lay, out = self.plan, self.layout, []
        pk = row[PK]
        values: dict[str, tuple] = {}
        for col, at in zip(p.enc, lay.enc, strict=True):
            values[col.label] = (col, row[at.value], row[at.version])
        idx = [(col, row[at.value], row[at.version]) for col, at in zip(p.idx, lay.idx, strict=True)]
        extra_labels = set()
        for src, at in zip(self.extra, lay.extra, strict=True):
            values[src.label] = (src, row[at.value], row[at.version])
            extra_labels.add(src.label)
        for col, at in zip(legacy_columns(p), lay.legacy, strict=True):
            if row[at] is not None:
                out.append(f"{col.label} pk={pk!r}: legacy value not adopted yet")
        plaintexts = {}
        for label, (col, token, version) in values.items():
            if token is None:
                if version is not None:
                    out.append(f"{label} pk={pk!r}: version {version} recorded for an empty value")
                continue
            if label not in extra_labels:
                self._count_header(label, token)
            try:
                plaintexts[label] = open_value(
                    col, pk, bytes(token), version, self.rings, self._binding(col, row)
                )
            except RowFailureError as exc:
                out.append(str(exc.failure))
                continue
            if col.bound_column and token[0] != col.format:
                out.append(
                    f"{label} pk={pk!r} key version={version}: value not bound to its row (format 0x01)"
                )
        for col, digest, version in idx:
            pt = plaintexts.get(col.source.label)
            if values[col.source.label][1] is None:
                if digest is not None:
                    out.append(f"{col.label} pk={pk!r}: index present for an empty value")
                continue
            if pt is None:
                continue  # the source failure is already reported
            if version is None or digest is None:
                out.append(f"{col.label} pk={pk!r}: missing blind index")
                continue
            try:
                ring = self.index_rings.get(col.keyring, version)
                expected = crypto.blind_index(
                    ring.subkey(version, col.label), col.index_input(pt), col.length
                )
            except KeyRotationError as exc:
                out.append(f"{col.label} pk={pk!r} key version={version}: {type(exc).__name__}")
                continue
            if bytes(digest) != expected:
                out.append(f"{col.label} pk={pk!r} key version={version}: blind index does not match")
        return out

    def _binding(self, col, row) -> bytes | None:
        """The row's binding for a bound column (None for an unbound one).

        Raises:
            RowFailureError: the row has no usable bound value.
        """
        if not col.bound_column:
            return None
        try:
            return col.binding(row[self.layout.bound_at(col)], self.connection)
        except (ValueError, TypeError, ValidationError):
            raise RowFailureError(RowFailure(col.label, row[PK], None, "no bound value")) from None
