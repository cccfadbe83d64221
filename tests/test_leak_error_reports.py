"""Error reports show no key and no plaintext.

For every failure that can escape the library while a key or a plaintext is near (a wrapped key
that does not unwrap, locally or in Vault; a value that does not authenticate or does not decode;
a legacy value under a wrong key or tampered; a re-encryption batch that meets a bad row), the
exception is rendered the ways a deployment shows it: Django's technical 500 page (``DEBUG =
True``, where ``sensitive_variables`` is not honoured), the HTML e-mail of
``AdminEmailHandler(include_html=True)`` (``DEBUG = False``), and the local variables of every
frame of the exception and of every exception chained to it (an error tracker that records locals).
Each is scanned for the master key (base64, hex, repr and pieces of it), the data keys, the
per-column subkeys, the Vault token and the plaintexts.

The secrets live in a :class:`Secrets` holder whose repr hides them: the test's own frame is part
of every traceback, and must not be the leak the check finds.
"""

from __future__ import annotations

import base64
import os
import pickle
import uuid

import pytest
from cryptography.fernet import Fernet
from django.db import models

from keyrotation import crypto, engine, keyring, legacy, lifecycle
from keyrotation.engine import dialects
from keyrotation.engine import plan as _plan
from keyrotation.engine.transform import BatchTransformer, RowFailureError
from keyrotation.exceptions import DecryptionError, KEKUnavailable, RunFailed
from keyrotation.kek import context_for
from keyrotation.models import DataKey
from keyrotation.testing import assert_no_leak
from tests.fields_support import raw, write_raw
from tests.helpers.legacy_values import django_cryptography_key, django_cryptography_value
from tests.legacyapp.models import VECTOR_SECRET_KEY, CryptoPerson, PlainContact
from tests.testapp.models import AllTypes, Person

pytestmark = pytest.mark.django_db(transaction=True)


class Secrets:
    """The keys and plaintexts of one test; its repr shows none of them."""

    def __init__(self) -> None:
        self.values: list[str | bytes] = []
        self.made: dict[str, object] = {}  # inputs prepared before the check starts

    def __repr__(self) -> str:
        return f"<{len(self.values)} secrets>"

    def add(self, value: str | bytes) -> str | bytes:
        self.values.append(value)
        return value

    def text(self, prefix: str = "canary") -> str:
        """A new plaintext canary (no space: a report never wraps it)."""
        return self.add(f"{prefix}-{uuid.uuid4().hex[:16]}")

    def email(self) -> str:
        return self.add(f"canary.{uuid.uuid4().hex[:12]}@example.org")

    def add_data_keys(self, labels: tuple[str, ...] = ()) -> None:
        """Every unwrapped data key of the keyrings, and the subkeys of ``labels`` under them."""
        kek = keyring.kek_backend()
        for row in DataKey.objects.exclude(wrapped_key=None):
            dek = kek.unwrap(bytes(row.wrapped_key), context_for(row.keyring, row.purpose, row.version))
            self.add(dek)
            if row.purpose in crypto.PURPOSES:
                for label in labels:
                    self.add(crypto.derive_subkey(dek, row.purpose, label))


LABELS = ("testapp.AllTypes.text", "testapp.AllTypes.integer", "testapp.Person.email", "testapp.Person.ssn")


@pytest.fixture
def secrets(settings, db):
    """A random local master key (a secret: the test settings' fixed key is not), initialised keys."""
    holder = Secrets()
    master = holder.add(os.urandom(32))
    settings.KEYROTATION = {
        **settings.KEYROTATION,
        "KEK": {"BACKEND": "local", "KEYS": [base64.b64encode(master).decode()]},
    }
    keyring.clear_cache()
    lifecycle.init("default", actor="test")
    holder.add_data_keys(LABELS)
    return holder


def tamper_wrapped_key(purpose: str = "encrypt", version: int = 1) -> None:
    """Change one byte of a data key's wrapped bytes."""
    row = DataKey.objects.get(keyring="default", purpose=purpose, version=version)
    wrapped = bytes(row.wrapped_key)
    if wrapped.startswith(b"vault:"):  # a base64 character of the nonce
        at = wrapped.rindex(b":") + 5
        new = b"A" if wrapped[at : at + 1] != b"A" else b"B"
    else:  # a bit of the tag
        at = len(wrapped) - 1
        new = bytes([wrapped[at] ^ 1])
    DataKey.objects.filter(pk=row.pk).update(wrapped_key=wrapped[:at] + new + wrapped[at + 1 :])
    keyring.clear_cache()


def flip_last_byte(instance, column: str) -> None:
    token = raw(instance, column)
    write_raw(instance, column, token[:-1] + bytes([token[-1] ^ 1]))


def undecodable_integer(secrets: Secrets) -> AllTypes:
    """An IntegerField whose column holds a valid ciphertext, under the real key, of a non-integer."""
    row = AllTypes.objects.create(integer=1)
    token, _ = keyring.encrypt("default", "testapp.AllTypes.integer", secrets.text("not-an-int").encode())
    write_raw(row, "integer", token)
    return row


# -- the local KEK and the keyring ---------------------------------------------------------


def test_a_wrapped_key_that_does_not_unwrap_shows_no_master_key(secrets):
    row = AllTypes.objects.create(text=secrets.text())
    tamper_wrapped_key()
    with assert_no_leak(secrets.values) as leak:
        with leak.raises(KEKUnavailable, error_reports=True):
            AllTypes.objects.get(pk=row.pk).text  # noqa: B018
        with leak.raises(KEKUnavailable, error_reports=True):
            keyring.kek_backend().unwrap(
                bytes(DataKey.objects.get(purpose="encrypt", version=1).wrapped_key),
                context_for("default", "encrypt", 1),
            )
        with leak.raises(KEKUnavailable, error_reports=True):
            keyring.encrypt("default", "testapp.AllTypes.text", b"x")
    assert "failed to unwrap" in str(leak.exceptions[0])


def test_a_misconfigured_second_master_key_shows_not_the_first(secrets, settings):
    from keyrotation.exceptions import ConfigurationError
    from keyrotation.kek import load_backend

    with assert_no_leak(secrets.values) as leak:
        for bad in ("not base64!", base64.b64encode(b"short").decode(), 3):
            with leak.raises(ConfigurationError, error_reports=True):
                load_backend({"BACKEND": "local", "KEYS": [*settings.KEYROTATION["KEK"]["KEYS"], bad]})
    assert all('KEYROTATION["KEK"]["KEYS"][1]' in str(e) for e in leak.exceptions)


def test_a_backend_returning_a_bad_data_key_shows_it_nowhere(secrets, settings):
    """A custom KEK backend that returns 16 bytes instead of 32: the bytes stay out of the report."""
    settings.KEYROTATION = {
        **settings.KEYROTATION,
        "KEK": {**settings.KEYROTATION["KEK"], "BACKEND": "tests.test_leak_error_reports.ShortKEK"},
    }
    keyring.clear_cache()
    with assert_no_leak([*secrets.values, ShortKEK.SHORT]) as leak:
        with leak.raises(KEKUnavailable, error_reports=True):
            keyring.encrypt("default", "testapp.AllTypes.text", b"x")
    assert "16 bytes" in str(leak.exceptions[0])


class ShortKEK:
    """A broken custom backend: unwraps to 16 bytes."""

    SHORT = bytes(range(200, 216))

    def __init__(self, options):
        pass

    def unwrap(self, wrapped, context):
        return self.SHORT


# -- the field read path ------------------------------------------------------------------


def test_a_value_that_decrypts_but_does_not_decode_shows_no_plaintext(secrets):
    row = undecodable_integer(secrets)
    with assert_no_leak(secrets.values) as leak:
        with leak.raises(DecryptionError, error_reports=True):
            AllTypes.objects.get(pk=row.pk).integer  # noqa: B018
        with leak.raises(DecryptionError, error_reports=True):
            list(AllTypes.objects.filter(pk=row.pk).values_list("integer", flat=True))
        sealed = AllTypes.objects.get(pk=row.pk).__dict__["integer"]
        with leak.raises(DecryptionError, error_reports=True):
            AllTypes._meta.get_field("integer").open(sealed, pk=row.pk)
    assert all("does not decode" in str(e) for e in leak.exceptions)


def test_a_value_that_does_not_authenticate_shows_no_key(secrets):
    row = AllTypes.objects.create(text=secrets.text())
    flip_last_byte(row, "text")
    keyring.clear_cache()
    with assert_no_leak(secrets.values) as leak:
        with leak.raises(DecryptionError, error_reports=True):
            AllTypes.objects.get(pk=row.pk).text  # noqa: B018
        with leak.raises(DecryptionError, error_reports=True):
            keyring.decrypt("default", "testapp.AllTypes.text", raw(row, "text"), pk=row.pk)


FAILURES = ["wrapped key", "ciphertext", "plaintext"]


def _break_a_value(what: str, secrets: Secrets) -> str:
    """A row whose value fails to read in the way named; returns the URL of the view reading it."""
    if what == "plaintext":
        row, field = undecodable_integer(secrets), "integer"
    else:
        row, field = AllTypes.objects.create(text=secrets.text()), "text"
        if what == "wrapped key":
            tamper_wrapped_key()
        else:
            flip_last_byte(row, "text")
    keyring.clear_cache()
    return f"/read/testapp.AllTypes/{row.pk}/{field}/"


@pytest.mark.parametrize("debug", [True, False], ids=["DEBUG", "production"])
@pytest.mark.parametrize("what", FAILURES)
def test_a_view_that_fails_to_read_a_value_shows_no_secret(client, settings, secrets, what, debug):
    """Through a real request: the 500 response itself, then the reports of the logged exception."""
    settings.ROOT_URLCONF = "tests.leak_urls"
    settings.DEBUG = debug
    client.raise_request_exception = False
    url = _break_a_value(what, secrets)
    with assert_no_leak(secrets.values) as leak:
        for accept in ("text/html", "text/plain"):
            response = client.get(url, HTTP_ACCEPT=accept)
            assert response.status_code == 500
            leak.check_text(response.content, f"500 response ({accept})")
        logged = [r for r in leak.records if r.name == "django.request" and r.exc_info]
        assert len(logged) == 2
        for record in logged:
            leak.check_error_reports(record.exc_info[1], request=record.request)
    expected = "KEKRefused" if what == "wrapped key" else "DecryptionError"  # a tampered key: permanent
    assert (expected in response.content.decode()) is debug
    assert all(type(record.exc_info[1]).__name__ == expected for record in logged)


# -- the Vault KEK ------------------------------------------------------------------------


@pytest.fixture
def vault_secrets(vault, settings, db):
    """Keys wrapped by a real OpenBao Transit key; the token is a secret."""
    holder = Secrets()
    holder.add(vault.token)
    settings.KEYROTATION = {
        **settings.KEYROTATION,
        "KEK": {
            "BACKEND": "vault",
            "URL": vault.addr,
            "TOKEN": vault.token,
            "KEY_NAME": f"leak-{uuid.uuid4().hex[:8]}",
        },
    }
    keyring.clear_cache()
    lifecycle.init("default", actor="test")
    holder.add_data_keys(LABELS)
    return holder


@pytest.mark.vault
def test_a_vault_unwrap_failure_shows_no_token_and_no_key(vault_secrets):
    row = AllTypes.objects.create(text=vault_secrets.text())
    good = AllTypes.objects.create(text=vault_secrets.text())
    AllTypes.objects.get(pk=good.pk).text  # noqa: B018 - index and encrypt keys are in the process
    tamper_wrapped_key()
    vault_secrets.made["dek"] = vault_secrets.add(os.urandom(32))
    with assert_no_leak(vault_secrets.values) as leak:
        with leak.raises(KEKUnavailable, error_reports=True):
            AllTypes.objects.get(pk=row.pk).text  # noqa: B018
        with leak.raises(KEKUnavailable, error_reports=True):
            keyring.kek_backend().unwrap(
                bytes(DataKey.objects.get(purpose="encrypt", version=1).wrapped_key),
                context_for("default", "encrypt", 1),
            )
        with leak.raises(KEKUnavailable, error_reports=True):
            keyring.kek_backend().wrap(vault_secrets.made["dek"], b"")  # a derived key needs a context
    assert "request rejected" in str(leak.exceptions[0])


# -- the legacy decoders ------------------------------------------------------------------


def _legacy_case(name: str, secrets: Secrets):
    """(decoder, a function making a value of a plaintext under the decoder's key, a value made
    under another key); every key involved is added to ``secrets``."""
    mine, other = secrets.text("secret-key"), secrets.text("other-key")
    if name == "django-cryptography":
        for key in (mine, other):
            secrets.add(django_cryptography_key(key))
        return (
            legacy.DjangoCryptography(secret_key=mine),
            lambda text: django_cryptography_value(mine, pickle.dumps(text)),
            django_cryptography_value(other, pickle.dumps("x")),
        )
    if name == "plaintext":
        return legacy.Plaintext(), lambda text: text, None
    if name == "django-fernet-fields":
        decoder, wrong = legacy.FernetFields(keys=[mine]), legacy.FernetFields(keys=[other])
    elif name == "django-encrypted-model-fields":
        mine, other = secrets.add(Fernet.generate_key().decode()), secrets.add(Fernet.generate_key().decode())
        decoder, wrong = legacy.EncryptedModelFields(keys=mine), legacy.EncryptedModelFields(keys=other)
    else:
        salt = secrets.text("salt")
        decoder = legacy.FernetEncryptedFields(secret_keys=[mine], salts=[salt])
        wrong = legacy.FernetEncryptedFields(secret_keys=[other], salts=[salt])
    for key in decoder.fernet_keys() + wrong.fernet_keys():
        secrets.add(key.decode())
        secrets.add(base64.urlsafe_b64decode(key))
    fernet = Fernet(decoder.fernet_keys()[0])
    return decoder, lambda text: fernet.encrypt(text.encode()), Fernet(wrong.fernet_keys()[0]).encrypt(b"x")


LEGACY = [
    "plaintext",
    "django-cryptography",
    "django-fernet-fields",
    "django-encrypted-model-fields",
    "django-fernet-encrypted-fields",
]


@pytest.mark.parametrize("name", LEGACY)
def test_a_legacy_value_that_fails_shows_no_legacy_key_and_no_plaintext(secrets, name):
    decoder, make, under_another_key = _legacy_case(name, secrets)
    secrets.made["not a number"] = make(secrets.text("not-a-number"))  # authenticates, does not convert
    if under_another_key is not None:
        value = make(secrets.text())
        secrets.made["tampered"] = value[:-1] + (b"A" if value[-1:] != b"A" else b"B")
        del value
    del make
    number = models.IntegerField()
    with assert_no_leak(secrets.values) as leak:
        with leak.raises(legacy.LegacyDecodeError, error_reports=True):
            decoder.decode(secrets.made["not a number"], number)
        if under_another_key is not None:
            with leak.raises(legacy.LegacyDecodeError, error_reports=True):
                decoder.decode(under_another_key, number)
            with leak.raises(legacy.LegacyDecodeError, error_reports=True):
                decoder.decode(secrets.made["tampered"], models.CharField())


def test_a_legacy_column_read_through_the_field_shows_no_legacy_key(secrets):
    """The read-through window: the field's DecryptionError, with the vector keys of django-cryptography."""
    secrets.add(VECTOR_SECRET_KEY)
    secrets.add(django_cryptography_key(VECTOR_SECRET_KEY))
    row = CryptoPerson.objects.create(
        name_legacy=django_cryptography_value(VECTOR_SECRET_KEY, pickle.dumps(secrets.text())),
        number_legacy=django_cryptography_value(VECTOR_SECRET_KEY, pickle.dumps(secrets.text("nan"))),
    )
    flip_last_byte(row, "name_legacy")
    with assert_no_leak(secrets.values) as leak:
        with leak.raises(DecryptionError, error_reports=True):
            CryptoPerson.objects.get(pk=row.pk).name  # noqa: B018
        with leak.raises(DecryptionError, error_reports=True):
            CryptoPerson.objects.get(pk=row.pk).number  # noqa: B018
    assert "Legacy value does not decode" in str(leak.exceptions[0])


# -- the engine ---------------------------------------------------------------------------


def _rows(model: str = "testapp.Person"):
    (plan,) = _plan.build([model])
    return plan, dialects.for_alias("default").select_batch(plan, None, None, 100, lock=False)


def test_a_batch_that_meets_a_tampered_row_shows_no_plaintext_of_the_others(secrets):
    people = [Person.objects.create(name=str(i), email=secrets.email(), ssn=None) for i in range(5)]
    flip_last_byte(people[3], "email")
    lifecycle.rotate("default", "encrypt", actor="test")
    keyring.invalidate()
    secrets.add_data_keys(LABELS)
    plan, rows = _rows()
    with assert_no_leak(secrets.values) as leak:
        with leak.raises(RowFailureError, error_reports=True):
            BatchTransformer(plan).transform_batch(rows)
    assert f"pk={people[3].pk}" in str(leak.exceptions[0])


def test_a_failed_reencrypt_run_shows_no_plaintext(secrets, caught):
    """``reencrypt`` turns the failure into its report; the exception it caught shows nothing either."""
    people = [Person.objects.create(name=str(i), email=secrets.email()) for i in range(5)]
    flip_last_byte(people[2], "email")
    lifecycle.rotate("default", "encrypt", actor="test")
    keyring.invalidate()
    secrets.add_data_keys(LABELS)
    with assert_no_leak(secrets.values) as leak:
        report = engine.reencrypt(["testapp.Person"], batch_size=50)
        leak.check_text(repr(report.as_dict()), "report")
    assert not report.ok and len(caught) == 1 and isinstance(caught[0], RunFailed)
    with assert_no_leak(secrets.values, audit=False) as leak:
        leak.check_error_reports(caught[0])


def test_a_batch_whose_second_key_does_not_unwrap_shows_no_plaintext_of_the_first(secrets):
    """KEKUnavailable escapes the engine (it is retried, then raised) after some rows were opened."""
    Person.objects.create(name="v1", email=secrets.email())
    lifecycle.rotate("default", "encrypt", actor="test")
    keyring.invalidate()
    Person.objects.create(name="v2", email=secrets.email())
    lifecycle.rotate("default", "encrypt", actor="test")
    keyring.invalidate()
    secrets.add_data_keys(LABELS)
    tamper_wrapped_key("encrypt", 2)
    plan, rows = _rows()
    with assert_no_leak(secrets.values) as leak:
        with leak.raises(KEKUnavailable, error_reports=True):
            BatchTransformer(plan).transform_batch(rows)


def _plain_contacts(secrets: Secrets):
    """Contacts still holding their plaintext in the legacy column, and one adopted contact."""
    PlainContact.objects.bulk_create(PlainContact(email_legacy=secrets.email()) for _ in range(4))
    return PlainContact.objects.create(email=secrets.email())


def test_a_failed_adoption_batch_shows_no_legacy_plaintext(secrets, caught):
    """The rows of a batch hold the legacy column's plaintexts: the frames that read them too."""
    adopted = _plain_contacts(secrets)
    flip_last_byte(adopted, "email")
    lifecycle.rotate("default", "encrypt", actor="test")  # the adopted row is re-encrypted too
    keyring.invalidate()
    secrets.add_data_keys(LABELS)
    report = engine.reencrypt(["legacyapp.PlainContact"], batch_size=50)
    assert not report.ok and len(caught) == 1
    with assert_no_leak(secrets.values, audit=False) as leak:
        leak.check_error_reports(caught[0])


def test_a_verify_that_meets_a_key_it_cannot_unwrap_shows_no_legacy_plaintext(secrets):
    _plain_contacts(secrets)
    tamper_wrapped_key()
    with assert_no_leak(secrets.values) as leak:
        with leak.raises(KEKUnavailable, error_reports=True):
            engine.verify(["legacyapp.PlainContact"])
