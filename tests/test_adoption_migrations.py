"""docs/adoption.md followed to the letter, in a throwaway project, one per source.

Each test starts from a project whose ``shop.Customer.email`` is what a user has today (a plain
field, or a field of one of the four libraries), writes rows **through that field** (the library
itself encrypts them), then runs every step of the guide as a ``manage.py`` subprocess:
``encryptcolumn`` → paste the printed lines → ``makemigrations --check`` → ``sqlmigrate`` →
``rotatekeys --init`` → ``migrate`` → ``reencrypt`` → ``reencrypt --verify`` →
``encryptcolumn --finish`` → paste → ``migrate``. Between steps it reads the table with SQL: the
old column keeps every stored byte until the finishing migration, which refuses while a legacy
value remains. The libraries are only ever imported in those subprocesses.

On SQLite without ``DATABASE_URL``; with it, on a scratch PostgreSQL or MySQL/MariaDB database
(created and dropped here), so that ``make test`` and the MySQL phase run them all.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECRET_KEY = "adoption-e2e-secret-key"
FIELD_ENCRYPTION_KEY = "Xx5pG0o3a0nJ9yFqkZ8Q1lTnR3m7cW2vB4dE6hK8sUY="

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    source: str
    imports: str
    declaration: str  # shop.Customer.email as the user declares it today
    values: tuple[str, ...]


CASES = {
    c.source: c
    for c in (
        Case(
            "plaintext",
            "",
            "models.EmailField(max_length=254, unique=True)",
            ("ada@example.com", "zoë@example.org", "grace@example.net"),
        ),
        Case(
            "django-cryptography",
            "from django_cryptography.fields import encrypt",
            "encrypt(models.CharField(max_length=50))",
            ("Ada Lovelace", "Zoë ✓ ünïcode", ""),
        ),
        Case(
            "django-fernet-fields",
            "from fernet_fields import EncryptedEmailField",
            "EncryptedEmailField()",
            ("ada@example.com", "zoë@example.org", "grace@example.net"),
        ),
        Case(
            "django-encrypted-model-fields",
            "from encrypted_model_fields.fields import EncryptedCharField",
            "EncryptedCharField(max_length=100)",
            ("Ada Lovelace", "Zoë ✓ ünïcode", ""),
        ),
        Case(
            "django-fernet-encrypted-fields",
            "from encrypted_fields.fields import EncryptedCharField",
            "EncryptedCharField(max_length=100)",
            # "" would be stored as NULL by the library itself (see docs/adoption.md)
            ("Ada Lovelace", "Zoë ✓ ünïcode", "grace"),
        ),
    )
}

SETTINGS = """
import base64, os
SECRET_KEY = {secret!r}
USE_TZ = True
TIME_ZONE = "America/Chicago"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "keyrotation", "shop"]
DATABASES = {{"default": {database!r}}}
KEYROTATION = {{"KEK": {{"BACKEND": "local", "KEYS": [{master!r}]}}}}
FIELD_ENCRYPTION_KEY = {fek!r}
SALT_KEY = ["adoption-e2e-salt"]
"""

# On MySQL/MariaDB Django warns that keyrotation.DataKey's conditional unique constraint is not
# created; keyrotation's migration 0006 enforces it there instead (docs/installation.md).
MYSQL_SETTINGS = """
SILENCED_SYSTEM_CHECKS = ["models.W036"]
"""

MODELS = """from django.db import models
{imports}


class Customer(models.Model):
    email = {declaration}
    visits = models.IntegerField(default=0)
"""

SEED = """
from shop.models import Customer
for value in {values!r}:
    Customer.objects.create(email=value)
"""

READ = """
import json
from shop.models import Customer
print(json.dumps([c.email for c in Customer.objects.order_by("pk")]))
"""


class Project:
    """A throwaway project in ``root`` on ``database`` (Django settings), run through manage.py."""

    def __init__(self, root: Path, database: dict, case: Case) -> None:
        self.root, self.database, self.case = root, database, case
        (root / "shop" / "migrations").mkdir(parents=True)
        (root / "shop" / "__init__.py").write_text("")
        (root / "shop" / "migrations" / "__init__.py").write_text("")
        (root / "manage.py").write_text(
            "import sys\nfrom django.core.management import execute_from_command_line\n"
            "execute_from_command_line(sys.argv)\n"
        )
        master = base64.b64encode(os.urandom(32)).decode()
        (root / "project_settings.py").write_text(
            SETTINGS.format(secret=SECRET_KEY, database=database, master=master, fek=FIELD_ENCRYPTION_KEY)
            + (MYSQL_SETTINGS if vendor_of(database) == "mysql" else "")
        )
        self.models = root / "shop" / "models.py"
        self.models.write_text(MODELS.format(imports=case.imports, declaration=case.declaration))

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        drop = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONPATH")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(DJANGO_SETTINGS_MODULE="project_settings", PYTHONPATH=f"{self.root}{os.pathsep}{REPO}")
        proc = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if ok:
            assert proc.returncode == 0, f"manage.py {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def paste(self, edit: dict) -> None:
        """Replace the lines declaring ``edit["replace"]`` by ``edit["lines"]``, add the imports."""
        lines = self.models.read_text().splitlines()
        out, placed = [], False
        for line in lines:
            match = re.match(r"    (\w+) = ", line)
            if match and match.group(1) in edit["replace"]:
                if not placed:
                    out += [f"    {new}" for new in edit["lines"]]
                    placed = True
                continue
            out.append(line)
        assert placed, edit
        imports = [i for i in edit["imports"] if i not in out]
        last = max(i for i, line in enumerate(out) if line.startswith(("import ", "from ")))
        self.models.write_text("\n".join(out[: last + 1] + imports + out[last + 1 :]) + "\n")

    # -- the database, read directly (never through the project) ----------------------------------

    @property
    def vendor(self) -> str:
        return vendor_of(self.database)

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        if self.vendor == "sqlite":
            with sqlite3.connect(self.database["NAME"]) as conn:
                return conn.execute(query, params).fetchall()
        if self.vendor == "mysql":
            import MySQLdb

            conn = MySQLdb.connect(**mysql_params(self.database), autocommit=True)
            try:
                cursor = conn.cursor()
                cursor.execute(query.replace("?", "%s"), params)
                return list(cursor.fetchall()) if cursor.description else []
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(**pg_params(self.database), autocommit=True) as conn:
            cursor = conn.execute(query.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

    def columns(self) -> set[str]:
        if self.vendor == "sqlite":
            return {r[1] for r in self.sql("PRAGMA table_info(shop_customer)")}
        # MySQL's information_schema spans every database of the server: this one only.
        schema = " AND table_schema = DATABASE()" if self.vendor == "mysql" else ""
        query = "SELECT column_name FROM information_schema.columns WHERE table_name = 'shop_customer'"
        return {r[0] for r in self.sql(query + schema)}

    def column_type(self, column: str) -> str:
        """The declared type of ``column`` on MySQL (``varchar(254)``); "" elsewhere."""
        if self.vendor != "mysql":
            return ""
        query = (
            "SELECT column_type FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = 'shop_customer' AND column_name = ?"
        )
        ((kind,),) = self.sql(query, (column,))
        return kind.decode() if isinstance(kind, bytes) else kind

    def raw(self, column: str) -> list:
        rows = self.sql(f"SELECT {quote(self.vendor, column)} FROM shop_customer ORDER BY id")  # noqa: S608
        return [bytes(v) if isinstance(v, (bytes, memoryview)) else v for (v,) in rows]


def vendor_of(db: dict) -> str:
    """``sqlite``, ``postgresql`` or ``mysql``: the vendor of Django database settings."""
    return {"sqlite3": "sqlite", "postgresql": "postgresql", "mysql": "mysql"}[db["ENGINE"].rsplit(".", 1)[1]]


def quote(vendor: str, name: str) -> str:
    """A column name quoted the way the backend's SQL (and ``sqlmigrate``) quotes it."""
    return f"`{name}`" if vendor == "mysql" else f'"{name}"'


def pg_params(db: dict) -> dict:
    """psycopg connection arguments of Django database settings."""
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "dbname": db["NAME"]}
    return {**params, "password": db["PASSWORD"]} if db["PASSWORD"] else params


def mysql_params(db: dict, database: str | None = None) -> dict:
    """MySQLdb (mysqlclient) connection arguments of Django database settings; ``database``
    overrides the database name ("" for none)."""
    name = db["NAME"] if database is None else database
    params = {"host": db["HOST"], "port": int(db["PORT"]), "user": db["USER"], "charset": "utf8mb4"}
    params.update({"database": name} if name else {})
    return {**params, "password": db["PASSWORD"]} if db["PASSWORD"] else params


def _server_sql(settings: dict, statement: str) -> None:
    """Run one statement on the server of ``settings`` outside any database of the suite."""
    if vendor_of(settings) == "mysql":
        import MySQLdb

        conn = MySQLdb.connect(**mysql_params(settings, database=""), autocommit=True)
        try:
            conn.cursor().execute(statement)
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(**pg_params(settings), autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def database(tmp_path):
    """Django settings of a scratch database: a SQLite file, or a PostgreSQL or MySQL database
    created on the server of ``DATABASE_URL`` and dropped afterwards."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        yield {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db.sqlite3")}
        return
    from tests import servers

    settings = servers.database_settings(url)
    name = f"{os.environ.get('KEYROTATION_TEST_PG_NAME', 'test_keyrotation')}_adopt_{uuid.uuid4().hex[:8]}"
    mysql = vendor_of(settings) == "mysql"
    ident = f"`{name}`" if mysql else f'"{name}"'
    _server_sql(settings, f"CREATE DATABASE {ident}" + (" CHARACTER SET utf8mb4" if mysql else ""))
    keys = ("ENGINE", "HOST", "PORT", "USER", "PASSWORD", "OPTIONS")
    try:
        yield {**{k: settings[k] for k in keys if k in settings}, "NAME": name}
    finally:
        _server_sql(settings, f"DROP DATABASE IF EXISTS {ident}" + ("" if mysql else " WITH (FORCE)"))


def assert_keeps_legacy_column(sql: str, column: str, vendor: str, column_type: str = "") -> None:
    """The SQL of a starting migration: columns added, NOT NULL / unique / indexes dropped, and the
    old column never renamed, retyped or dropped. On MySQL, dropping NOT NULL restates the
    column's type (``MODIFY `email` varchar(254) NULL``): it must be ``column_type``, unchanged."""
    q = quote(vendor, column)
    for line in sql.splitlines():
        upper = line.upper()
        modify = re.search(rf"MODIFY {re.escape(q)} (.+) NULL;$", line)
        if vendor == "mysql" and modify and modify.group(1).lower() != column_type.lower():
            pytest.fail(f"retypes the legacy column ({column_type}): {line}")
        if vendor == "mysql" and f"MODIFY {q}" in line and not modify:
            pytest.fail(f"changes the legacy column: {line}")
        if q in line and ("ALTER COLUMN" in upper and " TYPE " in upper):
            pytest.fail(f"retypes the legacy column: {line}")
        if re.search(rf"DROP COLUMN {re.escape(q)}", line) or re.search(
            rf"RENAME COLUMN {re.escape(q)}", line
        ):
            pytest.fail(f"drops or renames the legacy column: {line}")
        if "USING" in upper:
            pytest.fail(f"converts a column: {line}")
    if "new__shop_customer" in sql:  # SQLite rebuilds the table to drop NOT NULL: the column is copied
        insert = next(
            line for line in sql.splitlines() if line.startswith('INSERT INTO "new__shop_customer"')
        )
        into, select = insert.split(" SELECT ", 1)
        assert q in into and q in select.split(" FROM ")[0], insert


@pytest.mark.parametrize("source", list(CASES))
def test_adoption_by_the_guide(tmp_path, database, source):
    case = CASES[source]
    project = Project(tmp_path / "project", database, case)
    project.run("makemigrations", "shop")
    project.run("migrate", "-v", "0")
    project.run("shell", "-c", SEED.format(values=case.values))
    stored = project.raw("email")
    assert len(stored) == 3 and None not in stored
    if source != "plaintext":
        assert all(
            v.encode() not in (s if isinstance(s, bytes) else s.encode())
            for v, s in zip(case.values, stored, strict=True)
            if v
        )

    # 1. encryptcolumn writes the starting migration and prints the model code
    out = json.loads(
        project.run(
            "encryptcolumn", "shop.Customer.email", "--from", source, "--blind-index", "--json"
        ).stdout
    )
    assert out["migration"] == "0002_adopt_customer_email" and out["written"]
    project.paste(out["model_edit"])
    project.run("makemigrations", "--check", "--dry-run", "shop")
    start_sql = project.run("sqlmigrate", "shop", "0002").stdout
    assert_keeps_legacy_column(start_sql, "email", project.vendor, project.column_type("email"))
    assert "email_enc" in start_sql and "email_bidx" in start_sql
    project.run("rotatekeys", "--init")  # a new keyring: migrate's checks want an active key
    project.run("migrate", "-v", "0")
    assert project.raw("email") == stored  # every stored byte where it was
    assert {"email", "email_enc", "email_key_version", "email_bidx"} <= project.columns()

    # 2. adoption, verification
    project.run("reencrypt", "--model", "shop.Customer")
    project.run("reencrypt", "--model", "shop.Customer", "--verify")
    assert project.raw("email") == [None, None, None]

    # 3. the finishing migration: refused while a legacy value remains
    out = json.loads(project.run("encryptcolumn", "shop.Customer.email", "--finish", "--json").stdout)
    assert out["migration"] == "0003_finish_adopting_customer_email"
    if source == "plaintext":
        # A process still on the old code writes the legacy column (a rolling deploy).
        (first,) = project.sql("SELECT MIN(id) FROM shop_customer")[0]
        project.sql("UPDATE shop_customer SET email = ? WHERE id = ?", (stored[0], first))
        refused = project.run("migrate", "-v", "0", ok=False)
        assert refused.returncode == 1
        message = refused.stderr.strip().splitlines()
        assert message == [
            "AdoptionIncomplete: shop.Customer.email: 1 row(s) still hold a legacy value in email_legacy; "
            "run `manage.py reencrypt --model shop.Customer` and `--verify` first (nothing was dropped)"
        ], refused.stderr
        assert "email" in project.columns()
        project.run("reencrypt", "--model", "shop.Customer")
    finish_sql = project.run("sqlmigrate", "shop", "0003").stdout
    assert f"DROP COLUMN {quote(project.vendor, 'email')}" in finish_sql or "new__shop_customer" in finish_sql
    project.paste(out["model_edit"])
    project.run("makemigrations", "--check", "--dry-run", "shop")
    project.run("migrate", "-v", "0")
    assert "email" not in project.columns() and "email_enc" in project.columns()
    assert json.loads(project.run("shell", "-v", "0", "-c", READ).stdout) == list(case.values)
    assert "adopt_from" not in project.models.read_text() and "email_legacy" not in project.models.read_text()


WRONG_EDITS = {
    # the field turned into an EncryptedField where it stands
    "in-place": [
        "email = EncryptedField(models.EmailField(max_length=254), null=True)",
    ],
    # the field renamed by hand beside a new EncryptedField (what makemigrations cannot follow)
    "renamed-by-hand": [
        "email_legacy = models.EmailField(max_length=254, null=True, db_column='email')",
        "email = EncryptedField(models.EmailField(max_length=254), null=True, db_column='email_enc', "
        "adopt_from='email_legacy')",
    ],
}


@pytest.mark.parametrize("edit", list(WRONG_EDITS))
def test_the_wrong_path_is_refused_by_migrate(tmp_path, database, edit):
    """Editing models.py by hand and running makemigrations gives an AlterField of the plain field
    into an EncryptedField, which would destroy the values: migrate refuses it in one line, before
    any SQL, and every value stays where it was."""
    case = CASES["plaintext"]
    project = Project(tmp_path / "project", database, case)
    project.run("makemigrations", "shop")
    project.run("migrate", "-v", "0")
    project.run("shell", "-c", SEED.format(values=case.values))
    stored = project.raw("email")
    project.paste(
        {
            "replace": ["email"],
            "lines": WRONG_EDITS[edit],
            "imports": ["from keyrotation.fields import EncryptedField"],
        }
    )
    project.run("makemigrations", "shop", "--noinput")
    (written,) = (project.root / "shop" / "migrations").glob("0002_*.py")
    assert "migrations.AlterField(" in written.read_text()
    project.run("rotatekeys", "--init")
    refused = project.run("migrate", "-v", "0", ok=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"UnsafeMigration: shop.{written.stem}: shop.Customer.email holds 3 value(s) and the "
        "migration alters it into an EncryptedField in place, which would destroy them; delete this "
        "migration and write the adoption with `manage.py encryptcolumn shop.Customer.email --from ...` "
        "(see docs/adoption.md)"
    ], refused.stderr
    assert project.raw("email") == stored
    assert "email_enc" not in project.columns()
