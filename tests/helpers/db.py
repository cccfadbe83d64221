"""Helpers for tests that start other processes against the test database."""

import os

from django.db import connection


def child_env(**extra: str) -> dict:
    """Environment for a subprocess that must use this test's database."""
    env = {**os.environ, **extra}
    if connection.vendor == "postgresql":
        sd = connection.settings_dict
        env["DATABASE_URL"] = (
            f"postgres://{sd['USER']}:{sd['PASSWORD']}@{sd['HOST']}:{sd['PORT']}/{sd['NAME']}"
        )
    env["PYTHONPATH"] = os.getcwd()
    env.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    return env
