"""What a run has to do: per model, which columns, towards which key versions, how many rows.

A model is processed in one pass that rewrites all its encrypted and blind-index columns
together, so a row is rewritten once per run (one new tuple, one WAL record on PostgreSQL), not
once per column.

A column's target is a key version and a format: 0x02 for a field with ``bind_to`` (its bound
column is read with every row), else 0x01. A bound column's row is pending while its value is not
yet 0x02 (written before ``bind_to`` was set), even on the target version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.db import models
from django.db.models import BinaryField, Q, Value
from django.db.models.functions import Substr
from django.db.models.lookups import Exact

from .. import census, crypto, databases, keyring, registry
from ..exceptions import KeyRotationError


@dataclass(frozen=True)
class EncColumn:
    label: str
    column: str  # database column
    version_column: str
    keyring: str
    target: int
    # Adoption (EncryptedField(adopt_from=...)): the legacy column, and (raw value, connection) ->
    # canonical plaintext bytes (raises legacy.LegacyDecodeError).
    legacy_column: str | None = None
    legacy: Callable[[Any, Any], bytes] | None = field(default=None, repr=False, compare=False)
    # Row binding (EncryptedField(bind_to=...)): the bound column, and (raw value, connection) ->
    # the bytes the value is bound to (raises ValueError when there is none).
    bound_column: str | None = None
    binding: Callable[[Any, Any], bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def format(self) -> int:
        """The format the column's values are written in: 0x02 when bound to their row."""
        return crypto.FORMAT_V2 if self.bound_column else crypto.FORMAT_V1


@dataclass(frozen=True)
class IdxColumn:
    label: str
    column: str
    version_column: str
    keyring: str
    target: int
    length: int
    source: EncColumn
    index_input: Callable[[bytes], bytes] = field(repr=False, compare=False)


@dataclass
class ModelPlan:
    model: type[models.Model]
    enc: list[EncColumn]
    idx: list[IdxColumn]

    @property
    def label(self) -> str:
        return self.model._meta.label

    @property
    def table(self) -> str:
        return self.model._meta.db_table

    @property
    def pk_column(self) -> str:
        return self.model._meta.pk.column

    def pending_q(self) -> Q:
        """Rows with any column not on its target version (NULL versions: no value, no work)."""
        q = Q()
        for col in [*self.enc, *self.idx]:
            attname = _attname(self.model, col.version_column)
            q |= Q(**{f"{attname}__lt": col.target}) | Q(**{f"{attname}__gt": col.target})
        for col in self.enc:
            if col.legacy_column:  # a row still holding its legacy value is pending
                q |= Q(**{f"{_attname(self.model, col.legacy_column)}__isnull": False})
            # A value with no version (a default a migration filled in) is pending too.
            q |= Q(**{f"{_attname(self.model, col.version_column)}__isnull": True}) & Q(
                **{f"{_attname(self.model, col.column)}__isnull": False}
            )
            if col.bound_column:  # a value not bound to its row yet (written before bind_to)
                q |= Q(**{f"{_attname(self.model, col.column)}__isnull": False}) & ~Q(
                    Exact(format_byte(self.model, col.column), Value(bytes([col.format])))
                )
        for col in self.idx:
            # A value with no index yet (adoption, or a field added later) is pending too.
            source = col.source
            q |= Q(**{f"{_attname(self.model, col.version_column)}__isnull": True}) & (
                Q(**{f"{_attname(self.model, source.version_column)}__isnull": False})
                | Q(**{f"{_attname(self.model, source.column)}__isnull": False})
            )
        return q

    def pending(self, using: str) -> int:
        """Rows pending on the database ``using`` (always named: never a replica a router picks)."""
        return self.model._base_manager.using(using).filter(self.pending_q()).count()

    def targets(self) -> dict[str, int]:
        return {col.label: col.target for col in [*self.enc, *self.idx]}


def format_byte(model: type[models.Model], column: str) -> Substr:
    """The first byte of a stored value (its format), as an expression."""
    return Substr(_attname(model, column), 1, 1, output_field=BinaryField())


def _attname(model: type[models.Model], column: str) -> str:
    for f in model._meta.concrete_fields:
        if f.column == column:
            return f.attname
    raise KeyRotationError(f"{model._meta.label} has no column {column!r}")


def _select(columns: Iterable[registry.Column], scope: list[str] | None) -> list[registry.Column]:
    if not scope:
        return list(columns)
    chosen = []
    for col in columns:
        if col.model_label.lower() in scope or col.label.lower() in scope:
            chosen.append(col)
    return chosen


def build(scope: list[str] | None = None) -> list[ModelPlan]:
    """Plans for the registered columns in ``scope`` (``app.Model`` or ``app.Model.field``).

    Raises:
        KeyRotationError: a scope entry names no registered model or column.
    """
    given = list(scope) if scope else None
    scope = [s.lower() for s in scope] if scope else None
    cols = _select(registry.columns(), scope)
    if scope:
        known = {c.model_label.lower() for c in cols} | {c.label.lower() for c in cols}
        missing = [g for g in given if g.lower() not in known]
        if missing:
            raise KeyRotationError(
                f"no encrypted or indexed column matches {', '.join(missing)}; expected "
                f"'app_label.Model' or 'app_label.Model.field' (see `rotation_status`)"
            )
    by_model: dict[type[models.Model], ModelPlan] = {}
    for col in cols:
        model = apps.get_model(col.model_label)
        plan = by_model.setdefault(model, ModelPlan(model, [], []))
        f = model._meta.get_field(col.field_name)
        version_col = model._meta.get_field(col.version_attname).column
        target = keyring.get_keyring(col.keyring, col.purpose).active_version
        if col.purpose == "encrypt":
            plan.enc.append(
                EncColumn(col.label, f.column, version_col, col.keyring, target, *_legacy(f), *_binding(f))
            )
    for col in cols:
        if col.purpose != "index":
            continue
        model = apps.get_model(col.model_label)
        plan = by_model[model]
        f = model._meta.get_field(col.field_name)
        source_field = model._meta.get_field(f.source)
        source_label = registry.label_for(model, source_field.name)
        source = next((e for e in plan.enc if e.label == source_label), None)
        if source is None:  # the source column itself is out of scope: still read to index
            reg = registry.get(source_label)
            bound_column, binding = _binding(source_field)
            source = EncColumn(
                source_label,
                source_field.column,
                model._meta.get_field(reg.version_attname).column,
                reg.keyring,
                keyring.get_keyring(reg.keyring, "encrypt").active_version,
                bound_column=bound_column,
                binding=binding,
            )
        plan.idx.append(
            IdxColumn(
                col.label,
                f.column,
                model._meta.get_field(col.version_attname).column,
                col.keyring,
                keyring.get_keyring(col.keyring, "index").active_version,
                f.index_length(),
                source,
                _index_input(f),
            )
        )
    return list(by_model.values())


def _legacy(f) -> tuple[str | None, Callable[[Any, Any], bytes] | None]:
    """(legacy column, plaintext function) of an adopting EncryptedField, else (None, None)."""
    from .. import legacy

    source = legacy.legacy_field(f)
    if source is None:
        return None, None
    return source.column, legacy.plaintext_function(f)


def _binding(f) -> tuple[str | None, Callable[[Any, Any], bytes] | None]:
    """(bound column, binding function) of an EncryptedField with ``bind_to``, else (None, None)."""
    from .. import legacy

    bound = f.bound_field
    if bound is None:
        return None, None

    def binding(raw: Any, connection: Any) -> bytes:
        return f.binding_of(legacy.from_db(bound, raw, connection))

    return bound.column, binding


def _index_input(f) -> Callable[[bytes], bytes]:
    """Plaintext bytes of the source (codec form) -> the bytes the blind index HMACs."""
    from .. import codecs

    base = f.source_field.base_field
    return lambda plaintext: f.index_input(codecs.decode(base, plaintext))


def registered_databases(database: str | None = None) -> tuple[str, ...]:
    """The aliases that may hold rows of any model with a registered column, as the routers say
    (:func:`keyrotation.databases.may_hold`: no query is made); ``database``: just that alias."""
    return databases.may_hold({column.model for column in registry.columns()}, only=database)


def census_rows(database: str | None = None) -> list[dict]:
    """Per registered column: rows per key version, the active version and percent on it, summed
    over every database that holds the column (``databases`` lists them). With ``database``: only
    the columns held there, counted there."""
    cols = list(registry.columns())
    where = databases.holding_all({col.model for col in cols}, only=database)
    out = []
    for col in cols:
        aliases = where[col.model]
        if database is not None and not aliases:
            continue
        counts: dict[int | None, int] = {}
        legacy_rows, legacy_only, unversioned = None, 0, 0
        for alias in aliases:
            for version, n in census.counts(col, using=alias).items():
                counts[version] = counts.get(version, 0) + n
            with_legacy, only_legacy = _legacy_rows(col, alias)
            if with_legacy is not None:
                legacy_rows = (legacy_rows or 0) + with_legacy
            legacy_only += only_legacy
            unversioned += census.unversioned(col, alias)
        ring = keyring.get_keyring(col.keyring, col.purpose)
        active = ring.active_version
        unbound_rows, unbound_on_active = None, 0
        for alias in aliases:
            rows_unbound, on_active_unbound = _unbound_rows(col, active, alias)
            if rows_unbound is not None:
                unbound_rows = (unbound_rows or 0) + rows_unbound
            unbound_on_active += on_active_unbound
        with_value = sum(n for v, n in counts.items() if v is not None) + legacy_only + unversioned
        on_active = counts.get(active, 0) - unbound_on_active
        out.append(
            {
                "label": col.label,
                "model": col.model_label,
                "purpose": col.purpose,
                "keyring": col.keyring,
                "active_version": active,
                "versions": {str(v): n for v, n in counts.items() if v is not None},
                "empty": counts.get(None, 0) - legacy_only - unversioned,
                "rows": with_value,
                "on_active": on_active,
                "percent_active": 100.0 if with_value == 0 else round(100.0 * on_active / with_value, 2),
                "legacy_rows": legacy_rows,
                "unbound_rows": unbound_rows,
                "databases": aliases,
            }
        )
    return out


def _unbound_rows(col: registry.Column, active: int, using: str) -> tuple[int | None, int]:
    """(rows whose value is not bound to its row yet, of which on ``active``) for a column with
    ``bind_to``: not yet on its target, so not counted "on active"; (None, 0) for any other."""
    if col.purpose != "encrypt":
        return None, 0
    field = col.model._meta.get_field(col.field_name)
    if not getattr(field, "bind_to", None):
        return None, 0
    rows = col.model._base_manager.using(using).filter(**{f"{field.attname}__isnull": False})
    rows = rows.exclude(Exact(format_byte(col.model, field.column), Value(bytes([crypto.FORMAT_V2]))))
    return rows.count(), rows.filter(**{col.version_attname: active}).count()


def _legacy_rows(col: registry.Column, using: str) -> tuple[int | None, int]:
    """(rows holding a legacy value, of which with no new value): (None, 0) when not adopting."""
    from .. import legacy

    if col.purpose != "encrypt":
        return None, 0
    source = legacy.legacy_field(col.model._meta.get_field(col.field_name))
    if source is None:
        return None, 0
    qs = col.model._base_manager.using(using).filter(**{f"{source.attname}__isnull": False})
    return qs.count(), qs.filter(**{f"{col.version_attname}__isnull": True}).count()
