"""The django-cryptography decoder's unpickler is bounded: a forged value (it takes SECRET_KEY to
sign one) costs no more than a large honest one.

Each bomb is a hand-assembled pickle, signed with the test ``SECRET_KEY`` the way django-cryptography
signs, and decoded by ``DjangoCryptography()``. Memory is measured with ``tracemalloc`` (the peak of
what the decode allocates), not with the wall clock.
"""

from __future__ import annotations

import datetime as dt
import decimal
import pickle
import struct
import tracemalloc

import pytest
from django.conf import settings
from django.db import models

from keyrotation import legacy
from tests.helpers.legacy_values import django_cryptography_value

PEAK_LIMIT = 2 * 1024 * 1024  # bytes: a refused bomb allocates less than this

PROTO = b"\x80\x04"
STOP = b"."
MEMOIZE = b"\x94"
MARK, EMPTY_LIST, LIST, EMPTY_DICT, EMPTY_TUPLE, TUPLE1, TUPLE2 = (
    b"(",
    b"]",
    b"l",
    b"}",
    b")",
    b"\x85",
    b"\x86",
)
REDUCE, NONE, SETITEM, POP = b"R", b"N", b"s", b"0"


def _global(module: str, name: str) -> bytes:
    """STACK_GLOBAL of module.name (two short unicode strings)."""
    return (
        b"\x8c"
        + bytes([len(module)])
        + module.encode()
        + b"\x8c"
        + bytes([len(name)])
        + name.encode()
        + b"\x93"
    )


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)  # BININT


def _get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)  # LONG_BINGET


def _call(module: str, name: str, *args: bytes) -> bytes:
    """``module.name(*args)`` through REDUCE."""
    return _global(module, name) + MARK + b"".join(args) + b"t" + REDUCE


def _dag(depth: int, empty: bytes, pair: bytes) -> bytes:
    """X0 = empty, Xk = pair(Xk-1, Xk-1), each memoized (index k) and left on the stack alone:
    a few bytes per level, 2**depth leaves once expanded."""
    out = empty + MEMOIZE
    for level in range(1, depth + 1):
        out += POP + pair.replace(b"?", _get(level - 1)) + MEMOIZE
    return out


def _dag_tuple(depth: int) -> bytes:
    return _dag(depth, EMPTY_TUPLE, b"??" + TUPLE2)


def _dag_list(depth: int) -> bytes:
    return _dag(depth, EMPTY_LIST, MARK + b"??" + LIST)


BOMBS = {
    # 30 bytes of pickle, 100 MB of zeros: bytes(100_000_000)
    "bytes(100 MB)": PROTO + _call("builtins", "bytes", _int(100_000_000)) + STOP,
    # a counted string whose data is missing: the C unpickler allocates it before reading
    "BINBYTES8 of 100 MB": b"\x80\x05\x8e" + struct.pack("<Q", 100_000_000) + b"x" + STOP,
    # a memo slot far away: the C unpickler grows its memo table to reach it (128 MB here)
    "memo index 2**23": PROTO + NONE + b"r" + struct.pack("<I", 2**23) + STOP,
    # a list of two million ints from a lazy range
    "list(range(2 * 10**6))": PROTO
    + _call("builtins", "list", _call("builtins", "range", _int(2 * 10**6)))
    + STOP,
    # a list nested 22 deep, each level twice the one below: 2**22 elements once expanded (the
    # field's to_python makes a str of it)
    "shared lists": PROTO + _dag_list(22) + STOP,
    # str() of it, during the load
    "str(shared lists)": PROTO + _global("builtins", "str") + _dag_list(22) + TUPLE1 + REDUCE + STOP,
    # a shared tuple as a dict key: hashing it visits 2**24 tuples
    "shared tuple as a key": PROTO + EMPTY_DICT + _dag_tuple(24) + NONE + SETITEM + STOP,
    # a tuple of 2**18 leaves hashed 200 times, as the key of 200 dicts thrown away
    "a large key hashed again and again": PROTO
    + _dag_tuple(18)
    + (EMPTY_DICT + _get(18) + NONE + SETITEM + POP) * 200
    + STOP,  # the tuple itself is the value
}


@pytest.fixture
def decoder():
    """``DjangoCryptography()`` keyed by the test SECRET_KEY, its keys already derived (PBKDF2
    allocates too: it is not what is measured)."""
    decoder = legacy.DjangoCryptography()
    assert decoder.decode(
        django_cryptography_value(settings.SECRET_KEY, pickle.dumps("warm")), models.TextField()
    )
    return decoder


def _decode_measured(decoder, value: bytes, field: models.Field):
    """(the exception raised or the value, peak bytes allocated while decoding)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            result = decoder.decode(value, field)
        except legacy.LegacyDecodeError as exc:
            result = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_pickle_bomb_is_refused_with_bounded_memory(decoder, name):
    value = django_cryptography_value(settings.SECRET_KEY, BOMBS[name])
    result, peak = _decode_measured(decoder, value, models.TextField())
    assert isinstance(result, legacy.LegacyDecodeError), f"{name} loaded: {type(result).__name__}"
    assert peak < PEAK_LIMIT, f"{name}: {peak / 1e6:.1f} MB"


def test_the_bytes_bomb_is_a_94_byte_value_and_its_error_names_no_size(decoder):
    value = django_cryptography_value(settings.SECRET_KEY, BOMBS["bytes(100 MB)"])
    assert len(value) <= 94
    result, _ = _decode_measured(decoder, value, models.TextField())
    assert str(result) == "pickled value is too large"


@pytest.mark.parametrize(
    "field",
    [models.IntegerField(), models.DecimalField(max_digits=30, decimal_places=10), models.FloatField()],
    ids=["IntegerField", "DecimalField", "FloatField"],
)
def test_a_decimal_with_a_huge_exponent_is_refused_before_it_is_converted(decoder, field):
    """int(Decimal("1e500000")) takes seconds (it builds a 500,001-digit integer)."""
    value = django_cryptography_value(settings.SECRET_KEY, pickle.dumps(decimal.Decimal("1e500000")))
    result, peak = _decode_measured(decoder, value, field)
    assert isinstance(result, legacy.LegacyDecodeError)
    assert "500000" not in str(result) and "Decimal" in str(result)
    assert peak < PEAK_LIMIT


def test_values_within_the_caps_still_load(decoder):
    tz = dt.timezone(dt.timedelta(hours=2))
    honest = {
        "text": "x" * 1_000_000,  # a large text
        "rows": [{"id": i, "name": f"n{i}", "at": dt.datetime(2024, 1, 1, tzinfo=tz)} for i in range(20_000)],
        "amount": decimal.Decimal("12345678901234567890.1234567890"),
        "small": decimal.Decimal("1e-30"),
        "shared": [("a", "b")] * 1000,  # one tuple, referenced a thousand times
        "set": {1, 2, 3},
        "bytes": bytearray(b"abc"),
    }
    for protocol in (3, 4, 5):
        value = django_cryptography_value(settings.SECRET_KEY, pickle.dumps(honest, protocol=protocol))
        assert decoder.decode(value, models.JSONField(encoder=None)) == honest


def test_caps_can_be_lowered_per_decoder():
    small = legacy.DjangoCryptography(max_bytes=100, max_items=10)
    value = django_cryptography_value(settings.SECRET_KEY, pickle.dumps(list(range(20))))
    with pytest.raises(legacy.LegacyDecodeError, match="too large"):
        small.decode(value, models.JSONField())
    with pytest.raises(legacy.LegacyDecodeError, match="too large"):
        legacy.restricted_loads(pickle.dumps("y" * 101), max_bytes=100)
    assert legacy.restricted_loads(pickle.dumps(list(range(5))), max_items=10) == list(range(5))
