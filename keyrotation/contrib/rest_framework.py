"""Django REST framework: an encrypted field serializes as the field it wraps.

DRF's ``ModelSerializer`` picks a serializer field by the model field's class. ``EncryptedField`` is
not in its mapping, so on its own DRF falls back to a generic ``ModelField`` that knows nothing of
the base field: no email check, no choices, no ``max_length``, no date formats. This module makes
``ModelSerializer.build_standard_field`` build, for an ``EncryptedField``, exactly what DRF builds
for its ``base_field`` (through the serializer's own mapping, so a subclass's
``serializer_field_mapping`` is honoured), with the options the model reads from the wrapper:

* ``read_only`` when the wrapper is ``editable=False``;
* ``required=False`` when it has a default, or is ``blank`` or ``null``;
* its ``verbose_name`` and ``help_text`` as ``label`` and ``help_text``, where it sets them;
* DRF's own ``UniqueValidator`` when one of its blind indexes is ``unique=True``: the validator's
  ``filter(<field>=value)`` runs through the blind index, with its normalisation (by default
  ``"Bob@X.com"`` and ``"bob@x.com"`` are the same value), and its message is the wrapper's
  ``error_messages["unique"]``.

Values go out as plaintext (the model attribute decrypts on access) and come in through the
serializer's ordinary ``create()`` / ``update()``, which encrypt on save.

Blind indexes and ``<name>_key_version`` columns are internal. Django marks them
``serialize=False``, so ``fields = "__all__"`` leaves them out. Naming a blind index in
``Meta.fields`` raises ``ImproperlyConfigured``: its digest lets anyone who reads it match equal
values across rows. A version column named there is DRF's read-only field (a small integer).

:func:`install` runs from ``KeyRotationConfig.ready()`` when ``rest_framework`` is importable, so
existing serializers need no change. :func:`serializer_field_for` builds one field by hand.
"""

from __future__ import annotations

import functools
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models
from django.utils.text import capfirst

try:
    from rest_framework import serializers
    from rest_framework.utils.field_mapping import get_unique_error_message, needs_label
    from rest_framework.validators import UniqueValidator
except ImportError as exc:  # the message names the extra; the cause is only a missing package
    raise ImportError(
        "keyrotation.contrib.rest_framework needs Django REST framework: "
        "pip install 'django-keyrotation[drf]'"
    ) from exc

from keyrotation.fields import BlindIndexField, EncryptedField

__all__ = ["build_encrypted_field", "install", "serializer_field_for"]

FieldSpec = tuple[type[serializers.Field], dict[str, Any]]


def build_encrypted_field(
    serializer: serializers.ModelSerializer, field_name: str, model_field: EncryptedField
) -> FieldSpec:
    """The ``(field class, kwargs)`` that ``serializer`` builds for an encrypted model field.

    Args:
        serializer: the ``ModelSerializer`` building its fields (its mapping and choice field
            class are used for the base field).
        field_name: the serializer field's name.
        model_field: an ``EncryptedField`` bound to a model.

    Returns:
        What ``serializer.build_standard_field`` returns for ``model_field.base_field``, with the
        wrapper's options and a ``UniqueValidator`` for a unique blind index.
    """
    field_class, kwargs = serializer.build_standard_field(field_name, model_field.base_field)
    if model_field.verbose_name and needs_label(model_field, field_name):
        kwargs["label"] = capfirst(model_field.verbose_name)
    if model_field.help_text:
        kwargs["help_text"] = model_field.help_text
    if not model_field.editable:
        return field_class, serializer.include_extra_kwargs(kwargs, {"read_only": True})
    if kwargs.get("read_only"):
        return field_class, kwargs
    # A new instance takes the wrapper's default (the field in Model._meta), never the base field's.
    if model_field.has_default() or model_field.blank or model_field.null:
        kwargs["required"] = False
    else:
        kwargs.pop("required", None)
    if any(index.unique for index in model_field.blind_indexes):
        validator = UniqueValidator(
            queryset=model_field.model._default_manager, message=get_unique_error_message(model_field)
        )
        kwargs["validators"] = [*kwargs.get("validators", ()), validator]
    return field_class, kwargs


def serializer_field_for(model_field: models.Field, **kwargs: Any) -> serializers.Field:
    """The serializer field a ``ModelSerializer`` builds for ``model_field``, as an instance.

    For serializers written by hand (``serializers.Serializer``), or to declare one field of a
    ``ModelSerializer`` explicitly with a few options changed.

    Args:
        model_field: a concrete, non-relational field bound to a model (``EncryptedField`` or
            not), e.g. ``Person._meta.get_field("email")``.
        **kwargs: serializer field options that override the built ones, applied as
            ``Meta.extra_kwargs`` are (``read_only=True`` drops ``required``, ``validators``...).

    Returns:
        A new, unbound serializer field.

    Raises:
        TypeError: if ``model_field`` is not bound to a model, or is a relation.
        ImproperlyConfigured: if it is a blind index.

    Example::

        class SignupSerializer(serializers.Serializer):
            email = serializer_field_for(Person._meta.get_field("email"))
    """
    if not isinstance(model_field, models.Field) or not hasattr(model_field, "model"):
        raise TypeError("serializer_field_for: model_field must be a field bound to a model")
    if model_field.is_relation:
        raise TypeError(
            f"serializer_field_for: {model_field.name!r} is a relation; use a related serializer field"
        )
    _refuse_blind_index(model_field.model, model_field.name)
    serializer = serializers.ModelSerializer()
    if isinstance(model_field, EncryptedField):
        field_class, field_kwargs = build_encrypted_field(serializer, model_field.name, model_field)
    else:
        field_class, field_kwargs = serializer.build_standard_field(model_field.name, model_field)
    return field_class(**serializer.include_extra_kwargs(field_kwargs, dict(kwargs)))


def _refuse_blind_index(model: type[models.Model], field_name: str) -> None:
    try:
        field = model._meta.get_field(field_name)
    except FieldDoesNotExist:
        return
    if isinstance(field, BlindIndexField):
        raise ImproperlyConfigured(
            f"{model._meta.label}.{field_name} is a blind index and is never serialized: serialize "
            f"its source field {field.source!r} instead."
        )


def install() -> bool:
    """Make every ``ModelSerializer`` build encrypted fields as their base field. Idempotent.

    Wraps ``ModelSerializer.build_standard_field`` (an ``EncryptedField`` goes to
    :func:`build_encrypted_field`, anything else to DRF) and ``ModelSerializer.build_field`` (a
    blind index named in ``Meta.fields`` raises ``ImproperlyConfigured``). Each wrapper keeps
    DRF's method as ``__wrapped__``. ``KeyRotationConfig.ready()`` calls it when
    ``rest_framework`` is importable.

    Returns:
        True if it installed the wrappers, False if they were already there.
    """
    cls = serializers.ModelSerializer
    if getattr(cls.build_standard_field, "_keyrotation", False):
        return False
    original_standard, original_build = cls.build_standard_field, cls.build_field

    @functools.wraps(original_standard)
    def build_standard_field(
        self: serializers.ModelSerializer, field_name: str, model_field: Any
    ) -> FieldSpec:
        if isinstance(model_field, EncryptedField):
            return build_encrypted_field(self, field_name, model_field)
        return original_standard(self, field_name, model_field)

    @functools.wraps(original_build)
    def build_field(
        self: serializers.ModelSerializer, field_name: str, info: Any, model_class: Any, nested_depth: int
    ) -> FieldSpec:
        _refuse_blind_index(model_class, field_name)
        return original_build(self, field_name, info, model_class, nested_depth)

    build_standard_field._keyrotation = True  # type: ignore[attr-defined]
    build_field._keyrotation = True  # type: ignore[attr-defined]
    cls.build_standard_field = build_standard_field
    cls.build_field = build_field
    return True
