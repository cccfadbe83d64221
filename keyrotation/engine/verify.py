"""``verify``: open every stored value and recompute every blind index, changing nothing."""

from __future__ import annotations

from django.db import connections

from .. import crypto, databases, keyring
from ..exceptions import KeyRotationError
from . import plan as _plan
from . import sql
from .transform import Rings, RowFailureError, open_value


def verify(
    models: list[str] | None = None, *, batch_size: int = 2000, database: str | None = None, limit: int = 100
) -> dict:
    """Open every stored value and recompute every blind index; report what does not match.

    A row that still holds a legacy value (``EncryptedField(adopt_from=...)``) is reported as not
    adopted. ``header_versions`` counts, per encrypted column, the values by the key version their
    ciphertext header names, whatever their version column says (a mismatch is also a failure).

    Reads in primary-key batches without locks, on every database that holds each model (or on
    ``database`` only; failures then start with ``[alias]`` when there are several); changes
    nothing. Failures name label, pk and version only.
    """
    keyring.invalidate()
    failures: list[str] = []
    checked = 0
    headers: dict[str, dict[str, int]] = {}
    plans = _plan.build(models)
    where = databases.holding_all([p.model for p in plans], only=database)
    several = len({alias for aliases in where.values() for alias in aliases}) > 1
    for p in plans:
        for alias in where[p.model]:
            verifier = _Verifier(p, headers)
            cursor = None
            while True:
                rows = _verify_batch(p, alias, cursor, batch_size)
                if not rows:
                    break
                for row in rows:
                    checked += 1
                    found = verifier.check(row)
                    failures.extend(f"[{alias}] {f}" if several else f for f in found)
                cursor = rows[-1][0]
    return {
        "rows_checked": checked,
        "failures": failures[:limit],
        "failure_count": len(failures),
        "header_versions": headers,
    }


def _verify_batch(p, using, cursor, batch_size):
    conn = connections[using]
    q = conn.ops.quote_name
    cols = sql.read_columns(p)
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
    def __init__(self, p, headers: dict[str, dict[str, int]]):
        self.plan = p
        self.extra = sql.extra_sources(p)
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
        p, pk, out = self.plan, row[0], []
        values: dict[str, tuple] = {}
        i = 1
        for col in p.enc:
            values[col.label] = (col, row[i], row[i + 1])
            i += 2
        idx = []
        for col in p.idx:
            idx.append((col, row[i], row[i + 1]))
            i += 2
        extra_labels = set()
        for src in self.extra:
            values[src.label] = (src, row[i], row[i + 1])
            extra_labels.add(src.label)
            i += 2
        for col in sql.legacy_columns(p):
            if row[i] is not None:
                out.append(f"{col.label} pk={pk!r}: legacy value not adopted yet")
            i += 1
        plaintexts = {}
        for label, (col, token, version) in values.items():
            if token is None:
                if version is not None:
                    out.append(f"{label} pk={pk!r}: version {version} recorded for an empty value")
                continue
            if label not in extra_labels:
                self._count_header(label, token)
            try:
                plaintexts[label] = open_value(col, pk, bytes(token), version, self.rings)
            except RowFailureError as exc:
                out.append(str(exc.failure))
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
