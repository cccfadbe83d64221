"""What ``manage.py encryptcolumn`` writes: the adoption migration, and the model edit to paste.

:func:`start` and :func:`finish` return an :class:`AdoptionPlan` (the migration's text and path,
and the lines that replace the field in ``models.py``); :func:`write` writes the migration. The
migration is built on the app's latest migration and holds the operations of
:mod:`keyrotation.migration_operations`, so that the migration state equals the model code once
the printed lines are pasted (``makemigrations --check`` is clean).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.db import migrations, models
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.questioner import NonInteractiveMigrationQuestioner
from django.db.migrations.serializer import serializer_factory
from django.db.migrations.state import ProjectState
from django.db.migrations.writer import MigrationWriter

from . import adoption_sources, conf
from .fields import BlindIndexField, EncryptedField, KeyVersionField
from .migration_operations import FinishAdoption, StartAdoption

FIELDS_IMPORT = "from keyrotation.fields import {}"
LEGACY_IMPORT = "from keyrotation import legacy"


class PlanError(ValueError):
    """The adoption cannot be planned (the message is one line for the operator)."""


@dataclass(frozen=True)
class ModelEdit:
    """How ``models.py`` changes: the lines declaring ``replace`` give way to ``lines``."""

    model: str  # app_label.Model
    file: str
    replace: list[str]  # field names whose declaration lines are removed
    lines: list[str]  # the new declarations, in place of the first one removed
    imports: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "file": self.file,
            "replace": self.replace,
            "lines": self.lines,
            "imports": self.imports,
        }


@dataclass(frozen=True)
class AdoptionPlan:
    """A migration to write, and the model edit that goes with it."""

    app_label: str
    name: str  # the migration's name, e.g. 0042_adopt_customer_email
    path: Path
    text: str
    edit: ModelEdit
    operations: list[str]  # describe() of each operation


@dataclass(frozen=True)
class Target:
    """The model and field named ``app_label.Model.field``."""

    model: type[models.Model]
    field: models.Field

    @property
    def label(self) -> str:
        return f"{self.model._meta.label}.{self.field.name}"


def resolve(dotted: str) -> Target:
    """The model and field of ``app_label.Model.field``.

    Raises:
        PlanError: not three dotted parts, or no such app, model or field.
    """
    parts = dotted.split(".")
    if len(parts) != 3 or not all(parts):
        raise PlanError(f"expected app_label.Model.field, got {dotted!r}")
    app_label, model_name, field_name = parts
    try:
        model = apps.get_model(app_label, model_name)
    except LookupError:
        raise PlanError(f"no model {app_label}.{model_name}") from None
    try:
        found = model._meta.get_field(field_name)
    except FieldDoesNotExist:
        raise PlanError(f"{model._meta.label} has no field {field_name!r}") from None
    return Target(model, found)


def _source(value: Any) -> tuple[str, set[str]]:
    """Python source of a value as a migration writes it, and the imports it needs."""
    text, imports = serializer_factory(value).serialize()
    return text, set(imports)


def _call(name: str, args: list[str], kwargs: dict[str, Any]) -> tuple[str, set[str]]:
    parts, imports = list(args), set()
    for key, value in kwargs.items():
        text, more = _source(value)
        parts.append(f"{key}={text}")
        imports |= more
    return f"{name}({', '.join(parts)})", imports


def _encrypted_line(name: str, enc: EncryptedField, extra: dict[str, str]) -> tuple[str, set[str]]:
    """``name = EncryptedField(<base>, <options>, adopt_from=..., legacy=...)``."""
    _, _, _, kwargs = enc.deconstruct()
    base, imports = _source(kwargs.pop("base_field"))
    call, more = _call("EncryptedField", [base], kwargs)
    if extra:
        call = call[:-1] + "".join(f", {k}={v}" for k, v in extra.items()) + ")"
    return f"{name} = {call}", imports | more


def _field_line(name: str, value: models.Field) -> tuple[str, set[str]]:
    text, imports = _source(value)
    return f"{name} = {text}", imports


def _imports_of(lines_imports: set[str], names: list[str], with_legacy: bool) -> list[str]:
    out = sorted(i for i in lines_imports if not i.startswith("import keyrotation"))
    if with_legacy:
        out.append(LEGACY_IMPORT)
    out.append(FIELDS_IMPORT.format(", ".join(names)))
    return out


def _model_file(model: type[models.Model]) -> str:
    try:
        path = Path(inspect.getsourcefile(model) or "")
    except TypeError:
        return model.__module__
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _loader_and_leaf(app_label: str) -> tuple[MigrationLoader, str]:
    """The migration loader and the app's one leaf migration; refuses unmigrated model changes."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    if app_label not in loader.migrated_apps:
        raise PlanError(f"{app_label} has no migrations: run `manage.py makemigrations {app_label}` first")
    leaves = loader.graph.leaf_nodes(app_label)
    if len(leaves) != 1:
        raise PlanError(
            f"{app_label} has {len(leaves)} leaf migrations: run `manage.py makemigrations --merge`"
        )
    changes = MigrationAutodetector(
        loader.project_state(),
        ProjectState.from_apps(apps),
        NonInteractiveMigrationQuestioner(specified_apps={app_label}, dry_run=True),
    ).changes(graph=loader.graph, trim_to_apps={app_label}, convert_apps={app_label})
    if changes.get(app_label):
        raise PlanError(
            f"{app_label} has model changes without a migration: run `manage.py makemigrations "
            f"{app_label}` first, so that the adoption starts from the model as migrated"
        )
    return loader, leaves[0][1]


def _migration(
    app_label: str, leaf: str, loader: MigrationLoader, name: str, operations: list[Any]
) -> tuple[str, Path, str]:
    number = (MigrationAutodetector.parse_number(leaf) or 0) + 1
    existing = {n for (a, n) in loader.disk_migrations if a == app_label}
    if any(n == name or n.split("_", 1)[-1] == name for n in existing):
        raise PlanError(f"{app_label} already has a migration named {name!r}: choose another with --name")
    full = f"{number:04d}_{name}"
    migration = type("Migration", (migrations.Migration,), {})(full, app_label)
    migration.dependencies = [(app_label, leaf)]
    migration.operations = operations
    writer = MigrationWriter(migration)
    path = Path(writer.path)
    if path.exists():
        raise PlanError(f"{path} already exists: choose another name with --name")
    return full, path, writer.as_string()


def _version_field() -> KeyVersionField | None:
    """The ``<name>_key_version`` companion as the model will declare it (``None``: the default)."""
    return KeyVersionField(db_index=True) if conf.index_version_columns() else None


def _free(target: Target, names: list[str], columns: list[str]) -> None:
    opts = target.model._meta
    taken_names = {f.name for f in opts.get_fields()} | {f.attname for f in opts.concrete_fields}
    taken_columns = {f.column for f in opts.concrete_fields}
    for name in names:
        if name in taken_names:
            raise PlanError(f"{opts.label} already has a field {name!r}: choose another name")
    for column in columns:
        if column in taken_columns:
            raise PlanError(f"{opts.label} already has a column {column!r}: choose another with --column")


def start(
    dotted: str,
    source_name: str,
    *,
    legacy_name: str | None = None,
    column: str | None = None,
    blind_index: str | None = None,
    name: str | None = None,
) -> AdoptionPlan:
    """Plan the migration that starts adopting ``app_label.Model.field`` from ``source_name``.

    Args:
        dotted: ``app_label.Model.field``: the field as the model declares it today.
        source_name: a key of :data:`keyrotation.adoption_sources.SOURCES`.
        legacy_name: the attribute the old column keeps (default ``<field>_legacy``).
        column: the new encrypted column (default ``<field>_enc``).
        blind_index: the name of a ``BlindIndexField`` to add (unique if the field was), or None.
        name: the migration's name without its number (default ``adopt_<model>_<field>``).

    Raises:
        PlanError: an unknown source, model or field; a field already encrypted or adopted; a
            primary key or relation; a field type the source's mapping does not know; a name
            already taken.
    """
    source = adoption_sources.SOURCES.get(source_name)
    if source is None:
        raise PlanError(f"unknown --from {source_name!r}; one of: {', '.join(adoption_sources.SOURCES)}")
    target = resolve(dotted)
    model, old = target.model, target.field
    opts = model._meta
    if isinstance(old, EncryptedField):
        adopting = f" (adopting from {old.adopt_from}: use --finish)" if old.adopt_from else ""
        raise PlanError(f"{target.label} is already an EncryptedField{adopting}")
    if not getattr(old, "concrete", False) or old.is_relation or old.primary_key:
        raise PlanError(f"{target.label} cannot be adopted: only a concrete, non-key, non-relation field")
    if any(isinstance(f, EncryptedField) and f.adopt_from == old.name for f in opts.local_fields):
        raise PlanError(f"{target.label} is already being adopted: use --finish")
    try:
        base = adoption_sources.base_field(old, source)
    except adoption_sources.UnknownField as exc:
        raise PlanError(f"{target.label}: {exc}") from None
    legacy_name = legacy_name or f"{old.name}_legacy"
    column = column or f"{old.name}_enc"
    extra_names = [legacy_name, f"{old.name}_key_version"]
    if blind_index:
        extra_names += [blind_index, f"{blind_index}_key_version"]
    _free(target, extra_names, [column])
    loader, leaf = _loader_and_leaf(opts.app_label)

    options: dict[str, Any] = {"null": True, "db_column": column}
    if old.blank:
        options["blank"] = True
    enc = EncryptedField(base, **options)
    legacy_decl = adoption_sources.legacy_field(old, source)
    model_name = opts.model_name
    operations: list[Any] = [
        StartAdoption(model_name, old.name, legacy_name, enc, legacy_decl, _version_field())
    ]
    lines_imports: set[str] = set()
    line, imp = _field_line(legacy_name, legacy_decl)
    enc_line, enc_imp = _encrypted_line(
        old.name, enc, {"adopt_from": repr(legacy_name), "legacy": source.decoder}
    )
    lines, lines_imports = [line, enc_line], imp | enc_imp
    names = ["EncryptedField"]
    if blind_index:
        index = BlindIndexField(source=old.name, unique=bool(old.unique))
        operations += [
            migrations.AddField(model_name, blind_index, index),
            migrations.AddField(
                model_name, f"{blind_index}_key_version", _version_field() or KeyVersionField()
            ),
        ]
        line, imp = _call("BlindIndexField", [], index.deconstruct()[3])
        lines.append(f"{blind_index} = {line}")
        lines_imports |= imp
        names.insert(0, "BlindIndexField")
    full, path, text = _migration(
        opts.app_label, leaf, loader, name or operations[0].migration_name_fragment, operations
    )
    edit = ModelEdit(
        opts.label, _model_file(model), [old.name], lines, _imports_of(lines_imports, names, True)
    )
    return AdoptionPlan(opts.app_label, full, path, text, edit, [op.describe() for op in operations])


def finish(dotted: str, *, name: str | None = None) -> AdoptionPlan:
    """Plan the migration that drops the legacy column of an adoption in progress.

    Raises:
        PlanError: an unknown model or field, or no adoption in progress for it.
    """
    target = resolve(dotted)
    enc = target.field
    if not isinstance(enc, EncryptedField) or not enc.adopt_from:
        raise PlanError(f"no adoption in progress for {target.label} (it has no adopt_from=)")
    opts = target.model._meta
    try:
        legacy = opts.get_field(enc.adopt_from)
    except FieldDoesNotExist:
        raise PlanError(f"{target.label} adopts from {enc.adopt_from!r}, which is not a field") from None
    loader, leaf = _loader_and_leaf(opts.app_label)
    operation = FinishAdoption(opts.model_name, enc.name, legacy.name)
    full, path, text = _migration(
        opts.app_label, leaf, loader, name or operation.migration_name_fragment, [operation]
    )
    line, imports = _encrypted_line(enc.name, enc, {})
    edit = ModelEdit(
        opts.label,
        _model_file(target.model),
        [legacy.name, enc.name],
        [line],
        _imports_of(imports, ["EncryptedField"], False),
    )
    return AdoptionPlan(opts.app_label, full, path, text, edit, [operation.describe()])


def write(plan: AdoptionPlan) -> None:
    """Write the plan's migration file (its directory exists: the app has migrations)."""
    plan.path.write_text(plan.text)
