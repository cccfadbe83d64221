"""Canonical plaintext bytes for the values of encrypted fields.

Each supported base field has one codec that turns a Python value into bytes and back, exactly:
``decode(field, encode(field, v)) == v`` with the same type, sign, exponent and instant. The bytes
do not depend on the database backend (unlike encrypting ``get_db_prep_value()`` output, which
stores naive UTC strings on SQLite and offset strings on PostgreSQL), and integers never pass
through the base field's ``get_db_prep_value`` (psycopg 3 adapts integers by internal type).

``None`` has no codec: it is stored as SQL NULL by the field and never encrypted. ``0``,
``False``, ``""``, ``[]`` and ``{}`` are ordinary values with non-empty or empty bytes.

Formats (stable: they are inside every ciphertext)::

    text         UTF-8 of the base field's to_python() value (CharField and its subclasses,
                 TextField, FilePathField, GenericIPAddressField: "2001:db8::1", "1.2.3.4",
                 "::ffff:1.2.3.4" or "1.2.3.4" as unpack_ipv4 says)
    integer      ASCII decimal ("-12")
    float        ASCII repr(float): the shortest string float() reads back bit for bit
                 ("1.5", "-0.0", "1e+16", "5e-324", "inf", "-inf", "nan")
    decimal      ASCII str(Decimal) (keeps the exponent: "1.50", "1E+3")
    boolean      b"1" / b"0"
    date         ISO 8601 "2024-05-06"
    datetime     ISO 8601; aware values in UTC with "+00:00", naive values without offset
    time         ISO 8601 time.isoformat(), naive only: "13:04:05", "13:04:05.000120"
    duration     ASCII decimal of the whole duration in microseconds ("-1", "86400000000")
    JSON         json.dumps(ensure_ascii=False, compact) UTF-8, with the field's encoder/decoder
    binary       the bytes themselves
    UUID         the 36-character hyphenated form

Every subclass of a supported field uses its parent's codec (SlugField, URLField and EmailField are
text; SmallIntegerField and the Positive*IntegerFields are integers); auto fields are refused.

Floats: any NaN reads back as ``nan`` (its sign and payload are not kept); ``-0.0`` keeps its sign.

Times: Django's SQLite, MySQL and Oracle backends refuse times with a ``tzinfo`` and a PostgreSQL
``time`` column drops it, so an encrypted ``TimeField`` refuses them on every backend
(``ValueError``, as the backends do) rather than store an offset no plain column would keep.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.fields import AutoFieldMixin
from django.utils import timezone
from django.utils.duration import duration_microseconds

# Order matters: subclasses first (EmailField < CharField, DateTimeField < DateField, ...).
SUPPORTED = (
    models.EmailField,
    models.CharField,
    models.TextField,
    models.FilePathField,
    models.GenericIPAddressField,
    models.BigIntegerField,
    models.IntegerField,
    models.FloatField,
    models.DecimalField,
    models.DateTimeField,
    models.DateField,
    models.TimeField,
    models.DurationField,
    models.BooleanField,
    models.JSONField,
    models.BinaryField,
    models.UUIDField,
)


def kind(field: models.Field) -> str | None:
    """The codec name for a base field instance, or ``None`` if it is not supported."""
    if not isinstance(field, SUPPORTED) or isinstance(field, AutoFieldMixin):
        return None
    for cls, name in _KINDS:
        if isinstance(field, cls):
            return name
    return None  # pragma: no cover - SUPPORTED and _KINDS list the same classes


_KINDS = (
    (models.EmailField, "text"),
    (models.CharField, "text"),
    (models.TextField, "text"),
    (models.FilePathField, "text"),
    (models.GenericIPAddressField, "text"),  # to_python gives the normalised address
    (models.IntegerField, "int"),
    (models.FloatField, "float"),
    (models.DecimalField, "decimal"),
    (models.DateTimeField, "datetime"),
    (models.DateField, "date"),
    (models.TimeField, "time"),
    (models.DurationField, "duration"),
    (models.BooleanField, "bool"),
    (models.JSONField, "json"),
    (models.BinaryField, "binary"),
    (models.UUIDField, "uuid"),
)


def _enc_text(field: models.Field, value: Any) -> bytes:
    return str(field.to_python(value)).encode("utf-8")


def _enc_int(field: models.Field, value: Any) -> bytes:
    value = field.to_python(value)
    if isinstance(value, bool):
        value = int(value)
    return str(value).encode("ascii")


def _enc_float(field: models.Field, value: Any) -> bytes:
    return repr(field.to_python(value)).encode("ascii")


def _enc_decimal(field: models.Field, value: Any) -> bytes:
    return str(field.to_python(value)).encode("ascii")  # to_python refuses NaN and infinities


def _enc_bool(field: models.Field, value: Any) -> bytes:
    return b"1" if field.to_python(value) else b"0"


def _enc_date(field: models.Field, value: Any) -> bytes:
    return field.to_python(value).isoformat().encode("ascii")


def _enc_datetime(field: models.Field, value: Any) -> bytes:
    # get_prep_value applies Django's own rules: a naive value with USE_TZ=True is made aware in
    # the current time zone with a RuntimeWarning, exactly as for a plain DateTimeField.
    value = field.get_prep_value(value)
    if timezone.is_aware(value):
        value = value.astimezone(dt.timezone.utc)
    return value.isoformat().encode("ascii")


def _enc_time(field: models.Field, value: Any) -> bytes:
    value = field.to_python(value)
    if value.tzinfo is not None:  # any tzinfo: a ZoneInfo has no offset without a date
        raise ValueError("EncryptedField does not support timezone-aware times.")
    return value.isoformat().encode("ascii")


def _enc_duration(field: models.Field, value: Any) -> bytes:
    return str(duration_microseconds(field.to_python(value))).encode("ascii")


def _enc_json(field: models.Field, value: Any) -> bytes:
    text = json.dumps(value, cls=field.encoder, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8")


def _enc_binary(field: models.Field, value: Any) -> bytes:
    return bytes(field.to_python(value))


def _enc_uuid(field: models.Field, value: Any) -> bytes:
    return str(field.to_python(value)).encode("ascii")


def _dec_datetime(field: models.Field, data: bytes) -> dt.datetime:
    value = dt.datetime.fromisoformat(data.decode("ascii"))
    if settings.USE_TZ and timezone.is_naive(value):
        # Written with USE_TZ=False: read as UTC (the connection time zone), never TIME_ZONE.
        return value.replace(tzinfo=dt.timezone.utc)
    if not settings.USE_TZ and timezone.is_aware(value):
        return timezone.make_naive(value, timezone.get_default_timezone())
    return value


_ENCODERS: dict[str, Callable[[models.Field, Any], bytes]] = {
    "text": _enc_text,
    "int": _enc_int,
    "float": _enc_float,
    "decimal": _enc_decimal,
    "bool": _enc_bool,
    "date": _enc_date,
    "datetime": _enc_datetime,
    "time": _enc_time,
    "duration": _enc_duration,
    "json": _enc_json,
    "binary": _enc_binary,
    "uuid": _enc_uuid,
}

_DECODERS: dict[str, Callable[[models.Field, bytes], Any]] = {
    "text": lambda f, b: b.decode("utf-8"),
    "int": lambda f, b: int(b.decode("ascii")),
    "float": lambda f, b: float(b.decode("ascii")),
    "decimal": lambda f, b: decimal.Decimal(b.decode("ascii")),
    "bool": lambda f, b: b == b"1",
    "date": lambda f, b: dt.date.fromisoformat(b.decode("ascii")),
    "datetime": _dec_datetime,
    "time": lambda f, b: dt.time.fromisoformat(b.decode("ascii")),
    "duration": lambda f, b: dt.timedelta(microseconds=int(b.decode("ascii"))),
    "json": lambda f, b: json.loads(b.decode("utf-8"), cls=f.decoder),
    "binary": lambda f, b: bytes(b),
    "uuid": lambda f, b: uuid.UUID(b.decode("ascii")),
}


HIDDEN = "(value hidden)"


def hide_value(exc: ValidationError) -> ValidationError:
    """The same validation error without the rejected value.

    Django's messages quote the value (``“%(value)s” value must be an integer.``); for an
    encrypted field that value is the plaintext, and the message ends up in logs, tracebacks and
    error reports. Codes and every other parameter are kept, so forms and callers that check
    ``code`` behave the same.
    """
    if hasattr(exc, "error_dict"):
        return ValidationError(
            {k: hide_value(ValidationError(v)).error_list for k, v in exc.error_dict.items()}
        )
    errors = []
    for err in exc.error_list:
        params = err.params
        if isinstance(params, dict) and "value" in params:
            params = {**params, "value": HIDDEN}
        errors.append(ValidationError(err.message, code=err.code, params=params))
    return ValidationError(errors)


def to_python(field: models.Field, value: Any) -> Any:
    """``field.to_python(value)``, whose validation error never quotes the value."""
    try:
        return field.to_python(value)
    except ValidationError as exc:
        raise hide_value(exc) from None


def encode(field: models.Field, value: Any) -> bytes:
    """Canonical bytes of a non-``None`` value of ``field`` (a supported base field).

    Raises:
        ValidationError: the value is not valid for ``field`` (the message does not quote it).
    """
    if value is None:
        raise ValueError("None is stored as NULL and has no encoding")
    try:
        return _ENCODERS[_require(field)](field, value)
    except ValidationError as exc:
        raise hide_value(exc) from None


def encoder(field: models.Field) -> Callable[[Any], bytes]:
    """``encode`` bound to ``field``, for many values: ``encoder(field)(v) == encode(field, v)``.

    The codec is chosen once; the returned function raises what ``encode`` raises.

    Raises:
        TypeError: ``field`` is not supported.
    """
    encode_value = _ENCODERS[_require(field)]

    def encode_one(value: Any) -> bytes:
        if value is None:
            raise ValueError("None is stored as NULL and has no encoding")
        try:
            return encode_value(field, value)
        except ValidationError as exc:
            raise hide_value(exc) from None

    return encode_one


def decode(field: models.Field, data: bytes) -> Any:
    """The value whose canonical bytes are ``data``."""
    return _DECODERS[_require(field)](field, bytes(data))


def decoder(field: models.Field) -> Callable[[bytes], Any]:
    """``decode`` bound to ``field``, for many values: ``decoder(field)(data) == decode(field, data)``.

    The codec is chosen once; the returned function takes ``bytes`` (not any buffer) and raises
    what ``decode`` raises for the same bytes.

    Raises:
        TypeError: ``field`` is not supported.
    """
    name = _require(field)
    if name == "text":
        return bytes.decode  # UTF-8, strict: the same as _DECODERS["text"]
    return functools.partial(_DECODERS[name], field)


def _require(field: models.Field) -> str:
    name = kind(field)
    if name is None:
        raise TypeError(f"{type(field).__name__} is not supported by EncryptedField")
    return name
