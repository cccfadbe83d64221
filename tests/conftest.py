"""Shared fixtures.

Servers (see ``tests/servers.py``):

* the database is Django's test database: SQLite in memory, or the PostgreSQL or MySQL/MariaDB
  named by ``DATABASE_URL`` (``scripts/runtests.py`` sets it for its PostgreSQL and MySQL runs);
* ``vault`` is the OpenBao/Vault named by ``KEYROTATION_TEST_VAULT_ADDR`` and
  ``KEYROTATION_TEST_VAULT_TOKEN``, or else an OpenBao server started for this session, so a bare
  ``pytest`` works too;
* ``redis_url`` is the Redis (broker of the Celery tests) named by ``KEYROTATION_TEST_REDIS_URL``,
  or else a Redis server started for this session; without ``redis-server`` the tests that use
  it skip, saying how to install it, unless ``KEYROTATION_REQUIRE_REDIS=1`` makes that a failure;
* ``openbao_server`` / ``postgres_server`` are private servers that a test may stop, start and
  restart (reliability tests); they start only when a test asks for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from django.conf import settings

from tests import servers

pytest_plugins = ["tests.fixtures"]

VAULT_ADDR_ENV, VAULT_TOKEN_ENV = servers.VAULT_ADDR_ENV, servers.VAULT_TOKEN_ENV


def _engine() -> str:
    """``sqlite3``, ``postgresql`` or ``mysql``: the backend of the run's default database."""
    return settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]


def pytest_report_header(config):
    database = settings.DATABASES["default"]
    where = "in memory" if _engine() == "sqlite3" else f"{database['HOST']}:{database['PORT']}"
    vault = os.environ.get(VAULT_ADDR_ENV) or "an OpenBao server started by the vault fixture"
    redis = os.environ.get(servers.REDIS_URL_ENV) or "a Redis server started by the redis_url fixture"
    return [f"database: {_engine()} ({where}); vault: {vault}; redis: {redis}"]


# marker -> (the engines it runs on, why a run elsewhere skips it)
_ENGINE_MARKERS = {
    "postgres": (("postgresql",), "needs PostgreSQL: set DATABASE_URL=postgres://... (make test does)"),
    "mysql": (("mysql",), "needs MySQL/MariaDB: run `python scripts/runtests.py --only mysql`"),
    "server": (("postgresql", "mysql"), "needs a database server (PostgreSQL or MySQL): set DATABASE_URL"),
}


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.postgres`` / ``mysql`` / ``server`` tests, with the reason, when the
    run is on another database."""
    for marker, (engines, reason) in _ENGINE_MARKERS.items():
        if _engine() in engines:
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@dataclass(frozen=True)
class VaultConfig:
    """Where the test Vault/OpenBao is, and a client logged in to it."""

    addr: str
    token: str
    client: object  # hvac.Client; hvac is imported lazily so SQLite-only runs need not have it
    mount: str = "transit"


def _ensure_transit(client, mount: str) -> None:
    if f"{mount}/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("transit", path=mount)


@pytest.fixture(scope="session")
def vault():
    """A Vault/OpenBao with Transit at ``transit``: from the environment, or started here."""
    import hvac

    addr, token = os.environ.get(VAULT_ADDR_ENV), os.environ.get(VAULT_TOKEN_ENV)
    if addr:
        if not token:
            pytest.fail(f"{VAULT_ADDR_ENV} is set but {VAULT_TOKEN_ENV} is not")
        server = None
    else:
        server = servers.OpenBaoServer()
        server.start()
        addr, token = server.addr, server.token
    client = hvac.Client(url=addr, token=token)
    try:
        assert client.is_authenticated(), f"token from {VAULT_TOKEN_ENV} is not valid at {addr}"
        _ensure_transit(client, "transit")
        yield VaultConfig(addr=addr, token=token, client=client)
    finally:
        client.adapter.close()
        if server is not None:
            server.cleanup()


@pytest.fixture(scope="session")
def redis_url():
    """A Redis URL: ``KEYROTATION_TEST_REDIS_URL``, or a server started for this session. Put in
    the environment, so that processes the tests start inherit it."""
    url = os.environ.get(servers.REDIS_URL_ENV)
    if url:
        yield url
        return
    if servers.redis_binary() is None:
        if os.environ.get(servers.REQUIRE_REDIS_ENV) == "1":
            pytest.fail(f"{servers.REQUIRE_REDIS_ENV}=1 and {servers.REDIS_HINT}")
        pytest.skip(servers.REDIS_HINT)
    with servers.redis_server() as server:
        os.environ[servers.REDIS_URL_ENV] = server.url
        try:
            yield server.url
        finally:
            del os.environ[servers.REDIS_URL_ENV]


@pytest.fixture(scope="session")
def openbao_server():
    """A private OpenBao server (Transit at ``transit``) that tests may stop/start/restart."""
    with servers.openbao_dev_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL cluster (not Django's database) that tests may restart."""
    with servers.postgres_cluster() as cluster:
        yield cluster


def pytest_terminal_summary(terminalreporter):
    """Say how many randomised reliability trials ran (``KEYROTATION_TRIALS`` sets how many)."""
    from tests.reliability_support import LOG

    if LOG.lines:
        terminalreporter.section("reliability trials")
        for line in LOG.lines:
            terminalreporter.write_line(line)
