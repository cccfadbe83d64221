"""Per keyring and purpose: the active key's age against the rotation policy, the versions still
holding values, and what the retire gate answers now for each version that still decrypts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import databases, gates, policy
from ..audit_chain import AUDIT_KEYRING
from ..models import DataKey, KeyState


@dataclass(frozen=True)
class RetireGate:
    """What the retire gate answers for one version that still decrypts: ``rows`` left under it
    (None when the gate refused before counting), and its refusal message if any."""

    version: int
    allowed: bool
    rows: int | None
    reason: str  # "" when allowed, else the gate's reason code
    message: str

    @property
    def line(self) -> str:
        if self.allowed:
            return f"v{self.version}: no rows left — can be retired"
        if self.reason == "referenced":
            return f"v{self.version}: {self.rows:,} rows left — retire refused"
        return f"v{self.version}: retire refused — {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "allowed": self.allowed,
            "rows": self.rows,
            "reason": self.reason,
            "message": self.message,
            "line": self.line,
        }


@dataclass(frozen=True)
class KeyFigures:
    """One keyring and purpose: its active version's age, the versions still holding rows (by
    the census), and the retire gate of each version that still decrypts."""

    keyring: str
    purpose: str
    age: policy.KeyAge
    holding: tuple[tuple[int, int], ...]  # (version, rows), newest first
    gates: tuple[RetireGate, ...]

    @property
    def active_version(self) -> int:
        return self.age.version

    def as_dict(self) -> dict[str, Any]:
        return {
            "keyring": self.keyring,
            "purpose": self.purpose,
            "active_version": self.active_version,
            "age": self.age.as_dict(),
            "holding": [{"version": v, "rows": n} for v, n in self.holding],
            "retire": [g.as_dict() for g in self.gates],
        }


def retire_gate(key: DataKey) -> RetireGate:
    """What :func:`keyrotation.gates.retire` answers for ``key`` now (it counts; it changes nothing)."""
    counted, refusal = gates.retire(key)
    rows = None if counted is None else sum(counted.totals().values())
    if refusal is None:
        return RetireGate(key.version, True, rows, "", "")
    return RetireGate(key.version, False, rows, refusal.reason, refusal.message)


def key_figures(census: list[dict[str, Any]], now: datetime) -> tuple[KeyFigures, ...]:
    holding: dict[tuple[str, str], dict[int, int]] = {}
    for row in census:
        acc = holding.setdefault((row["keyring"], row["purpose"]), {})
        for version, n in row["versions"].items():
            if n:
                acc[int(version)] = acc.get(int(version), 0) + n
    decrypting = (
        DataKey.objects.using(databases.keys_database())
        .filter(state=KeyState.DECRYPT_ONLY)
        .exclude(keyring=AUDIT_KEYRING)
        .defer("wrapped_key")
        .order_by("keyring", "purpose", "-version")
    )
    by_pair: dict[tuple[str, str], list[DataKey]] = {}
    for key in decrypting:
        by_pair.setdefault((key.keyring, key.purpose), []).append(key)
    out = []
    for age in policy.status(now):
        pair = (age.keyring, age.purpose)
        held = tuple(sorted(holding.get(pair, {}).items(), reverse=True))
        out.append(
            KeyFigures(
                age.keyring, age.purpose, age, held, tuple(retire_gate(k) for k in by_pair.get(pair, []))
            )
        )
    return tuple(out)
