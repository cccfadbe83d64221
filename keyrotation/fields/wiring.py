"""What happens when a model with encrypted fields is prepared (``class_prepared``).

Blind indexes are attached to their source, every manager gets the encrypted-aware queryset class
(:mod:`.queryset`), ``_save_table`` and ``validate_unique`` are wrapped (:mod:`.writes`,
:mod:`.uniqueness`), and the columns of concrete, non-historical models are registered for the
engine, the census and the admin (:mod:`keyrotation.registry`).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db import models
from django.db.models.signals import class_prepared

from .. import registry
from .blind_index import BlindIndexField
from .encrypted import EncryptedField
from .queryset import swap_manager
from .uniqueness import unique_indexes, wrap_validate_unique
from .writes import encrypted_fields, wrap_save_table


def _attach_indexes(opts: Any, local: list[models.Field]) -> None:
    for field in local:
        if isinstance(field, BlindIndexField):
            source = next((f for f in opts.local_fields if f.name == field.source), None)
            if isinstance(source, EncryptedField) and field not in source.blind_indexes:
                source.blind_indexes.append(field)


def _register(sender: type[models.Model], local: list[models.Field]) -> None:
    for field in local:
        if isinstance(field, BlindIndexField):
            if not any(field in f.blind_indexes for f in encrypted_fields(sender)):
                continue  # misdeclared source: reported by the field's system check
        registry.register(
            registry.Column(
                label=field.label,
                model=sender,
                field_name=field.name,
                version_attname=field.version_attname,
                keyring=field.keyring_name,
                purpose="encrypt" if isinstance(field, EncryptedField) else "index",
            )
        )


def prepare(sender: type[models.Model], **kwargs: Any) -> None:
    opts = sender._meta
    local = [f for f in opts.local_fields if isinstance(f, (EncryptedField, BlindIndexField))]
    _attach_indexes(opts, local)
    if not encrypted_fields(sender):
        return
    for base in sender.__mro__:
        if isinstance(base, type) and issubclass(base, models.Model) and hasattr(base, "_meta"):
            for manager in base._meta.local_managers:
                swap_manager(manager)
    for manager in opts.managers:
        swap_manager(manager)
    wrap_save_table(sender)
    if unique_indexes(sender):
        wrap_validate_unique(sender)
    if opts.abstract or opts.apps is not global_apps:
        return
    _register(sender, local)


class_prepared.connect(prepare, dispatch_uid="keyrotation.fields.wiring.prepare")
