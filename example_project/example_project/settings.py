"""Settings for the example project: SQLite and a local master key, nothing else to install.

The master key comes from the environment (``make demo`` generates one into
``example_project/.master_key`` and exports it). Previous master keys, still needed to unwrap data
keys wrapped before a master-key rotation, go in ``KEYROTATION_PREVIOUS_MASTER_KEYS``
(comma-separated, newest first).
"""

import os
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# A demo key for a demo site; a real project reads its SECRET_KEY from a secret store.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "keyrotation",
    "people",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"

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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

_GENERATE = 'python -c "import base64,os;print(base64.b64encode(os.urandom(32)).decode())"'

try:
    _master_key = os.environ["KEYROTATION_MASTER_KEY"]
except KeyError:
    raise ImproperlyConfigured(
        "KEYROTATION_MASTER_KEY is not set. Generate a master key with\n"
        f"    {_GENERATE}\n"
        "and export it: export KEYROTATION_MASTER_KEY=<that key>. "
        "(`make demo` does this for you and keeps the key in example_project/.master_key.)"
    ) from None

_previous = [
    key.strip()
    for key in os.environ.get("KEYROTATION_PREVIOUS_MASTER_KEYS", "").split(",")
    if key.strip()
]

KEYROTATION = {
    "KEK": {"BACKEND": "local", "KEYS": [_master_key, *_previous]},
    # How long a process trusts its cached keyring; the demo shortens it so that the old key can
    # be retired right after re-encryption (production: keep the default 60 s, or more).
    "CACHE_SECONDS": float(os.environ.get("KEYROTATION_CACHE_SECONDS", "60")),
    # How long a retired key waits before it may be destroyed (default one day); the emergency
    # runbook's rehearsal sets it to 0 so as not to wait.
    "DESTROY_GRACE_SECONDS": float(os.environ.get("KEYROTATION_DESTROY_GRACE_SECONDS", "86400")),
    # The cryptoperiod of data keys: `rotatekeys --if-due` (run daily) makes a new encrypt key
    # every 365 days; index keys rotate only by hand (docs/policy.md). The rehearsal in
    # docs/policy.md sets KEYROTATION_ROTATION_PERIOD_SECONDS so as not to wait a year.
    "ROTATION_PERIOD": (
        timedelta(seconds=float(os.environ["KEYROTATION_ROTATION_PERIOD_SECONDS"]))
        if os.environ.get("KEYROTATION_ROTATION_PERIOD_SECONDS")
        else {"default": {"encrypt": "365d", "index": None}}
    ),
}
