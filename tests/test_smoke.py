"""Smoke tests of the harness: they pass only against the real servers, never against mocks."""

import base64
import os
import uuid

import pytest
from django.db import connection


@pytest.mark.django_db
def test_database_is_the_one_the_environment_asks_for():
    """SQLite when DATABASE_URL is unset, else the server its scheme names: the run is what it says."""
    url = os.environ.get("DATABASE_URL", "")
    expected = "mysql" if url.startswith(("mysql:", "mariadb:")) else "postgresql" if url else "sqlite"
    assert connection.vendor == expected


@pytest.mark.django_db
def test_sqlite_run_really_is_sqlite():
    if os.environ.get("DATABASE_URL"):
        pytest.skip("this run is on a server (DATABASE_URL is set)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT sqlite_version()")
        (version,) = cursor.fetchone()
    assert version.startswith("3.")


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgresql_version():
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        (version,) = cursor.fetchone()
    assert "PostgreSQL" in version


@pytest.mark.mysql
@pytest.mark.django_db
def test_mysql_run_is_innodb_in_four_byte_utf8():
    """Row locks and transactions need InnoDB; ciphertext-free text columns need utf8mb4."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@default_storage_engine, @@character_set_database")
        engine, charset = cursor.fetchone()
    assert (engine, charset) == ("InnoDB", "utf8mb4")


@pytest.mark.vault
def test_transit_round_trip_through_rotation_and_rewrap(vault):
    transit = vault.client.secrets.transit
    name = f"smoke-{uuid.uuid4().hex}"
    plaintext = base64.b64encode(b"a data key, 32 bytes long.......").decode()

    transit.create_key(name=name, mount_point=vault.mount)
    v1 = transit.encrypt_data(name=name, plaintext=plaintext, mount_point=vault.mount)
    v1 = v1["data"]["ciphertext"]
    assert v1.startswith("vault:v1:")

    transit.rotate_key(name=name, mount_point=vault.mount)
    v2 = transit.rewrap_data(name=name, ciphertext=v1, mount_point=vault.mount)
    v2 = v2["data"]["ciphertext"]
    assert v2.startswith("vault:v2:")

    decrypted = transit.decrypt_data(name=name, ciphertext=v2, mount_point=vault.mount)
    assert decrypted["data"]["plaintext"] == plaintext
