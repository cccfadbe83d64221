"""The canonical plaintext codecs: exact round trips, stable bytes, Django's datetime rules."""

import datetime as dt
import decimal
import uuid

import pytest
from django.core.exceptions import ValidationError
from django.db import models
from hypothesis import given
from hypothesis import strategies as st

from keyrotation import codecs
from tests.fields_support import STRATEGIES
from tests.testapp.models import AllTypes


def base(name):
    return AllTypes._meta.get_field(name).base_field


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
    "field", [models.FloatField(), models.AutoField(primary_key=True), models.FileField()]
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
    inner = ValidationError("%(value)s bad", params={"value": "x1"})
    nested = codecs.hide_value(ValidationError({"ssn": inner}))
    assert "x1" not in str(nested) and "ssn" in nested.message_dict
