"""``migrate`` refuses the migrations that would destroy a column's values on the way to encryption.

``makemigrations`` knows nothing of adoption: changing a plain field into an ``EncryptedField``
gives an ``AlterField`` that casts the column (its plaintext becomes "ciphertext" that never
opens) or rebuilds it, and removing a legacy field gives a ``RemoveField`` that drops values not
adopted yet. Before anything runs (``pre_migrate``), every migration of the plan is read, and one
that would

* alter a plain field that holds values into an ``EncryptedField``, or
* remove a plain field that holds values while the same migration adds an ``EncryptedField`` of
  the same name, or while an ``EncryptedField`` of the model still adopts from it,

stops ``migrate`` with one line that points at ``manage.py encryptcolumn``. Empty columns pass:
there is nothing to lose. The counts use the state before the plan; a column created by the same
plan is new, hence empty.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.core.exceptions import FieldDoesNotExist
from django.core.management.base import CommandError
from django.db import connections
from django.db.migrations.operations import AddField, AlterField, RemoveField

from .fields import EncryptedField

__all__ = ["UnsafeMigration", "refuse_unsafe_migrations", "unsafe_operations"]


class UnsafeMigration(CommandError):
    """A migration would destroy values of a column (``migrate`` prints one line)."""


def _values(apps: Any, using: str, app_label: str, model_name: str, name: str) -> tuple[str, int]:
    """``(label, count)``: the rows whose plain field ``name`` holds a value (0 when the model, the
    field or the table does not exist yet, or the field is already encrypted)."""
    try:
        model = apps.get_model(app_label, model_name)
        field = model._meta.get_field(name)
    except (LookupError, FieldDoesNotExist):
        return "", 0
    if isinstance(field, EncryptedField) or not getattr(field, "concrete", False) or field.many_to_many:
        return "", 0
    connection = connections[using]
    with connection.cursor() as cursor:
        if model._meta.db_table not in connection.introspection.table_names(cursor):
            return "", 0
    count = model._base_manager.using(using).filter(**{f"{name}__isnull": False}).count()
    return f"{model._meta.label}.{name}", count


def _adopted_by_code(app_label: str, model_name: str, name: str) -> bool:
    """Whether the installed model has an ``EncryptedField`` that still adopts from ``name``."""
    try:
        model = global_apps.get_model(app_label, model_name)
    except LookupError:
        return False
    return any(isinstance(f, EncryptedField) and f.adopt_from == name for f in model._meta.local_fields)


def unsafe_operations(plan: list[tuple[Any, bool]], apps: Any, using: str) -> None:
    """Raise :class:`UnsafeMigration` for the first operation of ``plan`` that would destroy values.

    Args:
        plan: ``(migration, backwards)`` pairs, as ``pre_migrate`` gives them.
        apps: the migration state before the plan.
        using: the database alias.
    """
    for migration, backwards in plan:
        if backwards:
            continue
        app_label = migration.app_label
        encrypted = {
            (op.model_name_lower, op.name)
            for op in migration.operations
            if isinstance(op, (AddField, AlterField)) and isinstance(op.field, EncryptedField)
        }
        for op in migration.operations:
            if isinstance(op, AlterField) and isinstance(op.field, EncryptedField):
                why = "alters it into an EncryptedField in place, which would destroy them"
            elif isinstance(op, RemoveField) and (
                (op.model_name_lower, op.name) in encrypted
                or _adopted_by_code(app_label, op.model_name, op.name)
            ):
                why = "drops the column before its values were adopted"
            else:
                continue
            label, count = _values(apps, using, app_label, op.model_name, op.name)
            if count:
                raise UnsafeMigration(
                    f"{migration.app_label}.{migration.name}: {label} holds {count} value(s) and the "
                    f"migration {why}; delete this migration and write the adoption with `manage.py "
                    f"encryptcolumn {label} --from ...` (see docs/adoption.md)"
                )


def refuse_unsafe_migrations(
    sender: Any, using: str = "default", apps: Any = None, plan: Any = None, **kwargs: Any
) -> None:
    """``pre_migrate`` receiver (connected for the keyrotation app only: once per ``migrate``)."""
    if plan and apps is not None:
        unsafe_operations(plan, apps, using)
