"""Decoders for adopting existing data: ``EncryptedField(..., adopt_from="col", legacy=<decoder>)``.

A decoder turns the value of the legacy column (as the legacy field loads it: ``str``, ``bytes``,
``int``, ``datetime``...) into the Python value of the new field. It never returns a value it
could not authenticate: every failure raises :class:`LegacyDecodeError`, which the field turns into
a :class:`~keyrotation.exceptions.DecryptionError` naming model, field and pk, and the engine into
a failed (or quarantined) row. The peers' habit of handing back the ciphertext as if it were the
plaintext is exactly what this module refuses to do.

The formats are re-implemented from their published behaviour (see ``docs/adoption.md``); none of
the legacy libraries is imported. Every primitive comes from ``cryptography``.

* :class:`Plaintext`: the column holds the plain value (default).
* :class:`DjangoCryptography`: django-cryptography (and its Django 5 forks).
* :class:`FernetFields`: django-fernet-fields (and django-fernet-fields-v2).
* :class:`EncryptedModelFields`: django-encrypted-model-fields (lanshark).
* :class:`FernetEncryptedFields`: django-fernet-encrypted-fields (jazzband).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from django.conf import settings
from django.db import models
from django.utils import dateparse, timezone

from .exceptions import LegacyDecodeError
from .legacy_pickle import MAX_PICKLE_BYTES, MAX_PICKLE_ITEMS, restricted_loads
from .tracebacks import forgets_locals

__all__ = [
    "DjangoCryptography",
    "EncryptedModelFields",
    "FernetEncryptedFields",
    "FernetFields",
    "LegacyDecodeError",
    "LegacyDecoder",
    "Plaintext",
    "restricted_loads",
]


def _bytes(raw: Any) -> bytes:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("ascii", "strict")
    raise LegacyDecodeError(f"expected bytes or str in the legacy column, got {type(raw).__name__}")


def _secret(value: Any) -> bytes:
    value = value() if callable(value) else value
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def db_timezone(using: str = "default") -> dt.tzinfo:
    """The time zone of naive datetimes written through a connection (UTC unless the database
    sets ``TIME_ZONE``): the adopter rule for backend-adapted datetime strings."""
    name = settings.DATABASES.get(using, {}).get("TIME_ZONE")
    if not name:
        return dt.timezone.utc
    import zoneinfo

    return zoneinfo.ZoneInfo(name)


_MICROSECONDS = re.compile(r"-?[0-9]+")


def from_text(text: str, base_field: models.Field, *, tz: dt.tzinfo | None = None) -> Any:
    """A value of ``base_field`` from the string a legacy library encrypted.

    Naive datetimes are read in the *connection* time zone ``tz`` (default: UTC), never in
    ``TIME_ZONE``: that is where Django's SQLite/MySQL/Oracle adapters put them. A duration that
    is a bare integer is in microseconds: what those adapters store (``str(timedelta)`` never is
    one), where ``DurationField.to_python`` would read seconds.
    """
    if isinstance(base_field, models.DateTimeField):
        value = dateparse.parse_datetime(text)
        if value is None:
            raise LegacyDecodeError("legacy plaintext is not a datetime")
        if settings.USE_TZ and timezone.is_naive(value):
            value = value.replace(tzinfo=tz or dt.timezone.utc)
        return value
    if isinstance(base_field, models.DurationField) and _MICROSECONDS.fullmatch(text):
        return dt.timedelta(microseconds=int(text))
    if isinstance(base_field, models.JSONField):
        return json.loads(text, cls=base_field.decoder)
    if isinstance(base_field, models.BinaryField):
        raise LegacyDecodeError("binary values cannot be adopted from a text plaintext")
    return base_field.to_python(text)


class LegacyDecoder:
    """Base class: ``decode(raw, base_field)`` returns the Python value or raises LegacyDecodeError."""

    name = "legacy"

    def decode(self, raw: Any, base_field: models.Field) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:  # never shows keys
        return f"<{type(self).__name__}>"


class Plaintext(LegacyDecoder):
    """The legacy column holds the plain value, as a plain Django field loads it."""

    name = "plaintext"

    @forgets_locals  # ``raw`` is the plain value
    def decode(self, raw: Any, base_field: models.Field) -> Any:
        if isinstance(raw, memoryview):
            raw = bytes(raw)
        if isinstance(base_field, models.DateTimeField) and isinstance(raw, str):
            return from_text(raw, base_field)
        try:
            return base_field.to_python(raw)
        except Exception as exc:  # noqa: BLE001 - ValidationError and friends: no value in the message
            raise LegacyDecodeError(f"plain value does not convert ({type(exc).__name__})") from None


# -- django-cryptography ----------------------------------------------------------------------


class DjangoCryptography(LegacyDecoder):
    """django-cryptography: ``0x80 | ts(8) | IV(16) | AES-CBC(PKCS7(pickle)) | HMAC-SHA256(32)``.

    Args:
        secret_key: the ``SECRET_KEY`` that keyed the HMAC (always ``SECRET_KEY``, even when
            ``CRYPTOGRAPHY_KEY`` was set). A list tries each (old ``SECRET_KEY`` values).
            Default: ``settings.SECRET_KEY``, read when first used.
        key: the per-field ``encrypt(field, key=...)`` raw AES key (16/24/32 bytes), if one was set.
        password: ``CRYPTOGRAPHY_KEY`` if it was set (default: the secret key).
        salt: ``CRYPTOGRAPHY_SALT`` (default ``b"django-cryptography"``).
        iterations: PBKDF2 iterations (30000 in every release).
        max_bytes, max_items: what one value may unpickle to (see :func:`restricted_loads`).

    The HMAC is verified (constant time) before anything is decrypted, and the pickle is loaded
    by a restricted, bounded unpickler (:func:`restricted_loads`). ``ttl=`` of the legacy field
    is ignored: adoption keeps every value.
    """

    name = "django-cryptography"

    def __init__(
        self,
        secret_key: Any = None,
        key: bytes | None = None,
        password: Any = None,
        salt: bytes | str = b"django-cryptography",
        iterations: int = 30000,
        max_bytes: int = MAX_PICKLE_BYTES,
        max_items: int = MAX_PICKLE_ITEMS,
    ) -> None:
        if key is not None and len(key) not in (16, 24, 32):
            raise TypeError("DjangoCryptography: key must be 16, 24 or 32 bytes")
        self._secret_key, self._key, self._password = secret_key, key, password
        self._salt = salt.encode() if isinstance(salt, str) else bytes(salt)
        self._iterations = iterations
        self._limits = {"max_bytes": max_bytes, "max_items": max_items}
        self._cached: tuple[list[bytes], bytes] | None = None

    def _keys(self) -> tuple[list[bytes], bytes]:
        if self._cached is None:
            secrets = self._secret_key if self._secret_key is not None else settings.SECRET_KEY
            if isinstance(secrets, (list, tuple)):
                macs = [_secret(s) for s in secrets]
            else:
                macs = [_secret(secrets)]
            if self._key is not None:
                aes = bytes(self._key)
            else:
                password = _secret(self._password) if self._password is not None else macs[0]
                kdf = PBKDF2HMAC(hashes.SHA256(), 32, self._salt, self._iterations)
                aes = kdf.derive(password)
            self._cached = (macs, aes)
        return self._cached

    @forgets_locals  # ``macs`` and ``aes`` are the keys, ``padded`` the plaintext
    def decrypt(self, blob: bytes) -> bytes:
        """The pickle bytes inside a django-cryptography value (HMAC verified first)."""
        if len(blob) < 1 + 8 + 16 + 16 + 32 or blob[0] != 0x80:
            raise LegacyDecodeError("not a django-cryptography value")
        macs, aes = self._keys()
        body, tag = blob[:-32], blob[-32:]
        if not any(hmac.compare_digest(hmac.new(k, body, hashlib.sha256).digest(), tag) for k in macs):
            raise LegacyDecodeError("HMAC does not verify")
        iv, ct = blob[9:25], blob[25:-32]
        if len(ct) % 16:
            raise LegacyDecodeError("ciphertext length is not a multiple of the block size")
        decryptor = Cipher(algorithms.AES(aes), modes.CBC(iv)).decryptor()
        padded = decryptor.update(ct) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            raise LegacyDecodeError("bad padding (wrong AES key)") from None

    @forgets_locals  # ``value`` is the plaintext
    def decode(self, raw: Any, base_field: models.Field) -> Any:
        value = restricted_loads(self.decrypt(_bytes(raw)), **self._limits)
        try:
            return base_field.to_python(value)
        except Exception as exc:  # noqa: BLE001
            raise LegacyDecodeError(f"unpickled value does not convert ({type(exc).__name__})") from None


# -- Fernet-based libraries -------------------------------------------------------------------


class _FernetDecoder(LegacyDecoder):
    """Shared: a MultiFernet over keys derived lazily; the plaintext is a string to parse."""

    def __init__(self, *, tz: dt.tzinfo | None = None) -> None:
        self._tz = tz
        self._fernet: MultiFernet | None = None

    def fernet_keys(self) -> list[bytes]:  # pragma: no cover - interface
        raise NotImplementedError

    def _multi(self) -> MultiFernet:
        if self._fernet is None:
            keys = self.fernet_keys()
            if not keys:
                raise LegacyDecodeError(f"{self.name}: no key configured")
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        return self._fernet

    @forgets_locals  # the frames below hold the Fernet keys
    def decrypt(self, raw: Any) -> bytes:
        try:
            return self._multi().decrypt(_bytes(raw))
        except (InvalidToken, UnicodeEncodeError):
            raise LegacyDecodeError("Fernet token does not verify with any key") from None

    @forgets_locals  # ``plaintext`` and ``text``
    def decode(self, raw: Any, base_field: models.Field) -> Any:
        plaintext = self.decrypt(raw)
        if isinstance(base_field, models.BinaryField):
            return plaintext
        try:
            text = plaintext.decode("utf-8")
            return self.parse(text, base_field)
        except LegacyDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - ValidationError, ValueError...: never the value
            raise LegacyDecodeError(f"decrypted value does not convert ({type(exc).__name__})") from None

    def parse(self, text: str, base_field: models.Field) -> Any:
        return from_text(text, base_field, tz=self._tz)


def _key_list(keys: Any) -> list[Any]:
    keys = keys() if callable(keys) else keys
    if isinstance(keys, (str, bytes)):
        return [keys]
    return list(keys)


class FernetFields(_FernetDecoder):
    """django-fernet-fields (and -v2): ASCII bytes of a Fernet token in a binary column.

    Args:
        keys: the ``FERNET_KEYS`` list (default: ``settings.FERNET_KEYS`` or ``[SECRET_KEY]``,
            read when first used).
        use_hkdf: ``FERNET_USE_HKDF`` (default True): each key is
            ``HKDF-SHA256(key, salt=b"django-fernet-fields-hkdf-salt", info=b"django-fernet-fields")``.
        tz: the time zone of naive datetime plaintexts (default: UTC, the connection time zone).

    The plaintext is the backend-adapted string (``"0"``, ``"2024-05-06"``, naive UTC datetimes on
    SQLite/MySQL, ``+00:00`` on PostgreSQL).
    """

    name = "django-fernet-fields"
    SALT = b"django-fernet-fields-hkdf-salt"
    INFO = b"django-fernet-fields"

    def __init__(
        self,
        keys: Iterable[Any] | Callable[[], Any] | None = None,
        use_hkdf: bool = True,
        tz: dt.tzinfo | None = None,
    ) -> None:
        super().__init__(tz=tz)
        self._keys, self._use_hkdf = keys, use_hkdf

    @forgets_locals  # the keys
    def fernet_keys(self) -> list[bytes]:
        keys = self._keys
        if keys is None:
            keys = getattr(settings, "FERNET_KEYS", None) or [settings.SECRET_KEY]
        out = []
        for key in _key_list(keys):
            if self._use_hkdf:
                derived = HKDF(hashes.SHA256(), 32, self.SALT, self.INFO).derive(_secret(key))
                out.append(base64.urlsafe_b64encode(derived))
            else:
                out.append(_secret(key))
        return out


class EncryptedModelFields(_FernetDecoder):
    """django-encrypted-model-fields (lanshark): a Fernet token as text, raw Fernet keys.

    Args:
        keys: ``FIELD_ENCRYPTION_KEY`` (a key or a list; default: that setting, read when used).
        tz: the time zone of naive datetime plaintexts (default UTC, the connection time zone;
            *not* ``TIME_ZONE``, which is where lanshark's own reader shifted them).

    Plaintexts are backend-adapted strings; booleans are ``"1"``/``"0"`` (``True``/``False`` on
    PostgreSQL). ``""`` is a real value.
    """

    name = "django-encrypted-model-fields"

    def __init__(self, keys: Any = None, tz: dt.tzinfo | None = None) -> None:
        super().__init__(tz=tz)
        self._keys = keys

    @forgets_locals  # the keys
    def fernet_keys(self) -> list[bytes]:
        keys = self._keys if self._keys is not None else getattr(settings, "FIELD_ENCRYPTION_KEY", None)
        if keys is None:
            return []
        return [_secret(k) for k in _key_list(keys)]


class FernetEncryptedFields(_FernetDecoder):
    """django-fernet-encrypted-fields (jazzband): a Fernet token as text, PBKDF2-derived keys.

    Args:
        secret_keys: ``[SECRET_KEY, *SECRET_KEY_FALLBACKS]`` (default: those settings, read when used).
        salts: ``SALT_KEY`` (a string or a list; default: that setting).
        iterations: 100_000 in every release.

    Each Fernet key is ``PBKDF2-HMAC-SHA256(secret, salt, 100000, 32)`` for every secret × salt,
    secret-major. The plaintext is ``str(value)``. Scalar fields only: the library's JSON field
    encrypts every leaf separately and loses their types. Falsy values (``0``, ``False``, ``""``)
    were stored as NULL by the library itself: there is nothing left to recover for them.
    """

    name = "django-fernet-encrypted-fields"

    def __init__(
        self,
        secret_keys: Any = None,
        salts: Any = None,
        iterations: int = 100_000,
        tz: dt.tzinfo | None = None,
    ) -> None:
        super().__init__(tz=tz)
        self._secrets, self._salts, self._iterations = secret_keys, salts, iterations

    @forgets_locals  # the secrets
    def fernet_keys(self) -> list[bytes]:
        secrets = self._secrets
        if secrets is None:
            secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
        salts = self._salts if self._salts is not None else getattr(settings, "SALT_KEY", None)
        if salts is None:
            return []
        out = []
        for secret in _key_list(secrets):
            for salt in _key_list(salts):
                kdf = PBKDF2HMAC(hashes.SHA256(), 32, _secret(salt), self._iterations)
                out.append(base64.urlsafe_b64encode(kdf.derive(_secret(secret))))
        return out


# -- used by the field and the engine ---------------------------------------------------------


def legacy_field(field: models.Field) -> models.Field | None:
    """The legacy field an ``EncryptedField`` adopts from, or None."""
    name = getattr(field, "adopt_from", None)
    if not name:
        return None
    return field.model._meta.get_field(name)


@forgets_locals  # ``raw`` may be the plain value (and a subclass's decoder is not decorated)
def decode_value(field: models.Field, raw: Any) -> Any:
    """The Python value of the EncryptedField ``field`` from its legacy field's value ``raw``."""
    value = field.legacy.decode(raw, field.base_field)
    if value is None:
        raise LegacyDecodeError("legacy value decodes to None")
    return value


def from_db(legacy: models.Field, raw: Any, connection: Any) -> Any:
    """A raw column value as the legacy field loads it (the backend and field converters)."""
    if raw is None:
        return None
    if isinstance(raw, memoryview):
        raw = bytes(raw)
    expr = legacy.get_col(legacy.model._meta.db_table)
    for conv in [*connection.ops.get_db_converters(expr), *expr.get_db_converters(connection)]:
        raw = conv(raw, expr, connection)
    return raw


def plaintext_function(field: models.Field) -> Callable[[Any, Any], bytes]:
    """For the engine: (raw legacy column value, connection) -> canonical plaintext bytes."""
    from . import codecs

    legacy = legacy_field(field)

    def convert(raw: Any, connection: Any) -> bytes:
        value = decode_value(field, from_db(legacy, raw, connection))
        try:
            return codecs.encode(field.base_field, value)
        except Exception as exc:  # noqa: BLE001
            raise LegacyDecodeError(f"decoded value does not encode ({type(exc).__name__})") from None

    return convert
