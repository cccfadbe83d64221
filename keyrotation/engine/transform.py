"""Turning one claimed row into its new values: no SQL, no model instances.

Row layout is the one of :func:`engine.sql.read_columns`: pk, (value, version) per encrypted
column, (value, version) per index column, (value, version) per extra index source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import crypto, keyring
from ..exceptions import KEKUnavailable, KeyRotationError
from .plan import EncColumn, ModelPlan
from .sql import extra_sources


@dataclass(frozen=True)
class RowFailure:
    """A value that cannot be opened: where it is, never what it is."""

    label: str
    pk: Any
    version: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.label} pk={self.pk!r} key version={self.version}: {self.reason}"


def open_value(col: EncColumn, pk: Any, token: bytes, version: int | None) -> bytes:
    """Decrypt a stored value whose version column says ``version``; RowFailureError if not."""
    try:
        header_version = crypto.token_version(token)
    except crypto.InvalidToken:
        raise RowFailureError(RowFailure(col.label, pk, version, "malformed value")) from None
    if header_version != version:
        raise RowFailureError(RowFailure(col.label, pk, version, f"header names version {header_version}"))
    ring = keyring.keyring_for_version(col.keyring, "encrypt", header_version)
    try:
        return crypto.decrypt(ring.subkey(header_version, col.label), col.label, token)
    except crypto.InvalidToken:
        raise RowFailureError(RowFailure(col.label, pk, version, "authentication failed")) from None
    except KEKUnavailable:
        raise
    except KeyRotationError as exc:  # unknown / retired / destroyed version
        raise RowFailureError(RowFailure(col.label, pk, version, type(exc).__name__)) from None


class BatchTransformer:
    """Per-batch helper: keeps keyrings and subkeys at hand so rows cost only AES and HMAC."""

    def __init__(self, plan: ModelPlan):
        self.plan = plan
        self.extra = extra_sources(plan)
        self._enc_rings = {c.keyring: keyring.get_keyring(c.keyring, "encrypt") for c in plan.enc}
        self._idx_rings = {c.keyring: keyring.get_keyring(c.keyring, "index") for c in plan.idx}
        # Target subkeys resolved once: a target that is no longer usable fails the batch early.
        self._enc_target = {c.label: self._enc_rings[c.keyring].subkey(c.target, c.label) for c in plan.enc}
        self._idx_target = {c.label: self._idx_rings[c.keyring].subkey(c.target, c.label) for c in plan.idx}
        # (label, version) -> subkey of a version that already opened a value in this batch.
        self._open_subkeys: dict[tuple[str, int], bytes] = {}

    def _open(self, col: EncColumn, pk: Any, token: bytes, version: int | None) -> bytes:
        """``open_value`` without the per-value keyring lookup once a version has opened a value
        in this batch. Anything but a clean decrypt takes the full path (same errors, reload)."""
        sub = self._open_subkeys.get((col.label, version))
        if sub is not None:
            try:
                if crypto.token_version(token) == version:
                    return crypto.decrypt(sub, col.label, token)
            except crypto.InvalidToken:
                pass
        pt = open_value(col, pk, token, version)
        ring = keyring.keyring_for_version(col.keyring, "encrypt", version)
        self._open_subkeys[(col.label, version)] = ring.subkey(version, col.label)
        return pt

    def transform(self, row: tuple) -> tuple[tuple, tuple]:
        """Return (new row, guard) for one row; raise RowFailureError for an unopenable value."""
        plan = self.plan
        pk = row[0]
        i = 1
        plaintexts: dict[str, bytes | None] = {}
        new: list[Any] = [pk]
        guard_versions: list[Any] = []
        guard_tokens: list[Any] = []
        for col in plan.enc:
            token, version = row[i], row[i + 1]
            i += 2
            guard_versions.append(version)
            guard_tokens.append(token)
            if token is None:
                new += [None, None]
                plaintexts[col.label] = None
                continue
            token = bytes(token)
            if version == col.target:
                new += [token, version]
                continue
            pt = self._open(col, pk, token, version)
            plaintexts[col.label] = pt
            new += [crypto.encrypt(self._enc_target[col.label], col.target, col.label, pt), col.target]
        idx_values = [(row[i + 2 * k], row[i + 2 * k + 1]) for k in range(len(plan.idx))]
        i += 2 * len(plan.idx)
        extras = {}
        for src in self.extra:
            extras[src.label] = (row[i], row[i + 1])
            i += 2
        for col, (digest, version) in zip(plan.idx, idx_values, strict=True):
            guard_versions.append(version)
            src = col.source
            if src.label in extras:
                src_token, src_version = extras[src.label]
            else:
                j = 1 + 2 * plan.enc.index(src)
                src_token, src_version = row[j], row[j + 1]
            if src_token is None:
                new += [None, None]
                continue
            if version == col.target:
                new += [bytes(digest) if digest is not None else None, version]
                continue
            pt = plaintexts.get(src.label)
            if pt is None:
                pt = self._open(src, pk, bytes(src_token), src_version)
                plaintexts[src.label] = pt
            value = crypto.blind_index(self._idx_target[col.label], col.index_input(pt), col.length)
            new += [value, col.target]
        return tuple(new), tuple(guard_versions + guard_tokens)


class RowFailureError(KeyRotationError):
    def __init__(self, failure: RowFailure):
        self.failure = failure
        super().__init__(f"cannot decrypt {failure}")
