"""Key fixtures shared by the suite (loaded from conftest.py)."""

import base64
import os

import pytest
from django.db import connections

from keyrotation import engine, keyring, lifecycle


@pytest.fixture(autouse=True)
def _fresh_keyring_cache():
    """Every test starts and ends with an empty in-process key cache."""
    keyring.clear_cache()
    yield
    keyring.clear_cache()


@pytest.fixture
def keys(db):
    """An initialised default keyring (v1 active for both purposes)."""
    return lifecycle.init("default", actor="test")


@pytest.fixture
def master_key():
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def person_table_on_other():
    """``testapp_person`` on the ``other`` database of a server run (the suite's router keeps it
    empty); for tests that put rows on two databases."""
    from tests.testapp.models import Person

    with connections["other"].schema_editor() as editor:
        editor.create_model(Person)
    yield
    with connections["other"].schema_editor() as editor:
        editor.delete_model(Person)


@pytest.fixture
def caught(monkeypatch) -> list[BaseException]:
    """What escapes ``engine.work`` during the test (``engine.reencrypt`` catches a failed run
    into its report): the exception an error report would show."""
    errors: list[BaseException] = []
    real_work = engine.work

    def spy(*args, **kwargs):
        try:
            return real_work(*args, **kwargs)
        except BaseException as exc:
            errors.append(exc)
            raise

    monkeypatch.setattr(engine, "work", spy)
    return errors
