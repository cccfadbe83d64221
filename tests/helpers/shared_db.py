"""The database a test shares with the worker processes it starts (Celery, django-tasks).

On SQLite a file made for the test (the suite's own database is in memory), migrated by a
subprocess; on a server the test database (the test is marked ``transaction=True``, so what it
writes is committed and the workers see it). Either way the test drives that database through
``tests.helpers.outage`` subprocesses, which see what the workers see.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import connection

from tests.helpers.db import child_env


@dataclass
class SharedDatabase:
    """The database the test and its worker processes share, driven through subprocesses."""

    env: dict[str, str]
    server: bool

    def helper(self, *args: str, env: dict[str, str] | None = None) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "tests.helpers.outage", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])


def shared_database(tmp_path: Path) -> SharedDatabase:
    if connection.vendor == "sqlite":
        env = child_env(KEYROTATION_TEST_SQLITE=str(tmp_path / "db.sqlite3"))
        env.pop("DATABASE_URL", None)
        subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], env=env, check=True)
        return SharedDatabase(env, server=False)
    return SharedDatabase(child_env(), server=True)


def wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
