"""Write rows with the REAL legacy libraries and dump what they stored, for the adoption tests.

    .venv/bin/pip install -e ".[legacy]"
    .venv/bin/python tests/legacy/make_vectors.py                       # SQLite vectors
    DATABASE_URL=postgres://user@host:port/db .venv/bin/python tests/legacy/make_vectors.py  # + PostgreSQL
    DATABASE_URL=mysql://user:pass@host:port/db .venv/bin/python tests/legacy/make_vectors.py  # + MySQL

For each library it creates a table whose columns are that library's encrypted fields, saves the
rows below through the ORM (so the library itself encrypts), reads the raw column values back
with SQL, and writes ``tests/legacy/vectors/<library>-<backend>.json``: the keys used, and per row
the original Python values and the stored values. The adoption tests load the stored values into
legacy columns and check that keyrotation adopts them back to the originals; this script never
imports keyrotation.

The libraries are not imported by the test suite: they configure themselves from settings at
import time (django-encrypted-model-fields builds its crypter when imported) and two of them need
forks to import on Django 5, so they stay out of the test process.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import django
from django.conf import settings

HERE = Path(__file__).resolve().parent
SECRET_KEY = "legacy-vectors-secret-key"  # noqa: S105 - test vectors only
FIELD_ENCRYPTION_KEY = "Xx5pG0o3a0nJ9yFqkZ8Q1lTnR3m7cW2vB4dE6hK8sUY="  # lanshark: a raw Fernet key
SALT_KEY = ["legacy-vectors-salt"]  # jazzband

UTC = dt.timezone.utc
ROWS = [
    {
        "name": "Ada Lovelace",
        "number": 42,
        "moment": dt.datetime(2024, 1, 2, 3, 4, 5, 123, tzinfo=UTC),
        "day": dt.date(2024, 5, 6),
        "flag": True,
    },
    {
        "name": "",
        "number": 0,
        "moment": dt.datetime(2024, 7, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "day": dt.date(1999, 12, 31),
        "flag": False,
    },
    {
        "name": "Zoë ✓ ünïcode",
        "number": -7,
        "moment": dt.datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC),
        "day": dt.date(2000, 2, 29),
        "flag": True,
    },
    {"name": None, "number": None, "moment": None, "day": None, "flag": None},
]


def configure() -> str:
    url = os.environ.get("DATABASE_URL")
    if url and urlparse(url).scheme in ("mysql", "mariadb"):
        p = urlparse(url)
        db = {
            "ENGINE": "django.db.backends.mysql",
            "NAME": p.path.lstrip("/"),
            "USER": unquote(p.username or ""),
            "PASSWORD": unquote(p.password or ""),
            "HOST": p.hostname or "127.0.0.1",
            "PORT": str(p.port or 3306),
            "OPTIONS": {"charset": "utf8mb4"},
        }
    elif url:
        p = urlparse(url)
        db = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": p.path.lstrip("/") or "postgres",
            "USER": unquote(p.username or ""),
            "PASSWORD": unquote(p.password or ""),
            "HOST": p.hostname or "127.0.0.1",
            "PORT": str(p.port or 5432),
        }
    else:
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    settings.configure(
        SECRET_KEY=SECRET_KEY,
        USE_TZ=True,
        TIME_ZONE="America/Chicago",
        DATABASES={"default": db},
        INSTALLED_APPS=["django.contrib.contenttypes"],
        FIELD_ENCRYPTION_KEY=FIELD_ENCRYPTION_KEY,
        SALT_KEY=SALT_KEY,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
    from django.db import connection

    return connection.vendor


def models_for(vendor: str) -> dict:
    from django.db import models
    from django_cryptography.fields import encrypt
    from encrypted_fields import fields as jazzband
    from encrypted_model_fields import fields as lanshark
    from fernet_fields import fields as fernet

    def make(name, attrs):
        attrs = {k: v for k, v in attrs.items() if v is not None}
        attrs.update(__module__=__name__, Meta=type("Meta", (), {"app_label": "vectors"}))
        return type(name, (models.Model,), attrs)

    # psycopg 3 crashes these libraries' integer fields (KeyError in adapt_integerfield_value):
    # no PostgreSQL vectors for them.
    pg = vendor == "postgresql"
    return {
        "django-cryptography": make(
            "Crypto",
            {
                "name": encrypt(models.CharField(max_length=100, null=True)),
                "number": encrypt(models.IntegerField(null=True)),
                "moment": encrypt(models.DateTimeField(null=True)),
                "day": encrypt(models.DateField(null=True)),
                "flag": encrypt(models.BooleanField(null=True)),
            },
        ),
        "django-fernet-fields": make(
            "Fernet",
            {
                "name": fernet.EncryptedCharField(max_length=100, null=True),
                "number": None if pg else fernet.EncryptedIntegerField(null=True),
                "moment": fernet.EncryptedDateTimeField(null=True),
                "day": fernet.EncryptedDateField(null=True),
            },
        ),
        "django-encrypted-model-fields": make(
            "Lanshark",
            {
                "name": lanshark.EncryptedCharField(max_length=100, null=True),
                "number": None if pg else lanshark.EncryptedIntegerField(null=True),
                "moment": lanshark.EncryptedDateTimeField(null=True),
                "day": lanshark.EncryptedDateField(null=True),
                "flag": lanshark.EncryptedBooleanField(null=True),
            },
        ),
        "django-fernet-encrypted-fields": make(
            "Jazzband",
            {
                "name": jazzband.EncryptedCharField(max_length=100, null=True),
                "number": jazzband.EncryptedIntegerField(null=True),
                "moment": jazzband.EncryptedDateTimeField(null=True),
                "day": jazzband.EncryptedDateField(null=True),
                "flag": jazzband.EncryptedBooleanField(null=True),
            },
        ),
    }


def tag(value):
    """JSON form of an original Python value (type-tagged)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    return value


def stored(value):
    """JSON form of a raw column value (bytes as base64, text as is)."""
    if value is None:
        return None
    if isinstance(value, (bytes, memoryview)):
        return {"b64": base64.b64encode(bytes(value)).decode()}
    return {"text": value}


def main() -> int:
    vendor = configure()
    from importlib.metadata import version

    from django.db import connection

    dists = {
        "django-cryptography": "django-cryptography-django5",
        "django-fernet-fields": "django-fernet-fields-v2",
        "django-encrypted-model-fields": "django-encrypted-model-fields",
        "django-fernet-encrypted-fields": "django-fernet-encrypted-fields",
    }
    for library, model in models_for(vendor).items():
        with connection.schema_editor() as editor:
            editor.create_model(model)
        try:
            columns = [f.name for f in model._meta.concrete_fields if f.name != "id"]
            for row in ROWS:
                model.objects.create(**{c: row[c] for c in columns})
            with connection.cursor() as cur:
                cur.execute(f"SELECT {', '.join(columns)} FROM {model._meta.db_table} ORDER BY id")
                raw = cur.fetchall()
            # The library's own reading, for the record (peers' bugs show up here).
            read_back = [
                {
                    c: tag(getattr(obj, c)) if not isinstance(getattr(obj, c), str) else getattr(obj, c)
                    for c in columns
                }
                for obj in model.objects.order_by("id")
            ]
        finally:
            with connection.schema_editor() as editor:
                editor.delete_model(model)
        out = {
            "library": library,
            "distribution": f"{dists[library]}=={version(dists[library])}",
            "django": django.get_version(),
            "backend": vendor,
            "keys": {
                "SECRET_KEY": SECRET_KEY,
                "FIELD_ENCRYPTION_KEY": FIELD_ENCRYPTION_KEY,
                "SALT_KEY": SALT_KEY,
            },
            "columns": columns,
            "rows": [
                {
                    "original": {c: tag(row[c]) for c in columns},
                    "stored": {c: stored(v) for c, v in zip(columns, values, strict=True)},
                    "library_read_back": back,
                }
                for row, values, back in zip(ROWS, raw, read_back, strict=True)
            ],
        }
        path = HERE / "vectors" / f"{library}-{vendor}.json"
        path.write_text(json.dumps(out, indent=1, ensure_ascii=False, default=str) + "\n")
        print(f"wrote {path.relative_to(HERE.parent.parent)} ({len(ROWS)} rows, columns {columns})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
