"""Helpers for the field tests: raw column reads, rotations, hypothesis strategies."""

import datetime as dt
import decimal
import math
import struct
import zoneinfo

from django.db import connection
from hypothesis import strategies as st

from keyrotation import conf, crypto, keyring, lifecycle


def raw(instance, column):
    """The stored value of ``column`` for ``instance``, read with SQL (bytes for binary columns)."""
    table = connection.ops.quote_name(instance._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {connection.ops.quote_name(column)} FROM {table} WHERE id = %s", [instance.pk]
        )
        (value,) = cursor.fetchone()
    return bytes(value) if isinstance(value, (memoryview, bytearray)) else value


def write_raw(instance, column, value):
    table = connection.ops.quote_name(instance._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {connection.ops.quote_name(column)} = %s WHERE id = %s", [value, instance.pk]
        )


def rotate(purpose):
    """Rotate the default keyring's ``purpose`` and make this process see it now."""
    key = lifecycle.rotate("default", purpose, actor="test")
    keyring.invalidate()  # lifecycle invalidates on commit; tests never commit
    return key


def assert_consistent(instance, field="email", index=None):
    """Version column == ciphertext header, and the blind index == a recomputation."""
    token = raw(instance, field)
    version = raw(instance, f"{field}_key_version")
    if token is None:
        assert version is None
    else:
        assert version == crypto.token_version(token)
    if index is not None:
        bidx = instance._meta.get_field(index)
        digest = raw(instance, index)
        plain = type(instance)._default_manager.get(pk=instance.pk).__getattribute__(field)
        if plain is None:
            assert digest is None and raw(instance, f"{index}_key_version") is None
        else:
            ring = keyring.get_keyring(conf.default_keyring(), "index")
            idx_version = raw(instance, f"{index}_key_version")
            expected = ring.indexes(bidx.label, bidx.index_input(plain), bidx.index_length())[idx_version]
            assert digest == expected
    return version


ZONES = [dt.timezone.utc] + [
    zoneinfo.ZoneInfo(z) for z in ("America/Chicago", "Asia/Kolkata", "Pacific/Chatham")
]

aware_datetimes = st.datetimes(
    min_value=dt.datetime(1900, 1, 2),
    max_value=dt.datetime(9999, 12, 30),
    timezones=st.sampled_from(ZONES),
    allow_imaginary=False,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)
decimals = st.builds(
    lambda digits, exponent: decimal.Decimal(digits).scaleb(exponent),
    st.integers(-(10**18), 10**18),
    st.integers(-10, 3),
)

STRATEGIES = {
    "char": st.text(max_size=50),
    "text": st.text(),
    "integer": st.integers(-(2**31), 2**31 - 1),
    "big": st.integers(-(2**63), 2**63 - 1),
    "dec": decimals,
    "day": st.dates(),
    "moment": aware_datetimes,
    "flag": st.booleans(),
    "data": json_values,
    "blob": st.binary(max_size=64),
    "uid": st.uuids(),
}

FALSY = {
    "char": "",
    "text": "",
    "integer": 0,
    "big": 0,
    "dec": decimal.Decimal("0.00"),
    "flag": False,
    "data": [],
    "blob": b"",
}


def identical(a, b):
    """Same type and value; floats bit for bit (-0.0 is not 0.0), any NaN matching any NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or struct.pack(">d", a) == struct.pack(">d", b)
    return a == b


def _ip_spellings(address):
    return st.sampled_from([str(address), address.exploded, address.exploded.upper(), f" {address} "])


# Values for MoreTypes: inputs, which the base field's to_python may normalise (IP addresses).
MORE_STRATEGIES = {
    "ratio": st.floats(),  # NaN, infinities, -0.0 and subnormals included
    "clock": st.times(),
    "span": st.timedeltas(),
    "ip": st.ip_addresses().flatmap(_ip_spellings),
    "ip_unpacked": st.ip_addresses().flatmap(_ip_spellings),
    "slug": st.from_regex(r"[-a-zA-Z0-9_]{0,50}", fullmatch=True),
    "url": st.text(max_size=200),
    "email": st.emails(),
    "path": st.text(max_size=100),
    "small": st.integers(-(2**15), 2**15 - 1),
    "positive": st.integers(0, 2**31 - 1),
    "positive_small": st.integers(0, 2**15 - 1),
    "positive_big": st.integers(0, 2**63 - 1),
}

MORE_FALSY = {
    "ratio": 0.0,
    "clock": dt.time(0, 0),
    "span": dt.timedelta(0),
    "slug": "",
    "small": 0,
    "positive": 0,
}
