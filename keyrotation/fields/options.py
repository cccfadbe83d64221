"""One rule for field options: each means the same on the base field and on ``EncryptedField``.

``EncryptedField(models.CharField(max_length=10, blank=True), null=True)`` and
``EncryptedField(models.CharField(max_length=10), null=True, blank=True)`` are the same field. The
options concerned are :data:`SHARED`. Given on one side, an option applies to both (the base field
validates, renders forms and serializers; the wrapper owns the column); given on both sides with
different values, the field is refused with a ``TypeError`` naming both. ``validators`` given on
both sides are combined (the base field's first).

Options a base field implies are given by it: ``DateTimeField(auto_now=True)`` is
``editable=False, blank=True`` on the wrapper too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import models
from django.db.models.fields import NOT_PROVIDED

# option -> (attribute on a Field instance, how to tell it was not given)
SHARED: dict[str, tuple[str, Any]] = {
    "null": ("null", lambda v: v is False),
    "blank": ("blank", lambda v: v is False),
    "default": ("default", lambda v: v is NOT_PROVIDED),
    "choices": ("choices", lambda v: v is None),
    "validators": ("_validators", lambda v: not v),
    "editable": ("editable", lambda v: v is True),
    "verbose_name": ("_verbose_name", lambda v: v is None),
    "help_text": ("help_text", lambda v: v == ""),
    "db_comment": ("db_comment", lambda v: v is None),
    "error_messages": ("_error_messages", lambda v: not v),
}

# Options neither side may have: a ciphertext is random, and a database default is plaintext.
REFUSED = {
    "primary_key": (
        "ciphertexts are random; add a BlindIndexField(source=...) to search or enforce uniqueness"
    ),
    "unique": "ciphertexts are random; add a BlindIndexField(source=..., unique=True)",
    "db_index": "ciphertexts are random; add a BlindIndexField(source=...) to search",
    "db_default": "a database default is stored as plaintext; use default= instead",
}


@dataclass(frozen=True)
class Conflict:
    """An option given on both sides with different values."""

    option: str
    on_base: Any
    on_wrapper: Any

    def message(self, where: str) -> str:
        return (
            f"{where}: {self.option}={self.on_wrapper!r} on EncryptedField conflicts with "
            f"{self.option}={self.on_base!r} on its base field; give it on one side only"
        )


@dataclass
class Merged:
    """The options both fields get, and the conflicts found on the way."""

    options: dict[str, Any] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)


def refused(base: models.Field, wrapper_kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """``(option, reason)`` of the first option neither side may set, or ``None``."""
    given = base.deconstruct()[3]  # a class default (SlugField's db_index=True) is not given
    for option, reason in REFUSED.items():
        on_base = given.get(option, NOT_PROVIDED) not in (False, NOT_PROVIDED)
        if on_base or (option in wrapper_kwargs and wrapper_kwargs[option] not in (False, NOT_PROVIDED)):
            return option, reason
    return None


def given_on_base(base: models.Field) -> dict[str, Any]:
    """The shared options a base field instance was given (or implies), by option name."""
    out = {}
    for option, (attr, unset) in SHARED.items():
        value = getattr(base, attr)
        if not unset(value):
            out[option] = list(value) if option == "validators" else value
    return out


def _same(option: str, a: Any, b: Any) -> bool:
    if option == "choices":
        a, b = models.Field(choices=a).choices, models.Field(choices=b).choices
    try:
        return a is b or bool(a == b)
    except Exception:  # noqa: BLE001 - a default whose == raises is a different value
        return False


def merge(base: models.Field, wrapper_kwargs: dict[str, Any]) -> Merged:
    """The shared options of both sides, with the conflicts between them."""
    merged = Merged(options=given_on_base(base))
    for option in SHARED:
        if option not in wrapper_kwargs:
            continue
        value = wrapper_kwargs[option]
        if option == "validators":
            combined = merged.options.get("validators", [])
            merged.options["validators"] = combined + [v for v in value if v not in combined]
            continue
        if option in merged.options and not _same(option, merged.options[option], value):
            merged.conflicts.append(Conflict(option, merged.options[option], value))
            continue
        merged.options[option] = value
    return merged


def rebuild(base: models.Field, options: dict[str, Any]) -> models.Field:
    """A new, unbound instance of ``base``'s class with ``options`` in place of its shared ones."""
    _, _, args, kwargs = base.deconstruct()
    kwargs = {k: v for k, v in kwargs.items() if k not in SHARED}
    return type(base)(*args, **kwargs, **options)


def without_shared(base: models.Field) -> models.Field:
    """``base`` as written into migrations: the shared options live on the wrapper."""
    return rebuild(base, {})
