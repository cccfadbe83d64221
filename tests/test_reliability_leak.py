"""Never leak (DESIGN §7): canary plaintexts through a whole rotation, at DEBUG, SQL log included.

Runs on SQLite and on PostgreSQL (the same test, the backend picked by ``DATABASE_URL``).
"""

from __future__ import annotations

import io
import logging

import pytest
from django.core.exceptions import FieldError, ValidationError
from django.db import IntegrityError, connection, transaction

from keyrotation import conf, engine, keyring
from keyrotation.exceptions import DecryptionError
from keyrotation.redaction import RedactingFilter
from keyrotation.testing import LeakFound, assert_no_leak
from tests.fields_support import raw, write_raw
from tests.testapp.models import Account, AllTypes, Note, Person

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "Canary.Leak-7f3a@Example.org"
SSN = "987-65-4329"
NOTE = "canary note: the patient's diagnosis is ZX81-canary"
USERNAME = "canary_user_5e2b"
NUMBER = 918273645
INVALID = "canary-not-a-number-31337"
CANARIES = [EMAIL, SSN, NOTE, USERNAME, str(NUMBER), "canary-json-9c4d", INVALID]


def _write_everything(leak):
    """Every application write and read path, with canaries."""
    people = [Person.objects.create(name="a", email=EMAIL, ssn=SSN)]
    people += Person.objects.bulk_create(
        [Person(name=f"b{i}", email=f"{i}.{EMAIL}", ssn=SSN) for i in range(30)]
    )
    person = Person(name="c")
    person.email = EMAIL.upper()
    person.save()
    Person.objects.filter(pk=person.pk).update(ssn=SSN)
    person.ssn = SSN
    Person.objects.bulk_update([person], ["ssn"])
    Person.objects.get_or_create(email=f"new.{EMAIL}", defaults={"name": "d", "ssn": SSN})
    Person.objects.update_or_create(email=f"new.{EMAIL}", defaults={"ssn": SSN})
    Note.objects.create(person=people[0], body=NOTE)
    Account.objects.create(username=USERNAME)
    AllTypes.objects.create(integer=NUMBER, big=NUMBER, char=SSN, data={"k": "canary-json-9c4d"}, text=NOTE)

    # reads: lookups through the blind index, values(), instances, reprs
    assert Person.objects.filter(email=EMAIL).count() == 2  # normalised: EMAIL and EMAIL.upper()
    assert Person.objects.filter(email__in=[EMAIL, f"1.{EMAIL}"]).count() == 3
    assert Person.objects.exclude(email=EMAIL).count() == 31
    assert list(Person.objects.filter(pk=people[0].pk).values_list("ssn", flat=True)) == [SSN]
    assert Person.objects.filter(pk=people[0].pk).values("email")[0]["email"] == EMAIL
    assert Account.objects.get(username=USERNAME).username == USERNAME
    loaded = Person.objects.get(pk=people[0].pk)
    sealed = loaded.__dict__["email"]
    leak.check_objects(sealed, loaded, Person.objects.all(), Person.objects.filter(email=EMAIL))
    assert loaded.email == EMAIL
    leak.check_objects(loaded, Person.objects.values("email", "ssn").query, Note.objects.all())
    return people


def _deliberate_failures(leak, people):
    """Mistakes and tampering: each error must name where, never what."""
    with leak.raises(FieldError):
        Person.objects.filter(email__icontains=EMAIL).count()
    with leak.raises(FieldError):
        Person.objects.filter(ssn=SSN).count()  # no blind index on ssn
    with leak.raises(Person.DoesNotExist):
        Person.objects.get(email=f"missing.{EMAIL}")
    with leak.raises(IntegrityError), transaction.atomic():
        Account.objects.create(username=USERNAME)  # unique blind index
    # an invalid value for an encrypted field: Django's message would quote it
    with leak.raises(ValidationError):
        AllTypes.objects.create(integer=INVALID)
    with leak.raises(ValidationError):
        AllTypes.objects.filter(uid=INVALID).count()
    with leak.raises(ValidationError):
        AllTypes(uid=INVALID).full_clean()
    with leak.raises(ValidationError):
        AllTypes.objects.update(day=INVALID)
    victim = people[1]
    good = raw(victim, "ssn")
    write_raw(victim, "ssn", good[:-1] + bytes([good[-1] ^ 1]))
    with leak.raises(DecryptionError):
        Person.objects.get(pk=victim.pk).ssn  # noqa: B018
    with leak.raises(DecryptionError):
        list(Person.objects.filter(pk=victim.pk).values_list("ssn", flat=True))
    return victim, good


def test_no_plaintext_anywhere_across_a_full_rotation(settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "CACHE_SECONDS": 0}  # retire without the grace wait
    with assert_no_leak(CANARIES) as leak:
        out, _, code = leak.call_command("rotatekeys", "--init")
        assert code == 0 and "created" in out
        people = _write_everything(leak)
        victim, good = _deliberate_failures(leak, people)

        _, _, code = leak.call_command("rotatekeys")
        assert code == 0
        keyring.invalidate()
        out, _, code = leak.call_command("reencrypt", "--dry-run")
        assert code == 0
        # the tampered value stops the run, naming where (and quarantines with --on-error quarantine)
        out, err, code = leak.call_command("reencrypt", "--batch-size", "7")
        assert code == 1 and f"pk={victim.pk}" in out + err
        out, err, code = leak.call_command("reencrypt", "--on-error", "quarantine", "--batch-size", "7")
        assert code == 1 and "quarantined" in out
        write_raw(victim, "ssn", good)  # repair from backup, then finish
        out, err, code = leak.call_command("reencrypt", "--batch-size", "7")  # progress lines on stderr
        assert code == 0, out + err
        assert "rows" in err or "row(s)" in out
        for args in ([], ["--json"]):
            _, _, code = leak.call_command("rotation_status", *args)
            assert code == 0
        out, _, code = leak.call_command("reencrypt", "--verify")
        assert code == 0 and "0 failure(s)" in out
        for purpose in ("encrypt", "index"):
            out, _, code = leak.call_command("rotatekeys", "--retire", "1", "--purpose", purpose)
            assert code == 0 and "retired" in out
        # reading a value under the retired version fails with a typed error, still no plaintext
        write_raw(victim, "ssn", good)
        with leak.raises(DecryptionError):
            Person.objects.get(pk=victim.pk).ssn  # noqa: B018
        leak.check_text(repr(engine.status()), "engine.status()")

    sql = [r for r in leak.records if r.name == "django.db.backends"]
    assert len(sql) > 50  # the SQL log really was on, parameters included
    assert {r.name for r in leak.records} >= {"django.db.backends", "keyrotation.engine.runner"}
    assert len(leak.exceptions) == 11


def test_the_check_fails_on_a_planted_leak(db):
    logger = logging.getLogger("myapp")
    with pytest.raises(LeakFound) as info, assert_no_leak(CANARIES) as leak:
        logger.debug("user %s signed in", EMAIL)
        leak.check_text(f"<td>{SSN}</td>", "admin page")
        with leak.raises(ValueError):
            raise ValueError(f"bad input {USERNAME!r}")
        leak.check_text(f"escaped: {EMAIL.encode()!r}", "bytes repr")
    text = str(info.value)
    for where in ("log record myapp:DEBUG", "admin page", "message of ValueError", "bytes repr"):
        assert where in text


def test_the_check_scans_the_audit_table(db):
    from keyrotation import audit

    with pytest.raises(LeakFound, match="KeyRotationAudit row"), assert_no_leak([USERNAME]):
        audit.record("test_action", actor=USERNAME)


def test_the_sql_log_is_captured_even_without_debug(db, settings):
    settings.DEBUG = False
    with pytest.raises(LeakFound, match="django.db.backends"), assert_no_leak([USERNAME]):
        Person.objects.filter(name=USERNAME).count()  # a plain column: its parameter is logged


# -- the redaction filter -------------------------------------------------------------------------


def _record(msg, args=(), exc_info=None, **extra):
    record = logging.LogRecord("app", logging.INFO, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def _formatted(record):
    assert RedactingFilter().filter(record) is True
    return logging.Formatter("%(message)s").format(record)


@pytest.mark.parametrize(
    "pii",
    [
        "jane.doe+tag@mail.example.co.uk",
        "123-45-6789",  # US SSN
        "185057800608436",  # French NIR
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "19850101-1234",  # not matched by the defaults (see the custom-pattern test)
    ][:5],
)
def test_redaction_filter_hides_pii_in_message_args_and_tracebacks(pii):
    assert pii not in _formatted(_record(f"got {pii} from form"))
    assert pii not in _formatted(_record("got %s from form", (pii,)))
    assert pii not in _formatted(_record("got %(v)s", ({"v": pii},)))
    assert pii not in _formatted(_record("params=%s", ([1, pii, None],)))
    try:
        raise ValueError(f"invalid value {pii}")
    except ValueError:
        import sys

        text = _formatted(_record("failed", exc_info=sys.exc_info()))
    assert pii not in text and "[REDACTED]" in text and "ValueError" in text
    query = f"SELECT '{pii}'"
    sql = _record("(%.3f) %s; args=%s", (0.001, query, (pii,)), sql=query, params=(pii,))
    text = _formatted(sql)
    assert pii not in text and pii not in sql.sql and pii not in repr(sql.params)


def test_redaction_keeps_what_is_not_pii():
    for msg in (
        "run #12: batch of people.Person failed (OperationalError); retry 1/8 in 0.5s",
        "2024-01-02 03:04:05 pk=12345678 took 0.123s",
        "key version=3 keyring='default'",
    ):
        assert _formatted(_record(msg)) == msg
    assert _formatted(_record("%d rows in %.1fs", (1234, 2.5))) == "1234 rows in 2.5s"


def test_redaction_patterns_come_from_settings(settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "REDACT_PATTERNS": [r"\b\d{8}-\d{4}\b"]}
    assert conf.redact_patterns() == (r"\b\d{8}-\d{4}\b",)
    assert _formatted(_record("personnummer 19850101-1234")) == "personnummer [REDACTED]"
    assert _formatted(_record("mail a@b.example")) == "mail a@b.example"  # defaults replaced
    settings.KEYROTATION = {**settings.KEYROTATION, "REDACT_PATTERNS": [*conf.DEFAULT_REDACT_PATTERNS, "x+"]}
    assert len(conf.redact_patterns()) == len(conf.DEFAULT_REDACT_PATTERNS) + 1


@pytest.mark.parametrize("bad", ["a+", ["("], [""], 3])
def test_redaction_patterns_are_validated(settings, bad):
    from keyrotation.exceptions import ConfigurationError

    settings.KEYROTATION = {**settings.KEYROTATION, "REDACT_PATTERNS": bad}
    with pytest.raises(ConfigurationError, match="REDACT_PATTERNS"):
        conf.redact_patterns()


def test_redaction_filter_in_a_logging_config_on_the_sql_log(db):
    """The documented LOGGING snippet: Django's SQL log at DEBUG, a plain column holding an SSN."""
    from logging.config import dictConfig

    stream = io.StringIO()
    logger = logging.getLogger("django.db.backends")
    saved = (logger.level, logger.handlers[:], logger.propagate)
    dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"redact": {"()": "keyrotation.redaction.RedactingFilter"}},
            "handlers": {"mem": {"class": "logging.StreamHandler", "stream": stream, "filters": ["redact"]}},
            "loggers": {"django.db.backends": {"handlers": ["mem"], "level": "DEBUG", "propagate": False}},
        }
    )
    forced = connection.force_debug_cursor
    connection.force_debug_cursor = True
    try:
        Person.objects.filter(name="123-45-6789").count()
        Person.objects.filter(name="jane@example.org").count()
    finally:
        connection.force_debug_cursor = forced
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
    text = stream.getvalue()
    assert "testapp_person" in text and "[REDACTED]" in text
    assert "123-45-6789" not in text and "jane@example.org" not in text
