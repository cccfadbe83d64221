"""Migration operations that start and finish the adoption of an existing column.

``manage.py encryptcolumn`` writes migrations made of these; they are public so that such a
migration reads as plain Python and keeps working when the command changes.

* :class:`StartAdoption`: the field ``name`` becomes ``legacy_name`` (same column, now nullable,
  without its unique constraint or index) and a new :class:`~keyrotation.fields.EncryptedField`
  ``name`` is added beside it with its ``<name>_key_version`` column. Its SQL only adds columns,
  drops ``NOT NULL`` and drops the old column's indexes and unique constraints: the old column is
  never renamed, retyped or dropped, and its values stay where they are.
* :class:`FinishAdoption`: drops the legacy column, and refuses (:class:`AdoptionIncomplete`,
  before anything is dropped) while any row still holds a legacy value.

Both have a ``database_backwards`` that loses nothing: reversing :class:`FinishAdoption` adds the
legacy column back, empty, as it was when dropped; reversing :class:`StartAdoption` refuses while
any row holds a value in the new column (adopted rows keep their value only there).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError
from django.db import models
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState

from .fields import EncryptedField, KeyVersionField
from .fields.companion import VERSION_SUFFIX

__all__ = ["AdoptionIncomplete", "FinishAdoption", "StartAdoption"]


class AdoptionIncomplete(CommandError):
    """A migration step would lose data that is not adopted yet (``migrate`` prints one line).

    A ``CommandError``, so that ``manage.py migrate`` reports it as one line, not a traceback.
    """


def _count(model: type[models.Model], alias: str, field_name: str) -> int:
    """Rows of ``model`` on ``alias`` whose ``field_name`` is not NULL."""
    return model._base_manager.using(alias).filter(**{f"{field_name}__isnull": False}).count()


def _without_default(field: models.Field) -> models.Field:
    """A copy of ``field`` with no default: the new column is added empty, so that every row keeps
    reading its legacy value (a default would fill the new column and hide the legacy one)."""
    name, path, args, kwargs = field.deconstruct()
    kwargs.pop("default", None)
    copy = type(field)(*args, **kwargs)
    copy.set_attributes_from_name(name)
    copy.model = field.model
    return copy


class StartAdoption(Operation):
    """Turn the field ``name`` into the legacy field ``legacy_name`` and add the encrypted ``name``.

    Args:
        model_name: the model, lower case.
        name: the field being adopted; after this operation, the new ``EncryptedField``.
        legacy_name: the attribute the old column keeps (declared with ``db_column=<old column>``).
        field: the ``EncryptedField`` (nullable, in a column of its own).
        legacy_field: the old column as declared from now on: ``null=True``, no unique constraint,
            no index, ``db_column`` the old column, and the type the column really has.
        version_field: the ``<name>_key_version`` companion (default ``KeyVersionField()``).
    """

    reversible = True
    reduces_to_sql = True  # the refusals are reads, skipped by sqlmigrate

    def __init__(
        self,
        model_name: str,
        name: str,
        legacy_name: str,
        field: EncryptedField,
        legacy_field: models.Field,
        version_field: KeyVersionField | None = None,
    ) -> None:
        if not isinstance(field, EncryptedField):
            raise TypeError("StartAdoption: field must be an EncryptedField")
        if not field.null:
            raise TypeError("StartAdoption: the EncryptedField must be null=True (rows not adopted yet)")
        if isinstance(legacy_field, EncryptedField) or not legacy_field.null:
            raise TypeError("StartAdoption: legacy_field must be a plain field with null=True")
        if legacy_field.unique or legacy_field.db_index or legacy_field.primary_key:
            raise TypeError("StartAdoption: legacy_field must have no unique constraint and no index")
        if not legacy_field.db_column:
            raise TypeError("StartAdoption: legacy_field must name the old column (db_column=...)")
        if field.db_column == legacy_field.db_column or (
            not field.db_column and name == legacy_field.db_column
        ):
            raise TypeError("StartAdoption: the EncryptedField needs a column of its own (db_column=...)")
        self.model_name = model_name
        self.name = name
        self.legacy_name = legacy_name
        self.field = field
        self.legacy_field = legacy_field
        self.version_field = version_field

    @property
    def model_name_lower(self) -> str:
        return self.model_name.lower()

    @property
    def version_name(self) -> str:
        return f"{self.name}{VERSION_SUFFIX}"

    def _version_field(self) -> KeyVersionField:
        return self.version_field if self.version_field is not None else KeyVersionField()

    def deconstruct(self) -> tuple[str, list, dict]:
        kwargs: dict[str, Any] = {
            "model_name": self.model_name,
            "name": self.name,
            "legacy_name": self.legacy_name,
            "field": self.field,
            "legacy_field": self.legacy_field,
        }
        if self.version_field is not None:
            kwargs["version_field"] = self.version_field
        return self.__class__.__name__, [], kwargs

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        model = self.model_name_lower
        state.remove_field(app_label, model, self.name)
        state.add_field(app_label, model, self.legacy_name, self.legacy_field.clone(), True)
        state.add_field(app_label, model, self.name, self.field.clone(), True)
        state.add_field(app_label, model, self.version_name, self._version_field().clone(), True)

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        from_model = from_state.apps.get_model(app_label, self.model_name)
        to_model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, to_model):
            return
        old = from_model._meta.get_field(self.name)
        legacy = to_model._meta.get_field(self.legacy_name)
        connection = schema_editor.connection
        old_type, new_type = old.db_parameters(connection)["type"], legacy.db_parameters(connection)["type"]
        if old.column != legacy.column or old_type != new_type:
            raise AdoptionIncomplete(
                f"{to_model._meta.label}.{self.legacy_name}: the legacy field must keep the column "
                f"{old.column!r} and its type {old_type!r} (declared: {legacy.column!r}, {new_type!r}); "
                "nothing was changed"
            )
        # Same column, same type: only NOT NULL, the unique constraint and the indexes go.
        schema_editor.alter_field(from_model, old, legacy)
        for name in (self.name, self.version_name):
            field = to_model._meta.get_field(name)
            schema_editor.add_field(to_model, _without_default(field) if field.has_default() else field)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        from_model = from_state.apps.get_model(app_label, self.model_name)
        to_model = to_state.apps.get_model(app_label, self.model_name)
        alias = schema_editor.connection.alias
        if not self.allow_migrate_model(alias, to_model):
            return
        if not schema_editor.collect_sql:
            adopted = _count(from_model, alias, self.name)
            if adopted:
                raise AdoptionIncomplete(
                    f"{from_model._meta.label}.{self.name}: {adopted} row(s) hold a value only in the "
                    "new encrypted column; reversing the adoption would lose them (nothing was changed)"
                )
        for name in (self.version_name, self.name):
            schema_editor.remove_field(from_model, from_model._meta.get_field(name))
        # The old column back as it was, altered on a model without the new columns (SQLite
        # rebuilds the table from the model it is given).
        middle = from_state.clone()
        middle.remove_field(app_label, self.model_name_lower, self.version_name)
        middle.remove_field(app_label, self.model_name_lower, self.name)
        middle_model = middle.apps.get_model(app_label, self.model_name)
        schema_editor.alter_field(
            middle_model, middle_model._meta.get_field(self.legacy_name), to_model._meta.get_field(self.name)
        )

    def describe(self) -> str:
        return f"Start adopting {self.model_name}.{self.name} from its old column, kept as {self.legacy_name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"adopt_{self.model_name_lower}_{self.name.lower()}"

    def references_field(self, model_name: str, name: str, app_label: str) -> bool:
        return model_name.lower() == self.model_name_lower and name in (
            self.name,
            self.legacy_name,
            self.version_name,
        )

    def references_model(self, name: str, app_label: str) -> bool:
        return name.lower() == self.model_name_lower


class FinishAdoption(Operation):
    """Drop the legacy field ``legacy_name`` once every value of ``name`` was adopted.

    Refuses with :class:`AdoptionIncomplete` (one line naming model, field and count) while any row
    still holds a legacy value: run ``reencrypt`` and ``reencrypt --verify`` first.

    Args:
        model_name: the model, lower case.
        name: the adopting ``EncryptedField``.
        legacy_name: the legacy field to drop.
    """

    reversible = True
    reduces_to_sql = True  # the refusals are reads, skipped by sqlmigrate

    def __init__(self, model_name: str, name: str, legacy_name: str) -> None:
        self.model_name = model_name
        self.name = name
        self.legacy_name = legacy_name

    @property
    def model_name_lower(self) -> str:
        return self.model_name.lower()

    def deconstruct(self) -> tuple[str, list, dict]:
        kwargs = {"model_name": self.model_name, "name": self.name, "legacy_name": self.legacy_name}
        return self.__class__.__name__, [], kwargs

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        state.remove_field(app_label, self.model_name_lower, self.legacy_name)

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        from_model = from_state.apps.get_model(app_label, self.model_name)
        alias = schema_editor.connection.alias
        if not self.allow_migrate_model(alias, from_model):
            return
        if not schema_editor.collect_sql:
            left = _count(from_model, alias, self.legacy_name)
            if left:
                raise AdoptionIncomplete(
                    f"{from_model._meta.label}.{self.name}: {left} row(s) still hold a legacy value in "
                    f"{self.legacy_name}; run `manage.py reencrypt --model {from_model._meta.label}` and "
                    "`--verify` first (nothing was dropped)"
                )
        schema_editor.remove_field(from_model, from_model._meta.get_field(self.legacy_name))

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        to_model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, to_model):
            return
        # Every legacy value was NULL when the column was dropped: adding it back empty loses nothing.
        legacy = to_model._meta.get_field(self.legacy_name)
        schema_editor.add_field(to_model, _without_default(legacy) if legacy.has_default() else legacy)

    def describe(self) -> str:
        return f"Finish adopting {self.model_name}.{self.name}: drop {self.legacy_name} once it is empty"

    @property
    def migration_name_fragment(self) -> str:
        return f"finish_adopting_{self.model_name_lower}_{self.name.lower()}"

    def references_field(self, model_name: str, name: str, app_label: str) -> bool:
        return model_name.lower() == self.model_name_lower and name in (self.name, self.legacy_name)

    def references_model(self, name: str, app_label: str) -> bool:
        return name.lower() == self.model_name_lower
