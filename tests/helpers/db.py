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
    elif connection.vendor == "mysql":
        sd = connection.settings_dict
        env["DATABASE_URL"] = f"mysql://{sd['USER']}:{sd['PASSWORD']}@{sd['HOST']}:{sd['PORT']}/{sd['NAME']}"
    env["PYTHONPATH"] = os.getcwd()
    env.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    return env


def mysql_connection():
    """A MySQLdb connection to this test's MySQL/MariaDB database, outside Django (autocommit)."""
    import MySQLdb

    sd = connection.settings_dict
    return MySQLdb.connect(
        host=sd["HOST"],
        port=int(sd["PORT"]),
        user=sd["USER"],
        password=sd["PASSWORD"],
        database=sd["NAME"],
        autocommit=True,
    )
