"""``keyrotation.background``: the TASK_BACKEND setting, its checks, and the dispatch of
``start_reencryption`` to Celery (a real Redis broker) or Django's tasks (the database backend)."""

import base64
import json
import re
import sys

import pytest
from django.db import connection

from keyrotation import background, conf
from keyrotation.checks import check_settings
from keyrotation.exceptions import ConfigurationError, KeyRotationError

# Jobs per run: SQLite cannot share a run between jobs (no SKIP LOCKED), the servers can.
JOBS = 1 if connection.vendor == "sqlite" else 3


def task_backend(settings, value) -> None:
    settings.KEYROTATION = {**settings.KEYROTATION, "TASK_BACKEND": value}


def hide(monkeypatch, *modules: str) -> None:
    """Make ``modules`` look not installed (``find_spec`` and ``import`` both see None)."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_no_backend_by_default():
    assert conf.task_backend() is None and background.backend_name() is None
    assert background.missing_package() is None
    with pytest.raises(
        ConfigurationError, match=r'set KEYROTATION\["TASK_BACKEND"\] to "celery" or "django"'
    ):
        background.start_reencryption(workers=2)


@pytest.mark.parametrize("value", ["celery", "django", None])
def test_each_backend_name_is_accepted(settings, value):
    task_backend(settings, value)
    assert background.backend_name() == value
    assert check_settings() == []


@pytest.mark.parametrize("value", ["Celery", "rq", "", 1, True])
def test_another_value_is_refused_by_the_setting_and_the_check(settings, value):
    task_backend(settings, value)
    with pytest.raises(ConfigurationError, match=r'must be None, "celery" or "django"'):
        background.backend_name()
    [message] = check_settings()
    assert message.id == "keyrotation.E001" and "TASK_BACKEND" in message.msg


@pytest.mark.parametrize(
    ("value", "modules", "install"),
    [
        ("celery", ["celery"], "django-keyrotation[celery]"),
        ("django", ["django.tasks", "django_tasks"], "django-keyrotation[tasks]"),
    ],
)
def test_a_backend_that_is_not_installed_fails_the_check_and_the_start(
    settings, monkeypatch, value, modules, install
):
    task_backend(settings, value)
    hide(monkeypatch, *modules)
    assert install in background.missing_package()
    [message] = check_settings()
    assert message.id == "keyrotation.E007" and install in message.hint
    with pytest.raises(ConfigurationError, match=rf"is {value!r}: install .*{re.escape(install)}"):
        background.start_reencryption(workers=1)


@pytest.mark.django_db
def test_several_jobs_on_a_database_that_cannot_share_a_run_are_refused_and_nothing_is_queued(settings):
    from django_tasks_db.models import DBTaskResult

    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL and MySQL/MariaDB let jobs share a run (SKIP LOCKED)")
    task_backend(settings, "django")
    with pytest.raises(KeyRotationError, match="3 jobs cannot share a run on database 'default'"):
        background.start_reencryption(3, ["testapp.Person"])
    assert not DBTaskResult.objects.exists()


@pytest.mark.django_db
def test_django_dispatch_enqueues_n_database_tasks(settings):
    from django_tasks_db.models import DBTaskResult

    n = JOBS
    task_backend(settings, "django")
    started = background.start_reencryption(n, ["testapp.Person"], batch_size=100, actor="admin:ann")
    assert started.backend == "django" and len(started.task_ids) == n
    rows = DBTaskResult.objects.filter(id__in=started.task_ids)
    assert {row.task_path for row in rows} == {"keyrotation.tasks.reencrypt"}
    assert {row.status for row in rows} == {"READY"}
    assert [row.args_kwargs for row in rows] == n * [
        {
            "args": [],
            "kwargs": {
                "models": ["testapp.Person"],
                "database": None,
                "fleet": n,
                "batch_size": 100,
                "rate": None,
                "target_batch_ms": None,
                "max_duration": None,
                "on_error": "stop",
                "actor": "admin:ann",
            },
        }
    ]


@pytest.mark.django_db
def test_a_bad_argument_enqueues_nothing(settings):
    from django_tasks_db.models import DBTaskResult

    task_backend(settings, "django")
    with pytest.raises(TypeError, match="rate must be a number of rows per second"):
        background.start_reencryption(2, rate="fast")
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        background.start_reencryption(0)
    assert not DBTaskResult.objects.exists()


@pytest.mark.celery
@pytest.mark.django_db
def test_celery_dispatch_sends_n_messages(settings, redis_url):
    import redis

    from tests.celery_app import app  # binds the shared tasks to the test broker

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        task_backend(settings, "celery")
        started = background.start_reencryption(JOBS, ["testapp.Person"], rate=100.0)
        assert started.backend == "celery" and len(started.task_ids) == JOBS
        messages = [json.loads(m) for m in client.lrange("celery", 0, -1)]
        assert sorted(m["headers"]["id"] for m in messages) == sorted(started.task_ids)
        assert {m["headers"]["task"] for m in messages} == {"keyrotation.reencrypt"}
        bodies = [json.loads(base64.b64decode(m["body"])) for m in messages]
        assert {(b[1]["fleet"], b[1]["rate"], tuple(b[1]["models"])) for b in bodies} == {
            (JOBS, 100.0, ("testapp.Person",))
        }
        assert app.main == "keyrotation_tests"
    finally:
        client.flushdb()
        client.close()


def test_keyrotation_tasks_imports_without_the_framework_and_says_what_to_install(monkeypatch):
    import importlib

    from django.core.exceptions import ImproperlyConfigured

    importlib.import_module("keyrotation.tasks")  # the real one, put back after the test
    hide(monkeypatch, "django.tasks", "django_tasks")
    monkeypatch.delitem(sys.modules, "keyrotation.tasks")
    bare = importlib.import_module("keyrotation.tasks")
    assert not bare.available()
    for use in (
        lambda: bare.reencrypt.enqueue(),
        lambda: bare.rotate_if_due.using(queue_name="q"),
        lambda: bare.start_reencryption(workers=2),
    ):
        with pytest.raises(
            ImproperlyConfigured, match=r"Django 6\.0 or later, or on Django 5\.2 the django-tasks"
        ):
            use()
    assert repr(bare.reencrypt) == "<unavailable task keyrotation.tasks.reencrypt>"
