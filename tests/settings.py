"""Settings for the test suite.

The database is chosen by the environment:

* ``DATABASE_URL=postgres://user:pass@host:port/name`` runs on that PostgreSQL (``make test``
  starts a throwaway cluster and sets it), and ``DATABASE_URL=mysql://user:pass@host:port/name``
  on that MySQL/MariaDB (``scripts/runtests.py --only mysql`` starts a throwaway MariaDB). Both
  have two more aliases for the multi-database tests: ``other`` (a second database on that
  server) and ``replica`` (a second connection to the default database). The router
  :class:`tests.routers.DefaultOnly` keeps every model on ``default``; ``tests/test_multidb.py``
  installs others. ``KEYROTATION_TEST_PG_NAME`` (either server) names the test database;
* otherwise SQLite in memory.
"""

import base64
import json
import os
import sys
from pathlib import Path

from tests import servers

SECRET_KEY = "tests-not-secret"  # noqa: S105
DEBUG = False
USE_TZ = True
TIME_ZONE = "America/Chicago"  # a non-UTC zone on purpose: catches naive/aware slips
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


if os.environ.get("DATABASE_URL"):
    _default = servers.database_settings(os.environ["DATABASE_URL"])
    _test_name = os.environ.get("KEYROTATION_TEST_PG_NAME", "test_keyrotation")
    # MySQL/MariaDB: test databases in four-byte UTF-8 whatever the server's default (latin1 on
    # MariaDB before 11.6).
    _charset = (
        {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
        if _default["ENGINE"] == "django.db.backends.mysql"
        else {}
    )
    DATABASES = {
        "default": {**_default, "TEST": {"NAME": _test_name, **_charset}},
        # A second database on the same server (tests/test_multidb.py). Its name follows the
        # default's, so a subprocess handed the test database's URL finds the test "other" too.
        "other": {
            **_default,
            "NAME": f"{_default['NAME']}_other",
            "TEST": {"NAME": f"{_test_name}_other", **_charset},
        },
        # A second connection to the default database, as a read replica would be.
        "replica": {**_default, "TEST": {"MIRROR": "default"}},
    }
    # Nothing lives on "other" or "replica" unless a test installs a router that says so.
    DATABASE_ROUTERS = ["tests.routers.DefaultOnly"]
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("KEYROTATION_TEST_SQLITE", ":memory:"),
            "TEST": {"NAME": os.environ.get("KEYROTATION_TEST_SQLITE") or None},
        }
    }

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "keyrotation",
    "tests.testapp",
    "tests.legacyapp",
    "tests.migrapp",
    "tests.peerapp",
    # The example project's app, so that the browser tests show a real rotation of its models.
    "people",
]
# ``people`` is imported from the example project (the same code ``manage.py`` there runs).
_EXAMPLE = str(Path(__file__).resolve().parent.parent / "example_project")
if _EXAMPLE not in sys.path:
    sys.path.append(_EXAMPLE)

# Django's tasks framework (tests/test_tasks.py): the database backend of django-tasks-db, whose
# db_worker processes run the tasks. On Django 5.2 the framework is the django-tasks package.
try:
    import django_tasks_db  # noqa: F401
except ImportError:  # pragma: no cover - the test extra installs it
    pass
else:
    import django

    INSTALLED_APPS += [*(["django_tasks"] if django.VERSION < (6, 0) else []), "django_tasks_db"]
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    # On MySQL/MariaDB its tables are made from the models, not by its migrations: migration 0019
    # inspects its table without asking the router, which fails on an alias the router keeps empty.
    if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
        MIGRATION_MODULES = {"django_tasks_database": None}

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

STATIC_URL = "/static/"

# A fixed test master key (never use a key from a repository in production).
TEST_MASTER_KEY = base64.b64encode(b"\x11" * 32).decode()
KEYROTATION = {
    "KEK": {"BACKEND": "local", "KEYS": [TEST_MASTER_KEY]},
    "CACHE_SECONDS": float(os.environ.get("KEYROTATION_TEST_CACHE_SECONDS", "60")),
}
# ... and given a rotation policy, as JSON (tests of the rotate-when-due tasks).
if os.environ.get("KEYROTATION_TEST_ROTATION_PERIOD"):
    KEYROTATION["ROTATION_PERIOD"] = json.loads(os.environ["KEYROTATION_TEST_ROTATION_PERIOD"])
# A subprocess started by a test may be pointed at another KEK (e.g. an OpenBao), as JSON.
if os.environ.get("KEYROTATION_TEST_KEK"):
    KEYROTATION["KEK"] = json.loads(os.environ["KEYROTATION_TEST_KEK"])
