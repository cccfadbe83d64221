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
import decimal
import functools
import hashlib
import hmac
import io
import json
import pickle  # noqa: S403 - restricted Unpickler below, only after the HMAC is verified
import pickletools
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

from .exceptions import KeyRotationError
from .tracebacks import forgets_locals

__all__ = [
    "DjangoCryptography",
    "EncryptedModelFields",
    "FernetEncryptedFields",
    "FernetFields",
    "LegacyDecodeError",
    "LegacyDecoder",
    "Plaintext",
]


class LegacyDecodeError(KeyRotationError):
    """A legacy value could not be authenticated or turned into a value of the new field.

    The message says why in general terms (bad MAC, wrong key, not a token, unexpected type) and
    never carries a byte of the value.
    """


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

_ALLOWED_GLOBALS = (
    {
        ("builtins", name)
        for name in (
            "set",
            "frozenset",
            "bytearray",
            "complex",
            "int",
            "float",
            "str",
            "bytes",
            "bool",
            "list",
            "dict",
            "tuple",
            "slice",
            "range",
        )
    }
    | {("datetime", name) for name in ("datetime", "date", "time", "timedelta", "timezone")}
    | {
        ("decimal", "Decimal"),
        ("uuid", "UUID"),
        ("uuid", "SafeUUID"),
        ("zoneinfo", "ZoneInfo"),
        ("copyreg", "_reconstructor"),
    }
)


# What a pickled value may build. A django-cryptography value is signed with SECRET_KEY, so these
# matter only to someone who has it; they keep a forged value from costing more than a large one.
MAX_PICKLE_BYTES = 4 * 1024 * 1024
"""Default cap: bytes of a pickle, and bytes of the ``str``/``bytes`` it builds, repeats counted."""
MAX_PICKLE_ITEMS = 1_000_000
"""Default cap: objects a pickle builds, every container element counted (repeats too)."""
MAX_DECIMAL_DIGITS = 1000
"""A pickled ``Decimal`` may have at most this many digits and an exponent within ± this."""

# Constructors the unpickler calls with arguments from the pickle: their arguments are measured
# first (``bytes(10**9)`` is a 30-byte pickle), and a Decimal is measured after it is built.
_MEASURED = {
    ("builtins", name)
    for name in (
        *("set", "frozenset", "bytearray", "complex", "int", "float", "str", "bytes"),
        *("list", "dict", "tuple", "slice", "range"),
    )
} | {("decimal", "Decimal"), ("copyreg", "_reconstructor")}

_TOO_LARGE = "pickled value is too large"
_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_HASHING_OPS = frozenset({"SETITEMS", "ADDITEMS", "FROZENSET"})
# Per opcode: whether it takes the items above a MARK, how many items below them (or in all) it
# pops, and what it pushes (True for a MARK).
_SHAPES = {
    op.name: (
        pickletools.markobject in op.stack_before,
        op.stack_before.index(pickletools.markobject)
        if pickletools.markobject in op.stack_before
        else len(op.stack_before),
        tuple(item is pickletools.markobject for item in op.stack_after),
    )
    for op in pickletools.opcodes
}


class _Budget:
    """Sizes measured with every repeat counted (a shared object costs each time it is used)."""

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.max_bytes, self.max_items = max_bytes, max_items
        self.bytes = self.items = 0

    def charge(self, *objects: Any, sizes: bool = False) -> None:
        """Add the expanded size of ``objects``; ``sizes``: an int is a length to allocate."""
        todo = list(objects)
        while todo:
            obj = todo.pop()
            self.items += 1
            if isinstance(obj, (str, bytes, bytearray)):
                self.bytes += len(obj)
            elif isinstance(obj, (list, tuple, set, frozenset)):
                todo += obj
            elif isinstance(obj, dict):
                todo += obj.keys()
                todo += obj.values()
            elif isinstance(obj, range):
                self.items += len(obj) if len(obj) <= self.max_items else self.max_items + 1
            elif isinstance(obj, decimal.Decimal):
                _check_decimal(obj)
            elif sizes and isinstance(obj, int) and not isinstance(obj, bool):
                self.bytes += max(obj, 0)
            if self.items > self.max_items or self.bytes > self.max_bytes:
                raise LegacyDecodeError(_TOO_LARGE)


def _check_decimal(value: decimal.Decimal) -> None:
    # int(Decimal("1e500000")) takes seconds: the digits and the exponent are capped instead.
    _sign, digits, exponent = value.as_tuple()
    if isinstance(exponent, int) and (len(digits) > MAX_DECIMAL_DIGITS or abs(exponent) > MAX_DECIMAL_DIGITS):
        raise LegacyDecodeError(
            f"pickled Decimal is too large (over {MAX_DECIMAL_DIGITS} digits or exponent)"
        )


def _check_opcodes(data: bytes, max_items: int) -> None:
    """Read the opcodes without building anything, and refuse a pickle that would build too much.

    The C unpickler allocates a counted string or a memo slot before it checks the data is there
    (a 14-byte pickle can ask for gigabytes), and builds and hashes shared tuples as often as they
    are referenced: ``pickletools.genops`` reads every length against the data, and a weight per
    stack item (objects it holds, repeats counted) bounds what the real load will build and hash.
    """
    stack: list[int | None] = []  # weights; None is a MARK
    memo: dict[int, int | None] = {}
    hashed = 0
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in _MEMO_OPS:
            index = len(memo) if name == "MEMOIZE" else arg
            if index > len(memo):  # pickle numbers its memo 0, 1, 2...: a large index is a bomb
                raise LegacyDecodeError("pickled value has an out-of-order memo")
            memo[index] = stack[-1]
            continue
        if name in _GET_OPS:
            stack.append(memo[arg])
            continue
        if name == "DUP":
            stack.append(stack[-1])
            continue
        marked, below, pushes = _SHAPES[name]
        if name == "SETITEM":  # the key is hashed: it and its value are what the dict gains
            hashed += (stack[-1] or 0) + (stack[-2] or 0)
        weight = 1
        if marked:  # the items above the MARK: what TUPLE, LIST, APPENDS, SETITEMS... take
            item = stack.pop()
            while item is not None:
                weight += item
                item = stack.pop()
            if name in _HASHING_OPS:
                hashed += weight - 1
        for _ in range(below):
            weight += stack.pop() or 0
        if weight > max_items or hashed > 4 * max_items:
            raise LegacyDecodeError(_TOO_LARGE)
        for is_mark in pushes:
            stack.append(None if is_mark else weight)


class _RestrictedUnpickler(pickle.Unpickler):  # noqa: S301 - only the globals listed above
    def __init__(self, file: Any, budget: _Budget) -> None:
        super().__init__(file)
        self._budget = budget

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise LegacyDecodeError(f"pickled value uses a forbidden type {module}.{name}")
        found = super().find_class(module, name)
        if (module, name) in _MEASURED:
            return functools.partial(self._build, found, name in ("bytes", "bytearray"))
        return found

    def _build(self, constructor: Any, sizes: bool, *args: Any) -> Any:
        self._budget.charge(*args, sizes=sizes)
        value = constructor(*args)
        if isinstance(value, decimal.Decimal):
            _check_decimal(value)
        return value


@forgets_locals  # ``data`` is the plaintext pickle
def restricted_loads(
    data: bytes, *, max_bytes: int = MAX_PICKLE_BYTES, max_items: int = MAX_PICKLE_ITEMS
) -> Any:
    """``pickle.loads`` allowing only builtin scalars/containers, datetime, decimal and uuid.

    Bounded: a pickle over ``max_bytes``, one that builds ``str``/``bytes`` totalling over
    ``max_bytes`` or more than ``max_items`` objects (every repeat of a shared object counted),
    or a ``Decimal`` beyond :data:`MAX_DECIMAL_DIGITS` is refused before it is built.

    Raises:
        LegacyDecodeError: a forbidden type, a malformed pickle, or a value over the caps.
    """
    if len(data) > max_bytes:
        raise LegacyDecodeError(_TOO_LARGE)
    try:
        _check_opcodes(data, max_items)
        value = _RestrictedUnpickler(io.BytesIO(data), _Budget(max_bytes, max_items)).load()
        _Budget(max_bytes, max_items).charge(value)  # what the field's to_python will walk
        return value
    except LegacyDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle
        raise LegacyDecodeError(f"pickled value does not load ({type(exc).__name__})") from None


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
