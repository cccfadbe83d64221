"""Django system checks for keyrotation (registered in ``KeyRotationConfig.ready``).

* ``keyrotation.E001``: ``KEYROTATION`` (or its ``KEK``) is malformed; W001: unknown keys in it.
* ``keyrotation.E002`` (``check --deploy``): the KEK cannot be reached, or cannot unwrap the
  newest stored data key of a keyring (a wrong master key, a Vault token without ``decrypt``).
* ``keyrotation.W003`` (``check --database default``, run by ``migrate``): a keyring used by a
  registered field has no active key yet; run ``rotatekeys --init`` (after ``migrate``). A warning,
  so that ``migrate``, which runs the database checks before it migrates, is never blocked.
* ``keyrotation.E003`` (``check --deploy --database default``): the same, as an error.
* ``keyrotation.E004`` (database): a stored key state is not authenticated (changed outside the
  lifecycle, e.g. by SQL); the keyring refuses it. Needs the KEK (skipped when unreachable: E002).
* ``keyrotation.E005`` (database): the audit chain key is missing while audit rows exist; appends
  are refused until its row is restored.
* ``keyrotation.W002`` (database): data keys are still wrapped by ``KEYROTATION["KEK"]["PREVIOUS"]``;
  run ``rotatekeys --rewrap``. ``keyrotation.E006`` (database): a data key is wrapped by a KEK that
  is neither ``KEYROTATION["KEK"]`` nor its ``PREVIOUS``; it cannot be unwrapped. Both read the kek
  ids and the configuration only, no KEK call (see :mod:`keyrotation.wrapping`).
* ``keyrotation.E007``: ``KEYROTATION["TASK_BACKEND"]`` names a backend that is not installed
  (Celery; Django's tasks framework); see :mod:`keyrotation.background`.
* ``keyrotation.W004`` (database): an active data key is past its ``KEYROTATION["ROTATION_PERIOD"]``;
  run ``rotatekeys --if-due``. Quiet without a policy (see :mod:`keyrotation.policy`).
* ``keyrotation.E111`` to ``E115`` (tag ``admin``): a ``ModelAdmin`` names encrypted fields in
  ``search_fields`` (entries that cannot be searched), ``list_filter``, ``ordering``,
  ``date_hierarchy`` or ``sortable_by``; see :func:`keyrotation.admin_integration.model_admin_errors`.

(``E101`` to ``E103`` are field checks, reported by the fields themselves.)
"""

from __future__ import annotations

import os

from django.apps import apps
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError

from . import background, conf, registry, reporting
from .exceptions import ConfigurationError, KEKRefused, KEKUnavailable


@register("keyrotation")
def check_settings(app_configs=None, **kwargs):
    errors = []
    try:
        conf.kek()
        previous = conf.previous_kek()
        conf.cache_seconds()
        conf.destroy_grace_seconds()
        conf.blind_index_bytes()
        conf.default_keyring()
        conf.batch_size()
        conf.audit_anchor()
        conf.metrics_bearer_token()
        conf.metrics_census_cache_seconds()
        conf.rotation_period()
        conf.task_backend()
        from .kek import load_backend, load_kek

        if conf.kek()["BACKEND"] == "local":
            load_backend()  # validates the master keys without any I/O
        if previous is not None and previous["BACKEND"] == "local":
            load_kek()  # the previous master keys too
    except ConfigurationError as exc:
        errors.append(Error(str(exc), id="keyrotation.E001", hint="See docs/settings.md."))
        return errors
    install = background.missing_package()
    if install is not None:
        errors.append(
            Error(
                f'KEYROTATION["TASK_BACKEND"] is {conf.task_backend()!r}, which is not installed',
                hint=f"Install {install}, or set TASK_BACKEND to None.",
                id="keyrotation.E007",
            )
        )
    unknown = conf.unknown_keys()
    if unknown:
        errors.append(
            Warning(
                f"Unknown KEYROTATION keys: {', '.join(sorted(unknown))}",
                hint=f"Known keys: {', '.join(sorted(conf.KNOWN_KEYS))}",
                id="keyrotation.W001",
            )
        )
    return errors


@register("keyrotation", deploy=True)
def check_kek_reachable(app_configs=None, **kwargs):
    """E002: the KEK cannot be reached, or cannot unwrap what the database holds.

    Reaching the KEK is not enough (a wrong local master key is valid base64 and loads fine):
    the check unwraps the newest stored data key of each keyring and purpose, or, with none
    stored yet, wraps and unwraps a throwaway canary key. Unwrapped bytes are dropped at once;
    the message names the key (keyring, purpose, version, KEK id) and the reason, never bytes.
    """
    from .kek import load_kek

    try:
        backend = load_kek()
        backend.check()
        _prove_unwrap(backend)
    except (ConfigurationError, KEKUnavailable) as exc:
        return [Error(f"KEK not usable: {exc}", id="keyrotation.E002", hint=_E002_HINT)]
    return []


_E002_HINT = (
    'Check KEYROTATION["KEK"] (the master keys, or the Vault URL, token, policy and key name) '
    "against the one that wrapped the stored data keys; see docs/operations.md."
)


def _newest_stored_keys() -> list[tuple[str, str, int, bytes, str]] | None:
    """(keyring, purpose, version, wrapped, kek_id) of the newest data key of each keyring and
    purpose that still has its wrapped material; None when the table cannot be read (no database
    configured or reachable, not migrated yet)."""
    from .models import DataKey

    newest: dict[tuple[str, str], tuple[str, str, int, bytes, str]] = {}
    try:
        rows = (
            DataKey.objects.exclude(wrapped_key=None)
            .order_by("keyring", "purpose", "-version")
            .values_list("keyring", "purpose", "version", "wrapped_key", "kek_id")
        )
        for name, purpose, version, wrapped, kek_id in rows:
            newest.setdefault((name, purpose), (name, purpose, version, bytes(wrapped), kek_id))
    except DatabaseError:
        return None
    return list(newest.values())


def _prove_unwrap(backend) -> None:
    """Raise KEKUnavailable (of the backend's kind) unless the KEK opens what it must open."""
    from .crypto import KEY_BYTES
    from .kek import context_for

    stored = _newest_stored_keys()
    for keyring_name, purpose, version, wrapped, kek_id in stored or ():
        try:
            backend.unwrap(wrapped, context_for(keyring_name, purpose, version), kek_id=kek_id)
        except KEKUnavailable as exc:
            raise type(exc)(
                f"cannot unwrap data key {keyring_name}/{purpose} v{version} (wrapped by {kek_id}): {exc}"
            ) from None
    if not stored:
        # Nothing stored yet: a canary under an identity no DataKey can have (purposes are
        # "encrypt" and "index").
        context = context_for("_deploy_check", "canary", 0)
        canary = os.urandom(KEY_BYTES)
        wrapped, _ = backend.wrap(canary, context)
        if backend.unwrap(wrapped, context) != canary:
            raise KEKRefused(f"a canary key wrapped by {backend.describe()} did not unwrap to itself")


def _keyrings_without_active_key(databases) -> list[tuple[str, str]]:
    """(keyring, purpose) pairs a registered field needs that have no active key, sorted; empty
    when no database is checked or the keys table is not there yet (``migrate`` creates it)."""
    if not databases:
        return []
    from .models import DataKey

    needed = {(col.keyring, col.purpose) for col in registry.columns()}
    if not needed:
        return []
    try:
        active = set(DataKey.objects.filter(state="active").values_list("keyring", "purpose"))
    except DatabaseError:  # tables not migrated yet: migrate will create them
        return []
    return sorted(needed - active)


def _init_hint(keyring: str) -> str:
    return f"Run `manage.py rotatekeys --init --keyring {keyring}` (after `migrate`)."


@register(Tags.database)
def check_keys_initialised(app_configs=None, databases=None, **kwargs):
    """W003: a warning, never an error, so that ``migrate`` (which runs the database checks
    first) goes on: the keys are created after it, by ``rotatekeys --init``."""
    return [
        Warning(
            f"keyring {keyring!r} has no active {purpose} key yet",
            hint=_init_hint(keyring),
            id="keyrotation.W003",
        )
        for keyring, purpose in _keyrings_without_active_key(databases)
    ]


@register(Tags.database, deploy=True)
def check_keys_initialised_for_deploy(app_configs=None, databases=None, **kwargs):
    """E003: the same finding is an error for ``check --deploy --database default``: a deploy
    whose fields have no key cannot write a single encrypted value."""
    return [
        Error(
            f"keyring {keyring!r} has no active {purpose} key",
            hint=_init_hint(keyring),
            id="keyrotation.E003",
        )
        for keyring, purpose in _keyrings_without_active_key(databases)
    ]


@register(Tags.database)
def check_key_states(app_configs=None, databases=None, **kwargs):
    if not databases:
        return []
    from . import key_state

    errors = []
    for alias in databases:
        try:
            found = key_state.problems(using=alias)
        except DatabaseError:  # tables or columns not migrated yet: migrate will add them
            continue
        except (ConfigurationError, KEKUnavailable):  # reported by E001 / E002
            continue
        errors += [
            Error(
                str(problem),
                hint="Compare `rotatekeys --list` with the audit trail; put the state right, then "
                f"`rotatekeys --accept-state --keyring {problem.keyring} --purpose {problem.purpose}`.",
                id="keyrotation.E004",
            )
            for problem in found
        ]
    return errors


@register(Tags.database)
def check_audit_chain_key(app_configs=None, databases=None, **kwargs):
    if not databases:
        return []
    from .audit_chain import AUDIT_KEYRING, AUDIT_PURPOSE
    from .models import DataKey, KeyRotationAudit

    errors = []
    for alias in databases:
        try:
            rows = KeyRotationAudit.objects.using(alias).exists()
            keys = DataKey.objects.using(alias).filter(keyring=AUDIT_KEYRING, purpose=AUDIT_PURPOSE)
            missing = rows and not keys.filter(state="active").exclude(wrapped_key=None).exists()
        except DatabaseError:  # tables not migrated yet
            continue
        if missing:
            errors.append(
                Error(
                    f"the audit chain key is missing while audit rows exist (database {alias!r}); "
                    "audit appends, and so every key lifecycle operation, are refused",
                    hint=f"Restore the DataKey row of keyring {AUDIT_KEYRING!r} from a backup; a new "
                    "key would leave every existing audit row unverifiable.",
                    id="keyrotation.E005",
                )
            )
    return errors


@register(Tags.database)
def check_kek_of_stored_keys(app_configs=None, databases=None, **kwargs):
    """W002: keys still wrapped by the previous KEK; E006: keys wrapped by neither KEK."""
    if not databases:
        return []
    from .kek import Wrapper
    from .wrapping import configured_switch, stored_keys

    switch = configured_switch()
    if switch is None:  # malformed settings: E001
        return []
    messages = []
    for alias in databases:
        try:
            keys = stored_keys(using=alias, switch=switch)
        except DatabaseError:  # tables not migrated yet
            continue
        on_previous = [k for k in keys if k.wrapped_by in (Wrapper.PREVIOUS, Wrapper.EITHER)]
        messages += _previous_warning(alias, on_previous, switch)
        unknown: dict[str, list[str]] = {}
        for key in keys:
            if key.wrapped_by is Wrapper.UNKNOWN:
                unknown.setdefault(key.kek_id, []).append(key.name)
        messages += [
            Error(
                f"{len(names)} data key(s) on database {alias!r} ({_some(names)}) are wrapped by "
                f"{kek_id or 'an unrecorded KEK'}, which is neither the current KEK "
                f'({switch.current.describe()}) nor KEYROTATION["KEK"]["PREVIOUS"]'
                + (f" ({switch.previous.describe()})" if switch.previous is not None else " (not set)")
                + "; they cannot be unwrapped",
                hint='Set KEYROTATION["KEK"]["PREVIOUS"] to the settings of the KEK that wrapped them '
                '(or put that KEK back in KEYROTATION["KEK"]), then run `manage.py rotatekeys '
                "--rewrap`; see docs/vault.md.",
                id="keyrotation.E006",
            )
            for kek_id, names in sorted(unknown.items())
        ]
    return messages


@register(Tags.database)
def check_rotation_periods(app_configs=None, databases=None, **kwargs):
    """W004: a data key is past its rotation period. Looks only when the keys database is among
    the checked ones (``check --database default``, ``migrate``)."""
    from . import policy
    from .databases import keys_database

    if not databases or keys_database() not in databases:
        return []
    try:
        if not policy.configured():
            return []
        due = policy.due()
    except DatabaseError:  # tables not migrated yet
        return []
    except ConfigurationError:  # reported by E001
        return []
    return [
        Warning(
            f"data key {age.name} is past its rotation period: active {reporting.duration(age.age)}, "
            f"period {reporting.duration(age.period)}, due since {reporting.moment(age.due_at)}",
            hint="Run `manage.py rotatekeys --if-due`, then `manage.py reencrypt`.",
            id="keyrotation.W004",
        )
        for age in due
    ]


def _previous_warning(alias, keys, switch) -> list[Warning]:
    if not keys or switch.previous is None:
        return []
    ids = sorted({k.kek_id for k in keys})
    return [
        Warning(
            f"{len(keys)} data key(s) on database {alias!r} ({_some([k.name for k in keys])}) may still "
            f'be wrapped by the previous KEK (KEYROTATION["KEK"]["PREVIOUS"]: '
            f"{switch.previous.describe()}; kek ids: {', '.join(ids)})",
            hint="Run `manage.py rotatekeys --rewrap`; remove PREVIOUS once this warning is gone.",
            id="keyrotation.W002",
        )
    ]


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@register(Tags.admin)
def check_model_admins(app_configs=None, **kwargs):
    if not apps.is_installed("django.contrib.admin"):
        return []
    from django.contrib.admin.sites import all_sites

    from .admin_integration import model_admin_errors

    errors = []
    try:
        for site in all_sites:
            # _registry is how Django's own admin checks reach every ModelAdmin of a site.
            for model_admin in site._registry.values():
                if app_configs is None or model_admin.model._meta.app_config in app_configs:
                    errors += [e for e in model_admin_errors(model_admin) if e not in errors]
    except ConfigurationError:  # a malformed KEYROTATION: check_settings reports it (E001)
        return []
    return errors
