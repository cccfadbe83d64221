"""The canonical plaintext codecs: exact round trips, stable bytes, Django's datetime rules."""

import datetime as dt
import decimal
import ipaddress
import math
import struct
import uuid
import zoneinfo

import pytest
from django.core.exceptions import ValidationError
from django.db import models
from hypothesis import given
from hypothesis import strategies as st

from keyrotation import codecs
from tests.fields_support import MORE_STRATEGIES, STRATEGIES, identical
from tests.testapp.models import AllTypes, MoreTypes


def base(name):
    return AllTypes._meta.get_field(name).base_field


def more(name):
    return MoreTypes._meta.get_field(name).base_field


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@given(data=st.data())
def test_round_trip_is_exact(name, data):
    value = data.draw(STRATEGIES[name])
    if value is None:
        return
    decoded = codecs.decode(base(name), codecs.encode(base(name), value))
    if isinstance(value, dt.datetime):  # same instant (PEP 495: folds never compare across zones)
        value = value.astimezone(dt.timezone.utc)
    assert decoded == value
    assert type(decoded) is type(value)
    if isinstance(value, decimal.Decimal):
        assert decoded.as_tuple() == value.as_tuple()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("char", "", b""),
        ("integer", 0, b"0"),
        ("big", -(2**63), b"-9223372036854775808"),
        ("dec", decimal.Decimal("1.50"), b"1.50"),
        ("dec", decimal.Decimal("1E+3"), b"1E+3"),
        ("flag", False, b"0"),
        ("flag", True, b"1"),
        ("data", [], b"[]"),
        ("data", {"a": [1, {"b": None}]}, b'{"a":[1,{"b":null}]}'),
        ("blob", b"", b""),
        ("day", dt.date(2024, 5, 6), b"2024-05-06"),
        ("uid", uuid.UUID(int=1), b"00000000-0000-0000-0000-000000000001"),
    ],
)
def test_canonical_bytes(name, value, expected):
    assert codecs.encode(base(name), value) == expected


def test_aware_datetime_is_stored_in_utc_and_keeps_its_instant():
    chicago = dt.timezone(dt.timedelta(hours=-6))
    value = dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=chicago)
    data = codecs.encode(base("moment"), value)
    assert data == b"2024-01-02T09:04:05.123456+00:00"
    decoded = codecs.decode(base("moment"), data)
    assert decoded == value and decoded.utcoffset() == dt.timedelta(0)


def test_naive_datetime_follows_django_warning_and_current_zone():
    with pytest.warns(RuntimeWarning, match="naive datetime"):
        data = codecs.encode(base("moment"), dt.datetime(2024, 1, 2, 3, 4, 5))
    assert data == b"2024-01-02T09:04:05+00:00"  # America/Chicago (settings.TIME_ZONE) in winter


def test_naive_stored_datetime_is_read_as_utc_never_time_zone():
    decoded = codecs.decode(base("moment"), b"2024-01-02T03:04:05")
    assert decoded == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def test_strings_are_coerced_by_the_base_field():
    assert codecs.encode(base("integer"), "12") == b"12"
    assert codecs.encode(base("dec"), "1.50") == b"1.50"


def test_non_finite_decimal_is_refused():
    with pytest.raises(ValidationError):  # the base field's to_python already refuses it
        codecs.encode(base("dec"), decimal.Decimal("NaN"))


def test_none_has_no_encoding():
    with pytest.raises(ValueError, match="NULL"):
        codecs.encode(base("char"), None)


@pytest.mark.parametrize(
    "field",
    [
        models.AutoField(primary_key=True),
        models.SmallAutoField(primary_key=True),
        models.BigAutoField(primary_key=True),
        models.FileField(),
        models.IPAddressField(),  # removed from Django: kept for old migrations only
    ],
)
def test_unsupported_fields(field):
    assert codecs.kind(field) is None
    with pytest.raises(TypeError, match="not supported"):
        codecs.encode(field, 1)


def test_validation_errors_never_quote_the_value():
    from django.core.exceptions import ValidationError

    field = models.IntegerField()
    with pytest.raises(ValidationError) as info:
        codecs.encode(field, "123-45-6789")
    assert "123-45-6789" not in str(info.value) and codecs.HIDDEN in str(info.value)
    assert info.value.error_list[0].code == "invalid"
    assert info.value.__suppress_context__
    with pytest.raises(ValidationError) as info:
        codecs.encoder(field)("123-45-6789")  # the same refusal, the value hidden the same way
    assert "123-45-6789" not in str(info.value) and info.value.error_list[0].code == "invalid"
    with pytest.raises(ValueError, match="None is stored as NULL"):
        codecs.encoder(field)(None)
    with pytest.raises(TypeError):
        codecs.encoder(models.FileField())
    inner = ValidationError("%(value)s bad", params={"value": "x1"})
    nested = codecs.hide_value(ValidationError({"ssn": inner}))
    assert "x1" not in str(nested) and "ssn" in nested.message_dict


# -- float, time, duration, IP address, and subclasses of the other supported fields -----------


@pytest.mark.parametrize("name", sorted(MORE_STRATEGIES))
@given(data=st.data())
def test_more_types_round_trip_is_exact_and_canonical(name, data):
    field = more(name)
    value = data.draw(MORE_STRATEGIES[name])
    encoded = codecs.encode(field, value)
    decoded = codecs.decode(field, encoded)
    assert identical(decoded, field.to_python(value))  # the value itself, or its normalised form
    assert identical(codecs.decoder(field)(encoded), decoded)
    assert codecs.encode(field, decoded) == encoded  # one value, one byte string
    assert codecs.encoder(field)(value) == encoded


@given(bits=st.integers(0, 2**64 - 1))
def test_every_float_keeps_its_bits(bits):
    (value,) = struct.unpack(">d", bits.to_bytes(8, "big"))
    decoded = codecs.decode(more("ratio"), codecs.encode(more("ratio"), value))
    if math.isnan(value):
        assert math.isnan(decoded)  # any NaN reads back as nan (sign and payload are not kept)
    else:
        assert struct.pack(">d", decoded) == struct.pack(">d", value)


@pytest.mark.parametrize("name", ["ip", "ip_unpacked"])
@given(data=st.data())
def test_ip_addresses_are_stored_as_the_address_they_spell(name, data):
    text = data.draw(MORE_STRATEGIES[name])
    address = ipaddress.ip_address(text.strip())
    decoded = codecs.decode(more(name), codecs.encode(more(name), text))
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None and more(name).unpack_ipv4:
        assert decoded == str(mapped)
    else:
        assert ipaddress.ip_address(decoded) == address
        assert decoded == decoded.strip().lower()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ratio", 1.5, b"1.5"),
        ("ratio", 0.1, b"0.1"),
        ("ratio", 3, b"3.0"),
        ("ratio", "2.50", b"2.5"),
        ("ratio", 0.0, b"0.0"),
        ("ratio", -0.0, b"-0.0"),
        ("ratio", 1e16, b"1e+16"),
        ("ratio", 1e-5, b"1e-05"),
        ("ratio", 5e-324, b"5e-324"),
        ("ratio", 1.7976931348623157e308, b"1.7976931348623157e+308"),
        ("ratio", float("inf"), b"inf"),
        ("ratio", float("-inf"), b"-inf"),
        ("ratio", float("nan"), b"nan"),
        ("ratio", -float("nan"), b"nan"),
        ("clock", dt.time(0, 0), b"00:00:00"),
        ("clock", dt.time(13, 4, 5), b"13:04:05"),
        ("clock", dt.time(13, 4, 5, 120), b"13:04:05.000120"),
        ("clock", dt.time(23, 59, 59, 999999, fold=1), b"23:59:59.999999"),
        ("clock", "13:04", b"13:04:00"),
        ("span", dt.timedelta(0), b"0"),
        ("span", dt.timedelta(microseconds=-1), b"-1"),
        ("span", dt.timedelta(days=1), b"86400000000"),
        ("span", dt.timedelta(days=-1, seconds=3), b"-86397000000"),
        ("span", "P1DT2H", b"93600000000"),
        ("span", dt.timedelta.max, b"86399999999999999999"),
        ("span", dt.timedelta.min, b"-86399999913600000000"),
        ("ip", "192.0.2.1", b"192.0.2.1"),
        ("ip", " 192.0.2.1 ", b"192.0.2.1"),
        ("ip", "2001:0DB8:0000:0000:0000:0000:0000:0001", b"2001:db8::1"),
        ("ip", "::ffff:192.0.2.1", b"::ffff:192.0.2.1"),
        ("ip", "::ffff:c000:201", b"::ffff:192.0.2.1"),
        ("ip_unpacked", "::ffff:192.0.2.1", b"192.0.2.1"),
        ("ip_unpacked", "2001:db8::1", b"2001:db8::1"),
        ("slug", "a-slug_1", b"a-slug_1"),
        ("url", "https://example.com/\u00e9", "https://example.com/\u00e9".encode()),
        ("email", "a@example.com", b"a@example.com"),
        ("path", "/srv/files/report.pdf", b"/srv/files/report.pdf"),
        ("small", -(2**15), b"-32768"),
        ("positive", 0, b"0"),
        ("positive_small", "7", b"7"),
        ("positive_big", 2**63 - 1, b"9223372036854775807"),
    ],
)
def test_more_canonical_bytes(name, value, expected):
    assert codecs.encode(more(name), value) == expected


def test_float_bytes_read_back_exactly():
    ratio = more("ratio")
    assert math.isnan(codecs.decode(ratio, b"nan"))
    assert math.copysign(1.0, codecs.decode(ratio, b"-0.0")) == -1.0
    assert codecs.decode(ratio, b"-inf") == float("-inf")
    assert codecs.decode(ratio, b"5e-324") == 5e-324


@pytest.mark.parametrize(
    ("field", "name"),
    [
        (models.SlugField(db_index=False), "text"),
        (models.URLField(), "text"),
        (models.EmailField(), "text"),
        (models.FilePathField(), "text"),
        (models.GenericIPAddressField(), "text"),
        (models.SmallIntegerField(), "int"),
        (models.PositiveIntegerField(), "int"),
        (models.PositiveSmallIntegerField(), "int"),
        (models.PositiveBigIntegerField(), "int"),
        (models.FloatField(), "float"),
        (models.TimeField(), "time"),
        (models.DurationField(), "duration"),
    ],
)
def test_subclasses_use_their_parents_codec(field, name):
    assert codecs.kind(field) == name


@pytest.mark.parametrize(
    "value",
    [
        dt.time(13, 4, 5, tzinfo=dt.timezone.utc),
        dt.time(13, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.time(13, 4, 5, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),  # utcoffset() is None
    ],
)
def test_aware_times_are_refused_like_the_backends_do(value):
    with pytest.raises(ValueError, match="timezone-aware times") as info:
        codecs.encode(more("clock"), value)
    assert "13" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("ratio", "12-ab"), ("clock", "25:61"), ("span", "12 parsecs"), ("ip", "2001:db8::1::12ab")],
)
def test_invalid_values_of_the_new_types_are_not_quoted(name, value):
    with pytest.raises(ValidationError) as info:
        codecs.encode(more(name), value)
    assert value not in str(info.value) and "12" not in str(info.value)
