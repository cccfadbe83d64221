"""Lookups on encrypted fields: blind-index equality across index versions; everything else refused."""

import pytest
from django.core.exceptions import FieldError, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Max
from django.db.models.functions import Lower

from tests.fields_support import raw, rotate
from tests.testapp.models import Account, AllTypes, MoreTypes, Note, Person

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_index_versions(keys):
    """Rows indexed under v1 and under v2 of the index key, as in the middle of a rotation."""
    old = Person.objects.create(name="old", email="Old@Example.com")
    rotate("index")
    new = Person.objects.create(name="new", email="new@example.com")
    assert raw(old, "email_bidx_key_version") == 1 and raw(new, "email_bidx_key_version") == 2
    return old, new


def test_exact_finds_rows_under_every_index_version(two_index_versions):
    old, new = two_index_versions
    assert list(Person.objects.filter(email="old@example.com")) == [old]
    assert list(Person.objects.filter(email="new@example.com")) == [new]


def test_exact_uses_the_normalisation(two_index_versions):
    old, _ = two_index_versions
    assert Person.objects.get(email="  OLD@example.COM ") == old


def test_in(two_index_versions):
    old, new = two_index_versions
    found = Person.objects.filter(email__in=["old@example.com", "new@example.com", "x@example.com"])
    assert set(found) == {old, new}
    assert not Person.objects.filter(email__in=[]).exists()


def test_exclude(two_index_versions):
    old, new = two_index_versions
    nobody = Person.objects.create(name="none", email=None)
    assert set(Person.objects.exclude(email="old@example.com")) == {new, nobody}


def test_get_and_does_not_exist(two_index_versions):
    old, _ = two_index_versions
    assert Person.objects.get(email="old@example.com") == old
    with pytest.raises(Person.DoesNotExist):
        Person.objects.get(email="missing@example.com")


def test_isnull_and_exact_none(keys):
    a = Person.objects.create(email="a@example.com")
    b = Person.objects.create(email=None)
    assert list(Person.objects.filter(email__isnull=True)) == [b]
    assert list(Person.objects.filter(email__isnull=False)) == [a]
    assert list(Person.objects.filter(email=None)) == [b]


def test_lookup_across_a_relation(keys):
    p = Person.objects.create(email="a@example.com")
    n = Note.objects.create(person=p, body="x")
    assert list(Note.objects.filter(person__email="A@example.com")) == [n]


def test_non_text_blind_index(keys):
    import datetime as dt
    import uuid

    u = uuid.uuid4()
    moment = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    obj = AllTypes.objects.create(uid=u, moment=moment)
    assert AllTypes.objects.get(uid=str(u)) == obj
    same_instant = moment.astimezone(dt.timezone(dt.timedelta(hours=5)))
    assert AllTypes.objects.get(moment=same_instant) == obj


def test_float_ip_and_duration_blind_indexes(keys):
    import datetime as dt
    import decimal

    a = MoreTypes.objects.create(ratio=1.5, ip="2001:DB8::1", span=dt.timedelta(days=1))
    b = MoreTypes.objects.create(ratio=float("nan"), ip="192.0.2.1", span=dt.timedelta(microseconds=-1))
    c = MoreTypes.objects.create(ratio=float("-inf"), ip="::ffff:192.0.2.1")
    assert MoreTypes.objects.get(ratio=1.5) == a
    assert MoreTypes.objects.get(ratio="1.50") == a  # the base field's to_python first
    assert MoreTypes.objects.get(ratio=decimal.Decimal("1.5")) == a
    assert MoreTypes.objects.get(ratio=float("nan")) == b  # one NaN encoding: NaN finds NaN, as on PostgreSQL
    assert MoreTypes.objects.get(ratio=float("-inf")) == c
    assert not MoreTypes.objects.filter(ratio=1.5000000000000002).exists()
    assert MoreTypes.objects.get(ip="2001:0db8:0000:0000:0000:0000:0000:0001") == a
    assert MoreTypes.objects.get(ip=" 192.0.2.1 ") == b
    assert MoreTypes.objects.get(ip="::FFFF:C000:201") == c  # the mapped form, not unpacked on this field
    assert set(MoreTypes.objects.filter(ip__in=["2001:db8::1", "192.0.2.1"])) == {a, b}
    assert set(MoreTypes.objects.exclude(ip="192.0.2.1")) == {a, c}
    assert MoreTypes.objects.get(span="P1D") == a
    assert MoreTypes.objects.get(span=dt.timedelta(hours=24)) == a
    assert MoreTypes.objects.get(span="-00:00:00.000001") == b


def test_zero_finds_negative_zero(keys):
    obj = MoreTypes.objects.create(ratio=-0.0)
    assert MoreTypes.objects.get(ratio=0.0) == obj


def test_unique_blind_index(keys):
    Account.objects.create(username="alice")
    with pytest.raises(IntegrityError), transaction.atomic():
        Account.objects.create(username="ALICE ")


@pytest.mark.parametrize("lookup", ["icontains", "contains", "gt", "lt", "startswith", "iexact", "range"])
def test_other_lookups_raise(keys, lookup):
    with pytest.raises(FieldError, match=f"Unsupported lookup '{lookup}' on encrypted field testapp.Person"):
        Person.objects.filter(**{f"email__{lookup}": "a"})


def test_exact_without_blind_index_says_what_to_do(keys):
    with pytest.raises(FieldError, match=r"Add a BlindIndexField\(source='ssn'\)"):
        Person.objects.filter(ssn="123")
    with pytest.raises(FieldError, match="BlindIndexField"):
        Person.objects.filter(ssn__in=["123"])


def test_comparison_with_an_expression_is_refused(keys):
    with pytest.raises(FieldError, match="expression"):
        list(Person.objects.filter(email=F("name")))


@pytest.mark.parametrize("ordering", ["email", "-email", "person__email"])
def test_ordering_raises(keys, ordering):
    qs = Note.objects if ordering.startswith("person") else Person.objects
    with pytest.raises(FieldError, match="Cannot use encrypted field"):
        qs.order_by(ordering)


def test_ordering_by_expression_raises(keys):
    with pytest.raises(FieldError, match="order_by"):
        Person.objects.order_by(F("email").desc())


@pytest.mark.parametrize("call", ["aggregate", "annotate", "alias"])
def test_aggregation_raises(keys, call):
    with pytest.raises(FieldError, match=call):
        getattr(Person.objects, call)(m=Max("email"))
    with pytest.raises(FieldError, match=call):
        getattr(Person.objects, call)(m=Lower("email"))


def test_count_is_allowed(keys):
    Person.objects.create(email="a@example.com")
    Person.objects.create(email=None)
    assert Person.objects.aggregate(n=Count("email"))["n"] == 1


def test_ordering_by_other_fields_still_works(keys):
    Person.objects.create(name="b", email="b@example.com")
    Person.objects.create(name="a", email="a@example.com")
    assert list(Person.objects.order_by("name").values_list("email", flat=True)) == [
        "a@example.com",
        "b@example.com",
    ]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Person.objects.distinct("email"),
        lambda: Person.objects.values("email").distinct(),
        lambda: Person.objects.distinct().values_list("email", flat=True),
        lambda: Person.objects.values_list("name", "email").distinct(),
        lambda: Note.objects.values("person__email").distinct(),
    ],
    ids=["distinct-on", "values-distinct", "distinct-values_list", "two-columns", "across-a-relation"],
)
def test_distinct_over_an_encrypted_column_raises(keys, build):
    """Equal values have different ciphertexts: DISTINCT would silently keep every row."""
    with pytest.raises(FieldError, match=r"Cannot use encrypted field '(person__)?email' in distinct\(\)"):
        build()


def test_grouping_by_an_encrypted_column_raises(keys):
    with pytest.raises(FieldError, match="GROUP BY"):
        Person.objects.values("email").annotate(n=Count("id"))


def test_distinct_and_grouping_on_other_columns_still_work(keys):
    for name in ("a", "a", "b"):
        Person.objects.create(name=name, email=f"{name}@example.com")
    assert sorted(Person.objects.values_list("name", flat=True).distinct()) == ["a", "b"]
    assert Person.objects.distinct().count() == 3  # whole rows (the pk makes them distinct)
    assert sorted(Person.objects.values("name").annotate(n=Count("id")).values_list("name", "n")) == [
        ("a", 2),
        ("b", 1),
    ]
    # The blind index is deterministic: it can be deduplicated
    assert Person.objects.values("email_bidx").distinct().count() == 2


def test_a_value_the_base_field_rejects_is_refused_when_the_filter_is_built(keys):
    with pytest.raises(ValidationError) as info:
        AllTypes.objects.filter(uid="not-a-uuid-secret")
    assert "not-a-uuid-secret" not in str(info.value)
    with pytest.raises(ValidationError):
        AllTypes.objects.filter(uid__in=["12345678-1234-5678-1234-567812345678", "nope-secret"])
