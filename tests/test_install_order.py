"""The documented order (``makemigrations``, ``migrate``, ``rotatekeys --init``) works as written.

A throwaway project in a temporary directory, driven by ``manage.py`` in subprocesses exactly as
an operator would: once on a fresh database (keyrotation and the first encrypted field arrive
together), once on a project that has run keyrotation's migrations already and adds its first
encrypted field later. The commands are the ones in ``docs/quickstart.md``, read from the page.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "docs" / "quickstart.md"

pytestmark = pytest.mark.slow

SETTINGS = """
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "throwaway-not-secret"
DEBUG = True
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    {apps}
]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
KEYROTATION = {{"KEK": {{"BACKEND": "local", "KEYS": [os.environ["KEYROTATION_MASTER_KEY"]]}}}}
"""

MANAGE = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""

PLAIN_MODEL = """
from django.db import models


class Person(models.Model):
    name = models.CharField(max_length=100)
"""

# The quickstart's model, nullable so that it can be added to a table that has rows.
ENCRYPTED_MODEL = """
from django.db import models
from keyrotation.fields import BlindIndexField, EncryptedField


class Person(models.Model):
    name = models.CharField(max_length=100)
    email = EncryptedField(models.EmailField(), null=True)
    email_bidx = BlindIndexField(source="email")
"""

NOT_NULL_MODEL = ENCRYPTED_MODEL.replace(
    "EncryptedField(models.EmailField(), null=True)",
    "EncryptedField(models.EmailField(), default='nobody@example.com')",
)

USE_IT = (
    "from people.models import Person; "
    "Person.objects.create(name='Ada', email='ada@example.com'); "
    "print(Person.objects.get(email='Ada@Example.com ').name)"
)


def documented_steps() -> list[list[str]]:
    """The ``python manage.py ...`` lines of the quickstart's "Migrate and create the keys"."""
    text = QUICKSTART.read_text()
    section = text.split("## 4. Migrate and create the keys", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    steps = [
        shlex.split(line, comments=True)[2:]
        for line in block.splitlines()
        if line.startswith("python manage.py ")
    ]
    assert steps, "no manage.py command in the quickstart's step 4"
    return steps


class Project:
    def __init__(self, root: Path, apps: list[str]):
        self.root = root
        (root / "proj").mkdir()
        (root / "proj" / "__init__.py").write_text("")
        self.settings(apps)
        (root / "manage.py").write_text(MANAGE)
        (root / "people" / "migrations").mkdir(parents=True)
        (root / "people" / "__init__.py").write_text("")
        (root / "people" / "migrations" / "__init__.py").write_text("")
        clean = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
        self.env = {
            **clean,
            "PYTHONPATH": str(ROOT),
            "KEYROTATION_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        }

    def model(self, source: str) -> None:
        (self.root / "people" / "models.py").write_text(source)

    def settings(self, apps: list[str]) -> None:
        listed = "".join(f'"{a}", ' for a in apps)
        (self.root / "proj" / "settings.py").write_text(SETTINGS.format(apps=listed))

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        command = " ".join(args)
        assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
        assert "Traceback" not in proc.stderr
        return proc

    def follow_the_docs(self) -> list[subprocess.CompletedProcess]:
        return [self.manage(*step) for step in documented_steps()]


def test_the_quickstart_order_works_on_a_fresh_project(tmp_path):
    project = Project(tmp_path, ["keyrotation", "people"])
    project.model(ENCRYPTED_MODEL)
    project.follow_the_docs()
    project.manage("check", "--database", "default")
    assert project.manage("shell", "-c", USE_IT).stdout.splitlines()[-1] == "Ada"


@pytest.mark.parametrize("model", [ENCRYPTED_MODEL, NOT_NULL_MODEL], ids=["nullable", "not-null-default"])
def test_the_quickstart_order_works_when_the_first_encrypted_field_comes_later(tmp_path, model):
    """keyrotation was installed and migrated long ago; now the first encrypted field arrives, on
    a table with rows (a NOT NULL field's default is encrypted for them: that needs the key)."""
    project = Project(tmp_path, ["keyrotation", "people"])
    project.model(PLAIN_MODEL)
    project.manage("makemigrations", "people")
    project.manage("migrate")
    project.manage("shell", "-c", "from people.models import Person; Person.objects.create(name='Old')")

    project.model(model)
    project.follow_the_docs()
    project.manage("check", "--database", "default")
    assert project.manage("shell", "-c", USE_IT).stdout.splitlines()[-1] == "Ada"


@pytest.mark.parametrize("model", [ENCRYPTED_MODEL, NOT_NULL_MODEL], ids=["nullable", "not-null-default"])
def test_the_quickstart_order_works_when_keyrotation_comes_to_an_existing_project(tmp_path, model):
    """A project with data and no keyrotation yet adds the app and its first encrypted field."""
    project = Project(tmp_path, ["people"])
    project.model(PLAIN_MODEL)
    project.manage("makemigrations", "people")
    project.manage("migrate")
    project.manage("shell", "-c", "from people.models import Person; Person.objects.create(name='Old')")

    project.settings(["keyrotation", "people"])
    project.model(model)
    project.follow_the_docs()
    project.manage("check", "--database", "default")
    assert project.manage("shell", "-c", USE_IT).stdout.splitlines()[-1] == "Ada"


def test_missing_keys_never_block_migrate(tmp_path):
    """``migrate`` runs the database checks first: a keyring with no key yet is a warning naming
    the next step (W003), not an error that stops the migration (E003 is for ``check --deploy``)."""
    project = Project(tmp_path, ["keyrotation", "people"])
    project.model(PLAIN_MODEL)
    project.manage("makemigrations", "people")
    project.manage("migrate")
    project.model(ENCRYPTED_MODEL)
    project.manage("makemigrations", "people")
    migrate = project.manage("migrate")
    assert "keyrotation.W003" in migrate.stderr and "rotatekeys --init" in migrate.stderr
    assert "keyrotation.E003" not in migrate.stderr
    assert "keyrotation.W003" in project.manage("check", "--database", "default").stderr
