"""``EncryptedField``: a model field whose column holds a format-0x01 ciphertext of its value.

``EncryptedField(base_field)`` wraps an ordinary Django field instance. The base field does what it
always does (``to_python``, choices, validators, ``formfield()``, ``value_to_string``, ``auto_now``),
while the column holds a ciphertext (``bytea`` / ``BLOB``) of the value's canonical bytes (see
:mod:`keyrotation.codecs`). ``None`` is stored as NULL; every other value, ``0``, ``False`` and
``""`` included, is encrypted. Options mean the same on either side (:mod:`.options`).

Each field adds its companion ``<name>_key_version`` column itself, kept equal to the key version in
the ciphertext header on every write path (see :mod:`.writes`).

Reading is lazy: a loaded row keeps the raw token on the instance, and the first attribute access
decrypts it with ``pk=instance.pk``, so a value that fails to open raises
:class:`~keyrotation.exceptions.DecryptionError` naming the column label (app, model, field), the
primary key and the key version, and never the ciphertext or any plaintext. A row that is saved
without its encrypted value being read keeps its token as is (no decrypt, no re-encrypt).

Serialization (``dumpdata`` / ``loaddata``) goes through the base field, so **fixtures hold
plaintext**: treat them as sensitive as the data itself. Version and blind-index columns are not
serialized; they are recomputed when a fixture is loaded.

Adding a field with a default to a table that has rows: the migration fills every existing row with
one ciphertext of the default under the active key (never the plaintext); its version column stays
NULL, so the census counts those rows as pending and ``reencrypt`` gives each its own ciphertext,
version and blind index.

``bind_to`` seals every value to its row (format 0x02, see :mod:`.binding`): such a field gets the
:class:`BoundEncryptedAttribute` descriptor, so the read path of unbound fields is unchanged.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from django.core import checks
from django.core.exceptions import FieldError
from django.db import models
from django.db.models.query_utils import DeferredAttribute
from django.utils.text import capfirst

from .. import codecs, conf, crypto, keyring, registry
from ..exceptions import DecryptionError, KeyringError
from . import adoption, binding, lookups, options
from .companion import add_version_field, is_historical, public_path
from .sealed import NOT_ADOPTED, Sealed

HEADER_BYTES = crypto.HEADER_BYTES

# The keyring cache, whose generation tells a field whether the ciphers it kept are still current.
_KEYRINGS = keyring.CACHE


class EncryptedAttribute(DeferredAttribute):
    """Data descriptor: decrypts the stored token on first access, with the instance's pk."""

    def __get__(self, instance: models.Model | None, cls: type | None = None) -> Any:
        if instance is None:
            return self
        try:
            value = instance.__dict__[self.field.attname]
        except KeyError:
            value = super().__get__(instance, cls)  # deferred: loads it
        if isinstance(value, Sealed):
            # pk=instance.pk, read only if the value fails to open (it names the row)
            value = value.field._open(value, None, instance)
            instance.__dict__[self.field.attname] = value
        elif value is NOT_ADOPTED:
            value = adoption.read_legacy(self.field, instance)
            instance.__dict__[self.field.attname] = value
        return value

    def __set__(self, instance: models.Model, value: Any) -> None:
        instance.__dict__[self.field.attname] = value


class BoundEncryptedAttribute(EncryptedAttribute):
    """The descriptor of a field with ``bind_to``: opens a stored value with the instance's bound value."""

    def __get__(self, instance: models.Model | None, cls: type | None = None) -> Any:
        if instance is None:
            return self
        data, name = instance.__dict__, self.field.attname
        value = data[name] if name in data else DeferredAttribute.__get__(self, instance, cls)
        if isinstance(value, Sealed) and value.field is self.field:
            value = data[name] = self.field._open_bound(value, instance)
            return value
        return super().__get__(instance, cls)


class EncryptedField(models.Field):
    """A model field stored encrypted, validated and rendered by ``base_field``.

    Args:
        base_field: an unbound field instance: CharField (and SlugField, URLField, EmailField),
            TextField, FilePathField, GenericIPAddressField, IntegerField (and SmallIntegerField,
            BigIntegerField, the Positive*IntegerFields), FloatField, DecimalField, DateField,
            DateTimeField, TimeField (naive values), DurationField, BooleanField, JSONField,
            BinaryField or UUIDField; not an auto field. Neither it nor the wrapper may be a
            primary key, ``unique``, ``db_index`` or have a ``db_default`` (a ciphertext is
            random, and a database default is plaintext: use a ``BlindIndexField``).
        keyring: the keyring name (default ``KEYROTATION["DEFAULT_KEYRING"]``, read when used).
        adopt_from: name of a concrete, nullable field of the same model that holds the data to
            adopt (plaintext, or another library's ciphertext). While it is set, reading returns
            the new value if there is one, else the decoded legacy value; every write of this
            field sets the legacy column to NULL; ``reencrypt`` adopts the remaining rows. Not
            written into migrations (like ``legacy``): removing it needs no migration.
        legacy: a decoder from :mod:`keyrotation.legacy` (default ``Plaintext()``).
        bind_to: name of a field of the same model whose value is bound into every ciphertext of
            this one (format 0x02): a value copied onto another row fails to open there. The field
            must be concrete, non-null, unique, not encrypted, and set before the row is written
            (a client-generated UUID primary key; never an auto-increment key) and never changed.
            Values written before it was set stay readable; ``reencrypt`` binds them.
        **kwargs: ordinary field options (``null``, ``blank``, ``default``, ``choices``,
            ``validators``, ``verbose_name``...). Each means the same given here or on
            ``base_field``; given on both with different values, the field is refused.

    Raises:
        TypeError: for an unsupported or misconfigured base field, or an option given on both
            sides with different values (when the field is added to its model, naming it).

    Example::

        email = EncryptedField(models.EmailField(max_length=254))
        email_bidx = BlindIndexField(source="email", unique=True)
    """

    descriptor_class = EncryptedAttribute
    empty_strings_allowed = False

    def __init__(
        self,
        base_field: models.Field,
        keyring: str | None = None,
        adopt_from: str | None = None,
        legacy: Any = None,
        bind_to: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(base_field, models.Field):
            raise TypeError(f"EncryptedField: base_field must be a field instance, got {base_field!r}")
        if codecs.kind(base_field) is None:
            raise TypeError(
                f"EncryptedField does not support {type(base_field).__name__}; supported: "
                + ", ".join(c.__name__ for c in codecs.SUPPORTED)
            )
        bad = options.refused(base_field, kwargs)
        if bad is not None:
            raise TypeError(f"EncryptedField cannot be {bad[0]}: {bad[1]}")
        if keyring is not None and (not isinstance(keyring, str) or not keyring):
            raise TypeError("EncryptedField: keyring must be a non-empty string")
        if adopt_from is not None and (not isinstance(adopt_from, str) or not adopt_from):
            raise TypeError("EncryptedField: adopt_from must be the name of a field of the same model")
        if legacy is not None and adopt_from is None:
            raise TypeError("EncryptedField: legacy= needs adopt_from=")
        if adopt_from is not None and legacy is None:
            legacy = adoption.default_decoder()
        if legacy is not None and not callable(getattr(legacy, "decode", None)):
            raise TypeError("EncryptedField: legacy must be a decoder from keyrotation.legacy")
        if bind_to is not None and (not isinstance(bind_to, str) or not bind_to):
            raise TypeError("EncryptedField: bind_to must be the name of a field of the same model")
        merged = options.merge(base_field, kwargs)
        self._conflicts = merged.conflicts
        self.base_field = options.rebuild(base_field, merged.options)
        self.keyring = keyring
        self.adopt_from = adopt_from
        self.legacy = legacy
        self.bind_to = bind_to
        if bind_to:
            self.descriptor_class = BoundEncryptedAttribute
        self.empty_strings_allowed = self.base_field.empty_strings_allowed
        self.blind_indexes: list[Any] = []  # BlindIndexField instances, filled at class_prepared
        self._decode = codecs.decoder(self.base_field)
        self._reset_read_cache()
        super().__init__(**{**kwargs, **merged.options})

    def _reset_read_cache(self) -> None:
        # What reading derives from the model, the name and the keyring cache: the label, and the
        # cipher of each key version seen, by the header of its tokens (either format: the read
        # path compares bytes, parses nothing), as {header: (cipher, expires_at, keyring
        # generation)} (see keyring.decrypt_cipher). Reset whenever the field is bound to a class, so a copy
        # (abstract inheritance) never shares a parent's label or ciphers.
        self._label: str | None = None
        self._ciphers: dict[bytes, tuple[crypto.Cipher, float, int]] = {}
        # With bind_to: the bound field, and its canonical encoder (codecs.encoder), found once.
        self._bound: models.Field | None = None
        self._encode_bound: Any = None

    # -- declaration ------------------------------------------------------------------------

    def contribute_to_class(self, cls: type[models.Model], name: str, private_only: bool = False) -> None:
        if self._conflicts:
            raise TypeError(self._conflicts[0].message(f"{cls._meta.label}.{name}"))
        self._reset_read_cache()
        super().contribute_to_class(cls, name, private_only=private_only)
        self.base_field.set_attributes_from_name(name)
        self.base_field.model = cls
        add_version_field(self, cls)

    def deconstruct(self) -> tuple[str, str, list, dict]:
        name, _, args, kwargs = super().deconstruct()
        kwargs["base_field"] = options.without_shared(self.base_field)
        if self.keyring is not None:
            kwargs["keyring"] = self.keyring
        if self.bind_to is not None:
            kwargs["bind_to"] = self.bind_to  # how values are stored: historical models open them too
        return name, public_path(self, EncryptedField), args, kwargs

    @property
    def description(self) -> str:  # type: ignore[override]
        """The base field's description after "Encrypted", formatted (admindocs formats it again)."""
        base = self.base_field
        return f"Encrypted {str(base.description) % base.__dict__}".replace("%", "%%")

    def get_internal_type(self) -> str:
        return "BinaryField"

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = super().check(**kwargs)
        errors += [e for e in self.base_field.check() if e.level >= checks.ERROR]
        errors += adoption.check(self, EncryptedField)
        errors += binding.check(self, EncryptedField)
        ordering = [o for o in getattr(self.model._meta, "ordering", []) if isinstance(o, str)]
        if self.name in (o.lstrip("-?") for o in ordering):
            errors.append(
                checks.Error(
                    f"Meta.ordering uses encrypted field '{self.name}'; ciphertext order is random.",
                    hint="Order by another field.",
                    obj=self,
                    id="keyrotation.E101",
                )
            )
        return errors

    def _check_choices(self) -> list[checks.CheckMessage]:
        return []  # the base field checks its choices against its own type (see check())

    @property
    def legacy_attname(self) -> str | None:
        """Attribute name of the legacy column this field adopts from (None when not adopting)."""
        source = adoption.legacy_field(self)
        return source.attname if source is not None else None

    def read_legacy(self, instance: models.Model) -> Any:
        """The decoded value of the legacy column of ``instance`` (None when it is NULL)."""
        return adoption.read_legacy(self, instance)

    def get_default(self) -> Any:
        if self.adopt_from and not self.has_default():
            return NOT_ADOPTED  # a new row given only its legacy value keeps it
        return super().get_default()

    @property
    def label(self) -> str:
        """``app_label.ModelName.field``: bound into every ciphertext of this column."""
        label = self._label
        if label is None:
            label = self._label = registry.label_for(self.model, self.name)
        return label

    @property
    def bound_field(self) -> models.Field | None:
        """The field named by ``bind_to`` (``None`` without it).

        Raises:
            FieldDoesNotExist: ``bind_to`` names no field (reported by the system check E122).
        """
        bound = self._bound
        if bound is None and self.bind_to:
            opts = self.model._meta
            bound = self._bound = opts.pk if self.bind_to == "pk" else opts.get_field(self.bind_to)
        return bound

    def binding(self, instance: models.Model) -> bytes:
        """The bytes ``instance``'s values of this field are bound to (its bound field's value).

        Raises:
            ValueError: the bound field has no value.
        """
        return self.binding_of(getattr(instance, self.bound_field.attname))

    def binding_of(self, bound_value: Any) -> bytes:
        """The bytes a row whose bound field holds ``bound_value`` binds its values to: the value's
        canonical encoding (:mod:`keyrotation.codecs`), as the 0x02 AAD holds it.

        Raises:
            ValueError: ``bound_value`` is None.
        """
        if bound_value is None:
            raise binding.no_bound_value(self)
        encode = self._encode_bound
        if encode is None:
            encode = self._encode_bound = codecs.encoder(self.bound_field)
        return encode(bound_value)

    @property
    def keyring_name(self) -> str:
        return self.keyring or conf.default_keyring()

    @property
    def search_index(self) -> Any:
        """The blind index that equality lookups use: the first unique one, else the first declared
        (``None`` without one). Uniqueness checks then normalise exactly as the constraint does."""
        indexes = self.blind_indexes
        return next((i for i in indexes if i.unique), indexes[0] if indexes else None)

    # -- encryption -------------------------------------------------------------------------

    def seal_value(self, value: Any, bound_to: bytes | None = None) -> Sealed | None:
        """Encrypt a plaintext value under the active key (``None`` stays ``None``).

        ``bound_to``: the row's binding (:meth:`binding`): format 0x02. Without it, format 0x01
        (for a bound field, only a migration's default, which ``reencrypt`` binds row by row).
        """
        if value is None or value is NOT_ADOPTED:
            return None
        if isinstance(value, Sealed):
            if value.field.label == self.label and value.version is not None and bound_to is None:
                return value  # untouched since it was loaded: keep the token as is
            value = value.field.open(value)
        plaintext = codecs.encode(self.base_field, value)
        if bound_to is None:
            token, version = keyring.encrypt(self.keyring_name, self.label, plaintext)
        else:
            token, version = keyring.encrypt_bound(self.keyring_name, self.label, plaintext, bound_to)
        return Sealed(token, self, version)

    def seal(self, instance: models.Model) -> Sealed | None:
        """Seal the instance's value and set its version attribute to match."""
        if self.bind_to:
            sealed = self._seal_bound(instance)
        else:
            sealed = self.seal_value(instance.__dict__.get(self.attname))
        instance.__dict__[self.version_attname] = sealed.version if sealed is not None else None
        return sealed

    def _seal_bound(self, instance: models.Model) -> Sealed | None:
        """:meth:`seal` with ``bind_to``: format 0x02, bound to the instance's bound value.

        A value loaded and never read keeps its token only if it opens with this row's bound value
        and is already 0x02: one that does not open (the bound field changed, or the value was moved
        here) raises ``DecryptionError`` rather than be written where it can never be read.
        """
        value = instance.__dict__.get(self.attname)
        if value is None or value is NOT_ADOPTED:
            return None
        bound_to = self.binding(instance)
        if isinstance(value, Sealed) and value.field is self:
            sealed, value = value, self._open_bound(value, instance, bound_to)
            if sealed.token[0] == crypto.FORMAT_V2:
                return sealed
        return self.seal_value(value, bound_to)

    def open(self, sealed: Sealed, pk: Any = None) -> Any:
        """Decrypt a stored token.

        Raises:
            DecryptionError: naming the label, ``pk`` and key version; never a byte of the value.
            FieldError: the field has ``bind_to``: use :meth:`open_bound`.
        """
        if self.bind_to:
            raise FieldError(
                f"{self.label} is bound to '{self.bind_to}' (bind_to): open its values with "
                "open_bound(sealed, <the row's bound value>)."
            )
        return self._open(sealed, pk, None)

    def open_bound(self, sealed: Sealed, bound_value: Any, pk: Any = None) -> Any:
        """Decrypt a stored token of a field with ``bind_to``, given its row's bound field value.

        Raises:
            DecryptionError: as :meth:`open`; a value moved from another row fails like any other.
            ValueError: ``bound_value`` is None.
        """
        return self._open_bound(sealed, None, self.binding_of(bound_value), pk)

    def _open(self, sealed: Sealed, pk: Any, instance: models.Model | None) -> Any:
        """:meth:`open`; given ``instance``, its pk is read only for an error message.

        The hot path: the cipher this field kept for the token's header (format and key version,
        compared as bytes: no parse), while the keyring listing it came from is still the cached
        one and within its TTL (else it is asked again, with every check: state, unknown version
        reload, TTL), then AES-GCM and the base field's decoder.
        """
        token = sealed.token
        entry = self._ciphers.get(token[:HEADER_BYTES])
        if entry is None or entry[2] != _KEYRINGS.generation or monotonic() >= entry[1]:
            if instance is not None:
                pk = instance.pk
            version = sealed.version
            if version is None:  # the header does not parse
                return self._open_uncached(sealed, pk)
            entry = self._cipher_entry(version, pk)
        try:
            data = entry[0].decrypt(token)
        except crypto.InvalidToken:
            pk = instance.pk if instance is not None else pk
            raise DecryptionError(label=self.label, pk=pk, version=sealed.version) from None
        try:
            return self._decode(data)
        except Exception:  # noqa: BLE001, S110 - any decoder error (a JSONField's decoder class too)
            pass  # raised below, outside the handler: the decoder's error may quote the value
        del data  # the plaintext: this frame is in the traceback of the error
        pk = instance.pk if instance is not None else pk
        raise DecryptionError(
            "Decrypted value does not decode", label=self.label, pk=pk, version=sealed.version
        )

    def _open_bound(
        self, sealed: Sealed, instance: models.Model | None, bound_to: bytes | None = None, pk: Any = None
    ) -> Any:
        """:meth:`open_bound`, with the binding of ``instance`` unless given.

        A format 0x01 value (written before ``bind_to`` was set) opens as such; ``reencrypt`` binds
        it. Failures are raised outside any ``except`` block and with the plaintext dropped, so
        neither the exception's context nor this frame holds it.
        """
        version = sealed.version
        if instance is not None:
            pk = instance.pk
        if version is None:  # the header does not parse
            raise DecryptionError("Malformed encrypted value", label=self.label, pk=pk)
        if bound_to is None:
            bound_to = self.binding(instance)
        token, data = sealed.token, None
        entry = self._ciphers.get(token[:HEADER_BYTES])
        if entry is None or entry[2] != _KEYRINGS.generation or monotonic() >= entry[1]:
            entry = self._cipher_entry(version, pk)
        try:
            if token[0] == crypto.FORMAT_V2:
                data = entry[0].decrypt_bound(token, bound_to)
            else:
                data = entry[0].decrypt(token)
        except crypto.InvalidToken:
            pass
        if data is None:
            raise DecryptionError(label=self.label, pk=pk, version=version)
        value = failed = None
        try:
            value = self._decode(data)
        except (ValueError, TypeError, ArithmeticError):
            failed = True
        data = None
        if failed:
            raise DecryptionError("Decrypted value does not decode", label=self.label, pk=pk, version=version)
        return value

    def _cipher_entry(self, version: int, pk: Any) -> tuple[crypto.Cipher, float, int]:
        """Ask the keyring for the cipher of ``version`` and keep it, under the header of each
        token format it opens (the slow path)."""
        name, label = self.keyring_name, self.label
        try:
            entry = keyring.decrypt_cipher(name, label, version)
        except KeyringError as exc:
            raise DecryptionError(
                f"Cannot decrypt: {type(exc).__name__}", label=label, pk=pk, version=version
            ) from exc
        cipher = entry[0]
        self._ciphers[cipher.header] = self._ciphers[cipher.bound_header] = entry
        return entry

    def _open_uncached(self, sealed: Sealed, pk: Any) -> Any:
        """:meth:`open` through the module-level ``keyring.decrypt``, keeping nothing."""
        try:
            data = keyring.decrypt(self.keyring_name, self.label, sealed.token, pk=pk, version=sealed.version)
        except KeyringError as exc:
            raise DecryptionError(
                f"Cannot decrypt: {type(exc).__name__}", label=self.label, pk=pk, version=sealed.version
            ) from exc
        try:
            return codecs.decode(self.base_field, data)
        except Exception:  # noqa: BLE001, S110 - as in _open
            pass
        del data
        version = sealed.version
        raise DecryptionError("Decrypted value does not decode", label=self.label, pk=pk, version=version)

    # -- database round trip ------------------------------------------------------------------

    def pre_save(self, model_instance: models.Model, add: bool) -> Sealed | None:
        base = self.base_field
        if getattr(base, "auto_now", False) or (add and getattr(base, "auto_now_add", False)):
            base.pre_save(model_instance, add)  # sets the attribute to now, as the plain field would
        return self.seal(model_instance)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if value is None or value is NOT_ADOPTED:
            return None
        if isinstance(value, Sealed):
            return connection.Database.Binary(value.token)
        if is_historical(self.model):
            # A migration's schema editor filling existing rows with the default (AddField,
            # AlterField to NOT NULL): one ciphertext of it, never the plaintext.
            return connection.Database.Binary(self._seal_default(value, connection))
        raise FieldError(
            f"{self.label}: plaintext reached the database layer. Write encrypted fields through "
            "save(), create(), bulk_create(), bulk_update() or update() on the model's managers."
        )

    def _seal_default(self, value: Any, connection: Any) -> bytes:
        try:
            return self.seal_value(value).token
        except KeyringError:
            if not self.model._base_manager.using(connection.alias).exists():
                return b""  # no row takes the default: any placeholder will do
            raise FieldError(
                f"{self.label}: cannot fill the existing rows with the field's default: the keyring "
                f"{self.keyring_name!r} has no active key. Run `manage.py rotatekeys --init` first."
            ) from None

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None:
            return NOT_ADOPTED if self.adopt_from else None
        return Sealed(value, self)

    # -- Python side: the base field ------------------------------------------------------------

    def to_python(self, value: Any) -> Any:
        if value is None or value is NOT_ADOPTED or isinstance(value, Sealed):
            return value
        return codecs.to_python(self.base_field, value)

    def validate(self, value: Any, model_instance: models.Model | None) -> None:
        self.base_field.validate(value, model_instance)

    def run_validators(self, value: Any) -> None:
        self.base_field.run_validators(value)

    def value_to_string(self, obj: models.Model) -> Any:
        return self.base_field.value_to_string(obj)

    def formfield(self, **kwargs: Any) -> Any:
        defaults: dict[str, Any] = {
            "required": not self.blank,
            "label": capfirst(self.verbose_name),
            "help_text": self.help_text,
        }
        if self.has_default():
            defaults["initial"] = self.default if callable(self.default) else self.get_default()
        defaults.update(kwargs)
        return self.base_field.formfield(**defaults)

    # -- lookups --------------------------------------------------------------------------------

    def get_lookup(self, lookup_name: str) -> Any:
        return lookups.lookup_for(self, lookup_name)

    def get_transform(self, lookup_name: str) -> Any:
        return None
