"""What a metrics exporter reports, as typed values read at scrape time: keys, census, runs.

:mod:`keyrotation.contrib.prometheus` turns these into Prometheus metrics; another exporter
(StatsD, OpenTelemetry) can read the same functions. Nothing here runs in the background: each
function queries when it is called.

* :func:`keys`: the data-key versions per keyring, purpose and state, and the active version's
  age (one query on the keys database);
* :func:`census`: rows per database, column and key version, counted like
  :func:`keyrotation.census.counts` (by the version column) and kept for
  ``KEYROTATION["METRICS_CENSUS_CACHE_SECONDS"]``, since counting reads every row of every
  encrypted table;
* :func:`runs`: per database, the latest open re-encryption run and the last one that ended.

Every value here is a name (model label, field name, database alias, keyring, purpose, state), a
key version or a number: never a stored value, a primary key, a key id or key material.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Max
from django.utils import timezone

from . import census as _census
from . import conf, databases, policy, registry
from .engine import runs as _runs
from .engine.overview import RunOverview
from .models import DataKey, KeyState, ReencryptionRun, RunStatus

# The runs reported per database: the latest open one, and the last one that ended.
OPEN, LAST_ENDED = "open", "last_ended"
ENDED_STATUSES = (RunStatus.FINISHED, RunStatus.ABORTED, RunStatus.FAILED, RunStatus.SUPERSEDED)


@dataclass(frozen=True)
class ActiveKey:
    """The active version of one keyring and purpose: ``age_seconds`` since it became active, and,
    under a rotation period (``ROTATION_PERIOD``), the period and the seconds until it is due
    (negative once overdue)."""

    keyring: str
    purpose: str
    version: int
    age_seconds: float
    period_seconds: float | None = None
    due_in_seconds: float | None = None


@dataclass(frozen=True)
class Keys:
    """The key table at one moment: active versions, and how many versions are in each state."""

    active: tuple[ActiveKey, ...]
    versions: dict[tuple[str, str, str], int]  # (keyring, purpose, state) -> versions

    def active_version(self, keyring: str, purpose: str) -> int | None:
        return next((k.version for k in self.active if (k.keyring, k.purpose) == (keyring, purpose)), None)


def keys(now: datetime | None = None) -> Keys:
    """Every data key's keyring, purpose, version, state and activation time (never its material);
    the active ones aged as :func:`keyrotation.policy.key_age` does."""
    now = now or timezone.now()
    rows = DataKey.objects.using(databases.keys_database()).only(
        "keyring", "purpose", "version", "state", "created_at", "activated_at"
    )
    active, versions = [], {}
    for key in rows.order_by("keyring", "purpose", "version"):
        where = (key.keyring, key.purpose, key.state)
        versions[where] = versions.get(where, 0) + 1
        if key.state == KeyState.ACTIVE:
            age = policy.key_age(key, now)
            active.append(
                ActiveKey(
                    key.keyring,
                    key.purpose,
                    key.version,
                    age.age.total_seconds(),
                    period_seconds=None if age.period is None else age.period.total_seconds(),
                    due_in_seconds=None if age.due_at is None else (age.due_at - now).total_seconds(),
                )
            )
    return Keys(tuple(active), versions)


@dataclass(frozen=True)
class ColumnRows:
    """Rows of one column on one database under one key version."""

    database: str
    model: str  # "app_label.Model"
    field: str
    keyring: str
    purpose: str
    version: int
    rows: int


@dataclass(frozen=True)
class Census:
    """Rows per database, column and key version; ``taken_at``: when counted (``time.monotonic``)."""

    rows: tuple[ColumnRows, ...]
    taken_at: float

    def pending(self, keys: Keys) -> dict[tuple[str, str, str, str, str], int]:
        """``{(database, model, field, keyring, purpose): rows}`` on a version other than the active
        one (zeros included), for the columns whose keyring has an active version now."""
        out: dict[tuple[str, str, str, str, str], int] = {}
        for r in self.rows:
            active = keys.active_version(r.keyring, r.purpose)
            if active is None:
                continue
            key = (r.database, r.model, r.field, r.keyring, r.purpose)
            out[key] = out.get(key, 0) + (r.rows if r.version != active else 0)
        return out


def count_census() -> Census:
    """Count now: one grouped count per registered column and database that holds it."""
    cols = list(registry.columns())
    where = databases.holding_all({col.model for col in cols})
    rows = []
    for col in cols:
        for alias in where[col.model]:
            for version, n in sorted(_census.counts(col, using=alias).items(), key=lambda item: item[0] or 0):
                if version is not None:  # no value, no key
                    rows.append(
                        ColumnRows(
                            alias, col.model_label, col.field_name, col.keyring, col.purpose, version, n
                        )
                    )
    return Census(tuple(rows), time.monotonic())


class CensusCache:
    """The last census, reused while younger than ``max_age`` seconds.

    One count at a time per process: scrapes arriving while a count runs wait for it and share
    its result instead of starting their own.
    """

    def __init__(
        self, count: Callable[[], Census] = count_census, clock: Callable[[], float] = time.monotonic
    ):
        self._count = count
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Census | None = None

    def get(self, max_age: float) -> Census:
        with self._lock:
            last = self._last
            if last is None or max_age <= 0 or self._clock() - last.taken_at >= max_age:
                last = self._last = self._count()
            return last

    def clear(self) -> None:
        with self._lock:
            self._last = None


_CENSUS = CensusCache()


def census() -> Census:
    """The census, counted at most once per ``KEYROTATION["METRICS_CENSUS_CACHE_SECONDS"]``."""
    return _CENSUS.get(conf.metrics_census_cache_seconds())


@dataclass(frozen=True)
class RunState:
    """One run as a metric sees it: ``which`` is :data:`OPEN` or :data:`LAST_ENDED`."""

    which: str
    overview: RunOverview

    @property
    def database(self) -> str:
        return self.overview.run.database


def runs() -> list[RunState]:
    """Per database (the one whose rows a run re-encrypts): its latest open run, and the last run
    that ended, if any. Runs that had nothing to do are not recorded, so never shown."""
    using = databases.engine_database()
    table = ReencryptionRun.objects.using(using)
    chosen: list[tuple[str, ReencryptionRun]] = []
    seen: set[str] = set()
    for run in table.filter(status__in=_runs.OPEN_STATUSES).order_by("-id"):
        if run.database not in seen:
            seen.add(run.database)
            chosen.append((OPEN, run))
    ended = table.filter(status__in=ENDED_STATUSES).exclude(status=RunStatus.FINISHED, rows_total=0)
    last_ids = ended.order_by().values("database").annotate(last=Max("id")).values_list("last", flat=True)
    chosen += [(LAST_ENDED, run) for run in table.filter(id__in=list(last_ids)).order_by("database")]
    return [RunState(which, RunOverview(run, _runs.progress(run, using=using))) for which, run in chosen]
