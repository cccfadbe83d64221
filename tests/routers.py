"""Database routers for the PostgreSQL runs of the suite (``tests/settings.py`` adds the aliases).

``DefaultOnly`` is installed for the whole suite: every model lives on ``default``, so no test
but the multi-database ones ever touches ``other`` or ``replica``. ``tests/test_multidb.py``
installs the others with ``override_settings(DATABASE_ROUTERS=...)``.
"""

from __future__ import annotations

PERSON = ("testapp", "person")


def _is_person(app_label: str, model_name: str | None) -> bool:
    return (app_label, model_name) == PERSON


class DefaultOnly:
    """Every model on ``default``; the other aliases hold nothing."""

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == "default"


class PersonOnOther:
    """``testapp.Person`` lives on ``other`` (reads, writes, tables); everything else, the
    key and engine tables included, on ``default``."""

    def db_for_read(self, model, **hints):
        return "other" if _is_person(model._meta.app_label, model._meta.model_name) else "default"

    db_for_write = db_for_read

    def allow_relation(self, obj1, obj2, **hints):
        return True

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == ("other" if _is_person(app_label, model_name) else "default")


class _Replica:
    """Reads go to the replica alias, writes to ``default``."""

    replica = ""

    def db_for_read(self, model, **hints):
        return self.replica

    def db_for_write(self, model, **hints):
        return "default"

    def allow_relation(self, obj1, obj2, **hints):
        return True


class MirrorReplica(_Replica):
    """A replica that is the same database through another connection (what a streaming replica
    without lag looks like). Like Django's own example router, it allows every model everywhere."""

    replica = "replica"

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return True


class StaleReplica(_Replica):
    """A replica that never receives a write: reads routed there find nothing (the worst lag).
    It holds no model of its own (``allow_migrate`` only on ``default``)."""

    replica = "other"

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == "default"
