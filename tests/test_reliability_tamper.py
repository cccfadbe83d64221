"""Bad input and tampering (SQLite and PostgreSQL): every way a stored value can be wrong gives a
typed error naming where (model, field, pk, version) and changes nothing; fuzzed tokens through the
field read path and the engine transform raise only the typed errors."""

from __future__ import annotations

import base64
import struct
import uuid

import pytest
from django.db import connection
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from keyrotation import crypto, engine, keyring, lifecycle
from keyrotation.engine import plan as _plan
from keyrotation.engine.batch import layout
from keyrotation.engine.transform import BatchTransformer, RowFailureError
from keyrotation.exceptions import DecryptionError, KEKUnavailable, KeyStateError, UnknownKeyVersion
from keyrotation.fields import Sealed
from tests.fields_support import raw, rotate, write_raw
from tests.testapp.models import AllTypes, BoundPerson, Note, Person

pytestmark = pytest.mark.django_db

EMAIL_FIELD = Person._meta.get_field("email")


def _table(model) -> list[tuple]:
    q = connection.ops.quote_name
    with connection.cursor() as cur:
        cur.execute(f"SELECT * FROM {q(model._meta.db_table)} ORDER BY id")
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in cur.fetchall()]


def _flip(token: bytes, at: int) -> bytes:
    return token[:at] + bytes([token[at] ^ 0x01]) + token[at + 1 :]


def _forge_version(token: bytes, version: int) -> bytes:
    return token[:1] + struct.pack(">I", version) + token[5:]


@pytest.fixture
def people(keys):
    a = Person.objects.create(name="a", email="alice@example.com", ssn="111-22-3333")
    b = Person.objects.create(name="b", email="bob@example.com", ssn="444-55-6666")
    note = Note.objects.create(person=a, body="a note")
    return a, b, note


def _tampered(people):
    a, b, note = people
    good = raw(a, "email")
    n = len(good)
    return {
        "flipped format byte": _flip(good, 0),
        "flipped version byte": _flip(good, 4),
        "flipped nonce bit": _flip(good, 7),
        "flipped ciphertext bit": _flip(good, 18),
        "flipped tag bit": _flip(good, n - 1),
        "truncated by one byte": good[:-1],
        "truncated to the header": good[:5],
        "empty": b"",
        "copied from another column": raw(a, "ssn"),
        "copied from another model": raw(note, "body"),
        "another row's value": raw(b, "email"),  # opens, but the blind index no longer matches
        "forged header version (existing)": None,  # filled after a rotation below
        "forged header version (unknown)": _forge_version(good, 77),
    }


def _expect_read_error(person, what):
    with pytest.raises(DecryptionError) as info:
        Person.objects.get(pk=person.pk).email  # noqa: B018
    message = str(info.value)
    assert "testapp.Person.email" in message and f"pk={person.pk}" in message, (what, message)
    assert "alice" not in message and "example.com" not in message
    return info.value


def test_tampered_values_raise_typed_errors_and_change_nothing(people):
    a, b, _ = people
    rotate("encrypt")
    good = raw(a, "email")
    cases = _tampered(people)
    cases["forged header version (existing)"] = _forge_version(good, 2)
    for what, token in cases.items():
        write_raw(a, "email", token)
        before = _table(Person)
        if what == "another row's value":
            assert Person.objects.get(pk=a.pk).email == "bob@example.com"  # AEAD binds column, not row
            failures = engine.verify()["failures"]
            assert any(f"testapp.Person.email_bidx pk={a.pk}" in f for f in failures), failures
        else:
            error = _expect_read_error(a, what)
            if what == "forged header version (unknown)":
                assert isinstance(error.__cause__, UnknownKeyVersion) and "version=77" in str(error.__cause__)
            elif what not in (
                "empty",
                "truncated to the header",
                "flipped format byte",
                "flipped version byte",
            ):
                assert error.version is not None and f"key version={error.version}" in str(error)
            report = engine.reencrypt(batch_size=10)  # the engine stops on it, naming where
            assert not report.ok and any(f"pk={a.pk}" in e for e in report.errors), (what, report.errors)
            assert all("alice" not in e for e in report.errors)
            ReencryptionRunCleanup.abort_open()
        assert _table(Person) == before, what  # nothing changed, not even the other columns
    write_raw(a, "email", good)


class ReencryptionRunCleanup:
    @staticmethod
    def abort_open():
        from keyrotation.models import ReencryptionRun

        ReencryptionRun.objects.filter(status__in=["running", "failed", "interrupted"]).update(
            status="aborted"
        )


def test_retired_version_raises_key_state_error(people, settings):
    a, _, _ = people
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0}
    old = raw(a, "email")
    rotate("encrypt")
    assert engine.reencrypt().ok
    lifecycle.retire("default", "encrypt", 1)
    keyring.invalidate()
    write_raw(a, "email", old)  # a backup restored over a re-encrypted row
    before = _table(Person)
    error = _expect_read_error(a, "retired")
    assert isinstance(error.__cause__, KeyStateError) and "retired" in str(error.__cause__)
    assert error.version == 1
    assert _table(Person) == before


def test_wrong_master_key_raises_kek_unavailable(people, settings, master_key):
    a, _, _ = people
    before = _table(Person)
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {"BACKEND": "local", "KEYS": [master_key]}}
    keyring.clear_cache()
    with pytest.raises(KEKUnavailable) as info:
        Person.objects.get(pk=a.pk).email  # noqa: B018
    assert master_key not in str(info.value) and "alice" not in str(info.value)
    assert _table(Person) == before


def test_blind_index_copied_from_another_field_is_reported_by_verify(keys):
    import uuid

    row = AllTypes.objects.create(uid=uuid.uuid4(), moment="2024-01-02T03:04:05Z")
    write_raw(row, "uid_bidx", raw(row, "moment_bidx"))
    before = _table(AllTypes)
    failures = engine.verify()["failures"]
    assert failures == [f"testapp.AllTypes.uid_bidx pk={row.pk} key version=1: blind index does not match"]
    assert not AllTypes.objects.filter(uid=AllTypes.objects.get(pk=row.pk).uid).exists()
    assert _table(AllTypes) == before


# -- fuzzing ----------------------------------------------------------------------------------------


def _valid_token():
    token, _ = keyring.encrypt("default", EMAIL_FIELD.label, b"fuzz@example.com")
    return token


@st.composite
def tokens(draw):
    """Random bytes, and mutations of a real token (bit flips, cuts, splices, forged headers)."""
    kind = draw(st.sampled_from(["random", "flip", "cut", "splice", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=80))
    good = _valid_token()
    if kind == "flip":
        at = draw(st.integers(0, len(good) - 1))
        return good[:at] + bytes([good[at] ^ (1 << draw(st.integers(0, 7)))]) + good[at + 1 :]
    if kind == "cut":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "splice":
        return good + draw(st.binary(min_size=1, max_size=16))
    header = bytes([draw(st.integers(0, 255))]) + struct.pack(">I", draw(st.integers(0, 2**32 - 1)))
    forged = header + good[5:]
    assume(forged != good)
    return forged


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(token=tokens())
def test_fuzzed_tokens_through_the_field_read_path(keys, token):
    # what the ORM does with a fetched row: the column converter, then Model.from_db
    stored = EMAIL_FIELD.from_db_value(token, None, connection)
    person = Person.from_db("default", ["id", "email", "email_key_version"], [1, stored, 1])
    try:
        value = person.email
    except DecryptionError as exc:
        assert "testapp.Person.email" in str(exc) and "pk=1" in str(exc)
    else:
        assert value == "fuzz@example.com"  # only an untouched token opens
    assert isinstance(person.__dict__["email"], (Sealed, str))


@FUZZ
@given(token=tokens(), version=st.integers(1, 3))
def test_fuzzed_tokens_through_the_engine_transform(keys, token, version):
    (p,) = [p for p in _plan.build(["testapp.Person"])]
    transformer = BatchTransformer(p)
    # pk, email, email_kv, ssn, ssn_kv, email_bidx, email_bidx_kv
    row = (1, token, version, None, None, b"\x00" * 16, 1)
    try:
        transformer.transform(row)
    except RowFailureError as exc:
        assert "testapp.Person.email pk=1" in str(exc)


def test_base64_fuzz_of_stored_text_is_not_mistaken_for_plaintext(keys):
    """A value that is not a token (e.g. a legacy base64 string) is an error, never plaintext."""
    person = Person.objects.create(name="x", email="x@example.com")
    write_raw(person, "email", base64.b64encode(b"x@example.com"))
    with pytest.raises(DecryptionError, match="Malformed"):
        Person.objects.get(pk=person.pk).email  # noqa: B018
    assert crypto.MIN_TOKEN_BYTES > 5


# -- bound fields (format 0x02) -------------------------------------------------------------------

BOUND_PK = uuid.UUID("00000000-0000-4000-8000-000000000001")
BOUND_SSN = BoundPerson._meta.get_field("ssn")


@st.composite
def bound_tokens(draw):
    """Mutations of a real 0x02 token of BOUND_PK's row, and the same value sealed to another row."""
    good = BOUND_SSN.seal_value("123-45-6789", BOUND_SSN.binding_of(BOUND_PK)).token
    kind = draw(st.sampled_from(["flip", "cut", "header", "other row", "random"]))
    if kind == "flip":
        at = draw(st.integers(0, len(good) - 1))
        return good[:at] + bytes([good[at] ^ (1 << draw(st.integers(0, 7)))]) + good[at + 1 :]
    if kind == "cut":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "header":
        forged = bytes([draw(st.integers(0, 255))]) + struct.pack(">I", draw(st.integers(0, 3))) + good[5:]
        assume(forged != good)  # format byte 0x02 and version 1 draw the untouched token back
        return forged
    if kind == "other row":
        other = draw(st.uuids())
        assume(other != BOUND_PK)
        return BOUND_SSN.seal_value("123-45-6789", BOUND_SSN.binding_of(other)).token
    return draw(st.binary(max_size=80))


@FUZZ
@given(token=bound_tokens())
def test_fuzzed_bound_tokens_through_the_field_read_path(keys, token):
    stored = BOUND_SSN.from_db_value(token, None, connection)
    obj = BoundPerson.from_db("default", ["id", "code", "ssn", "ssn_key_version"], [BOUND_PK, "c", stored, 1])
    with pytest.raises(DecryptionError) as info:
        obj.ssn  # noqa: B018  (only the untouched token of this very row would open)
    assert "testapp.BoundPerson.ssn" in str(info.value) and str(BOUND_PK) in str(info.value)
    assert "123-45-6789" not in str(info.value)
    # chained only to a key error (an unknown version in a forged header), never to a value
    assert info.value.__context__ is None or isinstance(
        info.value.__cause__, (UnknownKeyVersion, KeyStateError)
    )
    assert isinstance(obj.__dict__["ssn"], Sealed)


@FUZZ
@given(token=bound_tokens(), version=st.integers(1, 3))
def test_fuzzed_bound_tokens_through_the_engine_transform(keys, token, version):
    (p,) = _plan.build(["testapp.BoundPerson"])
    transformer = BatchTransformer(p)
    values = dict.fromkeys(layout(p).columns)
    db_pk = BoundPerson._meta.pk.get_db_prep_value(BOUND_PK, connection)  # as a raw row holds it
    if connection.vendor == "mysql" and isinstance(db_pk, uuid.UUID):
        db_pk = str(db_pk)  # MariaDB's native uuid column: mysqlclient reads it as text
    values.update({"id": db_pk, "code": "c", "ssn": token, "ssn_key_version": version})
    with pytest.raises(RowFailureError) as info:
        transformer.transform(tuple(values[c] for c in layout(p).columns))
    assert f"testapp.BoundPerson.ssn pk={db_pk!r}" in str(info.value)


def test_a_bound_value_that_does_not_decode_leaves_no_plaintext_in_the_error_or_its_frames(keys):
    obj = BoundPerson.objects.create(code="d")
    plaintext = b"\xffcanary-5e1b\xfe"  # not UTF-8: the CharField's decoder refuses it
    token, version = keyring.encrypt_bound("default", BOUND_SSN.label, plaintext, BOUND_SSN.binding(obj))
    stored = BOUND_SSN.from_db_value(token, None, connection)
    loaded = BoundPerson.from_db(
        "default", ["id", "code", "ssn", "ssn_key_version"], [obj.pk, "d", stored, version]
    )
    with pytest.raises(DecryptionError, match="does not decode") as info:
        loaded.ssn  # noqa: B018
    assert info.value.__context__ is None and info.value.__cause__ is None
    tb = info.value.__traceback__.tb_next  # the frames below this test's own
    while tb is not None:
        assert not any(
            isinstance(v, (bytes, str))
            and b"canary" in (v if isinstance(v, bytes) else v.encode("utf-8", "replace"))
            for v in tb.tb_frame.f_locals.values()
        ), tb.tb_frame.f_code.co_name
        tb = tb.tb_next
