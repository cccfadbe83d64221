"""``BlindIndexField``: a searchable HMAC of an encrypted field's normalised plaintext.

Public path: ``keyrotation.fields.BlindIndexField`` (re-exported there; migrations use that path).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

from django.core import checks
from django.core.exceptions import FieldDoesNotExist
from django.db import models

from .. import codecs, conf, keyring, registry
from .companion import add_version_field, public_path
from .encrypted import EncryptedField
from .sealed import NOT_ADOPTED, Sealed

MAX_INDEX_BYTES = 32  # the longest digest (HMAC-SHA256); the MySQL column type is sized for it


def normalize_text(value: str) -> str:
    """Default blind-index normalisation of strings: NFKC, casefold, strip."""
    return unicodedata.normalize("NFKC", value).casefold().strip()


class BlindIndexField(models.BinaryField):
    """A searchable HMAC of another field's normalised plaintext, kept up to date on every write.

    Args:
        source: name of the ``EncryptedField`` it indexes.
        normalize: callable applied to the value first (an importable function, it is written
            into migrations). Default: :func:`normalize_text` for text fields, none otherwise.
        bytes: digest length (default ``KEYROTATION["BLIND_INDEX_BYTES"]``).
        keyring: keyring of the index key (default: the source's keyring).
        unique: enforce uniqueness of the normalised plaintext with a unique constraint on the
            index column. The constraint holds *per index key version*: during an index-key
            rotation a value under v1 and the same value under v2 differ, so a duplicate can slip
            in until ``reencrypt`` has moved every row to the new version.

    Lookups by the source (``filter(email=...)``, ``__in``, ``exclude``, ``get``) go through the
    first unique ``BlindIndexField`` declared for it (else the first), matching every decryptable
    index version.
    """

    def __init__(
        self,
        source: str,
        normalize: Callable[[Any], Any] | None = None,
        bytes: int | None = None,  # noqa: A002 - public keyword, mirrors the setting's name
        keyring: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(source, str) or not source:
            raise TypeError("BlindIndexField: source must be the name of an EncryptedField")
        if normalize is not None and not callable(normalize):
            raise TypeError("BlindIndexField: normalize must be callable or None")
        if bytes is not None and (not isinstance(bytes, int) or not 4 <= bytes <= MAX_INDEX_BYTES):
            raise TypeError("BlindIndexField: bytes must be an int from 4 to 32")
        self.source, self.normalize, self.index_bytes, self.keyring = source, normalize, bytes, keyring
        kwargs.update(null=True, blank=True, editable=False, serialize=False)
        super().__init__(**kwargs)

    def db_type(self, connection: Any) -> str | None:
        """``varbinary(32)`` on MySQL/MariaDB, where a ``BinaryField`` is a ``longblob``: MySQL
        cannot index a BLOB without a prefix length (a unique blind index would fail to create)
        and MariaDB enforces a unique BLOB through a hidden hash column. A digest is at most 32
        bytes, so one column type fits every ``bytes`` setting. Other backends: ``BinaryField``'s."""
        if connection.vendor == "mysql":
            return f"varbinary({MAX_INDEX_BYTES})"
        return super().db_type(connection)

    def contribute_to_class(self, cls: type[models.Model], name: str, private_only: bool = False) -> None:
        super().contribute_to_class(cls, name, private_only=private_only)
        add_version_field(self, cls)

    def deconstruct(self) -> tuple[str, str, list, dict]:
        name, _, args, kwargs = super().deconstruct()
        for key in ("null", "blank", "editable", "serialize"):
            kwargs.pop(key, None)
        kwargs["source"] = self.source
        for key, value in (("normalize", self.normalize), ("bytes", self.index_bytes)):
            if value is not None:
                kwargs[key] = value
        if self.keyring is not None:
            kwargs["keyring"] = self.keyring
        return name, public_path(self, BlindIndexField), args, kwargs

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = super().check(**kwargs)
        try:
            source = self.model._meta.get_field(self.source)
        except FieldDoesNotExist:  # reported below
            source = None
        if not isinstance(source, EncryptedField):
            errors.append(
                checks.Error(
                    f"BlindIndexField '{self.name}': source '{self.source}' is not an EncryptedField "
                    f"of {self.model._meta.label}.",
                    hint="Set source= to the name of an EncryptedField on the same model.",
                    obj=self,
                    id="keyrotation.E102",
                )
            )
        return errors

    @property
    def label(self) -> str:
        return registry.label_for(self.model, self.name)

    @property
    def source_field(self) -> EncryptedField:
        return self.model._meta.get_field(self.source)

    @property
    def keyring_name(self) -> str:
        return self.keyring or self.source_field.keyring_name

    def index_input(self, value: Any) -> bytes:
        """The bytes the HMAC covers: the normalised value in the source codec form."""
        base = self.source_field.base_field
        value = codecs.to_python(base, value)
        if isinstance(value, float) and value == 0.0:
            value = 0.0  # -0.0 == 0.0 in SQL and in Python: one digest for both
        if self.normalize is not None:
            value = self.normalize(value)
        elif isinstance(value, str):
            value = normalize_text(value)
        return codecs.encode(base, value)

    def index_length(self) -> int:
        """Digest length in bytes (the field option, else the BLIND_INDEX_BYTES setting)."""
        return self.index_bytes or conf.blind_index_bytes()

    def index_value(self, value: Any) -> tuple[bytes | None, int | None]:
        """(digest, version) of a plaintext under the active index key; ``(None, None)`` for None."""
        if value is None:
            return None, None
        ring = keyring.get_keyring(self.keyring_name, "index")
        return ring.index(self.label, self.index_input(value), self.index_length())

    def lookup_digests(self, value: Any) -> list[bytes]:
        """Digests of a plaintext under every decryptable index version (for lookups)."""
        ring = keyring.get_keyring(self.keyring_name, "index")
        return list(ring.indexes(self.label, self.index_input(value), self.index_length()).values())

    def refresh(self, instance: models.Model) -> bytes | None:
        """Recompute the index (and its version) on ``instance`` from the source; return it.

        A source never read since it was loaded keeps its stored index: nothing changed.
        """
        raw = instance.__dict__.get(self.source_field.attname)
        current = instance.__dict__.get(self.attname)
        if raw is NOT_ADOPTED:
            return current  # the source still lives in its legacy column: reencrypt indexes it
        if isinstance(raw, Sealed) and current is not None and raw.field is self.source_field:
            return current
        digest, version = self.index_value(getattr(instance, self.source_field.attname))
        instance.__dict__[self.attname] = digest
        instance.__dict__[self.version_attname] = version
        return digest

    def pre_save(self, model_instance: models.Model, add: bool) -> bytes | None:
        return self.refresh(model_instance)
