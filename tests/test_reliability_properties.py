"""Round trips at the edges that test_fields.py does not draw: maximum lengths in 4-byte UTF-8,
empty and nested unicode JSON, integer bounds, and every falsy value together in one row."""

from __future__ import annotations

import decimal
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.testapp.models import AllTypes, Person

pytestmark = pytest.mark.django_db
PROPS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

astral = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, exclude_categories=("Cs",))


@PROPS
@given(text=st.text(alphabet=astral | st.characters(exclude_categories=("Cs",)), min_size=200, max_size=200))
def test_char_at_max_length_in_any_script(keys, text):
    obj = AllTypes.objects.create(char=text)
    assert AllTypes.objects.get(pk=obj.pk).char == text


@PROPS
@given(
    data=st.recursive(
        st.none() | st.booleans() | st.just(0) | st.just("") | st.text(alphabet=astral, max_size=3),
        lambda c: (
            st.lists(c, max_size=3) | st.dictionaries(st.text(alphabet=astral, max_size=3), c, max_size=3)
        ),
        max_leaves=8,
    )
)
def test_json_with_falsy_leaves_and_unicode_keys(keys, data):
    obj = AllTypes.objects.create(data=data)
    loaded = AllTypes.objects.get(pk=obj.pk).data
    assert loaded == data and type(loaded) is type(data)


def test_every_falsy_value_in_one_row_and_the_bounds(keys):
    values = {
        "char": "",
        "text": "",
        "integer": 0,
        "big": 0,
        "dec": decimal.Decimal("0E-10"),
        "flag": False,
        "data": {},
        "blob": b"",
    }
    obj = AllTypes.objects.create(**values)
    loaded = AllTypes.objects.get(pk=obj.pk)
    assert {k: getattr(loaded, k) for k in values} == values
    assert str(loaded.dec) == "0E-10"  # the exponent survives
    for integer, big in ((-(2**31), -(2**63)), (2**31 - 1, 2**63 - 1)):
        obj = AllTypes.objects.create(integer=integer, big=big, uid=uuid.UUID(int=0))
        loaded = AllTypes.objects.get(pk=obj.pk)
        assert (loaded.integer, loaded.big, loaded.uid) == (integer, big, uuid.UUID(int=0))
    assert AllTypes.objects.filter(uid=uuid.UUID(int=0)).count() == 2


def test_max_length_ssn_and_unicode_email_through_the_blind_index(keys):
    person = Person.objects.create(name="u", email="Ünïcødé.ﬁ@exämple.org", ssn="12345678901")
    assert Person.objects.get(email="ünïcødé.fi@exämple.org".upper()).pk == person.pk  # NFKC + casefold
    assert Person.objects.get(pk=person.pk).ssn == "12345678901"
