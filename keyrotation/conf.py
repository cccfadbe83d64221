"""The ``KEYROTATION`` setting, read lazily: one accessor per key, with its default.

Modules never read ``django.conf.settings`` themselves; they call these functions, so that
``override_settings`` in tests and late configuration both work. The few values read on hot paths
(:func:`default_keyring`) are cached once valid and forgotten on every change of ``KEYROTATION``
(Django's ``setting_changed`` signal, which ``override_settings`` sends).

Example::

    KEYROTATION = {
        "KEK": {"BACKEND": "local", "KEYS": [os.environ["KEYROTATION_MASTER_KEY"]]},
        "CACHE_SECONDS": 60,
    }
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from .crypto import PURPOSES
from .exceptions import ConfigurationError

KNOWN_KEYS = frozenset(
    {
        "KEK",
        "CACHE_SECONDS",
        "DESTROY_GRACE_SECONDS",
        "BLIND_INDEX_BYTES",
        "DEFAULT_KEYRING",
        "INDEX_VERSION_COLUMNS",
        "BATCH_SIZE",
        "MASK_IN_CHANGELIST",
        "ADMIN_INTEGRATION",
        "REDACT_PATTERNS",
        "AUDIT_ANCHOR",
        "METRICS_BEARER_TOKEN",
        "METRICS_CENSUS_CACHE_SECONDS",
        "ROTATION_PERIOD",
        "TASK_BACKEND",
    }
)


def _root() -> dict[str, Any]:
    value = getattr(settings, "KEYROTATION", {})
    if not isinstance(value, dict):
        raise ConfigurationError(f"settings.KEYROTATION must be a dict, got {type(value).__name__}")
    return value


def _get(key: str, default: Any) -> Any:
    return _root().get(key, default)


def kek() -> dict[str, Any]:
    """``KEYROTATION["KEK"]``: the key-encryption-key backend and its options.

    ``{"BACKEND": "local", "KEYS": ["<base64 32 bytes>", ...]}`` (first wraps, all unwrap) or
    ``{"BACKEND": "vault", "URL": ..., "TOKEN": ..., "MOUNT": "transit", "KEY_NAME": ...}``,
    with an optional ``"PREVIOUS"`` (see :func:`previous_kek`).
    """
    value = _get("KEK", None)
    if value is None:
        raise ConfigurationError(
            'KEYROTATION["KEK"] is not set; e.g. {"BACKEND": "local", "KEYS": [<base64 key>]} '
            "(generate one with `python -m keyrotation.kek.local`)"
        )
    if not isinstance(value, dict) or "BACKEND" not in value:
        raise ConfigurationError('KEYROTATION["KEK"] must be a dict with a "BACKEND" key')
    return value


def current_kek() -> dict[str, Any]:
    """``KEYROTATION["KEK"]`` without its ``PREVIOUS`` entry: the options of the KEK that wraps."""
    return {k: v for k, v in kek().items() if k != "PREVIOUS"}


def previous_kek() -> dict[str, Any] | None:
    """``KEYROTATION["KEK"]["PREVIOUS"]`` (default ``None``): the KEK a project is moving away from.

    A full KEK options dict of any backend (``{"BACKEND": "local", "KEYS": [...]}``, a Vault
    dict, a dotted path). While it is set, data keys it wrapped still unwrap, and
    ``manage.py rotatekeys --rewrap`` moves them under ``KEYROTATION["KEK"]``. Remove it once
    ``rotatekeys --list`` shows no key on ``previous`` (see docs/vault.md).
    """
    value = kek().get("PREVIOUS")
    if value is None:
        return None
    if not isinstance(value, dict) or not value.get("BACKEND"):
        raise ConfigurationError(
            'KEYROTATION["KEK"]["PREVIOUS"] must be a KEK options dict with a "BACKEND" key '
            '(the settings KEYROTATION["KEK"] had before the switch), or None'
        )
    if "PREVIOUS" in value:
        raise ConfigurationError(
            'KEYROTATION["KEK"]["PREVIOUS"] may not have a "PREVIOUS" of its own: switch one KEK '
            "at a time (rewrap, then remove PREVIOUS before the next switch)"
        )
    return value


def cache_seconds() -> float:
    """``KEYROTATION["CACHE_SECONDS"]`` (default 60): how long a process trusts its keyring cache.

    A new active version reaches every process within this time; a ciphertext naming a version
    the cache does not know triggers an immediate reload regardless.
    """
    value = _get("CACHE_SECONDS", 60)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigurationError('KEYROTATION["CACHE_SECONDS"] must be a number >= 0')
    return float(value)


def destroy_grace_seconds() -> float:
    """``KEYROTATION["DESTROY_GRACE_SECONDS"]`` (default 86400, one day): how long a version
    stays retired before ``rotatekeys --destroy`` may erase it.

    Destroying is irreversible. The wait leaves time for a row that the census could not see when
    the version was retired (written by a transaction still open then, restored from a backup, on
    a database added since) to show up in ``rotation_status`` and in the destroy's own recount.
    Keep it well above ``CACHE_SECONDS`` and above the longest transaction your application runs.
    ``0`` is for tests and demos.
    """
    value = _get("DESTROY_GRACE_SECONDS", 86400)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigurationError('KEYROTATION["DESTROY_GRACE_SECONDS"] must be a number >= 0')
    return float(value)


def blind_index_bytes() -> int:
    """``KEYROTATION["BLIND_INDEX_BYTES"]`` (default 16): default blind-index length in bytes."""
    value = _get("BLIND_INDEX_BYTES", 16)
    if not isinstance(value, int) or isinstance(value, bool) or not 4 <= value <= 32:
        raise ConfigurationError('KEYROTATION["BLIND_INDEX_BYTES"] must be an int from 4 to 32')
    return value


# Valid values of hot settings, cleared when KEYROTATION changes (see _on_setting_changed).
_CACHED: dict[str, Any] = {}


def default_keyring() -> str:
    """``KEYROTATION["DEFAULT_KEYRING"]`` (default ``"default"``)."""
    try:
        return _CACHED["DEFAULT_KEYRING"]
    except KeyError:
        pass
    value = _get("DEFAULT_KEYRING", "default")
    if not isinstance(value, str) or not value:
        raise ConfigurationError('KEYROTATION["DEFAULT_KEYRING"] must be a non-empty string')
    _CACHED["DEFAULT_KEYRING"] = value
    return value


def index_version_columns() -> bool:
    """``KEYROTATION["INDEX_VERSION_COLUMNS"]`` (default ``False``): add a database index on
    every ``<field>_key_version`` column. See docs/formats.md for the measured trade-off."""
    return bool(_get("INDEX_VERSION_COLUMNS", False))


def batch_size() -> int:
    """``KEYROTATION["BATCH_SIZE"]`` (default 2000): rows per re-encryption batch."""
    value = _get("BATCH_SIZE", 2000)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError('KEYROTATION["BATCH_SIZE"] must be a positive int')
    return value


def mask_in_changelist() -> bool:
    """``KEYROTATION["MASK_IN_CHANGELIST"]`` (default ``False``): show encrypted fields masked in
    admin change lists."""
    return bool(_get("MASK_IN_CHANGELIST", False))


def admin_integration() -> bool:
    """``KEYROTATION["ADMIN_INTEGRATION"]`` (default ``True``): every ``ModelAdmin`` searches
    encrypted fields through their blind index and never sorts, filters or builds a date
    hierarchy on one. ``False`` leaves Django's admin untouched; add
    ``keyrotation.admin_integration.AdminIntegrationMixin`` to the admins that should have it."""
    return bool(_get("ADMIN_INTEGRATION", True))


TASK_BACKENDS = ("celery", "django")


def task_backend() -> str | None:
    """``KEYROTATION["TASK_BACKEND"]`` (default ``None``): where a re-encryption started in the
    background (the admin's start button, ``keyrotation.background.start_reencryption``) runs:
    ``"celery"`` (Celery tasks), ``"django"`` (Django's tasks framework), or ``None`` (none; runs
    are started with ``manage.py reencrypt``)."""
    value = _get("TASK_BACKEND", None)
    if value is not None and value not in TASK_BACKENDS:
        raise ConfigurationError(
            f'KEYROTATION["TASK_BACKEND"] must be None, "celery" or "django", got {value!r}'
        )
    return value


# Defaults of REDACT_PATTERNS: what a log line must never carry, whatever the application logs.
DEFAULT_REDACT_PATTERNS = (
    # e-mail addresses. Every quantifier is bounded (RFC 5321: local part <= 64, label <= 63): with
    # "+" a long run of base64 made each start position scan to the end, quadratic in the length.
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,126}",
    # SSN-style national ids written with dashes (123-45-6789)
    r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])",
    # card numbers in groups of four (4111 1111 1111 1111, 4111-1111-1111-1111)
    r"(?<![\w-])\d{4}(?:[ -]\d{4}){3}(?![\w-])",
    # any run of 9 or more digits: national ids, card and phone numbers, account numbers
    r"(?<!\d)\d{9,}(?!\d)",
)


def redact_patterns() -> tuple[str, ...]:
    """``KEYROTATION["REDACT_PATTERNS"]``: regular expressions that
    :class:`keyrotation.redaction.RedactingFilter` replaces in every log record.

    Default :data:`DEFAULT_REDACT_PATTERNS`: e-mail addresses, ``123-45-6789`` style national ids,
    card numbers in groups of four, and runs of 9 or more digits. A list replaces the defaults; to
    extend them, write ``[*conf.DEFAULT_REDACT_PATTERNS, r"my pattern"]``. Give every repetition a
    bound (``{1,64}``, not ``+``) where the pattern can fail after a long run of its characters:
    Python's ``re`` backtracks, and an unbounded run costs time quadratic in the text's length.
    """
    value = _get("REDACT_PATTERNS", DEFAULT_REDACT_PATTERNS)
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigurationError('KEYROTATION["REDACT_PATTERNS"] must be a list of regular expressions')
    out = []
    for pattern in value:
        source = getattr(pattern, "pattern", pattern)
        if not isinstance(source, str) or not source:
            raise ConfigurationError('KEYROTATION["REDACT_PATTERNS"] entries must be non-empty strings')
        try:
            re.compile(source)
        except re.error as exc:
            raise ConfigurationError(
                f'KEYROTATION["REDACT_PATTERNS"]: {source!r} is not a valid regular expression: {exc}'
            ) from None
        out.append(source)
    return tuple(out)


def audit_anchor() -> Any:
    """``KEYROTATION["AUDIT_ANCHOR"]`` (default ``None``): where every committed audit append writes
    the chain's new head (row id and ``row_hash``; no secret), so that ``audit_verify`` detects the
    newest audit rows, or all of them, being deleted.

    An absolute file path (a JSON file, replaced atomically), or the dotted path of a callable that
    returns an object with ``write(head)`` and ``read()`` (see
    :class:`keyrotation.audit_anchor.AuditAnchor`). Put it where the database's writers cannot write.
    """
    value = _get("AUDIT_ANCHOR", None)
    if value is None or callable(value):
        return value
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            'KEYROTATION["AUDIT_ANCHOR"] must be an absolute file path or the dotted path of a callable'
        )
    if not value.startswith("/") and ("/" in value or "\\" in value or "." not in value):
        raise ConfigurationError(
            f'KEYROTATION["AUDIT_ANCHOR"]: {value!r} is neither an absolute file path nor a dotted path'
        )
    return value


def metrics_bearer_token() -> str | None:
    """``KEYROTATION["METRICS_BEARER_TOKEN"]`` (default ``None``): the token that
    :func:`keyrotation.contrib.prometheus.metrics_view` requires as ``Authorization: Bearer
    <token>``; ``None`` serves the metrics to anyone who can reach the URL.

    Read it from the environment or a secrets manager, not from the repository, and give Prometheus
    the same value (``authorization: {credentials_file: ...}`` in the scrape config).
    """
    value = _get("METRICS_BEARER_TOKEN", None)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        # The message never repeats the value: it is a secret, however malformed.
        raise ConfigurationError(
            'KEYROTATION["METRICS_BEARER_TOKEN"] must be None or a non-empty string without '
            "surrounding white space"
        )
    return value


def metrics_census_cache_seconds() -> float:
    """``KEYROTATION["METRICS_CENSUS_CACHE_SECONDS"]`` (default 300): how long the metrics exporter
    reuses its census (rows per column and key version) before counting again.

    Counting reads every row of every encrypted table (unless ``INDEX_VERSION_COLUMNS``), on
    every database that holds it; a scrape every 15 seconds must not do that each time. The
    cache is per process; ``0`` counts at every scrape.
    """
    value = _get("METRICS_CENSUS_CACHE_SECONDS", 300)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigurationError('KEYROTATION["METRICS_CENSUS_CACHE_SECONDS"] must be a number >= 0')
    return float(value)


ANY_KEYRING = "*"
MAX_ROTATION_PERIOD = timedelta(days=36500)
_DAYS = re.compile(r"\s*(\d+)\s*d\s*")


def rotation_period() -> dict[tuple[str, str], timedelta | None]:
    """``KEYROTATION["ROTATION_PERIOD"]`` (default ``None``: no policy): how long a data key version
    may stay active (its cryptoperiod) before it is due for rotation, per keyring and purpose.

    ``manage.py rotatekeys --if-due`` rotates the versions past it (see :mod:`keyrotation.policy`).

    A period is a ``datetime.timedelta``, a whole number of days (``365``) or a string of days
    (``"90d"``); ``None`` means never due. Give one period for every keyring and purpose
    (``"ROTATION_PERIOD": "365d"``), or a dict from keyring name (``"*"``: every other keyring) to
    a period or to a dict from purpose (``"encrypt"``, ``"index"``) to a period::

        "ROTATION_PERIOD": {"default": {"encrypt": "365d", "index": None}, "*": "90d"}

    A purpose left out of a keyring's dict falls back to ``"*"``. Returns
    ``{(keyring or "*", purpose): period or None}``, one entry per pair the setting names.

    Raises:
        ConfigurationError: a malformed value, naming where it is in the setting.
    """
    value = _get("ROTATION_PERIOD", None)
    where = 'KEYROTATION["ROTATION_PERIOD"]'
    if value is None:
        return {}
    if not isinstance(value, dict):
        period = _period(value, where)
        return {(ANY_KEYRING, purpose): period for purpose in PURPOSES}
    table: dict[tuple[str, str], timedelta | None] = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f'{where}: keys must be keyring names or "*", got {name!r}')
        here = f'{where}["{name}"]'
        if not isinstance(entry, dict):
            period = _period(entry, here)
            table.update({(name, purpose): period for purpose in PURPOSES})
            continue
        for purpose, item in entry.items():
            if purpose not in PURPOSES:
                raise ConfigurationError(
                    f"{here}: {purpose!r} is not a purpose (use {' or '.join(map(repr, PURPOSES))})"
                )
            table[(name, purpose)] = _period(item, f'{here}["{purpose}"]')
    return table


def _period(value: Any, where: str) -> timedelta | None:
    """A rotation period from a timedelta, a number of days or ``"<days>d"``; None stays None."""
    if value is None:
        return None
    period = timedelta(0)  # refused below
    if isinstance(value, timedelta):
        period = value
    elif isinstance(value, int) and not isinstance(value, bool):
        period = timedelta(days=min(value, MAX_ROTATION_PERIOD.days + 1))
    elif isinstance(value, str) and _DAYS.fullmatch(value):
        period = timedelta(days=min(int(_DAYS.fullmatch(value).group(1)), MAX_ROTATION_PERIOD.days + 1))
    if not timedelta(0) < period <= MAX_ROTATION_PERIOD:
        raise ConfigurationError(
            f"{where}: {value!r} is not a rotation period; give a datetime.timedelta, a whole number "
            f'of days or a string like "90d", more than zero and at most {MAX_ROTATION_PERIOD.days} '
            "days, or None for never"
        )
    return period


def unknown_keys() -> set[str]:
    """Keys of ``KEYROTATION`` that this version does not know (reported by a system check)."""
    return set(_root()) - KNOWN_KEYS


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "KEYROTATION":
        _CACHED.clear()


setting_changed.connect(_on_setting_changed)
