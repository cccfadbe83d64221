"""Turning a batch of claimed rows into its new values: no SQL, no model instances.

Rows come in the layout of :func:`keyrotation.engine.batch.layout`, every position read from it.
A bound column (``bind_to``) is opened with its row's bound value and sealed again as format 0x02,
which also binds a value written before ``bind_to`` was set. The result, a
:class:`~keyrotation.engine.batch.Write`, is column by column (what one set-based ``UPDATE``
takes) and carries only the columns that change in this batch, with the guards: old versions,
old ciphertexts and legacy values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections

from .. import crypto, keyring
from ..exceptions import KEKUnavailable, KeyRotationError
from ..tracebacks import forgets_locals
from .batch import CLEAR, KEEP, PK, Row, Write, extra_sources, layout, legacy_columns
from .plan import EncColumn, ModelPlan

_V2 = bytes([crypto.FORMAT_V2])  # the first byte of a bound value (a token may be empty)


@dataclass(frozen=True)
class RowFailure:
    """A value that cannot be opened: where it is, never what it is."""

    label: str
    pk: Any
    version: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.label} pk={self.pk!r} key version={self.version}: {self.reason}"


class Rings:
    """Keyrings of one purpose for one batch: listed once, re-listed only for a version they lack."""

    def __init__(self, purpose: str = "encrypt") -> None:
        self.purpose = purpose
        self._rings: dict[str, keyring.Keyring] = {}

    def get(self, name: str, version: int) -> keyring.Keyring:
        ring = self._rings.get(name)
        if ring is None or not ring.knows(version):
            ring = self._rings[name] = keyring.keyring_for_version(name, self.purpose, version)
        return ring


def open_value(
    col: EncColumn, pk: Any, token: bytes, version: int | None, rings: Rings, bound_to: bytes | None = None
) -> bytes:
    """Decrypt a stored value whose version column says ``version``; RowFailureError if not.

    ``bound_to``: the row's binding, for a column with ``bind_to`` (a 0x01 value opens without it).
    """
    try:
        fmt, header_version = crypto.token_header(token)
    except crypto.InvalidToken:
        raise RowFailureError(RowFailure(col.label, pk, version, "malformed value")) from None
    if header_version != version:
        raise RowFailureError(RowFailure(col.label, pk, version, f"header names version {header_version}"))
    if fmt == crypto.FORMAT_V2 and bound_to is None:
        reason = "value bound to its row (format 0x02) in a field without bind_to"
        raise RowFailureError(RowFailure(col.label, pk, version, reason))
    ring = rings.get(col.keyring, header_version)
    try:
        cipher = ring.cipher(header_version, col.label)
        if fmt == crypto.FORMAT_V2:
            return cipher.decrypt_bound(token, bound_to)
        return cipher.decrypt(token)
    except crypto.InvalidToken:
        raise RowFailureError(RowFailure(col.label, pk, version, "authentication failed")) from None
    except KEKUnavailable:
        raise
    except KeyRotationError as exc:  # unknown / retired / destroyed version
        raise RowFailureError(RowFailure(col.label, pk, version, type(exc).__name__)) from None


def adopt_value(col: EncColumn, pk: Any, raw: Any, using: str) -> bytes:
    """Canonical plaintext bytes of a legacy value; RowFailureError (no value in it) if it does not decode."""
    from django.db import connections

    from ..legacy import LegacyDecodeError

    try:
        return col.legacy(raw, connections[using])
    except LegacyDecodeError as exc:
        failure = RowFailure(col.label, pk, None, f"legacy value does not decode: {exc}")
        raise RowFailureError(failure) from None


class BatchTransformer:
    """Per-batch helper: keeps keyrings and ciphers at hand so rows cost only AES and HMAC."""

    def __init__(self, plan: ModelPlan, using: str = "default"):
        self.plan = plan
        self.using = using
        self.legacy = legacy_columns(plan)
        self.extra = extra_sources(plan)
        self.layout = layout(plan)
        self.rings = Rings()
        enc_rings = {c.keyring: keyring.get_keyring(c.keyring, "encrypt") for c in plan.enc}
        idx_rings = {c.keyring: keyring.get_keyring(c.keyring, "index") for c in plan.idx}
        # Target keys resolved once: a target that is no longer usable fails the batch early.
        self._enc_target = {c.label: enc_rings[c.keyring].cipher(c.target, c.label) for c in plan.enc}
        self._idx_target = {c.label: idx_rings[c.keyring].subkey(c.target, c.label) for c in plan.idx}
        self._decrypt: dict[tuple[str, int], Any] = {}  # (label, version) -> Cipher.decrypt
        self._bound_ciphers: dict[tuple[str, int], crypto.Cipher] = {}  # the same, bound columns

    def _open(self, col: EncColumn, pk: Any, token: bytes, version: int | None) -> bytes:
        """:func:`open_value`, with the cipher of (column, version) kept after its first success."""
        dec = self._decrypt.get((col.label, version))
        if dec is not None:
            try:
                return dec(token)
            except crypto.InvalidToken:
                pass  # open_value says precisely why
        plaintext = open_value(col, pk, token, version, self.rings)
        ring = self.rings.get(col.keyring, version)
        self._decrypt[(col.label, version)] = ring.cipher(version, col.label).decrypt
        return plaintext

    def _open_bound(
        self, col: EncColumn, pk: Any, token: bytes, version: int | None, bound_to: bytes | None
    ) -> bytes:
        """:func:`open_value` of a bound column's value (either format) with its row's binding,
        the cipher of (column, version) kept after its first success."""
        if bound_to is None:
            raise RowFailureError(RowFailure(col.label, pk, version, "no bound value"))
        cipher = self._bound_ciphers.get((col.label, version))
        if cipher is not None:
            try:
                if token[:1] == _V2:
                    return cipher.decrypt_bound(token, bound_to)
                return cipher.decrypt(token)
            except crypto.InvalidToken:
                pass  # open_value says precisely why
        plaintext = open_value(col, pk, token, version, self.rings, bound_to)
        ring = self.rings.get(col.keyring, version)
        self._bound_ciphers[(col.label, version)] = ring.cipher(version, col.label)
        return plaintext

    def _bindings(self, rows: list[Row], col: EncColumn) -> list[bytes | None]:
        """Each row's binding for ``col`` (None where the bound value is missing or unusable)."""
        at = self.layout.bound_at(col)
        connection = connections[self.using]
        out: list[bytes | None] = []
        for r in rows:
            try:
                out.append(col.binding(r[at], connection))
            except (ValueError, TypeError, ValidationError):
                out.append(None)
        return out

    def transform(self, row: Row) -> Write:
        """One row (tests, fuzzing); raises RowFailureError for an unopenable value."""
        return self.transform_batch([row])[0]

    @forgets_locals  # ``plaintexts``: every value of the batch opened so far
    def transform_batch(self, rows: list[Row], *, stop: bool = True) -> tuple[Write, list[RowFailure]]:
        """The batch's :class:`Write` and the rows that failed (left out of the write).

        ``stop``: raise RowFailureError at the first value that cannot be opened, instead of
        collecting it.
        """
        plan, n = self.plan, len(rows)
        failed: dict[int, RowFailure] = {}

        def fail(k: int, exc: RowFailureError) -> None:
            if stop:
                raise exc
            failed.setdefault(k, exc.failure)

        lay = self.layout
        pks = [r[PK] for r in rows]
        legacy_values = {
            c.label: [r[at] for r in rows] for c, at in zip(self.legacy, lay.legacy, strict=True)
        }
        write = Write(pks, legacy=list(legacy_values.values()))
        # label -> (tokens, versions, plaintexts, bindings (None for an unbound column))
        sources: dict[str, tuple[list, list, list, list | None]] = {}

        for col, at in zip(plan.enc, lay.enc, strict=True):
            tokens = [r[at.value] for r in rows]
            versions = [r[at.version] for r in rows]
            write.enc_tokens.append(tokens)
            write.enc_versions.append(versions)
            plaintexts: list[bytes | None] = [None] * n
            bindings = self._bindings(rows, col) if col.bound_column else None
            sources[col.label] = (tokens, versions, plaintexts, bindings)
            legacy = legacy_values.get(col.label)
            new: list[bytes | None] = [KEEP] * n
            todo = []
            target, fmt = col.target, bytes([col.format])
            for k in range(n):
                token, version = tokens[k], versions[k]
                try:
                    if token is None:
                        if legacy is not None and legacy[k] is not None:  # adoption
                            if bindings is not None and bindings[k] is None:
                                raise RowFailureError(RowFailure(col.label, pks[k], None, "no bound value"))
                            plaintexts[k] = adopt_value(col, pks[k], legacy[k], self.using)
                            todo.append(k)
                        elif version is not None:
                            new[k] = CLEAR  # a version recorded for no value
                        continue
                    if version == target and (bindings is None or token[:1] == fmt):
                        continue
                    if version is None:  # a default a migration filled in: its header says
                        version = crypto.header_version(token)
                    if bindings is None:
                        plaintexts[k] = self._open(col, pks[k], token, version)
                    else:
                        plaintexts[k] = self._open_bound(col, pks[k], token, version, bindings[k])
                    todo.append(k)
                except RowFailureError as exc:
                    fail(k, exc)
            if todo:
                cipher = self._enc_target[col.label]
                values = [plaintexts[k] for k in todo]
                if bindings is None:
                    sealed = cipher.encrypt_many(values)
                else:
                    sealed = cipher.encrypt_many_bound(values, [bindings[k] for k in todo])
                for k, token in zip(todo, sealed, strict=True):
                    new[k] = token
            write.enc.append((col, new))

        for src, at in zip(self.extra, lay.extra, strict=True):
            bindings = self._bindings(rows, src) if src.bound_column else None
            tokens, versions = [r[at.value] for r in rows], [r[at.version] for r in rows]
            sources[src.label] = (tokens, versions, [None] * n, bindings)

        for col, at in zip(plan.idx, lay.idx, strict=True):
            digests = [r[at.value] for r in rows]
            versions = [r[at.version] for r in rows]
            tokens, src_versions, plaintexts, bindings = sources[col.source.label]
            key, length, target = self._idx_target[col.label], col.length, col.target
            new = [KEEP] * n
            for k in range(n):
                if tokens[k] is None and plaintexts[k] is None:  # no value: no index either
                    if digests[k] is not None or versions[k] is not None:
                        new[k] = CLEAR
                    continue
                if versions[k] == target:
                    continue
                try:
                    if plaintexts[k] is None and bindings is None:
                        plaintexts[k] = self._open(col.source, pks[k], tokens[k], src_versions[k])
                    elif plaintexts[k] is None:
                        plaintexts[k] = self._open_bound(
                            col.source, pks[k], tokens[k], src_versions[k], bindings[k]
                        )
                except RowFailureError as exc:
                    fail(k, exc)
                    continue
                new[k] = crypto.blind_index(key, col.index_input(plaintexts[k]), length)
            write.idx.append((col, new))
            write.idx_versions.append(versions)

        # Only rows with something to write, and only the columns that change.
        news = [new for _, new in write.enc + write.idx]
        keep = [
            k
            for k in range(n)
            if k not in failed
            and (any(new[k] is not KEEP for new in news) or any(v[k] is not None for v in write.legacy))
        ]
        if len(keep) < n:
            write = write.keep(keep)
        written_idx = [i for i, (_, new) in enumerate(write.idx) if any(v is not KEEP for v in new)]
        write.idx = [write.idx[i] for i in written_idx]
        write.idx_versions = [write.idx_versions[i] for i in written_idx]
        write.enc = [(c, new) for c, new in write.enc if any(v is not KEEP for v in new)]
        return write, [failed[k] for k in sorted(failed)]


class RowFailureError(KeyRotationError):
    def __init__(self, failure: RowFailure):
        self.failure = failure
        super().__init__(f"cannot decrypt {failure}")
