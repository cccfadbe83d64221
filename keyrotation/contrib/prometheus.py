"""Prometheus metrics: keys, census, re-encryption runs and KEK calls, computed at scrape time.

Two ways in, both explicit (importing this module registers nothing and queries nothing):

* no exporter yet: route a URL to :func:`metrics_view`, which serves these metrics only::

      from keyrotation.contrib.prometheus import metrics_view

      urlpatterns += [path("metrics/keyrotation", metrics_view, name="keyrotation-metrics")]

* an exporter already serving prometheus_client's global registry inside Django (such as
  django-prometheus's ``/metrics``): add the collector to it once, in your ``AppConfig.ready()``::

      from keyrotation.contrib import prometheus

      prometheus.register()  # or register(registry=my_registry)

:class:`KeyRotationCollector` queries the database on every scrape (the census at most once per
``KEYROTATION["METRICS_CENSUS_CACHE_SECONDS"]``) and starts no thread. Protect the URL like any
``/metrics``: a network policy, ``KEYROTATION["METRICS_BEARER_TOKEN"]``, or your own decorator.

Labels hold names only (database aliases, model labels, field names, keyrings, purposes, key
versions, states, KEK backends and operations): never a value, a primary key or a key id. The
metrics are listed in the operations guide, "Metrics (Prometheus)".
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import weakref
from collections.abc import Iterator

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import choose_encoder
except ImportError as exc:  # the message names the extra; the cause is only a missing package
    raise ImportError(
        "keyrotation.contrib.prometheus needs prometheus_client: pip install 'django-keyrotation[prometheus]'"
    ) from exc

from keyrotation import conf, metrics
from keyrotation.kek.calls import COUNTS, CallCounts
from keyrotation.models import RunStatus

__all__ = ["KeyRotationCollector", "metrics_view", "register"]

logger = logging.getLogger("keyrotation.metrics")

_CENSUS = ["database", "model", "field", "keyring", "purpose"]
_KEY = ["keyring", "purpose"]
_RUN = ["database", "run"]
_KEK = ["backend", "kek", "operation"]


def _families() -> dict[str, Metric]:
    """Every metric this collector exports, empty: filled by a scrape, listed by ``describe``."""
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    return {
        f.name: f
        for f in [
            gauge(
                "keyrotation_census_rows",
                "Rows of an encrypted or blind-index column under a key version (by its version column).",
                labels=[*_CENSUS, "version"],
            ),
            gauge(
                "keyrotation_census_pending_rows",
                "Rows of a column under a key version other than the active one (reencrypt moves them).",
                labels=_CENSUS,
            ),
            gauge(
                "keyrotation_census_age_seconds",
                "Age of the census served (it is recounted every METRICS_CENSUS_CACHE_SECONDS).",
            ),
            gauge("keyrotation_active_key_version", "The active data key version.", labels=_KEY),
            gauge(
                "keyrotation_active_key_age_seconds",
                "Seconds since the active data key version became active.",
                labels=_KEY,
            ),
            gauge(
                "keyrotation_active_key_period_seconds",
                "The rotation period (ROTATION_PERIOD) of the keyring and purpose; absent without one.",
                labels=_KEY,
            ),
            gauge(
                "keyrotation_active_key_due_in_seconds",
                "Seconds until the active version is due for rotation (negative: overdue); absent "
                "without a rotation period.",
                labels=_KEY,
            ),
            gauge(
                "keyrotation_key_versions",
                "Data key versions in each state.",
                labels=[*_KEY, "state"],
            ),
            gauge("keyrotation_run_id", "Id of the run (rotation_status, admin).", labels=_RUN),
            gauge(
                "keyrotation_run_state", "1 for the run's state, 0 for the others.", labels=[*_RUN, "state"]
            ),
            gauge(
                "keyrotation_run_rows",
                "Rows the run moves: those planned, plus rows that became pending during it.",
                labels=_RUN,
            ),
            gauge("keyrotation_run_done_rows", "Rows the run has re-encrypted.", labels=_RUN),
            gauge("keyrotation_run_failed_rows", "Values the run quarantined.", labels=_RUN),
            gauge(
                "keyrotation_run_rows_per_second",
                "Rows done over the run's active span (start to latest heartbeat).",
                labels=_RUN,
            ),
            gauge("keyrotation_run_eta_seconds", "Estimated seconds left (running runs only).", labels=_RUN),
            gauge("keyrotation_run_started_timestamp_seconds", "When the run started.", labels=_RUN),
            gauge(
                "keyrotation_run_heartbeat_timestamp_seconds",
                "Latest batch or claim of any of the run's workers.",
                labels=_RUN,
            ),
            counter("keyrotation_kek_calls", "Calls to a KEK backend by this process.", labels=_KEK),
            counter(
                "keyrotation_kek_errors",
                "KEK calls by this process that failed, by reason: refused, unreachable, unavailable, other.",
                labels=[*_KEK, "reason"],
            ),
            gauge(
                "keyrotation_scrape_collector_success",
                "1 if the part of the scrape succeeded (keys, census, runs, kek), else 0.",
                labels=["collector"],
            ),
            gauge(
                "keyrotation_scrape_collector_duration_seconds",
                "Seconds the part of the scrape took.",
                labels=["collector"],
            ),
        ]
    }


class KeyRotationCollector:
    """A prometheus_client collector: every scrape reads keys, runs, KEK counts and the (cached) census.

    Args:
        counts: the KEK call counts to report (default: this process's).
    """

    def __init__(self, counts: CallCounts = COUNTS) -> None:
        self._counts = counts

    def describe(self) -> list[Metric]:
        """The metric names, without querying anything (``registry.register`` calls it)."""
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        """Query and yield every metric; a part that fails reports ``success 0`` and yields nothing."""
        fam = _families()
        state: dict[str, metrics.Keys] = {}
        parts = [
            ("keys", lambda: self._keys(fam, state)),
            ("census", lambda: self._census(fam, state.get("keys"))),
            ("runs", lambda: self._runs(fam)),
            ("kek", lambda: self._kek(fam)),
        ]
        for name, part in parts:
            start = time.monotonic()
            ok = 1.0
            try:
                part()
            except Exception as exc:  # one broken part must not fail the scrape of the others
                ok = 0.0
                # The class only: a database error's message may quote SQL or its parameters.
                logger.warning("keyrotation metrics: collecting %s failed (%s)", name, type(exc).__name__)
            fam["keyrotation_scrape_collector_success"].add_metric([name], ok)
            fam["keyrotation_scrape_collector_duration_seconds"].add_metric([name], time.monotonic() - start)
        yield from fam.values()

    def _keys(self, fam: dict[str, Metric], state: dict) -> None:
        keys = state["keys"] = metrics.keys()
        for k in keys.active:
            where = [k.keyring, k.purpose]
            fam["keyrotation_active_key_version"].add_metric(where, k.version)
            fam["keyrotation_active_key_age_seconds"].add_metric(where, k.age_seconds)
            if k.period_seconds is not None and k.due_in_seconds is not None:
                fam["keyrotation_active_key_period_seconds"].add_metric(where, k.period_seconds)
                fam["keyrotation_active_key_due_in_seconds"].add_metric(where, k.due_in_seconds)
        for (keyring, purpose, key_state), n in sorted(keys.versions.items()):
            fam["keyrotation_key_versions"].add_metric([keyring, purpose, key_state], n)

    def _census(self, fam: dict[str, Metric], keys: metrics.Keys | None) -> None:
        census = metrics.census()
        for r in census.rows:
            labels = [r.database, r.model, r.field, r.keyring, r.purpose, str(r.version)]
            fam["keyrotation_census_rows"].add_metric(labels, r.rows)
        if keys is not None:  # pending rows need the active versions
            for labels, n in sorted(census.pending(keys).items()):
                fam["keyrotation_census_pending_rows"].add_metric(list(labels), n)
        fam["keyrotation_census_age_seconds"].add_metric([], max(0.0, time.monotonic() - census.taken_at))

    def _runs(self, fam: dict[str, Metric]) -> None:
        for state in metrics.runs():
            o, labels = state.overview, [state.database, state.which]
            fam["keyrotation_run_id"].add_metric(labels, o.run.pk)
            for status in RunStatus.values:
                fam["keyrotation_run_state"].add_metric([*labels, status], float(o.run.status == status))
            fam["keyrotation_run_rows"].add_metric(labels, o.tally.total)
            fam["keyrotation_run_done_rows"].add_metric(labels, o.progress.rows_done)
            fam["keyrotation_run_failed_rows"].add_metric(labels, o.run.rows_failed)
            fam["keyrotation_run_started_timestamp_seconds"].add_metric(labels, o.run.started_at.timestamp())
            if o.progress.heartbeat is not None:
                fam["keyrotation_run_heartbeat_timestamp_seconds"].add_metric(
                    labels, o.progress.heartbeat.timestamp()
                )
            if o.rows_per_second is not None:
                fam["keyrotation_run_rows_per_second"].add_metric(labels, o.rows_per_second)
            if o.eta_seconds is not None:
                fam["keyrotation_run_eta_seconds"].add_metric(labels, o.eta_seconds)

    def _kek(self, fam: dict[str, Metric]) -> None:
        for call, n in sorted(self._counts.calls().items()):
            fam["keyrotation_kek_calls"].add_metric([call.backend, call.kek, call.operation], n)
        for (call, reason), n in sorted(self._counts.errors().items()):
            fam["keyrotation_kek_errors"].add_metric([call.backend, call.kek, call.operation, reason], n)


_LOCK = threading.Lock()
_REGISTERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register(registry: CollectorRegistry | None = None) -> KeyRotationCollector:
    """Add a :class:`KeyRotationCollector` to ``registry`` (default: prometheus_client's global
    ``REGISTRY``), once: a second call with the same registry returns the first collector.

    No query runs here; the collector queries when the registry is scraped. Call it from your
    ``AppConfig.ready()``.

    Example::

        from keyrotation.contrib import prometheus

        class MyAppConfig(AppConfig):
            def ready(self):
                prometheus.register()
    """
    registry = REGISTRY if registry is None else registry
    with _LOCK:
        collector = _REGISTERED.get(registry)
        if collector is None:
            collector = KeyRotationCollector()
            registry.register(collector)
            _REGISTERED[registry] = collector
    return collector


# What metrics_view serves: keyrotation's metrics only, whatever else the process exports.
_VIEW_REGISTRY = CollectorRegistry(auto_describe=True)
register(_VIEW_REGISTRY)


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


@transaction.non_atomic_requests  # a failed count must not abort the transaction of the next part
@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Serve keyrotation's metrics in the format the scraper asks for (Prometheus text or
    OpenMetrics, from ``Accept``).

    With ``KEYROTATION["METRICS_BEARER_TOKEN"]`` set, a request without ``Authorization: Bearer
    <that token>`` gets a 401 (the token is never echoed). Without it, anyone who reaches the URL
    reads the metrics: names and counts, no secret, but a map of your encrypted columns.
    """
    token = conf.metrics_bearer_token()
    if token is not None and not _authorized(request, token):
        response = HttpResponse(
            "401 Unauthorized: a bearer token is required\n", status=401, content_type="text/plain"
        )
        response["WWW-Authenticate"] = 'Bearer realm="keyrotation metrics"'
        return response
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(_VIEW_REGISTRY), content_type=content_type)
