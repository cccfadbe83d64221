"""Whether the keyrotation app's own migrations are applied where its tables live.

A project that upgrades keyrotation and runs ``rotatekeys``, ``reencrypt`` or ``rotation_status``
before ``migrate`` would otherwise meet a database error ("table does not exist") in the middle
of a run, reported against whatever model the run was writing. The commands call
:func:`require_migrated` first and stop with one line that names the missing migrations and the
command that applies them.

It reads ``django_migrations`` (one query per database) and lists the migration modules shipped
with the app; a project that replaces them (``MIGRATION_MODULES["keyrotation"]``) is not checked.
"""

from __future__ import annotations

import pkgutil

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.migrations.recorder import MigrationRecorder

from . import databases
from .exceptions import KeyRotationError

APP_LABEL = "keyrotation"


class NotMigrated(KeyRotationError):
    """The app's tables on a database are older than the installed code."""


def shipped_migrations() -> list[str]:
    """The names of the migrations shipped with the app, in order."""
    from . import migrations

    return sorted(name for _, name, _ in pkgutil.iter_modules(migrations.__path__) if name[:4].isdigit())


def missing_migrations(alias: str) -> list[str]:
    """The shipped migrations that ``django_migrations`` on ``alias`` does not list as applied."""
    recorder = MigrationRecorder(connections[alias])
    try:
        applied = {name for app, name in recorder.applied_migrations() if app == APP_LABEL}
    except DatabaseError:  # unreachable database: the command's own first query reports it
        return []
    return [name for name in shipped_migrations() if name not in applied]


def require_migrated(aliases: tuple[str, ...] | None = None) -> None:
    """Raise :class:`NotMigrated` unless every shipped migration is applied on ``aliases`` (default:
    the databases of the keys and of the re-encryption runs).

    Raises:
        NotMigrated: ``keyrotation's migrations 0007_run_samples are not applied on database
            'default': run `manage.py migrate keyrotation --database default` first``.
    """
    if APP_LABEL in getattr(settings, "MIGRATION_MODULES", {}):
        return
    if aliases is None:
        aliases = tuple(dict.fromkeys((databases.keys_database(), databases.engine_database())))
    for alias in aliases:
        missing = missing_migrations(alias)
        if missing:
            raise NotMigrated(
                f"keyrotation's migrations {', '.join(missing)} are not applied on database "
                f"{alias!r}: run `manage.py migrate keyrotation --database {alias}` first"
            )
