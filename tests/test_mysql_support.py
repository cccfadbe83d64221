"""MySQL/MariaDB support outside the engine: the driver's extra, ``mysql://`` URLs, the throwaway
MariaDB server of ``tests/servers.py``, and the column types keyrotation picks there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.db import connection

from scripts import mysql_driver
from tests import servers
from tests.testapp.models import Profile

ROOT = Path(__file__).resolve().parent.parent


def test_the_installer_installs_the_mysql_extra_of_pyproject():
    extra = re.search(r"^mysql = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert extra is not None and extra.group(1) == f'"{mysql_driver.REQUIREMENT}"'


def test_mysql_urls_become_django_settings():
    got = servers.database_settings("mysql://kr:p%40ss@127.0.0.1:3307/kr_dev")
    assert got == {
        "ENGINE": "django.db.backends.mysql",
        "NAME": "kr_dev",
        "USER": "kr",
        "PASSWORD": "p@ss",
        "HOST": "127.0.0.1",
        "PORT": "3307",
        "OPTIONS": {"charset": "utf8mb4"},
    }
    assert servers.database_settings("mariadb://kr@db/x")["PORT"] == "3306"
    with pytest.raises(ValueError, match="must name its database"):
        servers.database_settings("mysql://kr@db")
    with pytest.raises(ValueError, match="postgres:// or mysql://, got 'oracle'"):
        servers.database_settings("oracle://kr@db/x")


@pytest.mark.skipif(servers.mariadb_binaries() is None, reason=servers.MARIADB_HINT)
def test_the_throwaway_mariadb_keeps_its_data_across_stop_and_start():
    mysqldb = pytest.importorskip("MySQLdb", reason="mysqlclient: python scripts/mysql_driver.py")

    def query(server, sql):
        conn = mysqldb.connect(
            host="127.0.0.1",
            port=server.port,
            user=server.user,
            password=server.password,
            database=server.database,
        )
        try:
            cur = conn.cursor()
            cur.execute(sql)
            rows = cur.fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    with servers.mariadb_server() as server:
        root = server.root
        assert server.url == f"mysql://keyrotation:keyrotation@127.0.0.1:{server.port}/keyrotation"
        query(server, "CREATE TABLE kept (x INT)")
        query(server, "INSERT INTO kept VALUES (42)")
        # The time-zone tables are loaded: Django's date lookups on aware datetimes need them.
        assert (
            query(server, "SELECT CONVERT_TZ('2024-01-01 12:00', 'UTC', 'America/Chicago')")[0][0] is not None
        )
        server.stop()
        with pytest.raises(mysqldb.OperationalError):
            query(server, "SELECT 1")
        server.start()
        assert query(server, "SELECT x FROM kept") == ((42,),)
    assert not root.exists()


@pytest.mark.mysql
@pytest.mark.django_db
def test_blind_indexes_are_plain_varbinary_with_btree_unique_indexes():
    """A longblob cannot carry a unique index on MySQL (MariaDB fakes one with a hash column)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT column_type FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = %s AND column_name = 'email_bidx'",
            [Profile._meta.db_table],
        )
        assert cur.fetchone() == ("varbinary(32)",)
        cur.execute(
            "SELECT index_type, non_unique FROM information_schema.statistics "
            "WHERE table_schema = DATABASE() AND table_name = %s AND column_name = 'email_bidx'",
            [Profile._meta.db_table],
        )
        assert ("BTREE", 0) in cur.fetchall()
