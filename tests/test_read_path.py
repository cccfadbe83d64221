"""The read path's caches: the ciphers a field keeps, the label, the decoder, the default keyring.

A field keeps the cipher of each key version it has opened, and uses it without asking the keyring
again only while the keyring listing it came from is the cached one and within its TTL. These tests
drive the clock by hand (never sleep) and check that every keyring semantic survives the cache: a
retired key stops decrypting once the TTL is over or the keyring is invalidated, an unknown version
reloads the keyring once, and a change of ``KEYROTATION`` forgets everything.
"""

import pytest
from django.db import models
from django.test.utils import isolate_apps
from hypothesis import given
from hypothesis import strategies as st

from keyrotation import codecs, conf, crypto, keyring, lifecycle
from keyrotation.exceptions import DecryptionError, KeyStateError, UnknownKeyVersion
from keyrotation.fields import EncryptedField, Sealed
from keyrotation.fields import encrypted as encrypted_module
from keyrotation.kek import context_for
from keyrotation.models import DataKey
from tests.fields_support import raw, write_raw
from tests.testapp.models import AllTypes, Person

TTL = 60.0


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch, settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": TTL}
    fake = Clock()
    monkeypatch.setattr(keyring.time, "monotonic", fake.monotonic)  # the keyring cache's clock
    monkeypatch.setattr(encrypted_module, "monotonic", fake.monotonic)  # the fields' clock
    return fake


def fresh(person):
    return Person.objects.get(pk=person.pk)


def retire_v1():
    """v2 becomes active and v1 retired in the database, without telling this process."""
    lifecycle.rotate("default", "encrypt", actor="test")  # invalidates on commit: tests never commit
    DataKey.objects.filter(purpose="encrypt", version=1).update(state="retired")
    lifecycle.accept_state("default", "encrypt", actor="test")  # rows still use v1: no lifecycle edge


@pytest.fixture
def spy(monkeypatch):
    """Counts the slow path: every time a field asks the keyring for a cipher."""
    calls = []
    original = keyring.decrypt_cipher

    def counting(name, label, version):
        calls.append((name, label, version))
        return original(name, label, version)

    monkeypatch.setattr(keyring, "decrypt_cipher", counting)
    return calls


@pytest.mark.django_db
def test_a_field_asks_the_keyring_once_per_version_then_reads_without_queries(
    keys, clock, spy, django_assert_num_queries
):
    people = [Person.objects.create(email=f"p{i}@example.com") for i in range(20)]
    loaded = list(Person.objects.order_by("pk"))
    with django_assert_num_queries(0):
        assert [p.email for p in loaded] == [p.email for p in people]
    assert spy == [("default", "testapp.Person.email", 1)]


@pytest.mark.django_db
def test_a_retired_version_stops_decrypting_when_the_ttl_is_over(keys, clock, django_assert_num_queries):
    p = Person.objects.create(email="a@example.com")
    assert fresh(p).email == "a@example.com"  # the field keeps the v1 cipher
    retire_v1()
    clock.now += TTL - 1
    assert fresh(p).email == "a@example.com"  # the listing is still trusted, as without the cache
    clock.now += 1
    loaded = fresh(p)
    with django_assert_num_queries(1), pytest.raises(DecryptionError) as info:  # one reload, no more
        loaded.email  # noqa: B018
    assert str(info.value) == (
        f"Cannot decrypt: KeyStateError (field=testapp.Person.email, pk={p.pk}, key version=1)"
    )
    assert isinstance(info.value.__cause__, KeyStateError)


@pytest.mark.django_db
@pytest.mark.parametrize("forget", [keyring.invalidate, keyring.clear_cache])
def test_a_retired_version_stops_decrypting_as_soon_as_the_keyring_is_forgotten(keys, clock, forget):
    p = Person.objects.create(email="a@example.com")
    assert fresh(p).email == "a@example.com"
    retire_v1()
    forget()  # no time passes
    with pytest.raises(DecryptionError, match=r"^Cannot decrypt: KeyStateError \(field=testapp.Person.email"):
        fresh(p).email  # noqa: B018


@pytest.mark.django_db
def test_a_reload_for_another_column_ends_the_kept_ciphers_too(keys, clock):
    """Whatever replaces the cached listing (here another column's unknown version) is seen at once."""
    p = Person.objects.create(email="a@example.com", ssn="123")
    assert fresh(p).email == "a@example.com"
    retire_v1()
    forged = crypto.encrypt(bytes(32), 99, "testapp.Person.ssn", b"x")
    write_raw(p, "ssn", forged)
    with pytest.raises(DecryptionError, match="Cannot decrypt: UnknownKeyVersion"):
        fresh(p).ssn  # noqa: B018  (reloads the listing: v1 is now retired)
    with pytest.raises(DecryptionError, match="Cannot decrypt: KeyStateError"):
        fresh(p).email  # noqa: B018


@pytest.mark.django_db
def test_a_version_unknown_to_the_cache_reloads_the_keyring_once(keys, clock, django_assert_num_queries):
    p = Person.objects.create(email="a@example.com")
    assert fresh(p).email == "a@example.com"  # v1 cached, listing trusted for an hour of fake time
    # Another process adds v2 and writes this row under it.
    lifecycle.rotate("default", "encrypt", actor="test")  # invalidates on commit: tests never commit
    v2 = DataKey.objects.get(purpose="encrypt", version=2)
    dek = keyring.kek_backend().unwrap(bytes(v2.wrapped_key), context_for("default", "encrypt", 2))
    label = "testapp.Person.email"
    token = crypto.encrypt(crypto.derive_subkey(dek, "encrypt", label), 2, label, b"b@example.com")
    write_raw(p, "email", token)
    loaded = fresh(p)
    with django_assert_num_queries(1):
        assert loaded.email == "b@example.com"
    with django_assert_num_queries(1):  # the row; the v2 cipher is kept
        assert fresh(p).email == "b@example.com"


@pytest.mark.django_db
def test_an_unknown_version_after_the_reload_still_names_where(keys, clock, django_assert_num_queries):
    p = Person.objects.create(email="a@example.com")
    assert fresh(p).email == "a@example.com"
    write_raw(p, "email", crypto.encrypt(bytes(32), 7, "testapp.Person.email", b"x"))
    loaded = fresh(p)
    with django_assert_num_queries(1), pytest.raises(DecryptionError) as info:
        loaded.email  # noqa: B018
    assert str(info.value) == (
        f"Cannot decrypt: UnknownKeyVersion (field=testapp.Person.email, pk={p.pk}, key version=7)"
    )
    assert isinstance(info.value.__cause__, UnknownKeyVersion)


@pytest.mark.django_db
def test_with_a_zero_ttl_every_value_lists_the_keyring_again(keys, settings, django_assert_num_queries):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0}
    p = Person.objects.create(email="a@example.com")
    for _ in range(3):
        loaded = fresh(p)
        with django_assert_num_queries(1):
            assert loaded.email == "a@example.com"


@pytest.mark.django_db
def test_a_change_of_keyrotation_forgets_the_default_keyring_and_the_kept_ciphers(keys, settings):
    p = Person.objects.create(email="a@example.com")
    assert fresh(p).email == "a@example.com"
    assert conf.default_keyring() == "default"
    settings.KEYROTATION = {**settings.KEYROTATION, "DEFAULT_KEYRING": "elsewhere"}
    assert conf.default_keyring() == "elsewhere"
    with pytest.raises(DecryptionError, match="Cannot decrypt: UnknownKeyVersion"):
        fresh(p).email  # noqa: B018  ("elsewhere" has no key)
    settings.KEYROTATION = {**settings.KEYROTATION, "DEFAULT_KEYRING": "default"}
    assert fresh(p).email == "a@example.com"


def test_an_invalid_default_keyring_is_not_kept(settings):
    from keyrotation.exceptions import ConfigurationError

    settings.KEYROTATION = {**settings.KEYROTATION, "DEFAULT_KEYRING": ""}
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="DEFAULT_KEYRING"):
            conf.default_keyring()


def test_the_keyring_generation_changes_whenever_listings_are_forgotten():
    before = keyring.generation()
    keyring.invalidate()
    assert keyring.generation() > before
    before = keyring.generation()
    keyring.clear_cache()
    assert keyring.generation() > before


@pytest.mark.django_db
def test_tampered_and_undecodable_values_keep_their_messages(keys, clock):
    p = Person.objects.create(email="a@example.com")
    assert fresh(p).email == "a@example.com"  # cipher kept: the errors below come from the hot path
    token = bytearray(raw(p, "email"))
    token[-1] ^= 1
    write_raw(p, "email", bytes(token))
    with pytest.raises(DecryptionError) as info:
        fresh(p).email  # noqa: B018
    assert str(info.value) == f"Decryption failed (field=testapp.Person.email, pk={p.pk}, key version=1)"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    field = Person._meta.get_field("email")
    cipher = keyring.get_keyring("default", "encrypt").cipher(1, field.label)
    write_raw(p, "email", cipher.encrypt(b"\xff\xfe not UTF-8"))
    with pytest.raises(DecryptionError) as info:
        fresh(p).email  # noqa: B018
    assert str(info.value) == (
        f"Decrypted value does not decode (field=testapp.Person.email, pk={p.pk}, key version=1)"
    )
    assert "not UTF-8" not in str(info.value)
    with pytest.raises(DecryptionError, match="^Decrypted value does not decode"):
        field.open(Sealed(cipher.encrypt(b"\xff"), field))
    write_raw(p, "email", b"\x80gAAAAA-not-ours")
    with pytest.raises(DecryptionError) as info:
        fresh(p).email  # noqa: B018
    assert str(info.value) == f"Malformed encrypted value (field=testapp.Person.email, pk={p.pk})"


@pytest.mark.django_db
def test_every_codec_reads_back_through_the_kept_cipher(keys):
    import datetime as dt
    import decimal
    import uuid

    values = {
        "char": "ünïcode",
        "text": "",
        "integer": -12,
        "big": 2**40,
        "dec": decimal.Decimal("1.50"),
        "day": dt.date(2024, 5, 6),
        "moment": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc),
        "flag": False,
        "data": {"a": [1, "ü"]},
        "blob": b"\x00\x01",
        "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    }
    obj = AllTypes.objects.create(**values)
    for _ in range(2):  # the second pass runs on the kept ciphers
        loaded = AllTypes.objects.get(pk=obj.pk)
        for name, value in values.items():
            got = getattr(loaded, name)
            assert got == value and type(got) is type(value), name


def test_decoder_is_decode_bound_to_the_field():
    samples = {
        models.EmailField(): [b"a@example.com", "é".encode()],
        models.TextField(): [b"", b"\xff"],
        models.IntegerField(): [b"-12", b"x"],
        models.DecimalField(max_digits=5, decimal_places=2): [b"1.50", b"NaNx"],
        models.BooleanField(): [b"1", b"0"],
        models.DateField(): [b"2024-05-06", b"nope"],
        models.JSONField(): [b'{"a":1}', b"{"],
        models.BinaryField(): [b"\x00"],
        models.UUIDField(): [b"12345678-1234-5678-1234-567812345678", b"z"],
    }
    for field, datas in samples.items():
        decode = codecs.decoder(field)
        for data in datas:
            try:
                expected = codecs.decode(field, data)
            except Exception as exc:  # noqa: BLE001 - the same exception type, whatever it is
                with pytest.raises(type(exc)):
                    decode(data)
            else:
                assert decode(data) == expected and type(decode(data)) is type(expected)
    with pytest.raises(TypeError):
        codecs.decoder(models.FileField())


def _token_version_or_none(token):
    try:
        return crypto.token_version(token)
    except crypto.InvalidToken:
        return None


@given(
    head=st.sampled_from([b"", b"\x00", b"\x01", b"\x02", b"\x01\x00\x00\x00\x00", b"\x01\xff\xff\xff\xff"]),
    rest=st.binary(max_size=48),
    kind=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_sealed_parses_the_version_exactly_as_token_version(head, rest, kind):
    token = kind(head + rest)
    sealed = Sealed(token, None)
    assert sealed.version == _token_version_or_none(token)
    assert type(sealed.token) is bytes and sealed.token == bytes(token)
    assert Sealed(token, None, version=5).version == 5


def test_sealed_keeps_bytes_without_copying_and_shows_no_byte():
    token = crypto.encrypt(bytes(32), 3, "a.B.c", b"secret")
    field = Person._meta.get_field("email")
    sealed = Sealed(token, field)
    assert sealed.token is token and sealed.version == 3
    assert repr(sealed) == "<encrypted testapp.Person.email (key version 3)>"


def test_labels_and_kept_ciphers_are_per_concrete_model():
    with isolate_apps("tests.testapp"):

        class Base(models.Model):
            secret = EncryptedField(models.CharField(max_length=5))

            class Meta:
                app_label = "testapp"
                abstract = True

        base_field = Base._meta.get_field("secret")
        assert base_field.label == "testapp.Base.secret"  # computed (and kept) before the copies

        class One(Base):  # noqa: DJ008
            class Meta:
                app_label = "testapp"

        class Two(Base):  # noqa: DJ008
            class Meta:
                app_label = "testapp"

        one, two = One._meta.get_field("secret"), Two._meta.get_field("secret")
        assert (one.label, two.label) == ("testapp.One.secret", "testapp.Two.secret")
        assert base_field.label == "testapp.Base.secret"
        assert one._ciphers is not two._ciphers and one._ciphers is not base_field._ciphers


def test_a_loaded_value_parses_its_key_version_only_when_asked_and_pickles_either_way(keys):
    person = Person.objects.create(email="a@example.com")
    sealed = fresh(person).__dict__["email"]
    assert isinstance(sealed, Sealed)
    with pytest.raises(AttributeError):
        object.__getattribute__(sealed, "version")  # the read path never parsed it
    import pickle

    unparsed = pickle.loads(pickle.dumps(sealed))  # noqa: S301 - pickled here
    assert (unparsed.token, unparsed.field) == (sealed.token, sealed.field)
    assert sealed.version == 1 and unparsed.version == 1
    parsed = pickle.loads(pickle.dumps(sealed))  # noqa: S301 - pickled here, version included
    assert object.__getattribute__(parsed, "version") == 1
    assert repr(parsed) == f"<encrypted {sealed.field.label} (key version 1)>"
    malformed = Sealed(b"\x07junk", sealed.field)
    assert malformed.version is None
    with pytest.raises(AttributeError):
        malformed.nonexistent  # noqa: B018 - only "version" is computed
