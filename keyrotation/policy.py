"""Rotation policy: how long each data key version may stay active (its cryptoperiod).

``KEYROTATION["ROTATION_PERIOD"]`` (see :func:`keyrotation.conf.rotation_period`) gives a period
per keyring and purpose. A version is *due* once it has been active for its period, counted from
when it last became active (:func:`keyrotation.lifecycle.active_since`; a rollback restarts the
count of the version it re-activates). :func:`rotate_due` rotates exactly the due (keyring,
purpose) pairs through the lifecycle, which audits each rotation; run it from cron on any number
of hosts at once (``rotatekeys --if-due``): due-ness is checked again with the keyring locked, so
a version is rotated once.

Time comes in as ``now`` (default: ``django.utils.timezone.now()``), so tests move the clock by
hand. The audit chain's own key is not covered: it is not a data key.

Example::

    from keyrotation import policy

    for age in policy.due():
        print(age.name, "is", age.age.days, "days old")
    report = policy.rotate_due(actor="cron")
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from . import conf, databases, lifecycle
from .audit_chain import AUDIT_KEYRING
from .models import DataKey, KeyState

# Warn ("due soon") in the last tenth of the period, and at most in its last two weeks.
SOON_FRACTION = 10
SOON_AT_MOST = timedelta(days=14)


class PeriodState(str, enum.Enum):
    """Where an active version stands against its rotation period."""

    OK = "ok"
    DUE_SOON = "due_soon"
    OVERDUE = "overdue"
    NO_POLICY = "no_policy"


@dataclass(frozen=True)
class KeyAge:
    """The age of one active data key version against its rotation period."""

    keyring: str
    purpose: str
    version: int
    activated_at: datetime
    age: timedelta
    period: timedelta | None  # None: no rotation period applies (never due)
    due_at: datetime | None
    state: PeriodState

    @property
    def name(self) -> str:
        return f"{self.keyring}/{self.purpose} v{self.version}"

    @property
    def is_due(self) -> bool:
        return self.state is PeriodState.OVERDUE

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601, durations in whole seconds."""
        return {
            "keyring": self.keyring,
            "purpose": self.purpose,
            "version": self.version,
            "activated_at": self.activated_at.isoformat(),
            "age_seconds": int(self.age.total_seconds()),
            "period_seconds": None if self.period is None else int(self.period.total_seconds()),
            "due_at": None if self.due_at is None else self.due_at.isoformat(),
            "state": self.state.value,
            "is_due": self.is_due,
        }


@dataclass(frozen=True)
class Rotation:
    """One rotation :func:`rotate_due` made: ``was`` is the version it found due."""

    was: KeyAge
    new_version: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "keyring": self.was.keyring,
            "purpose": self.was.purpose,
            "from_version": self.was.version,
            "to_version": self.new_version,
            "was": self.was.as_dict(),
        }


@dataclass(frozen=True)
class RotationReport:
    """What :func:`rotate_due` did. ``skipped``: due when read, but not any more once the keyring
    was locked (another process rotated it first)."""

    rotated: tuple[Rotation, ...]
    skipped: tuple[KeyAge, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rotated": [r.as_dict() for r in self.rotated],
            "skipped": [a.as_dict() for a in self.skipped],
        }


def period_for(keyring: str, purpose: str) -> timedelta | None:
    """The rotation period of (``keyring``, ``purpose``): its own entry, else the ``"*"`` one,
    else None (no policy). None for the audit chain's key, which is not a data key.

    Raises:
        ConfigurationError: ``ROTATION_PERIOD`` is malformed.
    """
    if keyring == AUDIT_KEYRING:
        return None
    table = conf.rotation_period()
    for name in (keyring, conf.ANY_KEYRING):
        if (name, purpose) in table:
            return table[(name, purpose)]
    return None


def configured() -> bool:
    """Whether ``ROTATION_PERIOD`` gives any period at all."""
    return any(period is not None for period in conf.rotation_period().values())


def key_age(key: DataKey, now: datetime | None = None) -> KeyAge:
    """Where ``key`` (an active version) stands against its rotation period at ``now``."""
    now = now or timezone.now()
    since = lifecycle.active_since(key)
    period = period_for(key.keyring, key.purpose)
    due_at = None if period is None else since + period
    return KeyAge(
        keyring=key.keyring,
        purpose=key.purpose,
        version=key.version,
        activated_at=since,
        age=now - since,
        period=period,
        due_at=due_at,
        state=_state(period, due_at, now),
    )


def _state(period: timedelta | None, due_at: datetime | None, now: datetime) -> PeriodState:
    if period is None or due_at is None:
        return PeriodState.NO_POLICY
    if now >= due_at:
        return PeriodState.OVERDUE
    if due_at - now <= min(period / SOON_FRACTION, SOON_AT_MOST):
        return PeriodState.DUE_SOON
    return PeriodState.OK


def status(
    now: datetime | None = None, *, keyring: str | None = None, purpose: str | None = None
) -> list[KeyAge]:
    """Every active data key version (or those of ``keyring`` / ``purpose``) with its age, sorted by
    keyring and purpose. Read from the keys database.

    Raises:
        ConfigurationError: ``ROTATION_PERIOD`` is malformed.
    """
    now = now or timezone.now()
    rows = (
        DataKey.objects.using(databases.keys_database())
        .filter(state=KeyState.ACTIVE)
        .exclude(keyring=AUDIT_KEYRING)
        .defer("wrapped_key")
        .order_by("keyring", "purpose")
    )
    if keyring:
        rows = rows.filter(keyring=keyring)
    if purpose:
        rows = rows.filter(purpose=purpose)
    return [key_age(key, now) for key in rows]


def due(
    now: datetime | None = None, *, keyring: str | None = None, purpose: str | None = None
) -> list[KeyAge]:
    """The active versions past their rotation period at ``now`` (see :func:`status`)."""
    return [age for age in status(now, keyring=keyring, purpose=purpose) if age.is_due]


def rotate_due(
    now: datetime | None = None,
    *,
    keyring: str | None = None,
    purpose: str | None = None,
    actor: str | None = None,
) -> RotationReport:
    """Rotate every (keyring, purpose) whose active version is past its period at ``now``.

    Each pair is rotated by :func:`keyrotation.lifecycle.rotate_if_active_since` in its own
    transaction, which checks again, with the keyring locked, that the active version is still
    the one found due; the ``key_rotated`` audit row records the period and the age. Pairs are
    done in order and the first failure stops the rest (those before it stay rotated).

    Raises:
        ConfigurationError: ``ROTATION_PERIOD`` is malformed.
        KeyRotationError: a rotation was refused (e.g. a key state that is not authenticated).
    """
    now = now or timezone.now()
    rotated, skipped = [], []
    for age in due(now, keyring=keyring, purpose=purpose):
        assert age.period is not None  # a due version has a period
        details = {
            "reason": "rotation_period",
            "period_seconds": int(age.period.total_seconds()),
            "age_seconds": int(age.age.total_seconds()),
            "activated_at": age.activated_at.isoformat(),
        }
        key = lifecycle.rotate_if_active_since(
            age.keyring, age.purpose, now - age.period, actor=actor, details=details
        )
        if key is None:
            skipped.append(age)
        else:
            rotated.append(Rotation(age, key.version))
    return RotationReport(tuple(rotated), tuple(skipped))
