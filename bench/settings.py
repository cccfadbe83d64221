"""Settings of the benchmark project (``bench/run.py`` sets the environment it reads).

* ``BENCH_DATABASE_URL``: ``postgres://user@host:port/name`` or ``mysql://user:pass@host:port/name``
  (the throwaway server ``run.py`` starts);
* ``BENCH_VAULT_ADDR`` / ``BENCH_VAULT_TOKEN``: the KEK is the OpenBao Transit key when set,
  else a fixed local master key (never use a key from a repository in production).
"""

import base64
import os

from tests.servers import database_settings

SECRET_KEY = "bench-not-secret"  # noqa: S105
DEBUG = False  # DEBUG=True would keep every query in memory (and distort RSS)
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "keyrotation", "bench.benchapp"]

DATABASES = {
    "default": database_settings(
        os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    )
}

if os.environ.get("BENCH_VAULT_ADDR"):
    _KEK = {
        "BACKEND": "vault",
        "URL": os.environ["BENCH_VAULT_ADDR"],
        "TOKEN": os.environ["BENCH_VAULT_TOKEN"],
        "KEY_NAME": "keyrotation-bench",
    }
else:
    _KEK = {"BACKEND": "local", "KEYS": [base64.b64encode(b"\x42" * 32).decode()]}

KEYROTATION = {"KEK": _KEK}
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
