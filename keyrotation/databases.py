"""Which database holds what, when a project has several ``DATABASES`` aliases or routers.

* The **keys database** holds the keyrotation app's own tables (data keys, audit trail,
  re-encryption runs): the alias the routers choose for *writing* those models
  (``router.db_for_write``; ``default`` without a router). It is also where they are read from,
  never a replica: a replica's lag would show a key state that is no longer true.
* A registered model's rows may live on several databases: :func:`holding` lists them. The
  census that gates ``retire`` and ``destroy`` counts all of them; ``reencrypt`` writes on those
  that accept writes (:func:`writable`).

Example::

    from keyrotation import databases

    databases.holding(Person)  # ["default", "shard2"]
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import DatabaseError, connections, models, router

from .exceptions import KeyRotationError


def keys_database() -> str:
    """The alias of the data-key and audit tables (the routers' write choice for ``DataKey``)."""
    from .models import DataKey

    return router.db_for_write(DataKey)


def engine_database() -> str:
    """The alias of the re-encryption runs, chunks and quarantine (the routers' write choice)."""
    from .models import ReencryptionRun

    return router.db_for_write(ReencryptionRun)


def check_alias(alias: str) -> str:
    """``alias`` if it names a configured database.

    Raises:
        KeyRotationError: it does not (the message lists the configured aliases).
    """
    if alias not in connections.settings:
        known = ", ".join(sorted(connections.settings))
        raise KeyRotationError(f"no database alias {alias!r} in DATABASES (configured: {known})")
    return alias


def _identity(alias: str) -> tuple:
    """What makes two aliases the same database: engine, host, port and name. Aliases that are
    two connections to one database (a test mirror, a pooler in front of the primary) are
    counted once. An in-memory SQLite database is its own, whatever its name."""
    sd = connections[alias].settings_dict
    name = str(sd.get("NAME") or "")
    if sd["ENGINE"].endswith("sqlite3") and (not name or name == ":memory:"):
        return ("alias", alias)
    return (sd["ENGINE"], sd.get("HOST") or "", str(sd.get("PORT") or ""), name)


def _allowed(alias: str, model: type[models.Model]) -> bool:
    # router.allow_migrate, not allow_migrate_model: an unmanaged model may hold rows too.
    opts = model._meta
    return bool(router.allow_migrate(alias, opts.app_label, model_name=opts.model_name, model=model))


class _Tables:
    """Table names per alias, listed once per census."""

    def __init__(self) -> None:
        self._names: dict[str, set[str]] = {}

    def exists(self, alias: str, table: str) -> bool:
        """Whether ``table`` exists on ``alias``; True when the database cannot be asked, so that
        the count that follows fails loudly instead of skipping it."""
        if alias not in self._names:
            introspection = connections[alias].introspection
            try:
                with connections[alias].cursor() as cursor:
                    self._names[alias] = set(introspection.table_names(cursor, include_views=True))
            except DatabaseError:
                return True
        return table in self._names[alias]


def holding_all(models_: Iterable[type[models.Model]], only: str | None = None) -> dict:
    """``{model: [alias, ...]}``: see :func:`holding`. One table listing per alias for all."""
    tables = _Tables()
    return {model: _holding(model, tables, only) for model in models_}


def holding(model: type[models.Model], only: str | None = None) -> list[str]:
    """The aliases whose database may hold rows of ``model``, its write database first.

    An alias counts when the routers allow the model there (``allow_migrate``) and its table
    exists there; aliases that name the same database are counted once. The write database
    (``router.db_for_write``) always counts. ``only``: just that alias (if it holds the model).
    """
    return _holding(model, _Tables(), only)


def _holding(model: type[models.Model], tables: _Tables, only: str | None) -> list[str]:
    write = router.db_for_write(model)
    table = model._meta.db_table

    def holds(alias: str) -> bool:
        return alias == write or (_allowed(alias, model) and tables.exists(alias, table))

    if only is not None:
        return [only] if holds(check_alias(only)) else []
    seen: set[tuple] = set()
    out = []
    for alias in [write, *(a for a in connections.settings if a != write)]:
        identity = _identity(alias)
        if identity not in seen and holds(alias):
            seen.add(identity)
            out.append(alias)
    return out


def may_hold(models_: Iterable[type[models.Model]], only: str | None = None) -> tuple[str, ...]:
    """The aliases that may hold rows of ``models_`` as the routers say (each model's write
    database, and the aliases ``allow_migrate`` allows it on), each database once, found without
    asking any database: what a read that failed before it could say where names. ``only``:
    just that alias."""
    if only is not None:
        return (check_alias(only),)
    seen: set[tuple] = set()
    out = []
    for model in models_:
        write = router.db_for_write(model)
        for alias in [write, *(a for a in connections.settings if a != write)]:
            identity = _identity(alias)
            if identity not in seen and (alias == write or _allowed(alias, model)):
                seen.add(identity)
                out.append(alias)
    return tuple(out)


def writable(alias: str) -> bool:
    """False for a database that refuses writes (a PostgreSQL hot standby, or a database whose
    sessions are read-only): ``reencrypt`` leaves it to its primary."""
    conn = connections[alias]
    if conn.vendor != "postgresql":
        return True
    with conn.cursor() as cursor:
        cursor.execute("SELECT current_setting('transaction_read_only')")
        return cursor.fetchone()[0] != "on"
